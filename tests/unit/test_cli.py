"""The ``classify`` and ``health`` commands, end to end through ``cli.main``.

The in-process stand-in for Triton's HTTP/KServe v2 API (``tests.fake_triton``) takes the server's
place, so that batching, the split of a rejected batch, retries and exit codes are checked without
starting Triton (the integration tests do that against the real server).
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from resnet18_triton import contract
from resnet18_triton.cli import main
from resnet18_triton.client.api import ImageClassifier
from resnet18_triton.client.policies import RetryPolicy
from resnet18_triton.errors import ImageError, ServerUnavailableError
from tests.fake_triton import (
    IMAGENET_PROVENANCE,
    RANDOM_PROVENANCE,
    FakeTriton,
    error_answer,
    serving,
)

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
MAX_BATCH_SIZE = 4
UNAVAILABLE = error_answer(503, "Server not ready")


@pytest.fixture
def fake_triton() -> Iterator[FakeTriton]:
    """The stand-in with a small batch size (seven images make two batches), random weights, and
    labels holding the separators of the classification extension's answers."""
    fake = FakeTriton(
        max_batch_size=MAX_BATCH_SIZE,
        provenance=RANDOM_PROVENANCE,
        label="label {rank}, with: colon",
    )
    with serving(fake):
        yield fake


@pytest.fixture(autouse=True)
def _no_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(contract.URL_ENV_VAR, raising=False)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the real entry point; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """Six good images and one the fake server rejects, in a known order."""
    paths = []
    for number in range(7):
        path = tmp_path / f"img{number}.png"
        path.write_bytes(b"bad image" if number == 3 else b"good image %d" % number)
        paths.append(path)
    return paths


# --- usage ----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["classify", "--help"], ["health", "--help"]])
def test_help_works(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(argv, capsys)
    assert code == 0
    assert "Usage:" in out


def test_classify_help_lists_options(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(["classify", "--help"], capsys)
    for option in (
        "--url",
        "--top-k",
        "--batch-size",
        "--concurrency",
        "--json",
        "--timeout",
        "--recursive",
        "--no-progress",
    ):
        assert option in out
    assert contract.URL_ENV_VAR in out


@pytest.mark.parametrize("top_k", ["0", "1001", "-1"])
def test_top_k_out_of_range_is_a_usage_error(
    top_k: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["classify", str(SAMPLES / "rocket.jpg"), "--top-k", top_k], capsys)
    assert code == 2
    assert "--top-k" in err


def test_glob_matching_nothing_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pattern = str(tmp_path / "*.jpg")
    code, _, err = run(["classify", pattern, "--url", f"127.0.0.1:{closed_port()}"], capsys)
    assert code == 2
    assert pattern in err


def test_no_arguments_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["classify"], capsys)
    assert code == 2
    assert "IMAGE_OR_DIR_OR_GLOB" in err


# --- unreachable server ---------------------------------------------------------------------


@pytest.mark.parametrize("command", ["classify", "health"])
def test_closed_port_exits_2_with_a_readable_message(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{closed_port()}"
    argv = [command, "--url", address] + (
        [str(SAMPLES / "rocket.jpg")] if command == "classify" else []
    )
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == ""
    assert f"cannot reach Triton at {address}: connection refused" in err
    assert "Traceback" not in err and "Errno" not in err


@pytest.mark.parametrize("url", ["", "localhost", "localhost:http", "127.0.0.1:99999", "ftp://h:1"])
def test_invalid_url_exits_2(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["health", "--url", url], capsys)
    assert code == 2
    assert f"invalid Triton URL '{url}'" in err
    assert "Traceback" not in err and "Exception ignored" not in err


def test_url_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{closed_port()}"
    monkeypatch.setenv(contract.URL_ENV_VAR, address)
    code, _, err = run(["health"], capsys)
    assert code == 2
    assert address in err


# --- classify against the fake server -------------------------------------------------------


def test_json_lines_in_input_order(
    fake_triton: FakeTriton, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    good = [path for path in images if path.name != "img3.png"]
    code, out, _ = run(
        ["classify", "--url", fake_triton.url, "--json", "--top-k", "2", *map(str, good)], capsys
    )
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [record["image"] for record in records] == [str(path) for path in good]
    assert records[0] == {
        "image": str(good[0]),
        "top": [
            {"label": "label 0, with: colon", "index": 0, "probability": 0.9},
            {"label": "label 1, with: colon", "index": 1, "probability": 0.8},
        ],
    }


def test_a_rejected_image_fails_alone(
    fake_triton: FakeTriton, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        ["classify", "--url", fake_triton.url, "--json", *map(str, images)], capsys
    )
    assert code == 1
    records = {record["image"]: record for record in map(json.loads, out.splitlines())}
    assert len(records) == len(images)
    assert records[str(images[3])] == {"image": str(images[3]), "error": "cannot identify an image"}
    assert all("top" in records[str(path)] for path in images if path != images[3])
    # The first batch (images 0-3) was rejected as a whole, then resent image by image.
    assert sorted(fake_triton.batch_sizes) == [1, 1, 1, 1, 3, MAX_BATCH_SIZE]
    assert "1 of 7 images failed" in err


def test_batches_never_exceed_max_batch_size(
    fake_triton: FakeTriton, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    good = [str(path) for path in images if path.name != "img3.png"]
    code, _, err = run(["classify", "--url", fake_triton.url, "--batch-size", "100", *good], capsys)
    assert code == 0
    assert sorted(fake_triton.batch_sizes) == [2, MAX_BATCH_SIZE]
    assert f"using {MAX_BATCH_SIZE}" in err


def test_unreadable_files_are_per_image_errors(
    fake_triton: FakeTriton, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.jpg"
    code, out, _ = run(
        ["classify", "--url", fake_triton.url, str(SAMPLES / "rocket.jpg"), str(missing)], capsys
    )
    assert code == 1
    assert out.splitlines()[0] == str(SAMPLES / "rocket.jpg")
    assert f"{missing}\n  error: no such file" in out


def test_table_output(fake_triton: FakeTriton, capsys: pytest.CaptureFixture[str]) -> None:
    image = str(SAMPLES / "rocket.jpg")
    code, out, _ = run(["classify", "--url", fake_triton.url, "--top-k", "2", image], capsys)
    assert code == 0
    assert out.splitlines() == [
        image,
        "  1  0.9000    0  label 0, with: colon",
        "  2  0.8000    1  label 1, with: colon",
    ]


def test_random_weights_are_flagged_when_classifying(
    fake_triton: FakeTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, err = run(["classify", "--url", fake_triton.url, str(SAMPLES / "rocket.jpg")], capsys)
    assert "RANDOM weights" in err


def test_model_not_ready_exits_2(
    fake_triton: FakeTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_triton.not_ready.add(contract.ENSEMBLE_MODEL)
    code, out, err = run(
        ["classify", "--url", fake_triton.url, str(SAMPLES / "rocket.jpg")], capsys
    )
    assert code == 2
    assert out == ""
    assert f"model '{contract.ENSEMBLE_MODEL}' is not ready" in err
    assert fake_triton.batch_sizes == []


def test_classify_answers_while_another_model_loads_and_the_servers_own_readiness_says_no(
    fake_triton: FakeTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    # As while publish or rollback moves a version: Triton's readiness is strict.
    fake_triton.server_ready = False
    argv = ["classify", "--url", fake_triton.url, str(SAMPLES / "rocket.jpg")]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "label 0" in out


def test_503_is_retried(fake_triton: FakeTriton, capsys: pytest.CaptureFixture[str]) -> None:
    fake_triton.script = [UNAVAILABLE] * 2
    code, out, _ = run(["classify", "--url", fake_triton.url, str(SAMPLES / "rocket.jpg")], capsys)
    assert code == 0
    assert "label 0" in out


def test_retries_are_bounded(fake_triton: FakeTriton) -> None:
    fake_triton.script = [UNAVAILABLE] * 100
    retry = RetryPolicy(attempts=3, initial_delay=0.01)
    unavailable = pytest.raises(ServerUnavailableError, match="is unavailable: Server not ready")
    with ImageClassifier(fake_triton.url, retry=retry) as classifier, unavailable:
        list(classifier.classify_files([SAMPLES / "rocket.jpg"]))
    assert len(fake_triton.script) == 97


def test_progress_bar_stays_off_when_not_a_tty(
    fake_triton: FakeTriton, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for number in range(12):
        shutil.copy(SAMPLES / "rocket.jpg", tmp_path / f"copy{number}.jpg")
    code, out, err = run(
        ["classify", "--url", fake_triton.url, "--top-k", "1", str(tmp_path)], capsys
    )
    assert code == 0
    assert out.count("label 0") == 12
    assert "image/s" not in err and "%|" not in err


# --- the library against the fake server ---------------------------------------------------


def test_classify_files_yields_in_order_with_per_image_errors(
    fake_triton: FakeTriton, images: list[Path]
) -> None:
    paths = [images[0], images[1].parent, images[3], images[2]]
    with ImageClassifier(fake_triton.url, concurrency=2) as classifier:
        results = list(classifier.classify_files(paths, top_k=3, batch_size=2))
    assert [result.path for result in results] == [str(path) for path in paths]
    assert [result.error for result in results] == [
        None,
        "is a directory",
        "cannot identify an image",
        None,
    ]
    assert [len(result.predictions) for result in results] == [3, 0, 0, 3]
    assert results[0].predictions[0].label == "label 0, with: colon"
    assert max(fake_triton.batch_sizes) == 2


def test_classify_bytes(fake_triton: FakeTriton) -> None:
    with ImageClassifier(fake_triton.url) as classifier:
        answers = classifier.classify_bytes([b"one", b"two", b"three"], top_k=1)
        assert [[p.index for p in answer] for answer in answers] == [[0], [0], [0]]
        with pytest.raises(ImageError, match=r"^image 1: cannot identify an image$"):
            classifier.classify_bytes([b"good", b"bad"], top_k=1)


def test_classify_named_answers_each_in_memory_image_under_its_own_name(
    fake_triton: FakeTriton,
) -> None:
    named = [("a.jpg", b"good"), ("empty.jpg", b""), ("b.jpg", b"bad"), ("a.jpg", b"again")]
    with ImageClassifier(fake_triton.url) as classifier:
        results = list(classifier.classify_named(named, top_k=2))
    assert [(result.path, result.error) for result in results] == [
        ("a.jpg", None),
        ("empty.jpg", "empty image"),
        ("b.jpg", "cannot identify an image"),
        ("a.jpg", None),
    ]
    assert [len(result.predictions) for result in results] == [2, 0, 0, 2]


def test_classify_bytes_rejects_a_bad_top_k(fake_triton: FakeTriton) -> None:
    with ImageClassifier(fake_triton.url) as classifier, pytest.raises(ValueError, match="top_k"):
        classifier.classify_bytes([b"good"], top_k=0)


# --- health against the fake server ---------------------------------------------------------


def test_health_all_ready_with_random_weights(
    fake_triton: FakeTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["health", "--url", fake_triton.url], capsys)
    assert code == 0
    for name in contract.SERVED_MODELS:
        assert any(line.split()[:2] == [name, "ready"] for line in out.splitlines())
    assert "weights: source=random, seed=0" in out
    assert out.splitlines()[-1].startswith("WARNING: the served model has RANDOM weights")


def test_health_model_not_ready_exits_1(
    fake_triton: FakeTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_triton.not_ready.add(contract.ONNX_MODEL)
    fake_triton.provenance = IMAGENET_PROVENANCE
    code, out, err = run(["health", "--url", fake_triton.url], capsys)
    assert code == 1, err
    assert "NOT READY" in out and "load failed: no model.onnx" in out
    assert "WARNING" not in out


def test_health_without_the_repository_index(
    fake_triton: FakeTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_triton.index_restricted = True
    fake_triton.not_ready.add(contract.PREPROCESS_MODEL)
    code, out, _ = run(["health", "--url", fake_triton.url], capsys)
    assert code == 1
    assert f"  {contract.PREPROCESS_MODEL}     NOT READY  not ready" in out.splitlines()
    assert "restricted" not in out


def test_health_json(fake_triton: FakeTriton, capsys: pytest.CaptureFixture[str]) -> None:
    fake_triton.provenance = IMAGENET_PROVENANCE
    code, out, err = run(["health", "--url", fake_triton.url, "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["live"] and report["ready"] and report["all_ready"]
    assert [model["name"] for model in report["models"]] == list(contract.SERVED_MODELS)
    assert report["weights_provenance"] == {"source": "imagenet"}
    assert report["random_weights"] is False
    assert err == ""
