"""The exported graph's normalisation prefix: uint8 pixels in, torchvision's float arithmetic.

A small seeded convolutional classifier goes through the real ``export_onnx``. What the prefix
must give: in PyTorch, exactly the tensor torchvision's ``ToTensor`` + ``Normalize`` computes; in
ONNX Runtime, exactly the logits the same network gives on that float tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torchvision import transforms

from resnet18_triton.contract import CHANNELS, IMAGE_SIZE, NUM_CLASSES, ONNX_INPUT, ONNX_OUTPUT
from resnet18_triton.errors import ExportError
from resnet18_triton.export.onnx_export import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalized,
    export_onnx,
)
from resnet18_triton.export.quantize import prefix_nodes
from tests.support import gradient_image, preprocess_module

OTHER_MEAN = (0.5, 0.25, 0.125)
OTHER_STD = (0.5, 0.3, 0.2)


def small_conv_classifier(seed: int = 0) -> torch.nn.Module:
    """Images -> 1000 logits: a strided conv, global pooling, a linear layer (seeded weights)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(CHANNELS, 8, kernel_size=7, stride=4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, NUM_CLASSES),
    ).eval()


def random_pixels(batch: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, CHANNELS, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)


def torchvision_normalised(pixels: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """What torchvision's ToTensor + Normalize compute from these pixels (float32)."""
    to_tensor = torch.from_numpy(pixels).to(torch.float32).div(255)  # ToTensor's arithmetic
    return transforms.Normalize(mean, std)(to_tensor).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    model = small_conv_classifier()
    return model, export_onnx(model, tmp_path_factory.mktemp("prefix") / "model.onnx")


def test_prefix_gives_exactly_the_torchvision_tensor_for_a_served_image() -> None:
    image = gradient_image(500, 375, seed=3)
    pixels = preprocess_module().preprocess_image(image)
    cropped = transforms.CenterCrop(IMAGE_SIZE)(transforms.Resize(256)(image))
    expected = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)(transforms.ToTensor()(cropped))
    prefix = Normalized(torch.nn.Identity())
    with torch.inference_mode():
        actual = prefix(torch.from_numpy(np.ascontiguousarray(pixels))[None])[0]
    assert pixels.dtype == np.uint8
    np.testing.assert_array_equal(actual.numpy(), expected.numpy())


def test_uint8_model_gives_the_same_pytorch_logits_as_float_normalised_input() -> None:
    model = small_conv_classifier()
    pixels = random_pixels(3)
    with torch.inference_mode():
        from_pixels = Normalized(model)(torch.from_numpy(pixels)).numpy()
        from_floats = model(torch.from_numpy(torchvision_normalised(pixels))).numpy()
    np.testing.assert_array_equal(from_pixels, from_floats)


@pytest.mark.slow
def test_graph_takes_uint8_and_starts_with_cast_div_sub_div(exported) -> None:
    _model, path = exported
    graph = onnx.load(str(path)).graph
    (value,) = graph.input
    assert value.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [node.op_type for node in prefix_nodes(graph)] == ["Cast", "Div", "Sub", "Div"]


@pytest.mark.slow
def test_onnx_runtime_logits_from_uint8_equal_those_from_the_float_tensor(exported) -> None:
    """Bit for bit: the graph without its prefix, fed torchvision's float tensor, gives the same
    logits as the whole graph fed the pixels."""
    _model, path = exported
    model = onnx.load(str(path))
    prefix = prefix_nodes(model.graph)
    normalised_name = prefix[-1].output[0]
    for node in prefix:
        model.graph.node.remove(node)
    (value,) = model.graph.input
    value.name = normalised_name
    value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    float_session = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    uint8_session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = random_pixels(4)
    (from_pixels,) = uint8_session.run([ONNX_OUTPUT], {ONNX_INPUT: pixels})
    (from_floats,) = float_session.run(
        [ONNX_OUTPUT], {normalised_name: torchvision_normalised(pixels)}
    )
    np.testing.assert_array_equal(from_pixels, from_floats)


@pytest.mark.slow
def test_mean_and_std_given_to_export_are_the_graphs(tmp_path: Path) -> None:
    model = small_conv_classifier(seed=2)
    path = export_onnx(model, tmp_path / "model.onnx", mean=OTHER_MEAN, std=OTHER_STD)
    pixels = random_pixels(2, seed=5)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run([ONNX_OUTPUT], {ONNX_INPUT: pixels})
    with torch.inference_mode():
        expected = model(torch.from_numpy(torchvision_normalised(pixels, OTHER_MEAN, OTHER_STD)))
    np.testing.assert_allclose(logits, expected.numpy(), rtol=0, atol=1e-5)
    with torch.inference_mode():
        imagenet = model(torch.from_numpy(torchvision_normalised(pixels))).numpy()
    assert np.abs(logits - imagenet).max() > 1e-2  # the statistics really changed the answer
    metadata = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
    assert json.loads(metadata["normalize_mean"]) == list(OTHER_MEAN)
    assert json.loads(metadata["normalize_std"]) == list(OTHER_STD)


@pytest.mark.parametrize(
    "mean, std, fragment",
    [
        ((0.5, 0.5), IMAGENET_STD, "one value per channel"),
        (IMAGENET_MEAN, (0.2, 0.0, 0.2), "must be positive"),
    ],
)
def test_export_refuses_statistics_it_cannot_use(tmp_path: Path, mean, std, fragment) -> None:
    with pytest.raises(ExportError, match=fragment):
        export_onnx(small_conv_classifier(), tmp_path / "model.onnx", mean=mean, std=std)
    assert not (tmp_path / "model.onnx").exists()
