"""Triton model configs built as ``ModelConfig`` protobuf messages and rendered to text.

One function per model of the repository: ``preprocess`` (Python backend), ``resnet18_onnx``
(logits and softmax probabilities, both computed by the ONNX graph) and the ``resnet18`` ensemble
chaining the two. Nothing here pastes strings together: the messages come from
``tritonclient.grpc.model_config_pb2`` (Triton's own schema), so a misspelt field fails here, not
at server start.

The core budget rule
--------------------
ONNX Runtime instances x intra-op threads must not exceed the cores given to inference, or the
threads of different instances fight over the same cores (and a spinning ORT pool starves the
Python preprocessing). ``ServingSettings.from_core_budget`` derives the thread count from the cores
and the instance count: ``intra_op_threads = cores // instances`` (at least 1), and refuses a plan
that would oversubscribe. One instance using every core gives the lowest latency at batch 1; more
instances with fewer threads each trade latency for throughput only when the cores outnumber what a
single batched session run can use.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from resnet18_triton import contract
from resnet18_triton.contract import CONFIG_FILENAME, ClassifierNames
from resnet18_triton.errors import ExportError
from resnet18_triton.repository.classifier import Classifier, Preprocessing
from resnet18_triton.repository.variants import (
    ENGINES,
    INTER_OP_THREADS,
    INTRA_OP_THREADS,
    OPENVINO_THREADS,
    THREAD_KEYS,
)


def available_cores() -> int:
    """Cores this process may run on (honours taskset/cgroup affinity, unlike os.cpu_count)."""
    return len(os.sched_getaffinity(0))


# A model's queue is bounded, so excess work is refused at once (Triton's "Exceeds maximum queue
# size", HTTP 503) instead of piling up until clients time out: it holds about QUEUE_BUDGET_S of
# work for the cores given to inference, at IMAGE_CORE_S of core time per image (the FP32 JPEG
# ensemble's measured cost; docs/decisions.md, "Bounded queues"), and never less than one full
# batch. Larger images cost more than the estimate, so a request still queued at the entry model
# (preprocess, or a fused model) after QUEUE_TIMEOUT_FACTOR budgets is refused too ("Request
# timeout expired"); twice the budget leaves a burst that the estimate says fits room to drain.
# The classifier behind the preprocessing gets no timeout: a request that reaches it has been
# decoded already, and refusing it then would throw that work away.
QUEUE_BUDGET_S = 2.0
IMAGE_CORE_S = 0.054
QUEUE_TIMEOUT_FACTOR = 2


def queue_bound(cores: int, max_batch_size: int, budget_s: float = QUEUE_BUDGET_S) -> int:
    """Requests a model's queue holds for ``cores`` (see ``QUEUE_BUDGET_S``)."""
    return max(max_batch_size, math.ceil(budget_s * cores / IMAGE_CORE_S))


def queue_timeout_us(budget_s: float = QUEUE_BUDGET_S) -> int:
    """How long a request may wait queued at the entry model before it is refused, in
    microseconds."""
    return round(budget_s * QUEUE_TIMEOUT_FACTOR * 1_000_000)


@dataclass(frozen=True)
class ServingSettings:
    """Every knob the rendered configs depend on, with the defaults the measurements chose."""

    cores: int = 2
    onnx_instances: int = 1
    intra_op_threads: int = 2
    inter_op_threads: int = 1
    preprocess_instances: int = 1
    max_batch_size: int = contract.MAX_BATCH_SIZE
    max_queue_delay_us: int = 0
    # The queue policy of every batching model (preprocess, classifiers, fused models): at most
    # this many queued requests (0: Triton's unbounded default); at the entry models (preprocess,
    # fused), refused after this long queued (0: never). ``from_core_budget`` derives both.
    max_queue_size: int = 0
    queue_timeout_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = field(default_factory=tuple)
    max_image_pixels: int = contract.MAX_IMAGE_PIXELS
    max_image_bytes: int = contract.MAX_IMAGE_BYTES
    max_aspect_ratio: float = contract.MAX_ASPECT_RATIO
    # Pillow format names the preprocessing opens; anything else is refused before decoding.
    allowed_formats: tuple[str, ...] = contract.ALLOWED_FORMATS
    # response_cache only marks the configs as cacheable: Triton
    # caches nothing unless the server also runs with --cache-config (serve
    # --response-cache-bytes); a config with the flag loads fine on a server without a cache.
    response_cache: bool = False
    # model_warmup samples, so the first real request finds every model warm; Triton runs them
    # while loading and reports the model (and, with strict readiness, the server) ready after.
    warmup: bool = True
    # Ask the container's native ONNX Runtime backend for its OpenVINO execution accelerator.
    # Container only: this project's Python-based ONNX Runtime backend does not use it.
    openvino: bool = False
    # ONNX Runtime's intra-op pool busy-waits between ops by default; on a small machine that spin
    # steals the core the preprocessing needs (measured in docs/performance.md, "ORT thread
    # spinning"). Rendered as session.intra_op.allow_spinning.
    intra_op_spinning: bool = False
    # ONNX Runtime's CPU memory arena keeps freed blocks; off, the ORT stub's RSS is lower with no
    # measurable throughput change (docs/performance.md). Rendered as enable_mem_arena.
    ort_memory_arena: bool = False
    # Preprocess: Image.draft for JPEGs at least twice this size on both sides (0 = off). Off by
    # default: it changes large JPEGs' probabilities slightly (tolerance in docs/performance.md).
    jpeg_draft_min_size: int = 0

    @classmethod
    def from_core_budget(
        cls, cores: int | None = None, onnx_instances: int = 1, **overrides: Any
    ) -> ServingSettings:
        """Derive intra-op threads from the cores given to inference (see the module docstring)."""
        cores = cores or available_cores()
        if cores < 1 or onnx_instances < 1:
            raise ExportError("the core budget and the instance count must be at least 1")
        intra = overrides.pop("intra_op_threads", None) or max(1, cores // onnx_instances)
        batch = overrides.get("max_batch_size", contract.MAX_BATCH_SIZE)
        overrides.setdefault("max_queue_size", queue_bound(cores, batch))
        overrides.setdefault("queue_timeout_us", queue_timeout_us())
        settings = cls(
            cores=cores, onnx_instances=onnx_instances, intra_op_threads=intra, **overrides
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse plans that oversubscribe the cores or cannot batch."""
        threads = self.onnx_instances * self.intra_op_threads
        if threads > self.cores:
            raise ExportError(
                f"{self.onnx_instances} ONNX Runtime instance(s) x {self.intra_op_threads} "
                f"intra-op threads = {threads} threads oversubscribe the {self.cores}-core "
                "budget; lower the instances or threads, or raise --cores"
            )
        if self.max_batch_size < 1:
            raise ExportError("max_batch_size must be at least 1")
        if self.max_queue_size < 0 or self.queue_timeout_us < 0:
            raise ExportError("the queue size and timeout must be 0 (unbounded) or more")
        too_big = [size for size in self.preferred_batch_sizes if size > self.max_batch_size]
        if too_big:
            raise ExportError(
                f"preferred batch sizes {too_big} exceed max_batch_size {self.max_batch_size}"
            )


def describe_queue(settings: ServingSettings) -> str:
    """The queue policy in words, for export, tune and the docs."""
    if not settings.max_queue_size:
        return "unbounded queues"
    after = (
        f", refused after {settings.queue_timeout_us / 1e6:g} s queued"
        if settings.queue_timeout_us
        else ""
    )
    return f"queues of at most {settings.max_queue_size} requests{after}"


def _string_parameters(config: mc.ModelConfig, values: dict[str, str]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = value


def _queue_timeout(config: mc.ModelConfig, timeout_us: int) -> None:
    if timeout_us:
        policy = config.dynamic_batching.default_queue_policy
        policy.timeout_action = mc.ModelQueuePolicy.REJECT
        policy.default_timeout_microseconds = timeout_us


def _dynamic_batching(config: mc.ModelConfig, settings: ServingSettings, entry: bool) -> None:
    """Batching and the queue policy; ``entry``: the model a request queues at first (it gets the
    queue timeout)."""
    config.dynamic_batching.max_queue_delay_microseconds = settings.max_queue_delay_us
    if settings.max_queue_size:
        config.dynamic_batching.default_queue_policy.max_queue_size = settings.max_queue_size
        if entry:
            _queue_timeout(config, settings.queue_timeout_us)
    config.dynamic_batching.preferred_batch_size.extend(settings.preferred_batch_sizes)


def _cpu_instances(config: mc.ModelConfig, count: int) -> None:
    group = config.instance_group.add()
    group.count = count
    group.kind = mc.ModelInstanceGroup.KIND_CPU


# Warm-up data for the preprocess model: a small JPEG generated at export time, stored in the
# model's ``warmup/`` directory as Triton's raw TYPE_STRING layout (4-byte little-endian length,
# then the bytes). A malformed file crashes tritonserver 2.51 at load (SIGSEGV, measured).
WARMUP_DIRNAME = "warmup"
WARMUP_IMAGE_FILENAME = "sample_jpeg.bin"
OPENVINO_ACCELERATOR = "openvino"
# The classifier backends (the embedded server's Python-based ones, the container's native ones).
ORT_BACKEND = "onnxruntime"
OPENVINO_BACKEND = "openvino"


def warmup_batch_sizes(settings: ServingSettings) -> list[int]:
    """Batch 1 (the latency case) and the largest batch (sizes ONNX Runtime's buffers for it)."""
    return sorted({1, settings.max_batch_size})


def _zero_warmup(config: mc.ModelConfig, settings: ServingSettings, batch_sizes: list[int]) -> None:
    if not settings.warmup:
        return
    for batch_size in batch_sizes:
        sample = config.model_warmup.add(
            name=f"zeros_batch{batch_size}", batch_size=batch_size, count=1
        )
        for tensor in config.input:
            sample.inputs[tensor.name].data_type = tensor.data_type
            sample.inputs[tensor.name].dims.extend(tensor.dims)
            sample.inputs[tensor.name].zero_data = True


def _response_cache(config: mc.ModelConfig, settings: ServingSettings) -> None:
    """On the ensembles (repeated images) and the classifiers (repeated tensors from clients
    calling them directly); not on the Python preprocess step, which only ever runs on an
    ensemble miss."""
    if settings.response_cache:
        config.response_cache.enable = True


def onnx_model_config(
    settings: ServingSettings,
    provenance_json: str,
    name: str = contract.ONNX_MODEL,
    num_classes: int = contract.NUM_CLASSES,
    input_size: int = contract.IMAGE_SIZE,
) -> mc.ModelConfig:
    """The raw classifier: 1 NCHW UINT8 input (RGB pixels 0..255, normalised inside the graph);
    outputs ``logits`` and ``probabilities`` (softmax
    of the logits, computed in the ONNX graph), both labelled, so a raw caller can ask the
    classification extension for the top-k of either.

    ``name`` serves the same layout under another name (the INT8 variant ``resnet18_int8``).
    """
    config = mc.ModelConfig(name=name, backend=ORT_BACKEND)
    config.max_batch_size = settings.max_batch_size
    config.input.add(
        name=contract.ONNX_INPUT,
        data_type=mc.TYPE_UINT8,
        format=mc.ModelInput.FORMAT_NCHW,
        dims=[contract.CHANNELS, input_size, input_size],
    )
    for output in contract.ONNX_OUTPUTS:
        config.output.add(
            name=output,
            data_type=mc.TYPE_FP32,
            dims=[num_classes],
            label_filename=contract.LABELS_FILENAME,
        )
    _cpu_instances(config, settings.onnx_instances)
    _dynamic_batching(config, settings, entry=False)
    _string_parameters(
        config,
        {
            INTRA_OP_THREADS: str(settings.intra_op_threads),
            INTER_OP_THREADS: str(settings.inter_op_threads),
            "execution_mode": "0",
            "enable_mem_arena": "1" if settings.ort_memory_arena else "0",
            "enable_mem_pattern": "1",
            "session.intra_op.allow_spinning": "1" if settings.intra_op_spinning else "0",
            contract.PROVENANCE_PARAMETER: provenance_json,
        },
    )
    if settings.openvino:
        accelerators = config.optimization.execution_accelerators
        accelerators.cpu_execution_accelerator.add(name=OPENVINO_ACCELERATOR)
    _zero_warmup(config, settings, warmup_batch_sizes(settings))
    _response_cache(config, settings)
    return config


def preprocess_model_config(
    settings: ServingSettings,
    name: str = contract.PREPROCESS_MODEL,
    preprocessing: Preprocessing | None = None,
) -> mc.ModelConfig:
    """Encoded image bytes in, uint8 NCHW pixels out (Python backend; the classifier's graph
    normalises them). The transform's settings are string parameters
    (``Preprocessing.parameters``, default ImageNet's); ``mean`` and ``std`` among them describe
    the classifier graph's normalisation and are not applied by this model."""
    preprocessing = preprocessing or Preprocessing()
    size = preprocessing.input_size
    config = mc.ModelConfig(name=name, backend="python")
    config.max_batch_size = settings.max_batch_size
    config.input.add(name=contract.PREPROCESS_INPUT, data_type=mc.TYPE_STRING, dims=[1])
    config.output.add(
        name=contract.PREPROCESS_OUTPUT,
        data_type=mc.TYPE_UINT8,
        dims=[contract.CHANNELS, size, size],
    )
    _cpu_instances(config, settings.preprocess_instances)
    _dynamic_batching(config, settings, entry=True)
    _string_parameters(
        config,
        {
            "max_image_pixels": str(settings.max_image_pixels),
            "max_image_bytes": str(settings.max_image_bytes),
            "max_aspect_ratio": f"{settings.max_aspect_ratio:g}",
            "allowed_formats": ",".join(settings.allowed_formats),
            "jpeg_draft_min_size": str(settings.jpeg_draft_min_size),
            **preprocessing.parameters(),
        },
    )
    if settings.warmup:
        sample = config.model_warmup.add(name="jpeg_batch1", batch_size=1, count=1)
        image = sample.inputs[contract.PREPROCESS_INPUT]
        image.data_type = mc.TYPE_STRING
        image.dims.append(1)
        image.input_data_file = WARMUP_IMAGE_FILENAME
    # No response_cache here: a hit on the ensemble never reaches its steps, and each entry of
    # this model would hold a 150 KB tensor, evicting ~37 of the ensemble's 4 KB answers.
    return config


def _image_in_probabilities_out(config: mc.ModelConfig, num_classes: int) -> None:
    """What a client calls: encoded ``IMAGE`` bytes in, labelled ``PROBABILITIES`` out."""
    config.input.add(name=contract.ENSEMBLE_INPUT, data_type=mc.TYPE_STRING, dims=[1])
    config.output.add(
        name=contract.ENSEMBLE_OUTPUT,
        data_type=mc.TYPE_FP32,
        dims=[num_classes],
        label_filename=contract.LABELS_FILENAME,
    )


def ensemble_model_config(
    settings: ServingSettings,
    name: str = contract.ENSEMBLE_MODEL,
    classifier: str = contract.ONNX_MODEL,
    preprocess: str = contract.PREPROCESS_MODEL,
    num_classes: int = contract.NUM_CLASSES,
) -> mc.ModelConfig:
    """IMAGE bytes -> preprocess -> resnet18_onnx -> labelled PROBABILITIES.

    The classifier's ``probabilities`` output (softmax in the ONNX graph) is the ensemble's
    output; its ``logits`` are not mapped, so they never leave the step. ``name`` and
    ``classifier`` build a variant ensemble, e.g. ``resnet18_int8_ensemble`` running
    ``resnet18_int8``. Ensembles take no model_warmup (their steps warm up on their own).
    """
    config = mc.ModelConfig(name=name, platform="ensemble")
    config.max_batch_size = settings.max_batch_size
    _image_in_probabilities_out(config, num_classes)
    steps = (
        (
            preprocess,
            {contract.PREPROCESS_INPUT: contract.ENSEMBLE_INPUT},
            {contract.PREPROCESS_OUTPUT: "preprocessed_image"},
        ),
        (
            classifier,
            {contract.ONNX_INPUT: "preprocessed_image"},
            {contract.ONNX_PROBABILITIES: contract.ENSEMBLE_OUTPUT},
        ),
    )
    for model_name, input_map, output_map in steps:
        step = config.ensemble_scheduling.step.add(model_name=model_name, model_version=-1)
        step.input_map.update(input_map)
        step.output_map.update(output_map)
    _response_cache(config, settings)
    return config


def variant_configs(
    onnx_config: mc.ModelConfig,
    ensemble_config: mc.ModelConfig,
    *,
    onnx_name: str,
    ensemble_name: str,
    parameters: dict[str, str] | None = None,
) -> list[mc.ModelConfig]:
    """Copies of the FP32 classifier and ensemble configs serving another model file.

    Used for the INT8 variant: deriving it from the configs already in the repository keeps
    every serving choice made at export time (instances, threads, batching, warm-up, cache)
    identical between FP32 and INT8, so the two are compared like for like. ``parameters`` are
    added to (or replace) the classifier's string parameters, e.g. the quantisation recipe.
    """
    onnx = mc.ModelConfig()
    onnx.CopyFrom(onnx_config)
    onnx.name = onnx_name
    _string_parameters(onnx, parameters or {})
    ensemble = mc.ModelConfig()
    ensemble.CopyFrom(ensemble_config)
    ensemble.name = ensemble_name
    renamed = 0
    for step in ensemble.ensemble_scheduling.step:
        if step.model_name == onnx_config.name:
            step.model_name = onnx_name
            renamed += 1
    if renamed != 1:
        raise ExportError(
            f"ensemble {ensemble_config.name!r} has {renamed} steps running {onnx_config.name!r}; "
            "expected exactly one"
        )
    return [onnx, ensemble]


# The fused model's parameters naming its engine (the classifier's backend) and the classifier
# output it answers with; and each engine's per-instance thread key.
FUSED_ENGINE_PARAMETER = contract.FUSED_ENGINE_PARAMETER
FUSED_OUTPUT_PARAMETER = "classifier_output"


def instance_count(config: mc.ModelConfig) -> int:
    """The model's CPU instances (Triton's default: 1 when no group is given)."""
    return sum(group.count or 1 for group in config.instance_group) or 1


def fused_model_config(
    classifier: mc.ModelConfig, preprocess: mc.ModelConfig, *, name: str
) -> mc.ModelConfig:
    """A classifier's ensemble as one Python-backend model (``server/models/fused``).

    ``classifier`` is the variant's classifier config (backend ``onnxruntime`` or ``openvino``;
    the fused model runs the same engine in its own process). Same input and labelled output as
    the ensemble (encoded ``IMAGE`` in, ``PROBABILITIES`` out), the preprocessing's parameters
    (limits, transform) and warm-up, the classifier's engine parameters, batching and cache.
    Cores: the classifier's instances x threads, spent as that many instances of 1 thread each:
    every instance decodes and then infers, so with one thread each the instances keep all cores
    busy without splitting one inference across cores (measured against 1 x N in
    docs/performance.md and docs/decisions.md, "The served fast path").
    """
    engine = classifier.backend or ORT_BACKEND
    threads_key = THREAD_KEYS.get(engine) if engine in ENGINES else None
    if threads_key is None:
        raise ExportError(f"no fused model for the {engine!r} backend of {classifier.name!r}")
    probabilities = next(
        output for output in classifier.output if output.name == contract.ONNX_PROBABILITIES
    )
    config = mc.ModelConfig(name=name, backend="python")
    config.max_batch_size = classifier.max_batch_size
    _image_in_probabilities_out(config, probabilities.dims[-1])
    threads = int(classifier.parameters[threads_key].string_value or "1")
    _cpu_instances(config, instance_count(classifier) * max(threads, 1))
    config.dynamic_batching.CopyFrom(classifier.dynamic_batching)
    # The fused model is where its requests queue first: the preprocessing's queue timeout.
    _queue_timeout(
        config, preprocess.dynamic_batching.default_queue_policy.default_timeout_microseconds
    )
    for source in (preprocess, classifier):
        for key, value in source.parameters.items():
            config.parameters[key].CopyFrom(value)
    single_thread = {threads_key: "1"}
    if engine == ORT_BACKEND:
        single_thread[INTER_OP_THREADS] = "1"
    _string_parameters(
        config,
        {
            **single_thread,
            FUSED_ENGINE_PARAMETER: engine,
            FUSED_OUTPUT_PARAMETER: contract.ONNX_PROBABILITIES,
        },
    )
    for sample in preprocess.model_warmup:
        # The preprocessing's image at batch 1 and at the largest batch: the second sizes the
        # engine's buffers before the first full batch arrives, as the classifier's own warm-up.
        for batch_size in sorted({1, config.max_batch_size}):
            warmup = config.model_warmup.add()
            warmup.CopyFrom(sample)
            warmup.name, warmup.batch_size = f"image_batch{batch_size}", batch_size
    if classifier.HasField("response_cache"):
        config.response_cache.CopyFrom(classifier.response_cache)
    return config


# The ONNX Runtime session options a classifier config carries, all derived from the serving
# settings: a variant's other parameters (its quantisation recipe, fidelity report, provenance)
# are its own, and are kept when its configs are derived again.
ORT_PARAMETERS = (
    INTRA_OP_THREADS,
    INTER_OP_THREADS,
    "execution_mode",
    "enable_mem_arena",
    "enable_mem_pattern",
    "memory.enable_memory_arena_shrinkage",
)
ORT_SESSION_PREFIX = "session."


def is_serving_parameter(engine: str, key: str) -> bool:
    """True when parameter ``key`` of an ``engine`` classifier is derived from the serving
    settings (threads, session options), not the model's own (recipe, fidelity, provenance)."""
    if engine == OPENVINO_BACKEND:
        return key in openvino_parameters(1, "f32") or key == "HINT_BF16"
    return key in ORT_PARAMETERS or key.startswith(ORT_SESSION_PREFIX)


def own_parameters(config: mc.ModelConfig) -> dict[str, str]:
    """The classifier config's parameters that are not derived from the serving settings."""
    engine = config.backend or ORT_BACKEND
    return {
        key: value.string_value
        for key, value in config.parameters.items()
        if not is_serving_parameter(engine, key)
    }


def openvino_parameters(threads: int, precision: str) -> dict[str, str]:
    """The native OpenVINO backend's keys for one instance using ``threads`` cores.

    One stream per instance with the LATENCY hint: Triton's instances already give parallelism,
    and ``threads`` comes from the same core budget as ONNX Runtime's intra-op threads, so the
    instances x threads product never oversubscribes. ``HINT_BF16`` is the native backend's only
    precision key; ``INFERENCE_PRECISION_HINT`` also pins f32 (for ``f32``, and for the float
    parts of an ``int8`` QDQ model), which the native backend cannot express.
    ``ENABLE_CPU_PINNING`` NO keeps the instances' threads off one shared core (the embedded
    backend's key, see its docstring).
    """
    if threads < 1:
        raise ExportError("an OpenVINO instance needs at least 1 thread")
    parameters = {
        OPENVINO_THREADS: str(threads),
        "NUM_STREAMS": "1",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        # Pinned, the threads of every instance (a process each) land on the same first cores.
        "ENABLE_CPU_PINNING": "NO",
        contract.PRECISION_PARAMETER: precision,
    }
    if precision == "bf16":
        parameters["HINT_BF16"] = "YES"
    return parameters


def openvino_variant_configs(
    onnx_config: mc.ModelConfig,
    ensemble_config: mc.ModelConfig,
    *,
    onnx_name: str,
    ensemble_name: str,
    precision: str,
    model_filename: str,
    parameters: dict[str, str] | None = None,
) -> list[mc.ModelConfig]:
    """The OpenVINO classifier and its ensemble, derived from the ONNX Runtime FP32 configs.

    Instances, batching, warm-up, cache, inputs and outputs stay those of the FP32 classifier;
    the backend becomes ``openvino`` reading ``model_filename`` (``default_model_filename``), the
    ONNX Runtime keys are replaced by ``openvino_parameters`` with the FP32 intra-op thread
    count as the core budget per instance. ``parameters`` are added last.
    """
    onnx, ensemble = variant_configs(
        onnx_config, ensemble_config, onnx_name=onnx_name, ensemble_name=ensemble_name
    )
    onnx.backend = OPENVINO_BACKEND
    onnx.default_model_filename = model_filename
    onnx.ClearField("optimization")
    threads_text = onnx.parameters[INTRA_OP_THREADS].string_value or "1"
    for key in [key for key in onnx.parameters if is_serving_parameter(ORT_BACKEND, key)]:
        del onnx.parameters[key]
    _string_parameters(onnx, openvino_parameters(int(threads_text), precision))
    _string_parameters(onnx, parameters or {})
    return [onnx, ensemble]


def all_model_configs(
    settings: ServingSettings, provenance_json: str, classifier: Classifier | None = None
) -> list[mc.ModelConfig]:
    """Every config of one classifier (``ClassifierNames.served``), steps before the ensemble;
    default: the ImageNet-sized default classifier."""
    names = classifier.names if classifier else ClassifierNames.of()
    preprocessing = classifier.preprocessing if classifier else Preprocessing()
    num_classes = classifier.num_classes if classifier else contract.NUM_CLASSES
    return [
        preprocess_model_config(settings, names.preprocess, preprocessing),
        onnx_model_config(
            settings, provenance_json, names.onnx, num_classes, preprocessing.input_size
        ),
        ensemble_model_config(settings, names.ensemble, names.onnx, names.preprocess, num_classes),
    ]


def render(config: mc.ModelConfig) -> str:
    """The config.pbtxt text Triton reads."""
    text: str = text_format.MessageToString(config)
    return text


def parse(text: str) -> mc.ModelConfig:
    """Parse config.pbtxt text with Triton's schema (raises on unknown fields)."""
    return text_format.Parse(text, mc.ModelConfig())


def as_json(config: mc.ModelConfig) -> dict[str, Any]:
    """A config as the JSON dict Triton hands a Python model (``args["model_config"]``) and its
    model-config API returns."""
    result: dict[str, Any] = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return result


def read_config_file(path: Path) -> mc.ModelConfig | None:
    """The config at ``path``; None when it is missing, unreadable or not a model config."""
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, text_format.ParseError):
        return None


def read_config(repo: Path, model: str) -> mc.ModelConfig:
    """Model ``model``'s config in ``repo``; raises ExportError saying how to write it."""
    path = repo / model / CONFIG_FILENAME
    config = read_config_file(path)
    if config is None:
        state = "is not a readable model config" if path.exists() else "is missing"
        raise ExportError(f"{path} {state}: run `resnet18-triton export` first")
    return config


def _string(config: mc.ModelConfig, key: str, default: str = "") -> str:
    return config.parameters[key].string_value if key in config.parameters else default


def settings_from_configs(
    preprocess: mc.ModelConfig, classifier: mc.ModelConfig, ensemble: mc.ModelConfig, cores: int
) -> ServingSettings:
    """The ``ServingSettings`` that rendered these configs (``cores`` is not in a config)."""
    threads = int(_string(classifier, INTRA_OP_THREADS, "1") or 1)
    instances = instance_count(classifier)
    return ServingSettings(
        cores=max(cores, instances * threads),
        onnx_instances=instances,
        intra_op_threads=threads,
        inter_op_threads=int(_string(classifier, INTER_OP_THREADS, "1") or 1),
        preprocess_instances=instance_count(preprocess),
        max_batch_size=classifier.max_batch_size,
        max_queue_delay_us=classifier.dynamic_batching.max_queue_delay_microseconds,
        max_queue_size=classifier.dynamic_batching.default_queue_policy.max_queue_size,
        queue_timeout_us=preprocess.dynamic_batching.default_queue_policy.default_timeout_microseconds,
        preferred_batch_sizes=tuple(classifier.dynamic_batching.preferred_batch_size),
        max_image_pixels=int(_string(preprocess, "max_image_pixels", "0")),
        max_image_bytes=int(_string(preprocess, "max_image_bytes", "0")),
        max_aspect_ratio=float(_string(preprocess, "max_aspect_ratio", "0")),
        allowed_formats=tuple(filter(None, _string(preprocess, "allowed_formats").split(","))),
        response_cache=ensemble.response_cache.enable,
        warmup=len(classifier.model_warmup) > 0,
        openvino=len(classifier.optimization.execution_accelerators.cpu_execution_accelerator) > 0,
        intra_op_spinning=_string(classifier, "session.intra_op.allow_spinning") == "1",
        ort_memory_arena=_string(classifier, "enable_mem_arena") == "1",
        jpeg_draft_min_size=int(_string(preprocess, "jpeg_draft_min_size", "0") or 0),
    )


def repository_settings(
    repo: Path, cores: int, name: str = contract.ENSEMBLE_MODEL
) -> ServingSettings:
    """The FP32 serving settings classifier ``name`` has in the repository now."""
    names = ClassifierNames.of(name)
    return settings_from_configs(
        read_config(repo, names.preprocess),
        read_config(repo, names.onnx),
        read_config(repo, names.ensemble),
        cores,
    )


def repository_classifier(repo: Path, name: str = contract.ENSEMBLE_MODEL) -> Classifier:
    """Classifier ``name`` as exported into ``repo``: its labels (so its class count) and its
    preprocessing, read back from its files, so a plan re-renders exactly that classifier."""
    names = ClassifierNames.of(name)
    preprocess = read_config(repo, names.preprocess)
    parameters = {key: value.string_value for key, value in preprocess.parameters.items()}
    labels = (repo / names.onnx / contract.LABELS_FILENAME).read_text().splitlines()
    return Classifier(names, tuple(labels), Preprocessing.from_parameters(parameters))
