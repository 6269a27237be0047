"""The INT8 variant served next to FP32 by the real Triton server.

The model is the digits-fitted ResNet-18 of tests/unit/test_quantize.py (a seeded random backbone
with a classifier head fitted on scikit-learn's digits; see that module for why top-1 agreement
means something on it), exported and quantised by the real ``quantize`` command. Its own server:
``serve`` loads ``resnet18_int8``, ``resnet18_int8_ensemble`` and ``resnet18_int8_fused`` because
the repository holds them.

The fused model's reference is independent of the server's code: torchvision's resize and crop
(``TorchReference.pixels``) fed to ONNX Runtime running the INT8 file in this process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from resnet18_triton import contract
from resnet18_triton.contract import INT8_ENSEMBLE_MODEL, INT8_FUSED_MODEL, INT8_MODEL
from resnet18_triton.export.fidelity import run_logits, session, softmax
from resnet18_triton.export.quantize import load_preprocess_module
from resnet18_triton.perf import harness
from resnet18_triton.repository.layout import onnx_model_path, served_models
from resnet18_triton.server.embedded import EmbeddedServer
from tests.corpus import build_corpus
from tests.digits import digits_int8_repository, digits_model
from tests.support import PROBABILITY_ATOL, TorchReference, classify_ensemble

IMAGES = 8


@pytest.fixture(scope="module")
def int8_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedServer, Path]]:
    repo, _ = digits_int8_repository(tmp_path_factory.mktemp("int8"))
    options = harness.local_options(repo, models=served_models(repo), exit_timeout_s=5)
    with harness.local_server(options) as running:
        yield running, repo


def test_int8_models_are_served_next_to_fp32(int8_server) -> None:
    server, repo = int8_server
    assert served_models(repo)[-3:] == (INT8_MODEL, INT8_ENSEMBLE_MODEL, INT8_FUSED_MODEL)
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.url)
    try:
        for model in (*contract.SERVED_MODELS, INT8_MODEL, INT8_ENSEMBLE_MODEL, INT8_FUSED_MODEL):
            assert client.is_model_ready(model), model
    finally:
        client.close()


def test_served_int8_matches_in_process_int8_and_agrees_with_fp32(int8_server) -> None:
    server, repo = int8_server
    _, splits, _ = digits_model()
    images = splits["held_out"][0][:IMAGES]
    int8 = classify_ensemble(server.url, INT8_ENSEMBLE_MODEL, images)
    fp32 = classify_ensemble(server.url, contract.ENSEMBLE_MODEL, images)
    preprocess = load_preprocess_module(repo)
    batch = np.stack([preprocess.preprocess_bytes(data) for data in images])
    expected = softmax(run_logits(session(onnx_model_path(repo, INT8_MODEL)), batch))
    # Same file, same ONNX Runtime; batch composition may change INT8 kernels' rounding slightly.
    np.testing.assert_allclose(int8, expected, atol=1e-4)
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 7 / 8
    assert not np.array_equal(int8, fp32)  # it really is another model


def _int8_on_reference_pixels(repo: Path, images: list[bytes]) -> np.ndarray:
    """ONNX Runtime INT8 in this process on torchvision's pixels, one image per run (as served)."""
    int8 = session(onnx_model_path(repo, INT8_MODEL))
    reference = TorchReference(model=digits_model()[0])
    return np.concatenate(
        [
            int8.run([contract.ONNX_PROBABILITIES], {contract.ONNX_INPUT: pixels[None]})[0]
            for pixels in map(reference.pixels, images)
        ]
    )


def test_fused_int8_answers_like_onnx_runtime_on_torchvision_pixels(int8_server) -> None:
    """Digits and every unusual-but-good image of the corpus (CMYK, palette, 16-bit, EXIF,
    animated, ...), one request each."""
    server, repo = int8_server
    _, splits, _ = digits_model()
    cases = {f"digit{i}": data for i, data in enumerate(splits["held_out"][0][:4])}
    cases.update({case.name: case.data for case in build_corpus() if case.good})
    served = np.concatenate(
        [classify_ensemble(server.url, INT8_FUSED_MODEL, [d]) for d in cases.values()]
    )
    expected = _int8_on_reference_pixels(repo, list(cases.values()))
    distances = np.abs(served - expected).max(axis=1)
    wrong = {name: f"{d:.2e}" for name, d in zip(cases, distances, strict=True) if d > 1e-6}
    assert not wrong, f"differ from ONNX Runtime on torchvision's pixels: {wrong}"
    assert PROBABILITY_ATOL == 1e-6  # the bar the FP32 path meets against PyTorch


def test_fused_and_ensemble_int8_give_the_same_answers(int8_server) -> None:
    server, _ = int8_server
    images = digits_model()[1]["held_out"][0][:IMAGES]
    fused = classify_ensemble(server.url, INT8_FUSED_MODEL, images)
    ensemble = classify_ensemble(server.url, INT8_ENSEMBLE_MODEL, images)
    np.testing.assert_allclose(fused, ensemble, atol=1e-6)


def test_a_bad_image_fails_only_its_own_request_in_a_fused_batch(int8_server) -> None:
    """Eight concurrent requests, so dynamic batching puts them in one ``execute``; the bad one
    gets a 400 naming the problem, the seven others their answers."""
    from concurrent.futures import ThreadPoolExecutor

    from tritonclient.utils import InferenceServerException

    server, repo = int8_server
    images = digits_model()[1]["held_out"][0][:7]
    expected = _int8_on_reference_pixels(repo, images)
    requests: list[bytes] = [*images[:3], b"not an image at all", *images[3:]]

    def call(data: bytes) -> np.ndarray | InferenceServerException:
        try:
            return classify_ensemble(server.url, INT8_FUSED_MODEL, [data])
        except InferenceServerException as error:
            return error

    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(call, requests))
    failure = results.pop(3)
    assert isinstance(failure, InferenceServerException), failure
    assert failure.status() == "400" and "cannot identify an image" in failure.message()
    assert "Traceback" not in failure.message()
    answers = np.concatenate(results)  # raises if any good request failed
    np.testing.assert_allclose(answers, expected, atol=1e-4)  # batch composition may vary
    assert server.is_ready()
