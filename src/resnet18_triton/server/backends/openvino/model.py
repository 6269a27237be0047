"""A Python-based Triton backend named ``openvino``: runs a model with the ``openvino`` package.

Triton serves every model whose config says ``backend: "openvino"`` with
``<backend-directory>/openvino/model.py`` when that file exists, so this file stands in for the
native OpenVINO backend of the official container, which the ``nvidia-pytriton`` wheel lacks. It
reads the native backend's ``config.pbtxt`` keys with the same accepted values, so one model
directory runs unchanged in both places:

- ``parameters`` (all ``string_value``, case-insensitive values): ``INFERENCE_NUM_THREADS`` and
  ``COMPILATION_NUM_THREADS`` (non-negative integers), ``NUM_STREAMS`` (``AUTO``, ``NUMA`` or an
  integer), ``PERFORMANCE_HINT`` (``LATENCY``, ``THROUGHPUT``, ``CUMULATIVE_THROUGHPUT``),
  ``HINT_BF16`` (only ``YES``: BF16 inference precision);
- ``INFERENCE_PRECISION_HINT`` (``bf16`` or ``f32``): this backend's own key, because the native
  one has no way to ask for f32, and OpenVINO's default on CPUs with native bfloat16 is BF16. The
  native backend ignores the key (it reads only the keys it knows);
- ``ENABLE_CPU_PINNING`` (``YES`` or ``NO``): also this backend's own key. OpenVINO pins its
  inference threads to cores by default, and every process picks the same first cores: two
  single-thread instances (two stub processes) then share one core. One instance with every
  core gains nothing from pinning, so export writes ``NO`` (the measurements: docs/decisions.md,
  "OpenVINO configs turn CPU pinning off");
- ``SKIP_OV_DYNAMIC_BATCHSIZE``, ``ENABLE_BATCH_PADDING``, ``RESHAPE_IO_LAYERS`` are accepted and
  have no effect here: the model keeps its own (dynamic) batch axis and runs each batch as it is;
- ``CPU_EXTENSION_PATH`` is refused: loading a shared library named by a config file is not
  something the embedded server does;
- ``default_model_filename``: ``model.xml`` (OpenVINO IR) when empty, as in the native backend;
  ``model.onnx`` is read directly by OpenVINO's ONNX frontend.

All requests of one ``execute`` call (dynamic batching) run as one batched inference.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import openvino as ov

if TYPE_CHECKING:
    import numpy.typing as npt

try:  # Present inside the Triton Python-backend stub.
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - only when unit tests import this file
    pb_utils = None

DEFAULT_MODEL_FILENAME = "model.xml"
DEVICE = "CPU"
PRECISION_KEY = "INFERENCE_PRECISION_HINT"
PINNING_KEY = "ENABLE_CPU_PINNING"
PRECISIONS = ("bf16", "f32")
IGNORED_KEYS = ("SKIP_OV_DYNAMIC_BATCHSIZE", "ENABLE_BATCH_PADDING", "RESHAPE_IO_LAYERS")

# A Triton model config as JSON (``args["model_config"]`` parsed), and the ``args`` of
# ``initialize``.
ModelConfig = dict[str, Any]
Args = dict[str, str]


class ConfigError(ValueError):
    """A parameter value the native backend would also reject."""


def _parameter(model_config: ModelConfig, key: str) -> str | None:
    value: str | None = model_config.get("parameters", {}).get(key, {}).get("string_value")
    return value.strip().lower() if value not in (None, "") and value.strip() else None


def _count(key: str, value: str) -> int:
    if not value.isdigit():
        raise ConfigError(
            f"expected the parameter '{key}' to be a non-negative number, got {value}"
        )
    return int(value)


def _streams(value: str) -> str:
    if value in ("auto", "numa"):
        return value.upper()
    return str(_count("NUM_STREAMS", value))


def _hint(value: str) -> str:
    if value not in ("latency", "throughput", "cumulative_throughput"):
        raise ConfigError(
            "expected the parameter 'PERFORMANCE_HINT' to be "
            f"LATENCY/THROUGHPUT/CUMULATIVE_THROUGHPUT, got {value}"
        )
    return value.upper()


def inference_precision(model_config: ModelConfig) -> str | None:
    """``bf16``, ``f32``, or None (OpenVINO's default: BF16 where the CPU has it natively)."""
    bf16 = _parameter(model_config, "HINT_BF16")
    if bf16 is not None and bf16 != "yes":
        raise ConfigError(f"expected the parameter 'HINT_BF16' to be YES, got {bf16}")
    precision = _parameter(model_config, PRECISION_KEY)
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(
            f"expected the parameter '{PRECISION_KEY}' to be one of {', '.join(PRECISIONS)}, "
            f"got {precision}"
        )
    if bf16 == "yes" and precision == "f32":
        raise ConfigError(f"HINT_BF16 YES contradicts {PRECISION_KEY} f32; keep one of them")
    return precision or ("bf16" if bf16 == "yes" else None)


def compile_properties(model_config: ModelConfig) -> dict[str, str]:
    """OpenVINO CPU properties from a Triton model config (as a JSON dict), as the native
    backend derives them. Raises ConfigError on values the native backend rejects."""
    if _parameter(model_config, "CPU_EXTENSION_PATH") is not None:
        raise ConfigError(
            "CPU_EXTENSION_PATH is not supported by the embedded openvino backend; "
            "remove it (custom CPU kernels need the native backend in the container)"
        )
    properties: dict[str, str] = {}
    for key in ("INFERENCE_NUM_THREADS", "COMPILATION_NUM_THREADS"):
        value = _parameter(model_config, key)
        if value is not None:
            properties[key] = str(_count(key, value))
    streams = _parameter(model_config, "NUM_STREAMS")
    if streams is not None:
        properties["NUM_STREAMS"] = _streams(streams)
    hint = _parameter(model_config, "PERFORMANCE_HINT")
    if hint is not None:
        properties["PERFORMANCE_HINT"] = _hint(hint)
    precision = inference_precision(model_config)
    if precision is not None:
        properties[PRECISION_KEY] = precision
    pinning = _parameter(model_config, PINNING_KEY)
    if pinning is not None:
        if pinning not in ("yes", "no"):
            raise ConfigError(
                f"expected the parameter '{PINNING_KEY}' to be YES or NO, got {pinning}"
            )
        properties[PINNING_KEY] = pinning.upper()
    return properties


def model_path(args: Args, model_config: ModelConfig) -> str:
    filename = model_config.get("default_model_filename") or DEFAULT_MODEL_FILENAME
    return os.path.join(args["model_repository"], args["model_version"], filename)


def compile_model(path: str, model_config: ModelConfig) -> ov.CompiledModel:
    """Read and compile the model file for the CPU with the config's properties."""
    core = ov.Core()
    return core.compile_model(core.read_model(path), DEVICE, compile_properties(model_config))


def infer(
    request: ov.InferRequest, feeds: dict[str, npt.NDArray[Any]], outputs: list[str]
) -> list[npt.NDArray[Any]]:
    """One synchronous inference; copies the outputs (the request reuses its buffers)."""
    request.infer(feeds)
    return [np.array(request.get_tensor(name).data, copy=True) for name in outputs]


def split_batches(
    outputs: list[npt.NDArray[Any]], sizes: list[int]
) -> list[list[npt.NDArray[Any]]]:
    """Cut each batched output back into one slice per request, in request order."""
    bounds = np.cumsum([0, *sizes])
    return [[output[start:end] for output in outputs] for start, end in itertools.pairwise(bounds)]


class TritonPythonModel:
    """One compiled model and one infer request per model instance."""

    def initialize(self, args: Args) -> None:
        self.model_config = json.loads(args["model_config"])
        self.input_names = [tensor["name"] for tensor in self.model_config["input"]]
        self.output_names = [tensor["name"] for tensor in self.model_config["output"]]
        try:
            self.compiled = compile_model(model_path(args, self.model_config), self.model_config)
        except ConfigError as error:
            raise pb_utils.TritonModelException(str(error)) from None
        self.request = self.compiled.create_infer_request()
        precision = self.compiled.get_property(PRECISION_KEY)
        pb_utils.Logger.log_info(f"openvino {ov.__version__}: inference precision {precision}")

    def execute(self, requests: list[Any]) -> list[Any]:
        per_request = [self._inputs_of(request) for request in requests]
        sizes = [len(inputs[self.input_names[0]]) for inputs in per_request]
        feeds = {
            name: _concatenate([inputs[name] for inputs in per_request])
            for name in self.input_names
        }
        try:
            outputs = infer(self.request, feeds, self.output_names)
        except Exception as error:
            message = f"OpenVINO failed: {error}"
            return [
                pb_utils.InferenceResponse(error=pb_utils.TritonError(message)) for _ in requests
            ]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(value))
                    for name, value in zip(self.output_names, sliced, strict=True)
                ]
            )
            for sliced in split_batches(outputs, sizes)
        ]

    def _inputs_of(self, request: Any) -> dict[str, npt.NDArray[Any]]:
        return {
            name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
            for name in self.input_names
        }

    def finalize(self) -> None:
        self.request = None
        self.compiled = None


def _concatenate(arrays: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    # A single request needs no copy; several are joined into one batch for one inference.
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
