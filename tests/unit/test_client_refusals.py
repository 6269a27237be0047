"""The client against a real local HTTP server that refuses: overload (429, 503 with Retry-After
or a full queue) is retried and counted, client errors never are, a 401 stops the run with what
key to set, and the API key travels as a Bearer header, never on a command line.

The server is the stand-in for Triton of ``tests.fake_triton``, on a real local port: it answers
inference requests from a script, then with a fixed top-k, and records every request's
``Authorization`` header.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from resnet18_triton import contract
from resnet18_triton.cli import main
from resnet18_triton.client.api import ImageClassifier
from resnet18_triton.client.error_map import OVERLOAD_ERROR_PREFIX, QUEUE_FULL_MESSAGE
from resnet18_triton.client.policies import OverloadPolicy
from resnet18_triton.errors import ApiKeyError, ServerUnavailableError
from tests.fake_triton import FakeTriton, error_answer, serving

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "rocket.jpg"
KEY = "k3y-that-must-not-leak"
QUEUE_FULL = error_answer(
    503, f"in ensemble 'resnet18', [request id: <id_unknown>] {QUEUE_FULL_MESSAGE}"
)
NGINX_429 = (
    429,
    {"Retry-After": "0"},
    b"<html><head><title>429 Too Many Requests</title></head><body></body></html>",
)
# Quick retries: the waits themselves are tested in test_client_overload.py.
FAST = OverloadPolicy(base_delay_s=0.01)


@pytest.fixture
def server() -> Iterator[FakeTriton]:
    """The stand-in as ``resnet18-triton serve`` runs: the repository index is an admin API."""
    with serving(FakeTriton(index_restricted=True)) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _no_key_or_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (contract.API_KEY_ENV_VAR, contract.API_KEY_FILE_ENV_VAR, contract.URL_ENV_VAR):
        monkeypatch.delenv(name, raising=False)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the real entry point in this process; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def key_file(directory: Path, mode: int = 0o600) -> Path:
    path = directory / "api-key"
    path.write_text(KEY + "\n")
    path.chmod(mode)
    return path


# --- overload is retried, and counted --------------------------------------------------------


def test_a_429_with_retry_after_then_an_answer_is_an_answer_after_one_retry(
    server: FakeTriton,
) -> None:
    server.script = [NGINX_429]
    with ImageClassifier(server.url, overload=FAST) as classifier:
        [result] = classifier.classify_files([SAMPLE], top_k=2)
    assert result.ok and result.retries == 1
    assert [p.label for p in result.predictions] == ["label 0", "label 1"]
    assert server.infer_requests == 2


def test_a_429_to_the_calls_before_the_first_image_is_waited_out_like_one_to_an_image(
    server: FakeTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    # A proxy's rate limit counts readiness and metadata calls too.
    server.get_script = [NGINX_429, NGINX_429]
    code, out, err = run(["classify", "--url", server.url, "--json", str(SAMPLE)], capsys)
    assert code == 0, err
    assert json.loads(out)["top"][0]["label"] == "label 0"
    assert server.get_script == []


def test_a_call_before_the_first_image_refused_after_every_retry_says_overloaded(
    server: FakeTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    server.health_answer = NGINX_429
    code, _, err = run(["classify", "--url", server.url, str(SAMPLE)], capsys)
    assert code == 2
    assert "is overloaded (HTTP 429: 429 Too Many Requests)" in err and "replicas" in err
    assert server.infer_requests == 0


def test_classify_json_says_how_many_retries_an_image_took(
    server: FakeTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    server.script = [NGINX_429, (503, {"Retry-After": "0"}, b"busy")]
    code, out, _ = run(["classify", "--url", server.url, "--json", str(SAMPLE)], capsys)
    assert code == 0
    record = json.loads(out)
    assert record["retries"] == 2 and record["top"][0]["label"] == "label 0"


def test_an_image_refused_after_every_retry_gets_an_overload_error_line(
    server: FakeTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    server.script = [QUEUE_FULL] * 10
    argv = ["classify", "--url", server.url, "--json", "--overload-retries", "2", str(SAMPLE)]
    code, out, err = run(argv, capsys)
    assert code == 1
    record = json.loads(out)
    assert record["retries"] == 2
    assert record["error"].startswith(OVERLOAD_ERROR_PREFIX)
    assert QUEUE_FULL_MESSAGE in record["error"] and "--concurrency" in record["error"]
    assert "request id" not in record["error"]
    assert "1 of them refused as overloaded" in err and "replicas" in err
    assert server.infer_requests == 3


def test_zero_overload_retries_reports_the_first_refusal(
    server: FakeTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    server.script = [NGINX_429] * 3
    argv = ["classify", "--url", server.url, "--overload-retries", "0", str(SAMPLE)]
    code, out, _ = run(argv, capsys)
    assert code == 1
    assert "server overloaded: refused once (HTTP 429: 429 Too Many Requests)" in out
    assert server.infer_requests == 1


def test_the_table_shows_the_retries_beside_the_image(
    server: FakeTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    server.script = [NGINX_429]
    code, out, _ = run(["classify", "--url", server.url, "--top-k", "1", str(SAMPLE)], capsys)
    assert code == 0
    assert out.splitlines()[0] == f"{SAMPLE}  (1 retry)"


def test_every_image_of_a_refused_batch_is_answered_after_the_retry(
    server: FakeTriton, tmp_path: Path
) -> None:
    paths = []
    for number in range(3):
        paths.append(tmp_path / f"{number}.jpg")
        paths[-1].write_bytes(SAMPLE.read_bytes())
    server.script = [QUEUE_FULL]
    with ImageClassifier(server.url, overload=FAST) as classifier:
        results = list(classifier.classify_files(paths, top_k=1))
    assert [(result.ok, result.retries) for result in results] == [(True, 1)] * 3
    assert server.infer_requests == 2  # the batch was resent whole, not split


# --- client errors are never retried ---------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, "cannot identify an image in 812 bytes"),
        (404, "Request for unknown model: 'resnet19' is not found"),
        (403, "This API is restricted"),
        (413, "Request Entity Too Large"),
    ],
)
def test_a_client_error_is_never_retried(server: FakeTriton, status: int, error: str) -> None:
    # Retry-After on a client error changes nothing: only overload and faults are resent.
    server.script = [error_answer(status, error, {"Retry-After": "0"})] * 5
    with ImageClassifier(server.url, overload=FAST) as classifier:
        [result] = classifier.classify_files([SAMPLE])
    assert result.error == error and result.retries == 0
    assert server.infer_requests == 1


# --- the API key -----------------------------------------------------------------------------


def test_a_401_without_a_key_stops_classify_with_what_to_set(
    server: FakeTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    server.api_key = KEY
    code, out, err = run(["classify", "--url", server.url, str(SAMPLE)], capsys)
    assert code == 2 and out == ""
    assert "asks for an inference API key" in err and "none was sent" in err
    assert f"set ${contract.API_KEY_ENV_VAR}" in err and "--api-key-file" in err
    assert server.authorizations == [None]  # stopped at the first 401, not retried


def test_a_401_for_a_wrong_key_says_the_key_was_refused_without_showing_it(
    server: FakeTriton, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server.api_key = KEY
    monkeypatch.setenv(contract.API_KEY_ENV_VAR, "wrong-key")
    code, out, err = run(["classify", "--url", server.url, str(SAMPLE)], capsys)
    assert code == 2
    assert "refused the inference API key" in err and contract.API_KEY_ENV_VAR in err
    assert "wrong-key" not in out + err
    assert len(server.authorizations) == 1


def test_a_401_on_an_inference_request_is_an_api_key_error_not_an_image_error(
    server: FakeTriton,
) -> None:
    server.script = [(401, {}, b"")] * 3
    refused = pytest.raises(ApiKeyError, match="asks for an inference API key")
    with ImageClassifier(server.url, overload=FAST) as classifier, refused:
        list(classifier.classify_files([SAMPLE]))
    assert server.infer_requests == 1


def test_health_and_its_probe_report_a_401_with_what_to_set(
    server: FakeTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    server.api_key = KEY
    code, _, err = run(["health", "--url", server.url], capsys)
    assert code == 2 and contract.API_KEY_ENV_VAR in err
    code, out, _ = run(["health", "--probe", "--url", server.url, "--json"], capsys)
    record = json.loads(out)
    assert code == 1 and record["live"] is False
    assert record["detail"].startswith("ApiKeyError:") and contract.API_KEY_ENV_VAR in out


def test_the_liveness_probe_counts_an_overload_refusal_as_live_and_says_so(
    server: FakeTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    server.script = [QUEUE_FULL]
    code, out, _ = run(["health", "--probe", "--url", server.url, "--json"], capsys)
    record = json.loads(out)
    assert code == 0 and record["live"] is True
    assert record["detail"].startswith("live but overloaded:")
    assert server.infer_requests == 1  # a probe never retries


def test_the_liveness_probe_fails_on_a_server_error_that_is_not_overload(
    server: FakeTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    server.script = [error_answer(500, "Stub process is not healthy.")]
    code, out, _ = run(["health", "--probe", "--url", server.url, "--json"], capsys)
    record = json.loads(out)
    assert code == 1 and record["live"] is False
    assert "not healthy" in record["detail"]


def test_the_key_from_the_environment_goes_with_every_request(
    server: FakeTriton, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server.api_key = KEY
    monkeypatch.setenv(contract.API_KEY_ENV_VAR, KEY)
    code, _, _ = run(["classify", "--url", server.url, str(SAMPLE)], capsys)
    assert code == 0
    code, _, _ = run(["health", "--url", server.url], capsys)
    assert code == 0
    code, _, _ = run(["health", "--probe", "--url", server.url], capsys)
    assert code == 0
    # Health, readiness, metadata, config and inference: every one of them carried the key.
    assert len(server.authorizations) > 5
    assert set(server.authorizations) == {f"Bearer {KEY}"}


def test_the_key_from_a_private_file_is_sent(
    server: FakeTriton, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.api_key = KEY
    argv = ["classify", "--url", server.url, "--api-key-file", str(key_file(tmp_path)), str(SAMPLE)]
    code, _, _ = run(argv, capsys)
    assert code == 0
    assert set(server.authorizations) == {f"Bearer {KEY}"}


def test_a_key_file_others_can_read_is_refused_before_anything_is_sent(
    server: FakeTriton,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = key_file(tmp_path, mode=0o644)
    monkeypatch.setenv(contract.API_KEY_FILE_ENV_VAR, str(path))
    code, _, err = run(["classify", "--url", server.url, str(SAMPLE)], capsys)
    assert code == 2
    assert f"the inference API key file {path} is readable by other users" in err
    assert f"chmod 600 {path}" in err
    assert server.authorizations == []


def test_there_is_no_option_that_takes_the_key_itself(
    server: FakeTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["classify", "--url", server.url, "--api-key", KEY, str(SAMPLE)], capsys)
    assert code == 2 and "No such option '--api-key'" in err
    assert server.authorizations == []


@pytest.mark.slow
def test_the_key_reaches_the_server_as_a_bearer_header_and_never_appears_in_argv(
    server: FakeTriton,
) -> None:
    server.api_key = KEY
    server.release.clear()  # hold the inference answer while the client's argv is read
    command = [sys.executable, "-m", "resnet18_triton.cli", "classify", "--url", server.url]
    environment = {**os.environ, contract.API_KEY_ENV_VAR: KEY}
    with subprocess.Popen(
        [*command, "--json", str(SAMPLE)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as client:
        try:
            arrived = server.infer_arrived.wait(timeout=120)
            argv = Path(f"/proc/{client.pid}/cmdline").read_bytes()
        finally:
            server.release.set()
        out, err = client.communicate(timeout=120)
    assert arrived, err
    assert client.returncode == 0, err
    assert json.loads(out)["top"]
    assert KEY.encode() not in argv and b"classify" in argv
    assert set(server.authorizations) == {f"Bearer {KEY}"}
    assert KEY not in out + err


def test_the_library_takes_the_key_as_an_argument_too(server: FakeTriton) -> None:
    server.api_key = KEY
    with ImageClassifier(server.url, api_key=KEY) as classifier:
        classifier.ensure_ready()
        assert classifier.classify_bytes([SAMPLE.read_bytes()], top_k=1)[0][0].index == 0
    assert set(server.authorizations) == {f"Bearer {KEY}"}


def test_a_429_to_a_health_call_is_reported_as_overload_not_as_not_ready(
    server: FakeTriton,
) -> None:
    server.health_answer = NGINX_429
    overloaded = pytest.raises(ServerUnavailableError, match=r"is overloaded \(HTTP 429: 429 Too")
    with ImageClassifier(server.url) as classifier, overloaded:
        classifier.ensure_ready()


def test_classify_help_names_the_key_file_and_the_overload_retries(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(["classify", "--help"], capsys)
    assert code == 0
    assert "--api-key-file" in out and contract.API_KEY_ENV_VAR in out
    assert "--overload-retries" in out and "Retry-After" in out
