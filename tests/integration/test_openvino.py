"""The OpenVINO BF16 variant served next to ONNX Runtime FP32 by the real Triton server.

The model is the digits-fitted ResNet-18 of tests/digits.py (its top-1 answers are real
decisions), given its OpenVINO variant by the real ``openvino`` command. Its own server: ``serve``
loads ``resnet18_openvino`` and its ensemble because the repository holds them, through the
Python-based ``openvino`` backend the launcher copies into the backend directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("openvino")

from resnet18_triton import contract
from resnet18_triton.cpu_flags import cpu_flags, has_native_bf16
from resnet18_triton.export.model_configs import parse
from resnet18_triton.export.openvino_variant import config_as_json, openvino_backend
from resnet18_triton.export.quantize import load_preprocess_module
from resnet18_triton.layout import (
    CONFIG_FILENAME,
    openvino_model_path,
    openvino_models,
    served_models,
)
from resnet18_triton.server.embedded import EmbeddedServer, ServerOptions, free_port
from tests.digits import digits_model, digits_openvino_repository

pytestmark = pytest.mark.skipif(
    not has_native_bf16(cpu_flags()), reason="BF16 is offered only on CPUs with native bfloat16"
)
IMAGES = 8
MODEL, ENSEMBLE = openvino_models()


@pytest.fixture(scope="module")
def openvino_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EmbeddedServer, Path, dict]]:
    repo, report = digits_openvino_repository(tmp_path_factory.mktemp("openvino"), "bf16")
    options = ServerOptions(
        repository=repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        models=served_models(repo),
        exit_timeout_s=5,
    )
    with EmbeddedServer(options) as running:
        yield running, repo, report


def _classify(url: str, model: str, images: list[bytes]) -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, network_timeout=120.0)
    try:
        tensor = httpclient.InferInput(contract.ENSEMBLE_INPUT, [len(images), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(images, dtype=object).reshape(-1, 1))
        return client.infer(model, [tensor]).as_numpy(contract.ENSEMBLE_OUTPUT)
    finally:
        client.close()


def _in_process_probabilities(repo: Path, images: list[bytes]) -> np.ndarray:
    """OpenVINO in this process, compiled from the written config as the backend compiles it."""
    backend = openvino_backend()
    config = config_as_json(parse((repo / MODEL / CONFIG_FILENAME).read_text()))
    request = backend.compile_model(str(openvino_model_path(repo)), config).create_infer_request()
    preprocess = load_preprocess_module(repo)
    batch = np.stack([preprocess.preprocess_bytes(data) for data in images])
    (probabilities,) = backend.infer(
        request, {contract.ONNX_INPUT: batch}, [contract.ONNX_PROBABILITIES]
    )
    return probabilities


def test_openvino_models_are_served_next_to_onnx_runtime(openvino_server) -> None:
    server, _, _ = openvino_server
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.url)
    try:
        for model in (*contract.SERVED_MODELS, MODEL, ENSEMBLE):
            assert client.is_model_ready(model), model
        config = client.get_model_config(MODEL)
    finally:
        client.close()
    assert config["backend"] == "openvino"
    assert config["parameters"]["HINT_BF16"]["string_value"] == "YES"
    assert config["parameters"][contract.PRECISION_PARAMETER]["string_value"] == "bf16"


def test_served_bf16_equals_in_process_openvino_bf16(openvino_server) -> None:
    server, repo, _ = openvino_server
    _, splits, _ = digits_model()
    images = splits["held_out"][0][:IMAGES]
    served = _classify(server.url, ENSEMBLE, images)
    np.testing.assert_allclose(served, _in_process_probabilities(repo, images), rtol=0, atol=1e-6)


def test_bf16_keeps_the_fp32_decisions_on_digits(openvino_server) -> None:
    server, _, report = openvino_server
    assert report["precision"] == "bf16"
    assert report["fidelity"]["num_images"] >= 100
    assert report["fidelity"]["top1_agreement"] >= 0.99
    _, splits, _ = digits_model()
    images = splits["held_out"][0][:IMAGES]
    bf16 = _classify(server.url, ENSEMBLE, images)
    fp32 = _classify(server.url, contract.ENSEMBLE_MODEL, images)
    assert (bf16.argmax(1) == fp32.argmax(1)).all()
    assert not np.array_equal(bf16, fp32)  # it really runs at another precision


def test_health_lists_the_variant_with_its_precision(openvino_server) -> None:
    from resnet18_triton.client.api import ImageClassifier

    server, _, _ = openvino_server
    with ImageClassifier(server.url) as classifier:
        report = classifier.health()
    precisions = {model.name: model.precision for model in report.models if model.ready}
    assert report.all_ready
    assert precisions[MODEL] == precisions[ENSEMBLE] == "bf16"
    assert precisions[contract.ONNX_MODEL] == precisions[contract.ENSEMBLE_MODEL] == "fp32"
    assert precisions[contract.PREPROCESS_MODEL] == ""
