"""The OpenVINO BF16 variant served next to ONNX Runtime FP32 by the real Triton server.

The model is the digits-fitted ResNet-18 of tests/digits.py (its top-1 answers are real
decisions), given its OpenVINO variant by the real ``openvino`` command. Its own server: ``serve``
loads ``resnet18_openvino``, its ensemble and its fused model because the repository holds them,
through the Python-based ``openvino`` backend the launcher copies into the backend directory.
The fused model's reference is OpenVINO compiled in this process from its written config, fed
torchvision's own resize and crop (``TorchReference.pixels``), not the server's preprocessing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("openvino")

from resnet18_triton import contract
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.cpu_flags import cpu_flags, has_native_bf16
from resnet18_triton.export.openvino_variant import openvino_backend
from resnet18_triton.export.quantize import load_preprocess_module
from resnet18_triton.repository import variants
from resnet18_triton.repository.configs import as_json, parse
from resnet18_triton.repository.layout import (
    CONFIG_FILENAME,
    served_models,
)
from resnet18_triton.server.embedded import EmbeddedServer, ServerOptions, free_port
from tests.corpus import build_corpus
from tests.digits import digits_model, digits_openvino_repository
from tests.support import TorchReference, classify_ensemble

DEFAULT = ClassifierNames.of()

pytestmark = pytest.mark.skipif(
    not has_native_bf16(cpu_flags()), reason="BF16 is offered only on CPUs with native bfloat16"
)
IMAGES = 8
MODEL, ENSEMBLE = variants.OPENVINO.models(DEFAULT)
FUSED = variants.OPENVINO_FUSED.entry(DEFAULT)


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


def _in_process_probabilities(repo: Path, images: list[bytes]) -> np.ndarray:
    """OpenVINO in this process, compiled from the written config as the backend compiles it."""
    backend = openvino_backend()
    config = as_json(parse((repo / MODEL / CONFIG_FILENAME).read_text()))
    request = backend.compile_model(
        str(variants.OPENVINO.model_path(repo, DEFAULT)), config
    ).create_infer_request()
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
    served = classify_ensemble(server.url, ENSEMBLE, images)
    np.testing.assert_allclose(served, _in_process_probabilities(repo, images), rtol=0, atol=1e-6)


def test_bf16_keeps_the_fp32_decisions_on_digits(openvino_server) -> None:
    server, _, report = openvino_server
    assert report["precision"] == "bf16"
    assert report["fidelity"]["num_images"] >= 100
    assert report["fidelity"]["top1_agreement"] >= 0.99
    _, splits, _ = digits_model()
    images = splits["held_out"][0][:IMAGES]
    bf16 = classify_ensemble(server.url, ENSEMBLE, images)
    fp32 = classify_ensemble(server.url, contract.ENSEMBLE_MODEL, images)
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


def test_tune_measures_an_openvino_plan_and_applies_its_threads_per_instance(
    openvino_server, tmp_path: Path
) -> None:
    """A plan of the variant runs in its own real server under perf_analyzer; --apply writes its
    instances and threads (precision and fidelity kept) and --revert restores every byte."""
    import hashlib
    import re
    import shutil
    import subprocess
    import sys

    _server, source, _report = openvino_server
    repo = tmp_path / "repo"
    shutil.copytree(source, repo)

    def digest() -> dict[str, str]:
        return {
            str(path.relative_to(repo)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(repo.rglob("*"))
            if path.is_file()
        }

    before = digest()
    cli = [sys.executable, "-m", "resnet18_triton.cli", "tune", "--repo", str(repo)]
    tuned = subprocess.run(
        [
            *cli,
            "--out", str(tmp_path / "report"),
            "--compare", "openvino i2xt1 p1 b4 q0",
            "--rounds", "1",
            "--concurrency", "2",
            "--measurement-interval", "1000",
            "--max-trials", "4",
            "--max-images", "2",
            "--apply",
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    winner = re.search(r"winner: openvino i2xt1 p1 b4 q0 \(([\d.]+) img/s\)", tuned.stdout)
    assert winner and float(winner.group(1)) > 0, tuned.stdout
    assert f"clients ask {ENSEMBLE}" in tuned.stdout
    config = parse((repo / MODEL / CONFIG_FILENAME).read_text())
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert config.instance_group[0].count == 2 and config.max_batch_size == 4
    assert parameters["INFERENCE_NUM_THREADS"] == "1"
    assert parameters[contract.PRECISION_PARAMETER] == "bf16" and "fidelity" in parameters
    reverted = subprocess.run([*cli, "--revert"], capture_output=True, text=True, timeout=120)
    assert reverted.returncode == 0, reverted.stderr
    assert digest() == before


def test_the_fused_bf16_model_answers_like_openvino_on_torchvision_pixels(openvino_server) -> None:
    """Digits and every unusual-but-good image of the corpus, one request each, against OpenVINO
    compiled in this process from the fused model's own config (1 thread, BF16)."""
    server, repo, _ = openvino_server
    assert served_models(repo)[-1] == FUSED
    backend = openvino_backend()
    config = as_json(parse((repo / FUSED / CONFIG_FILENAME).read_text()))
    assert config["parameters"]["INFERENCE_NUM_THREADS"]["string_value"] == "1"
    assert config["parameters"]["ENABLE_CPU_PINNING"]["string_value"] == "NO"
    request = backend.compile_model(
        str(variants.OPENVINO.model_path(repo, DEFAULT)), config
    ).create_infer_request()
    reference = TorchReference(model=digits_model()[0])
    cases = {f"digit{i}": data for i, data in enumerate(digits_model()[1]["held_out"][0][:4])}
    cases.update({case.name: case.data for case in build_corpus() if case.good})
    wrong = {}
    for name, data in cases.items():
        served = classify_ensemble(server.url, FUSED, [data])
        (expected,) = backend.infer(
            request,
            {contract.ONNX_INPUT: reference.pixels(data)[None]},
            [contract.ONNX_PROBABILITIES],
        )
        if np.abs(served - expected).max() > 1e-6:
            wrong[name] = f"{np.abs(served - expected).max():.2e}"
    assert not wrong, f"differ from OpenVINO on torchvision's pixels: {wrong}"


def test_the_fused_bf16_model_refuses_a_bad_image_and_matches_the_ensemble(openvino_server) -> None:
    from tritonclient.utils import InferenceServerException

    server, _, _ = openvino_server
    images = digits_model()[1]["held_out"][0][:IMAGES]
    np.testing.assert_allclose(
        classify_ensemble(server.url, FUSED, images),
        classify_ensemble(server.url, ENSEMBLE, images),
        atol=1e-6,
    )
    with pytest.raises(InferenceServerException) as caught:
        classify_ensemble(server.url, FUSED, [images[0], b"GIF89a broken"])
    assert caught.value.status() == "400"
    assert "image 2 of 2" in caught.value.message() and "Traceback" not in caught.value.message()
    assert server.is_ready()
