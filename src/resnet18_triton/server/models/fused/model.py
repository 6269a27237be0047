"""Triton Python-backend model: encoded image bytes -> labelled class probabilities, in one process.

A classifier's ensemble, or a variant's (preprocess -> classifier), run by one model instance: the
preprocessing decodes the batch's images and the engine runs the classifier on them in the same
process. The pixels come from the same preprocessing code and the probabilities from the same
model file as the ensemble's, so both answer the same; this one skips the second stub, the pixel
tensor's trip through the server and the ensemble scheduler (docs/performance.md measures what
that saves).

``resnet18-triton export --fused`` (FP32, ONNX Runtime), ``resnet18-triton quantize`` (INT8,
ONNX Runtime) and ``resnet18-triton openvino`` (OpenVINO) write this file into
``<repo>/<NAME>_fp32_fused/1/``, ``<repo>/<NAME>_int8_fused/1/`` or
``<repo>/<NAME>_openvino_fused/1/`` beside:

- ``preprocessing.py``: the preprocess model's ``model.py`` (decode, limits, transform);
- ``<engine>_engine.py``: the Python-based backend of the engine the config's ``engine``
  parameter names (``onnxruntime`` or ``openvino``), for its session or compile options;
- ``model.onnx``: the (variant) classifier's model file.

The config carries the preprocessing parameters (limits, transform) and the engine's (threads,
precision, ...), as the two steps' configs do. Each request is answered on its own: a refused
image fails its request only (INVALID_ARG, HTTP 400), and the other requests of the batch still
run; if the batched inference fails, each request is run alone, so only one that cannot run gets
an error. Like the preprocess model, this directory is self-contained (Pillow, NumPy and the
engine's package) and runs unchanged in the official Triton container.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import numpy.typing as npt

try:  # Present inside the Triton Python-backend stub; absent when unit tests import this file.
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - exercised only outside Triton
    pb_utils = None

MODEL_FILENAME = "model.onnx"
DEFAULT_ENGINE = "onnxruntime"
# The classifier output this model answers with (the graph also has ``logits``).
DEFAULT_OUTPUT = "probabilities"

# A Triton model config as JSON (``args["model_config"]`` parsed), and the ``args`` of
# ``initialize``.
ModelConfig = dict[str, Any]
Args = dict[str, str]


def load_sibling(filename: str, module_name: str, directory: str) -> ModuleType:
    """Import ``directory/filename`` (a file beside this one, not part of any package).

    The package's ``layout.load_model_module`` does the same, but this file cannot import the
    package: in the official container only the model directory is there."""
    spec = importlib.util.spec_from_file_location(module_name, os.path.join(directory, filename))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {filename} from {directory}")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: dataclasses look their module up in sys.modules.
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _parameter(model_config: ModelConfig, key: str) -> str:
    value: str = model_config.get("parameters", {}).get(key, {}).get("string_value", "").strip()
    return value


class OnnxRuntimeEngine:
    """One ONNX Runtime session, with the options the Python-based backend derives."""

    def __init__(self, backend: ModuleType, path: str, config: ModelConfig, output: str) -> None:
        self.session = backend.ort.InferenceSession(
            path, sess_options=backend.session_options(config), providers=["CPUExecutionProvider"]
        )
        self.options = backend.run_options(config)
        self.input = self.session.get_inputs()[0].name
        self.output = output

    def run(self, pixels: npt.NDArray[np.uint8]) -> npt.NDArray[Any]:
        outputs: list[npt.NDArray[Any]] = self.session.run(
            [self.output], {self.input: pixels}, self.options
        )
        return outputs[0]


class OpenVinoEngine:
    """One compiled model and infer request, compiled as the Python-based backend compiles."""

    def __init__(self, backend: ModuleType, path: str, config: ModelConfig, output: str) -> None:
        compiled = backend.compile_model(path, config)
        self.backend = backend
        self.request = compiled.create_infer_request()
        self.input = compiled.inputs[0].get_any_name()
        self.output = output

    def run(self, pixels: npt.NDArray[np.uint8]) -> npt.NDArray[Any]:
        outputs: list[npt.NDArray[Any]] = self.backend.infer(
            self.request, {self.input: pixels}, [self.output]
        )
        return outputs[0]


Engine = OnnxRuntimeEngine | OpenVinoEngine
ENGINES: dict[str, type[Engine]] = {"onnxruntime": OnnxRuntimeEngine, "openvino": OpenVinoEngine}


def run_each(
    run: Callable[[npt.NDArray[np.uint8]], npt.NDArray[Any]],
    batches: list[npt.NDArray[np.uint8]],
    engine: str,
) -> list[npt.NDArray[Any] | str]:
    """The output of each request's batch: all as one run; if that fails, each alone, so only a
    request that cannot run gets an error (its message)."""
    try:
        joined = batches[0] if len(batches) == 1 else np.concatenate(batches)
        output = run(joined)
        bounds = np.cumsum([0, *(len(batch) for batch in batches)])
        return [output[start:end] for start, end in itertools.pairwise(bounds)]
    except Exception as error:
        if len(batches) == 1:
            return [f"{engine} failed: {error}"]
    return [outcome for batch in batches for outcome in run_each(run, [batch], engine)]


class TritonPythonModel:
    """One engine per instance; preprocessing and inference share the batch."""

    def initialize(self, args: Args) -> None:
        config = json.loads(args["model_config"])
        directory = os.path.join(args["model_repository"], args["model_version"])
        self.engine_name = _parameter(config, "engine") or DEFAULT_ENGINE
        if self.engine_name not in ENGINES:
            raise pb_utils.TritonModelException(
                f"unknown engine {self.engine_name!r}: expected one of {', '.join(ENGINES)}"
            )
        self.preprocessing = load_sibling("preprocessing.py", "fused_preprocessing", directory)
        backend = load_sibling(
            f"{self.engine_name}_engine.py", f"fused_{self.engine_name}_engine", directory
        )
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.limits = self.preprocessing.limits_from_config(config)
        self.transform = self.preprocessing.transform_from_config(config)
        self.draft_min_size = int(_parameter(config, "jpeg_draft_min_size") or 0)
        # As in the preprocess model: Pillow's own bomb check follows the explicit limit.
        Image.MAX_IMAGE_PIXELS = self.limits.max_image_pixels
        output = _parameter(config, "classifier_output") or DEFAULT_OUTPUT
        path = os.path.join(directory, MODEL_FILENAME)
        try:
            self.engine = ENGINES[self.engine_name](backend, path, config, output)
        except getattr(backend, "ConfigError", ()) as error:
            raise pb_utils.TritonModelException(str(error)) from None

    def execute(self, requests: list[Any]) -> list[Any]:
        answers: list[Any] = [None] * len(requests)
        batches: list[npt.NDArray[np.uint8]] = []
        positions: list[int] = []
        for position, request in enumerate(requests):
            pixels, failure = self._preprocess(request)
            if failure is not None:
                answers[position] = self.preprocessing._error_response(*failure)
            else:
                # preprocess_outcome gives pixels exactly when there is no failure.
                batches.append(cast("npt.NDArray[np.uint8]", pixels))
                positions.append(position)
        if batches:
            outcomes = run_each(self.engine.run, batches, self.engine_name)
            for position, outcome in zip(positions, outcomes, strict=True):
                answers[position] = self._response(outcome)
        return answers

    def _preprocess(
        self, request: Any
    ) -> tuple[npt.NDArray[np.uint8] | None, tuple[str, str] | None]:
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor is None:
            return None, (f"missing input '{self.input_name}'", "INVALID_ARG")
        outcome: tuple[npt.NDArray[np.uint8] | None, tuple[str, str] | None]
        outcome = self.preprocessing.preprocess_outcome(
            tensor.as_numpy(), self.limits, self.draft_min_size, self.transform
        )
        return outcome

    def _response(self, outcome: npt.NDArray[Any] | str) -> Any:
        if isinstance(outcome, str):
            return self.preprocessing._error_response(outcome, "INTERNAL")
        tensor = pb_utils.Tensor(self.output_name, np.ascontiguousarray(outcome))
        return pb_utils.InferenceResponse(output_tensors=[tensor])

    def finalize(self) -> None:
        self.engine = None  # type: ignore[assignment]  # released at unload; never run again
