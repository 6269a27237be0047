"""The preprocessing model's transform against torchvision's ResNet18_Weights transforms.

The model emits uint8 pixels; the exported graph's prefix (``export.onnx_export.Normalized``)
normalises them. Together they must give torchvision's float tensor exactly.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.support import encode, gradient_image, preprocess_module, varied_images

torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402
from torchvision.models import ResNet18_Weights  # noqa: E402

from resnet18_triton.export.onnx_export import Normalized  # noqa: E402

preprocess = preprocess_module()
REFERENCE = ResNet18_Weights.IMAGENET1K_V1.transforms()
IMAGES = varied_images()
GRAPH_PREFIX = Normalized(torch.nn.Identity())


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_pixels_normalised_by_the_graph_prefix_match_torchvision_transforms_exactly(
    name: str,
) -> None:
    data = IMAGES[name]
    expected = REFERENCE(Image.open(io.BytesIO(data)).convert("RGB")).numpy()
    served = preprocess.preprocess_bytes(data)
    assert served.shape == (3, 224, 224) and served.dtype == np.uint8
    with torch.inference_mode():
        normalised = GRAPH_PREFIX(torch.from_numpy(served)[None])[0].numpy()
    # Same Pillow resize, same float32 arithmetic: the tensors are identical, not merely close.
    np.testing.assert_array_equal(normalised, expected)


@pytest.mark.parametrize(
    "size", [(500, 375), (375, 500), (257, 1000), (256, 256), (224, 224), (7, 3)]
)
def test_resized_size_follows_torchvision(size: tuple[int, int]) -> None:
    from torchvision.transforms.functional import _compute_resized_output_size

    width, height = size
    expected_h, expected_w = _compute_resized_output_size((height, width), [256])
    assert preprocess.resized_size(width, height) == (expected_w, expected_h)


def test_batch_keeps_request_order() -> None:
    first, second = (encode(gradient_image(320, 240, seed), "PNG") for seed in (11, 12))
    batch = preprocess.preprocess_batch(np.array([[first], [second]], dtype=object))
    np.testing.assert_array_equal(batch[0], preprocess.preprocess_bytes(first))
    np.testing.assert_array_equal(batch[1], preprocess.preprocess_bytes(second))
    assert not np.array_equal(batch[0], batch[1])


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"", "empty image"),
        (b"<html><body>not an image</body></html>", "cannot identify an image"),
        (encode(gradient_image(64, 64, 1), "PNG")[:200], "truncated"),
        (encode(gradient_image(64, 64, 1), "JPEG")[:300], "truncated"),
    ],
)
def test_bad_bytes_are_rejected_with_a_reason(data: bytes, fragment: str) -> None:
    with pytest.raises(preprocess.ImageRejected, match=fragment):
        preprocess.preprocess_bytes(data)


def test_pixel_limit_is_checked_before_decoding() -> None:
    limits = preprocess.Limits(max_image_pixels=100 * 100)
    data = encode(gradient_image(101, 100, 1), "PNG")
    with pytest.raises(
        preprocess.ImageRejected, match="101x100 = 10100 pixels exceeds the limit of 10000"
    ):
        preprocess.decode_image(data, limits)


def test_byte_limit() -> None:
    with pytest.raises(preprocess.ImageRejected, match="exceeds the limit of 10 bytes"):
        preprocess.decode_image(b"x" * 11, preprocess.Limits(max_image_bytes=10))


def test_bad_image_in_a_batch_is_named_by_position() -> None:
    good = encode(gradient_image(64, 64, 1), "PNG")
    with pytest.raises(preprocess.ImageRejected, match="image 2 of 3: cannot identify"):
        preprocess.preprocess_batch(np.array([[good], [b"nope"], [good]], dtype=object))


def test_limits_come_from_model_config_parameters() -> None:
    config = {"parameters": {"max_image_pixels": {"string_value": "1234"}}}
    limits = preprocess.limits_from_config(config)
    assert limits.max_image_pixels == 1234
    assert limits.max_image_bytes == preprocess.DEFAULT_MAX_IMAGE_BYTES
