"""The softmax inside the exported ONNX graph (it replaced the Python ``postprocess`` model).

A small seeded classifier (average pooling + one linear layer: seconds to export, unlike ResNet-18)
goes through the real ``export_onnx`` with both exporters; ONNX Runtime's ``probabilities`` must
equal a float64 softmax of its own ``logits`` on batch sizes other than the export example's, also
for logits in the thousands, where a naive float32 ``exp`` overflows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from resnet18_triton.contract import (
    CHANNELS,
    IMAGE_SIZE,
    NUM_CLASSES,
    ONNX_INPUT,
    ONNX_OUTPUTS,
)
from resnet18_triton.export.onnx_export import export_onnx

# The TorchScript exporter (``--opset 17``) is deprecated upstream; testing it on purpose.
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:torch.onnx.*",
    "ignore:You are using the legacy TorchScript:DeprecationWarning",
)

ATOL = 1e-6
BATCH_SIZES = (1, 3, 5)
EXPORTERS = {"dynamo": {"opset": 18, "dynamo": True}, "torchscript": {"opset": 17, "dynamo": False}}


def small_classifier(seed: int, scale: float) -> torch.nn.Module:
    """Images -> 1000 logits of about ``scale``: 4x4 average pooling, then a seeded linear layer."""
    generator = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(CHANNELS * 16, NUM_CLASSES)
    with torch.no_grad():
        # Pooled standard-normal images are ~N(0, 1/56): these weights make W @ x ~N(0, scale).
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * 8 * scale)
        linear.bias.copy_(torch.randn(NUM_CLASSES, generator=generator) * scale)
    return torch.nn.Sequential(torch.nn.AvgPool2d(IMAGE_SIZE // 4), torch.nn.Flatten(), linear)


def float64_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module", params=list(EXPORTERS))
def exporter(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize("scale", [1.0, 5000.0], ids=["ordinary", "huge_logits"])
@pytest.mark.slow
def test_probabilities_output_is_the_softmax_of_the_logits_output(
    tmp_path: Path, exporter: str, scale: float
) -> None:
    path = export_onnx(
        small_classifier(seed=0, scale=scale), tmp_path / "model.onnx", **EXPORTERS[exporter]
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == list(ONNX_OUTPUTS)
    rng = np.random.default_rng(1)
    for batch_size in BATCH_SIZES:
        images = rng.integers(0, 256, (batch_size, CHANNELS, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        logits, probabilities = session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: images})
        assert logits.shape == probabilities.shape == (batch_size, NUM_CLASSES)
        assert probabilities.dtype == np.float32
        assert np.isfinite(probabilities).all()
        assert np.abs(logits).max() > scale / 2  # the logits really are of the intended size
        np.testing.assert_allclose(probabilities, float64_softmax(logits), rtol=0, atol=ATOL)


@pytest.mark.slow
def test_both_outputs_have_the_dynamic_batch_axis(tmp_path: Path, exporter: str) -> None:
    path = export_onnx(
        small_classifier(seed=0, scale=1.0), tmp_path / "model.onnx", **EXPORTERS[exporter]
    )
    graph = onnx.load(str(path)).graph

    def dims(value: onnx.ValueInfoProto) -> list[int | str]:
        return [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]

    (input_dims,) = [dims(value) for value in graph.input]
    batch = input_dims[0]
    assert isinstance(batch, str) and batch  # symbolic
    assert {output.name: dims(output) for output in graph.output} == {
        name: [batch, NUM_CLASSES] for name in ONNX_OUTPUTS
    }
    # An ordinary Softmax node computes the probabilities: exported, not hand-edited.
    assert [node.op_type for node in graph.node].count("Softmax") == 1
