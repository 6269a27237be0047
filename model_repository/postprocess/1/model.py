"""Triton Python-backend model: ResNet-18 logits -> softmax probabilities.

The ensemble's last step. Its output carries the ImageNet label file, so that Triton's
classification extension (``class_count=k``) answers ``probability:index:label`` for the top k.
Self-contained (NumPy only) so it runs unchanged in the official container.
"""

from __future__ import annotations

import json

import numpy as np

try:  # Present inside the Triton Python-backend stub; absent when unit tests import this file.
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - exercised only outside Triton
    pb_utils = None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, in float32 like torch.softmax."""
    logits = logits.astype(np.float32, copy=False)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


class TritonPythonModel:
    """Applies softmax to every request of one ``execute`` call."""

    def initialize(self, args: dict) -> None:
        model_config = json.loads(args["model_config"])
        self.input_name = model_config["input"][0]["name"]
        self.output_name = model_config["output"][0]["name"]

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            probabilities = pb_utils.Tensor(self.output_name, softmax(logits))
            responses.append(pb_utils.InferenceResponse(output_tensors=[probabilities]))
        return responses
