"""The INT8 variant served next to FP32 by the real Triton server.

The model is the digits-fitted ResNet-18 of tests/unit/test_quantize.py (a seeded random backbone
with a classifier head fitted on scikit-learn's digits; see that module for why top-1 agreement
means something on it), exported and quantised by the real ``quantize`` command. Its own server:
``serve`` loads ``resnet18_int8`` and ``resnet18_int8_ensemble`` because the repository holds them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from resnet18_triton import contract
from resnet18_triton.contract import INT8_ENSEMBLE_MODEL, INT8_MODEL
from resnet18_triton.export.fidelity import run_logits, session, softmax
from resnet18_triton.export.quantize import load_preprocess_module
from resnet18_triton.layout import onnx_model_path, served_models
from resnet18_triton.server.embedded import EmbeddedServer, ServerOptions, free_port
from tests.digits import digits_int8_repository, digits_model

IMAGES = 8


@pytest.fixture(scope="module")
def int8_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedServer, Path]]:
    repo, _ = digits_int8_repository(tmp_path_factory.mktemp("int8"))
    options = ServerOptions(
        repository=repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        models=served_models(repo),
        exit_timeout_s=5,
    )
    with EmbeddedServer(options) as running:
        yield running, repo


def _classify(url: str, model: str, images: list[bytes]) -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, network_timeout=120.0)
    try:
        tensor = httpclient.InferInput(contract.ENSEMBLE_INPUT, [len(images), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(images, dtype=object).reshape(-1, 1))
        return client.infer(model, [tensor]).as_numpy(contract.ENSEMBLE_OUTPUT)
    finally:
        client.close()


def test_int8_models_are_served_next_to_fp32(int8_server) -> None:
    server, repo = int8_server
    assert served_models(repo)[-2:] == (INT8_MODEL, INT8_ENSEMBLE_MODEL)
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.url)
    try:
        for model in (*contract.SERVED_MODELS, INT8_MODEL, INT8_ENSEMBLE_MODEL):
            assert client.is_model_ready(model), model
    finally:
        client.close()


def test_served_int8_matches_in_process_int8_and_agrees_with_fp32(int8_server) -> None:
    server, repo = int8_server
    _, splits, _ = digits_model()
    images = splits["held_out"][0][:IMAGES]
    int8 = _classify(server.url, INT8_ENSEMBLE_MODEL, images)
    fp32 = _classify(server.url, contract.ENSEMBLE_MODEL, images)
    preprocess = load_preprocess_module(repo)
    batch = np.stack([preprocess.preprocess_bytes(data) for data in images])
    expected = softmax(run_logits(session(onnx_model_path(repo, INT8_MODEL)), batch))
    # Same file, same ONNX Runtime; batch composition may change INT8 kernels' rounding slightly.
    np.testing.assert_allclose(int8, expected, atol=1e-4)
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 7 / 8
    assert not np.array_equal(int8, fp32)  # it really is another model
