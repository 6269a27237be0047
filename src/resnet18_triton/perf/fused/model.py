"""Measurement model, not served by the product: decode + preprocess + ONNX Runtime in one
Python-backend process (no ensemble, no second stub), to measure what the preprocessing hop costs.

``perf.fused_experiment`` copies this file beside the repository's own preprocessing
``model.py`` (as ``preprocess_impl.py``) and an ONNX file; the config gives ``threads``. Input
``IMAGE`` (encoded bytes, like the ensemble), output ``probabilities``. Bad input fails the whole
``execute`` (an experiment: it is only fed good JPEGs).
"""

import importlib.util
import json
import os
import sys

import numpy as np
import onnxruntime as ort

try:  # Present inside the Triton Python-backend stub only.
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover
    pb_utils = None

_HERE = os.path.dirname(__file__)


def _load_preprocessing():
    spec = importlib.util.spec_from_file_location(
        "preprocess_impl", os.path.join(_HERE, "preprocess_impl.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["preprocess_impl"] = module  # its dataclasses look themselves up here
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(config["parameters"]["threads"]["string_value"])
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            os.path.join(_HERE, "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.preprocessing = _load_preprocessing()

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, "IMAGE").as_numpy() for r in requests]
        pixels = self.preprocessing.preprocess_batch(np.concatenate(arrays, axis=0))
        probabilities = self.session.run(["probabilities"], {"input": pixels})[0]
        responses, start = [], 0
        for array in arrays:
            end = start + array.shape[0]
            tensor = pb_utils.Tensor("probabilities", probabilities[start:end])
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start = end
        return responses
