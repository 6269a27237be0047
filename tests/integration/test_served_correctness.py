"""Served answers against a pure PyTorch reference: same weights, torchvision transforms,
softmax."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient

from resnet18_triton import contract
from tests.support import (
    LOGIT_ATOL,
    PROBABILITY_ATOL,
    TorchReference,
    normalised,
    varied_images,
)

IMAGES = varied_images()


def serve_probabilities(client, images: list[bytes]) -> np.ndarray:
    data = httpclient.InferInput(contract.ENSEMBLE_INPUT, [len(images), 1], "BYTES")
    data.set_data_from_numpy(np.array([[image] for image in images], dtype=object))
    result = client.infer(
        contract.ENSEMBLE_MODEL,
        [data],
        outputs=[httpclient.InferRequestedOutput(contract.ENSEMBLE_OUTPUT)],
    )
    return result.as_numpy(contract.ENSEMBLE_OUTPUT)


def assert_same_answer(served: np.ndarray, expected: np.ndarray) -> None:
    assert served.shape == expected.shape == (1000,)
    assert int(served.argmax()) == int(expected.argmax()), "top-1 differs"
    assert list(np.argsort(-served)[:5]) == list(np.argsort(-expected)[:5]), "top-5 differs"
    np.testing.assert_allclose(served, expected, rtol=0, atol=PROBABILITY_ATOL)


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_ensemble_matches_pytorch(http_client, reference: TorchReference, name: str) -> None:
    served = serve_probabilities(http_client, [IMAGES[name]])[0]
    assert_same_answer(served, reference.probabilities([IMAGES[name]])[0])


def test_batched_request_answers_each_image_in_order(
    http_client, reference: TorchReference
) -> None:
    names = sorted(IMAGES)[:6]
    images = [IMAGES[name] for name in names]
    served = serve_probabilities(http_client, images)
    expected = reference.probabilities(images)
    for served_row, expected_row in zip(served, expected, strict=True):
        assert_same_answer(served_row, expected_row)
    # The comparison would notice two answers swapped: images are far apart next to the tolerance.
    assert np.abs(expected[0] - expected[1]).max() > 100 * PROBABILITY_ATOL


def assert_labelled_top_k(
    client, model: str, data, output: str, expected: np.ndarray, k: int
) -> None:
    """Ask the classification extension for ``output``'s top ``k``: indices, labels and
    probabilities must be those of ``expected`` (the reference's probabilities)."""
    from resnet18_triton.export.weights import imagenet_categories

    wanted = httpclient.InferRequestedOutput(output, class_count=k)
    rows = client.infer(model, [data], outputs=[wanted]).as_numpy(output)[0]
    parsed = [row.decode().split(":", 2) for row in rows]
    categories = imagenet_categories()
    assert [int(index) for _, index, _ in parsed] == list(np.argsort(-expected)[:k])
    for probability, index, label in parsed:
        assert label == categories[int(index)]
        assert float(probability) == pytest.approx(expected[int(index)], abs=PROBABILITY_ATOL)


def ensemble_tensor(reference: TorchReference, image: bytes):
    """The ensemble's input: the encoded image."""
    data = httpclient.InferInput(contract.ENSEMBLE_INPUT, [1, 1], "BYTES")
    data.set_data_from_numpy(np.array([[image]], dtype=object))
    return data


def raw_tensor(reference: TorchReference, image: bytes):
    """The raw model's input: the reference's uint8 pixels of the image."""
    data = httpclient.InferInput(contract.ONNX_INPUT, [1, 3, 224, 224], "UINT8")
    data.set_data_from_numpy(reference.pixels(image)[None])
    return data


@pytest.mark.parametrize(
    ("model", "tensor", "output", "name", "k"),
    [
        (contract.ENSEMBLE_MODEL, ensemble_tensor, contract.ENSEMBLE_OUTPUT, "chelsea.png", 5),
        (contract.ONNX_MODEL, raw_tensor, contract.ONNX_PROBABILITIES, "coffee.png", 3),
    ],
    ids=["ensemble", "raw model's probabilities"],
)
def test_the_classification_extension_gives_the_labelled_top_k(
    http_client, reference: TorchReference, model, tensor, output, name, k
) -> None:
    """The classification extension (labels.txt) on the ensemble's output and on the raw
    model's probabilities output."""
    image = IMAGES[name]
    data = tensor(reference, image)
    expected = reference.probabilities([image])[0]
    assert_labelled_top_k(http_client, model, data, output, expected, k=k)


def test_raw_model_over_plain_kserve_json(url: str, reference: TorchReference) -> None:
    """No tritonclient: the v2 JSON protocol a stock client (curl) would use. Both outputs: the
    logits, and the probabilities the ONNX graph computes from them."""
    image = IMAGES["rocket.jpg"]
    pixels = reference.pixels(image)
    body = {
        "inputs": [
            {
                "name": contract.ONNX_INPUT,
                "shape": [1, 3, 224, 224],
                "datatype": "UINT8",
                "data": pixels.reshape(-1).tolist(),
            }
        ],
        "outputs": [{"name": name} for name in contract.ONNX_OUTPUTS],
    }
    request = urllib.request.Request(
        f"http://{url}/v2/models/{contract.ONNX_MODEL}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        answer = json.load(reply)
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert sorted(outputs) == sorted(contract.ONNX_OUTPUTS)
    assert all(output["shape"] == [1, 1000] for output in outputs.values())
    import torch

    logits = np.array(outputs[contract.ONNX_OUTPUT]["data"], dtype=np.float32)
    # The graph normalises the pixels: the reference's own float tensor gives the same logits.
    np.testing.assert_array_equal(normalised(pixels), reference.tensor(image).numpy())
    expected = reference.logits(torch.from_numpy(normalised(pixels)[None]))[0]
    np.testing.assert_allclose(logits, expected, atol=LOGIT_ATOL)
    assert int(np.argmax(logits)) == int(expected.argmax())
    probabilities = np.array(outputs[contract.ONNX_PROBABILITIES]["data"], dtype=np.float32)
    assert_same_answer(probabilities, reference.probabilities([image])[0])


def test_raw_model_metadata(http_client) -> None:
    metadata = http_client.get_model_metadata(contract.ONNX_MODEL)
    assert [i["name"] for i in metadata["inputs"]] == [contract.ONNX_INPUT]
    assert metadata["inputs"][0]["shape"] == [-1, 3, 224, 224]
    assert [o["name"] for o in metadata["outputs"]] == list(contract.ONNX_OUTPUTS)
    assert all(o["shape"] == [-1, 1000] for o in metadata["outputs"])
    config = http_client.get_model_config(contract.ONNX_MODEL)
    assert config["input"][0]["format"] == "FORMAT_NCHW"
    assert metadata["inputs"][0]["datatype"] == "UINT8"
    provenance = json.loads(config["parameters"][contract.PROVENANCE_PARAMETER]["string_value"])
    assert (provenance["source"], provenance["seed"]) == ("random", 0)
