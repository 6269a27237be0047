"""Bad input gets a clear 400 naming the problem, and the server stays ready for good requests."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from resnet18_triton import contract
from tests.support import encode, gradient_image

GOOD = encode(gradient_image(320, 240, seed=9), "JPEG")


def infer_images(client, images: list[bytes]):
    data = httpclient.InferInput(contract.ENSEMBLE_INPUT, [len(images), 1], "BYTES")
    data.set_data_from_numpy(np.array([[image] for image in images], dtype=object))
    return client.infer(contract.ENSEMBLE_MODEL, [data])


@pytest.mark.parametrize(
    "images, fragment",
    [
        ([b""], "empty image"),
        ([b"<html>hello</html>"], "cannot identify an image"),
        ([GOOD[:500]], "truncated"),
        ([GOOD, b"garbage", GOOD], "image 2 of 3"),
    ],
)
def test_bad_images_get_400_with_reason(http_client, images: list[bytes], fragment: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        infer_images(http_client, images)
    assert caught.value.status() == "400"
    assert fragment in caught.value.message()
    assert "Traceback" not in caught.value.message()
    assert http_client.is_server_ready()
    assert infer_images(http_client, [GOOD]).as_numpy(contract.ENSEMBLE_OUTPUT).shape == (1, 1000)


@pytest.mark.parametrize(
    ("dtype", "name"),
    [(np.int32, "INT32"), (np.float32, "FP32")],
    ids=["int32", "fp32 of the old raw contract"],
)
def test_a_raw_tensor_of_another_dtype_is_refused_naming_it_and_uint8(
    http_client, dtype: type, name: str
) -> None:
    data = httpclient.InferInput(contract.ONNX_INPUT, [1, 3, 224, 224], name)
    data.set_data_from_numpy(np.zeros((1, 3, 224, 224), dtype=dtype))
    with pytest.raises(InferenceServerException) as caught:
        http_client.infer(contract.ONNX_MODEL, [data])
    assert name in caught.value.message() and "UINT8" in caught.value.message()
    assert http_client.is_server_ready()


def test_wrong_shape_and_name_are_refused(http_client) -> None:
    shape = httpclient.InferInput(contract.ONNX_INPUT, [1, 3, 100, 100], "UINT8")
    shape.set_data_from_numpy(np.zeros((1, 3, 100, 100), dtype=np.uint8))
    with pytest.raises(InferenceServerException, match="shape"):
        http_client.infer(contract.ONNX_MODEL, [shape])
    name = httpclient.InferInput("not_the_input", [1, 1], "BYTES")
    name.set_data_from_numpy(np.array([[GOOD]], dtype=object))
    with pytest.raises(InferenceServerException, match="not_the_input"):
        http_client.infer(contract.ENSEMBLE_MODEL, [name])
    assert http_client.is_server_ready()
