"""Triton Python-backend model: encoded image bytes -> labelled class probabilities, in one process.

The INT8 ensemble's two steps run in one model instance: the preprocessing decodes the batch's
images, and ONNX Runtime runs the INT8 classifier on them in the same process. The pixels come
from the same preprocessing code and the probabilities from the same ONNX file as the ensemble's,
so both answer the same; this one skips the second stub, the pixel tensor's trip through the
server and the ensemble scheduler (docs/performance.md measures what that saves).

``resnet18-triton quantize`` writes this file into ``<repo>/<NAME>_int8_fused/1/`` beside:

- ``preprocessing.py``: the preprocess model's ``model.py`` (decode, limits, transform);
- ``onnxruntime_engine.py``: the Python-based ONNX Runtime backend (session options from the
  config's ``parameters``, batched runs that fall back to one run per request);
- ``model.onnx``: the INT8 classifier's file.

The config carries the preprocessing parameters (limits, transform) and the ONNX Runtime ones
(threads, arena, spinning), as the two steps' configs do. Each request is answered on its own: an
image that is refused fails its request only (INVALID_ARG, HTTP 400), and the other requests of
the batch still run. Like the preprocess model, this directory is self-contained (Pillow, NumPy,
ONNX Runtime) and runs unchanged in the official Triton container.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

try:  # Present inside the Triton Python-backend stub; absent when unit tests import this file.
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - exercised only outside Triton
    pb_utils = None

HERE = os.path.dirname(os.path.abspath(__file__))
ONNX_FILENAME = "model.onnx"
# The classifier output this model answers with (the graph also has ``logits``).
DEFAULT_ONNX_OUTPUT = "probabilities"


def load_sibling(filename: str, module_name: str, directory: str = HERE) -> ModuleType:
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


def _parameter(model_config: dict, key: str) -> str:
    return model_config.get("parameters", {}).get(key, {}).get("string_value", "").strip()


class TritonPythonModel:
    """One ONNX Runtime session per instance; preprocessing and inference share the batch."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        directory = os.path.join(args["model_repository"], args["model_version"])
        self.preprocessing = load_sibling("preprocessing.py", "fused_preprocessing", directory)
        self.engine = load_sibling("onnxruntime_engine.py", "fused_onnxruntime_engine", directory)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.limits = self.preprocessing.limits_from_config(config)
        self.transform = self.preprocessing.transform_from_config(config)
        self.draft_min_size = int(_parameter(config, "jpeg_draft_min_size") or 0)
        # As in the preprocess model: Pillow's own bomb check follows the explicit limit.
        Image.MAX_IMAGE_PIXELS = self.limits.max_image_pixels
        self.session = ort.InferenceSession(
            os.path.join(directory, ONNX_FILENAME),
            sess_options=self.engine.session_options(config),
            providers=["CPUExecutionProvider"],
        )
        self.run_options = self.engine.run_options(config)
        self.onnx_input = self.session.get_inputs()[0].name
        self.onnx_output = _parameter(config, "onnx_output") or DEFAULT_ONNX_OUTPUT

    def execute(self, requests: list) -> list:
        answers: list[Any] = [None] * len(requests)
        feeds, positions = [], []
        for position, request in enumerate(requests):
            pixels, failure = self._preprocess(request)
            if failure is not None:
                answers[position] = self.preprocessing._error_response(*failure)
            else:
                feeds.append({self.onnx_input: pixels})
                positions.append(position)
        if feeds:
            outcomes = self.engine.run_requests(self._run, feeds)
            for position, outcome in zip(positions, outcomes, strict=True):
                answers[position] = self._response(outcome)
        return answers

    def _preprocess(self, request: Any) -> tuple[np.ndarray | None, tuple[str, str] | None]:
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor is None:
            return None, (f"missing input '{self.input_name}'", "INVALID_ARG")
        return self.preprocessing.preprocess_outcome(
            tensor.as_numpy(), self.limits, self.draft_min_size, self.transform
        )

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run([self.onnx_output], feeds, self.run_options)

    def _response(self, outcome: list[np.ndarray] | str) -> Any:
        if isinstance(outcome, str):
            return self.preprocessing._error_response(outcome, "INTERNAL")
        tensor = pb_utils.Tensor(self.output_name, np.ascontiguousarray(outcome[0]))
        return pb_utils.InferenceResponse(output_tensors=[tensor])

    def finalize(self) -> None:
        self.session = None
