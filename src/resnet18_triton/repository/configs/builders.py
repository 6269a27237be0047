"""One ``ModelConfig`` builder per model of a classifier, and the variants derived from them.

``preprocess`` (Python backend), ``resnet18_onnx`` (logits and softmax probabilities, both
computed by the ONNX graph) and the ``resnet18`` ensemble chaining the two are built from the
``ServingSettings`` (``all_model_configs``); the INT8, OpenVINO and fused variants are derived from
the FP32 configs already written, so every serving choice made at export time carries over.
Nothing here pastes strings together: the messages come from ``tritonclient.grpc.model_config_pb2``
(Triton's own schema), so a misspelt field fails here, not at server start.
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc

from resnet18_triton import contract
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.errors import RepositoryError
from resnet18_triton.repository.classifier import Classifier, Preprocessing
from resnet18_triton.repository.configs.settings import ServingSettings
from resnet18_triton.repository.variants import (
    ENGINES,
    INTER_OP_THREADS,
    INTRA_OP_THREADS,
    OPENVINO_THREADS,
    THREAD_KEYS,
)

# Warm-up data for the preprocess model: a small JPEG generated at export time, stored in the
# model's ``warmup/`` directory as Triton's raw TYPE_STRING layout (4-byte little-endian length,
# then the bytes). A malformed file crashes tritonserver 2.51 at load (SIGSEGV, measured).
WARMUP_DIRNAME = "warmup"
WARMUP_IMAGE_FILENAME = "sample_jpeg.bin"
# The classifier backends (the embedded server's Python-based ones, the container's native ones).
ORT_BACKEND = "onnxruntime"
OPENVINO_BACKEND = "openvino"
# The native ONNX Runtime backend's execution accelerator ``ServingSettings.openvino`` asks for.
OPENVINO_ACCELERATOR = "openvino"
# The fused model's parameter naming the classifier output it answers with (the engine it runs is
# ``contract.FUSED_ENGINE_PARAMETER``).
FUSED_OUTPUT_PARAMETER = "classifier_output"
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
        raise RepositoryError(
            f"ensemble {ensemble_config.name!r} has {renamed} steps running {onnx_config.name!r}; "
            "expected exactly one"
        )
    return [onnx, ensemble]


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
        raise RepositoryError(f"no fused model for the {engine!r} backend of {classifier.name!r}")
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
            contract.FUSED_ENGINE_PARAMETER: engine,
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
        raise RepositoryError("an OpenVINO instance needs at least 1 thread")
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
