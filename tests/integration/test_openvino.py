"""The OpenVINO variant served next to ONNX Runtime FP32 by the real Triton server, on every CPU.

The precision is the chooser's for this CPU (``cpu_flags.default_precision``): BF16 where it is
native, f32 everywhere else, so no host skips the variant; ``tests/integration/
test_variants_served.py`` checks every precision this CPU serves. The model is the digits-fitted
ResNet-18 of tests/digits.py (its top-1 answers are real decisions), given its OpenVINO variant by
the real ``openvino`` command, in the session's stack of every variant (``variant_stack``): the
default ``serve`` loads it through the Python-based ``openvino`` backend. The fused model's
reference is OpenVINO compiled in this process from its written config, fed torchvision's own
resize and crop (``TorchReference.pixels``), not the server's preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("openvino")

from resnet18_triton import contract
from resnet18_triton.cpu_flags import cpu_flags, default_precision
from resnet18_triton.export.openvino_variant import openvino_backend
from resnet18_triton.repository import variants
from resnet18_triton.repository.configs.parser import as_json, parse
from resnet18_triton.repository.layout import CONFIG_FILENAME
from tests.corpus import build_corpus
from tests.digits import digits_model
from tests.support import TorchReference, classify_ensemble
from tests.variant_support import classifier_for

IMAGES = 8
PRECISION = default_precision(cpu_flags())
NAMES = classifier_for(PRECISION)
MODEL, ENSEMBLE = variants.OPENVINO.models(NAMES)
FUSED = variants.OPENVINO_FUSED.entry(NAMES)


@pytest.fixture(scope="module")
def openvino_server(variant_stack) -> tuple[str, Path]:
    """The session's stack of every variant: its URL and repository."""
    return variant_stack.url, variant_stack.repository


def test_the_variant_runs_at_the_cpus_precision_next_to_onnx_runtime(openvino_server) -> None:
    url, _ = openvino_server
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        for model in (*NAMES.served, MODEL, ENSEMBLE, FUSED):
            assert client.is_model_ready(model), model
        config = client.get_model_config(MODEL)
    finally:
        client.close()
    parameters = config["parameters"]
    assert config["backend"] == "openvino"
    assert parameters[contract.PRECISION_PARAMETER]["string_value"] == PRECISION
    assert ("HINT_BF16" in parameters) == (PRECISION == "bf16")


def test_the_variant_keeps_the_fp32_decisions_on_every_held_out_digit(openvino_server) -> None:
    url, _ = openvino_server
    images = digits_model()[1]["held_out"][0]
    batches = [images[i : i + IMAGES] for i in range(0, len(images), IMAGES)]
    served = np.concatenate([classify_ensemble(url, ENSEMBLE, batch) for batch in batches])
    fp32 = np.concatenate([classify_ensemble(url, NAMES.ensemble, batch) for batch in batches])
    assert len(images) >= 100
    assert (served.argmax(1) == fp32.argmax(1)).mean() >= 0.99
    assert not np.array_equal(served, fp32)  # it really runs on another engine


def test_tune_measures_an_openvino_plan_and_applies_its_threads_per_instance(
    openvino_server, tmp_path: Path
) -> None:
    """A plan of the variant runs in its own real server under perf_analyzer; --apply writes its
    instances and threads (precision and fidelity kept) and `tune revert` restores every byte."""
    import hashlib
    import re
    import shutil
    import subprocess
    import sys

    _url, source = openvino_server
    repo = tmp_path / "repo"
    shutil.copytree(source, repo)

    def digest() -> dict[str, str]:
        return {
            str(path.relative_to(repo)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(repo.rglob("*"))
            if path.is_file()
        }

    before = digest()
    cli = [sys.executable, "-m", "resnet18_triton.cli", "tune", "--repo", str(repo),
           "--name", NAMES.name]  # fmt: skip
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
    assert parameters[contract.PRECISION_PARAMETER] == PRECISION and "fidelity" in parameters
    reverted = subprocess.run([*cli, "revert"], capture_output=True, text=True, timeout=120)
    assert reverted.returncode == 0, reverted.stderr
    assert digest() == before


def test_the_fused_model_answers_like_openvino_on_torchvision_pixels(openvino_server) -> None:
    """Digits and every unusual-but-good image of the corpus, one request each, against OpenVINO
    compiled in this process from the fused model's own config (1 thread, this precision)."""
    url, repo = openvino_server
    backend = openvino_backend()
    config = as_json(parse((repo / FUSED / CONFIG_FILENAME).read_text()))
    assert config["parameters"]["INFERENCE_NUM_THREADS"]["string_value"] == "1"
    assert config["parameters"]["ENABLE_CPU_PINNING"]["string_value"] == "NO"
    request = backend.compile_model(
        str(variants.OPENVINO.model_path(repo, NAMES)), config
    ).create_infer_request()
    reference = TorchReference(model=digits_model()[0])
    cases = {f"digit{i}": data for i, data in enumerate(digits_model()[1]["held_out"][0][:4])}
    cases.update({case.name: case.data for case in build_corpus() if case.good})
    wrong = {}
    for name, data in cases.items():
        served = classify_ensemble(url, FUSED, [data])
        (expected,) = backend.infer(
            request,
            {contract.ONNX_INPUT: reference.pixels(data)[None]},
            [contract.ONNX_PROBABILITIES],
        )
        if np.abs(served - expected).max() > 1e-6:
            wrong[name] = f"{np.abs(served - expected).max():.2e}"
    assert not wrong, f"differ from OpenVINO on torchvision's pixels: {wrong}"


def test_the_fused_model_refuses_a_bad_image_and_matches_the_ensemble(openvino_server) -> None:
    import urllib.request

    from tritonclient.utils import InferenceServerException

    url, _ = openvino_server
    images = digits_model()[1]["held_out"][0][:IMAGES]
    np.testing.assert_allclose(
        classify_ensemble(url, FUSED, images),
        classify_ensemble(url, ENSEMBLE, images),
        atol=1e-6,
    )
    with pytest.raises(InferenceServerException) as caught:
        classify_ensemble(url, FUSED, [images[0], b"GIF89a broken"])
    assert caught.value.status() == "400"
    assert "image 2 of 2" in caught.value.message() and "Traceback" not in caught.value.message()
    with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=5) as ready:
        assert ready.status == 200
