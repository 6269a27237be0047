"""A Python-based Triton backend named ``onnxruntime``: runs ``model.onnx`` with ONNX Runtime.

The ``nvidia-pytriton`` wheel ships the real Triton server with only the Python backend. Triton
serves every model whose config says ``backend: "onnxruntime"`` with
``<backend-directory>/onnxruntime/model.py`` when that file exists, so this file stands in for the
native ONNX Runtime backend of the official container. It reads the same ``config.pbtxt`` keys as
the native backend, so one model directory runs unchanged in both places:

- ``parameters``: ``intra_op_thread_count``, ``inter_op_thread_count``, ``execution_mode``
  ("0" sequential, "1" parallel), ``enable_mem_arena``, ``enable_mem_pattern``,
  ``memory.enable_memory_arena_shrinkage`` (all ``string_value``; absent or 0 thread counts mean
  ONNX Runtime's default);
- ``optimization { graph { level: N } }``: -1 basic, 1 extended, 2 disables all, otherwise all;
- ``default_model_filename`` (``model.onnx`` when empty).

All requests of one ``execute`` call (dynamic batching) run as one batched ``session.run``. When
that run fails, each request is run again on its own, so that only the request that cannot run
gets an error and the others of the batch are answered.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

if TYPE_CHECKING:
    import numpy.typing as npt

try:  # Present inside the Triton Python-backend stub.
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - only when unit tests import this file
    pb_utils = None

DEFAULT_MODEL_FILENAME = "model.onnx"

# A Triton model config as JSON (``args["model_config"]`` parsed), and the ``args`` of
# ``initialize``.
ModelConfig = dict[str, Any]
Args = dict[str, str]


def _parameter(model_config: ModelConfig, key: str) -> str | None:
    value: str | None = model_config.get("parameters", {}).get(key, {}).get("string_value")
    return value if value not in (None, "") else None


def _flag(model_config: ModelConfig, key: str) -> bool | None:
    value = _parameter(model_config, key)
    return None if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def graph_optimization_level(model_config: ModelConfig) -> ort.GraphOptimizationLevel:
    """Map Triton's ``optimization.graph.level`` the way the native backend does."""
    level = int(model_config.get("optimization", {}).get("graph", {}).get("level", 0) or 0)
    return {
        -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        2: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)


def session_options(model_config: ModelConfig) -> ort.SessionOptions:
    """Build ONNX Runtime session options from a Triton model config (as a JSON dict)."""
    options = ort.SessionOptions()
    intra = _parameter(model_config, "intra_op_thread_count")
    inter = _parameter(model_config, "inter_op_thread_count")
    if intra is not None:
        options.intra_op_num_threads = int(intra)
    if inter is not None:
        options.inter_op_num_threads = int(inter)
    if _parameter(model_config, "execution_mode") == "1":
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    else:
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    arena = _flag(model_config, "enable_mem_arena")
    if arena is not None:
        options.enable_cpu_mem_arena = arena
    pattern = _flag(model_config, "enable_mem_pattern")
    if pattern is not None:
        options.enable_mem_pattern = pattern
    options.graph_optimization_level = graph_optimization_level(model_config)
    # Session config entries (e.g. "session.intra_op.allow_spinning") pass straight through.
    for key, value in model_config.get("parameters", {}).items():
        if key.startswith("session."):
            options.add_session_config_entry(key, value.get("string_value", ""))
    return options


def run_options(model_config: ModelConfig) -> ort.RunOptions:
    options = ort.RunOptions()
    if _flag(model_config, "memory.enable_memory_arena_shrinkage"):
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def model_path(args: Args, model_config: ModelConfig) -> str:
    filename = model_config.get("default_model_filename") or DEFAULT_MODEL_FILENAME
    return os.path.join(args["model_repository"], args["model_version"], filename)


def split_batches(
    outputs: list[npt.NDArray[Any]], sizes: list[int]
) -> list[list[npt.NDArray[Any]]]:
    """Cut each batched output back into one slice per request, in request order."""
    bounds = np.cumsum([0, *sizes])
    return [[output[start:end] for output in outputs] for start, end in itertools.pairwise(bounds)]


Feeds = dict[str, "npt.NDArray[Any]"]
Outcome = list["npt.NDArray[Any]"] | str  # the outputs of one request, or why it failed


def run_requests(
    run: Callable[[Feeds], list[npt.NDArray[Any]]], per_request: list[Feeds]
) -> list[Outcome]:
    """Run all requests as one batch; if that fails, run each alone so only the bad one fails."""
    names = list(per_request[0])
    sizes = [len(feeds[names[0]]) for feeds in per_request]
    try:
        outputs = run({name: _concatenate([f[name] for f in per_request]) for name in names})
        return list(split_batches(outputs, sizes))
    except Exception as error:
        if len(per_request) == 1:
            return [f"ONNX Runtime failed: {error}"]
    return [outcome for feeds in per_request for outcome in run_requests(run, [feeds])]


class TritonPythonModel:
    """One ONNX Runtime session per model instance."""

    def initialize(self, args: Args) -> None:
        self.model_config = json.loads(args["model_config"])
        self.input_names = [tensor["name"] for tensor in self.model_config["input"]]
        self.output_names = [tensor["name"] for tensor in self.model_config["output"]]
        self.session = ort.InferenceSession(
            model_path(args, self.model_config),
            sess_options=session_options(self.model_config),
            providers=["CPUExecutionProvider"],
        )
        self.run_options = run_options(self.model_config)
        accelerators = self.model_config.get("optimization", {}).get("execution_accelerators", {})
        if accelerators.get("cpu_execution_accelerator"):
            # OpenVINO and friends are a feature of the container's native backend only.
            pb_utils.Logger.log_warn(
                "execution accelerators are ignored by the Python-based onnxruntime backend; "
                "running on ONNX Runtime's CPU provider (use the container for OpenVINO)"
            )

    def execute(self, requests: list[Any]) -> list[Any]:
        outcomes = run_requests(self._run, [self._inputs_of(request) for request in requests])
        return [self._response(outcome) for outcome in outcomes]

    def _run(self, feeds: Feeds) -> list[npt.NDArray[Any]]:
        outputs: list[npt.NDArray[Any]] = self.session.run(
            self.output_names, feeds, self.run_options
        )
        return outputs

    def _response(self, outcome: Outcome) -> Any:
        if isinstance(outcome, str):
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(outcome))
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(value))
                for name, value in zip(self.output_names, outcome, strict=True)
            ]
        )

    def _inputs_of(self, request: Any) -> Feeds:
        return {
            name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
            for name in self.input_names
        }

    def finalize(self) -> None:
        self.session = None


def _concatenate(arrays: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    # A single request needs no copy; several are joined into one batch for one session run.
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
