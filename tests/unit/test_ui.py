"""The ui app's own rules, without a Triton server: upload parsing and limits, query checks, and
the real app (a subprocess) answering JSON when Triton cannot be reached."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from resnet18_triton import contract
from resnet18_triton.client.results import ClassificationResult, Prediction, result_to_json
from resnet18_triton.errors import UploadError
from resnet18_triton.server.embedded import free_port
from resnet18_triton.ui.app import choose_model, classify_response, parse_top_k
from resnet18_triton.ui.service import Answer
from resnet18_triton.ui.uploads import Upload, UploadLimits, read_uploads, with_idle_timeout
from tests.fake_triton import FakeTriton, serving
from tests.support import SAMPLE_FILES
from tests.ui_support import curl, running_ui

BOUNDARY = "----resnet18-triton-test"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
DEFAULT_LIMITS = UploadLimits()


def multipart(*parts: tuple[str, str, bytes]) -> bytes:
    """A form body of ``(field, filename, data)`` parts, as a browser encodes it."""
    body = b""
    for field, filename, data in parts:
        body += (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
                f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    return body + f"--{BOUNDARY}--\r\n".encode()


async def _chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def read(body: bytes, limits: UploadLimits = DEFAULT_LIMITS, chunk: int = 7) -> list[Upload]:
    """Parse ``body`` arriving in small chunks, so parts straddle chunk boundaries."""
    return asyncio.run(read_uploads(_chunks(body, chunk), CONTENT_TYPE, limits))


def refusal(
    body: bytes, limits: UploadLimits = DEFAULT_LIMITS, content_type: str | None = CONTENT_TYPE
) -> UploadError:
    with pytest.raises(UploadError) as refused:
        asyncio.run(read_uploads(_chunks(body, 64), content_type, limits))
    return refused.value


# --- uploads --------------------------------------------------------------------------------


def test_every_image_part_is_kept_in_order_with_its_name_and_exact_bytes() -> None:
    first, second = bytes(range(256)) * 3, b"\r\n--not-a-boundary\r\n" * 5
    uploads = read(multipart(("image", "cat.jpg", first), ("image", "caf\u00e9 2.png", second)))
    assert uploads == [Upload("cat.jpg", first), Upload("caf\u00e9 2.png", second)]


def test_an_image_over_the_limit_is_refused_with_413_naming_it() -> None:
    limits = UploadLimits(max_file_bytes=1000)
    error = refusal(
        multipart(("image", "ok.jpg", b"x" * 1000), ("image", "big.jpg", b"x" * 1001)), limits
    )
    assert error.status == 413
    assert str(error) == "big.jpg is larger than the limit of 1 KB per image"


def test_a_body_over_the_request_limit_is_refused_while_it_streams() -> None:
    limits = UploadLimits(max_request_bytes=4096)
    error = refusal(
        multipart(("image", "a.jpg", b"x" * 3000), ("image", "b.jpg", b"x" * 3000)), limits
    )
    assert error.status == 413
    assert "larger than the limit of 4 KB" in str(error)


def test_more_images_than_allowed_are_refused() -> None:
    limits = UploadLimits(max_files=2)
    error = refusal(multipart(*[("image", f"{n}.jpg", b"x") for n in range(3)]), limits)
    assert error.status == 413
    assert "more than 2 images in one request" in str(error)


def test_an_unknown_field_is_named_in_the_error() -> None:
    error = refusal(multipart(("photo", "cat.jpg", b"x")))
    assert error.status == 400
    assert str(error) == "unknown form field 'photo': send images in the field 'image'"


def test_a_form_without_images_says_how_to_send_one() -> None:
    error = refusal(f"--{BOUNDARY}--\r\n".encode())
    assert "curl -F image=@photo.jpg" in str(error)


@pytest.mark.parametrize("content_type", [None, "application/json", "multipart/form-data"])
def test_a_body_that_is_not_a_multipart_form_is_refused(content_type: str | None) -> None:
    error = refusal(b"{}", content_type=content_type)
    assert error.status == 400
    assert "multipart/form-data" in str(error)


def test_a_malformed_multipart_body_is_a_400() -> None:
    error = refusal(b"garbage without the boundary")
    assert error.status == 400
    assert str(error).startswith("malformed multipart body")


def test_an_upload_that_stalls_is_refused_with_408() -> None:
    async def stalling() -> AsyncIterator[bytes]:
        yield b"--" + BOUNDARY.encode()
        await asyncio.sleep(10)
        yield b"never"

    async def consume() -> list[bytes]:
        return [chunk async for chunk in with_idle_timeout(stalling(), 0.05)]

    with pytest.raises(UploadError, match=r"the upload stalled: no data for 0.05 s") as refused:
        asyncio.run(consume())
    assert refused.value.status == 408


# --- query and response ---------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(None, 5), ("", 5), ("1", 1), ("1000", 1000)])
def test_top_k_defaults_to_5_and_accepts_1_to_1000(value: str | None, expected: int) -> None:
    assert parse_top_k(value) == expected


@pytest.mark.parametrize("value", ["0", "1001", "-3", "five", "2.5"])
def test_top_k_outside_1_to_1000_is_refused(value: str) -> None:
    with pytest.raises(UploadError, match="top_k must be a whole number from 1 to 1000"):
        parse_top_k(value)


def test_the_model_must_be_one_the_app_offers() -> None:
    assert choose_model(None, ("resnet18", "resnet18_int8_ensemble")) == "resnet18"
    assert choose_model("resnet18_int8_ensemble", ("resnet18", "resnet18_int8_ensemble")) == (
        "resnet18_int8_ensemble"
    )
    with pytest.raises(UploadError, match="unknown model 'preprocess': choose one of resnet18"):
        choose_model("preprocess", ("resnet18",))


def test_results_are_the_classify_json_objects_and_one_failure_makes_a_400() -> None:
    good = ClassificationResult("cat.jpg", [Prediction("tabby", 281, 0.5)])
    bad = ClassificationResult("notes.jpg", error="cannot identify an image")
    status, body = classify_response("resnet18", Answer([good, bad], "1", 0.0123))
    assert status == 400
    assert body["results"] == [result_to_json(good), result_to_json(bad)]
    assert body["error"] == "1 of 2 images not classified; notes.jpg: cannot identify an image"
    assert (body["model"], body["model_version"], body["latency_ms"]) == ("resnet18", "1", 12.3)
    assert classify_response("resnet18", Answer([good], "1", 0.0))[0] == 200


# --- the real app, with no Triton behind it ---------------------------------------------------


@pytest.fixture(scope="module")
def lonely_app() -> Iterator[tuple[str, str]]:
    """The app pointed at a closed port; yields (app URL, the Triton address it cannot reach)."""
    triton = f"127.0.0.1:{free_port()}"
    with running_ui(triton, "--max-image-mb", "0.05") as base:
        yield base, triton


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_triton_unreachable_is_a_503_that_names_it(lonely_app: tuple[str, str]) -> None:
    base, triton = lonely_app
    small = Path(__file__).parents[1] / "data" / "samples" / "LICENSES.md"
    answer = curl(base, [small])
    assert answer.status == 503
    assert answer.body == {
        "error": f"cannot reach Triton at {triton}: connection refused — "
        "is `resnet18-triton serve` running?"
    }


def test_an_image_over_the_limit_gets_413_before_triton_is_asked(
    lonely_app: tuple[str, str],
) -> None:
    answer = curl(lonely_app[0], [SAMPLE_FILES[-1]])
    assert answer.status == 413
    assert answer.body == {
        "error": f"{SAMPLE_FILES[-1].name} is larger than the limit of 51 KB per image"
    }


def test_models_is_a_503_when_triton_is_unreachable(lonely_app: tuple[str, str]) -> None:
    status, body = get_json(f"{lonely_app[0]}/v1/models")
    assert status == 503
    assert "connection refused" in body["error"]


def test_the_openapi_schema_describes_the_classify_endpoint(lonely_app: tuple[str, str]) -> None:
    status, schema = get_json(f"{lonely_app[0]}/openapi.json")
    assert status == 200
    operation = schema["paths"]["/v1/classify"]["post"]
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["image"]
    assert {parameter["name"] for parameter in operation["parameters"]} == {"top_k", "model"}
    assert set(operation["responses"]) == {"200", "400", "413", "503"}


def test_an_unknown_path_is_a_json_404(lonely_app: tuple[str, str]) -> None:
    assert get_json(f"{lonely_app[0]}/v2/models") == (404, {"error": "Not Found: GET /v2/models"})


def test_the_page_only_runs_its_own_inline_code(lonely_app: tuple[str, str]) -> None:
    with urllib.request.urlopen(lonely_app[0], timeout=30) as response:
        policy = response.headers["Content-Security-Policy"]
        page = response.read().decode()
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy
    assert 'id="drop"' in page


def test_the_ui_command_listens_on_loopback_and_limits_uploads_by_default() -> None:
    from resnet18_triton.ui.cli import ui

    defaults = {param.name: param.default for param in ui.params}
    assert defaults["host"] == "127.0.0.1"
    assert defaults["max_image_mb"] == 10.0
    assert defaults["max_request_mb"] == 32.0
    assert defaults["max_in_flight"] == 16


def test_the_web_stack_comes_only_with_the_ui_extra() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower() for line in requirements}

    web = {"starlette", "uvicorn", "python-multipart", "fastapi", "gradio"}
    assert names(project["dependencies"]) & (web | {"torch", "pillow", "onnxruntime"}) == set()
    assert names(project["optional-dependencies"]["ui"]) == {
        "starlette",
        "uvicorn",
        "python-multipart",
    }
    (dev,) = project["optional-dependencies"]["dev"]
    assert "ui" in dev.partition("[")[2].rstrip("]").split(",")


@pytest.mark.slow
def test_a_port_in_use_is_a_usage_error_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "resnet18_triton.cli", "ui", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in done.stderr
    assert "Traceback" not in done.stderr


# --- the API key of a proxy in front of Triton ------------------------------------------------

KEY = "ui-k3y-that-must-not-leak"


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTriton]:
    """A local stand-in for Triton behind the proxy: every request without ``Authorization:
    Bearer KEY`` gets a 401; it records every request's header. The ui app started in the test
    inherits an environment without any key or URL."""
    for name in (contract.API_KEY_ENV_VAR, contract.API_KEY_FILE_ENV_VAR, contract.URL_ENV_VAR):
        monkeypatch.delenv(name, raising=False)
    with serving(FakeTriton(api_key=KEY, index_restricted=True)) as fake:
        yield fake


def _everything_the_browser_gets(base: str) -> str:
    """The page, the schema, the model list and a classification, as text."""
    texts = []
    for path in ("/", "/openapi.json", "/v1/models"):
        with urllib.request.urlopen(f"{base}{path}", timeout=30) as response:
            texts.append(response.read().decode())
    answer = curl(base, [SAMPLE_FILES[0]], "?top_k=2")
    assert answer.status == 200, answer.body
    assert answer.body["results"][0]["top"][0]["label"] == "label 0"
    return "\n".join([*texts, answer.headers, json.dumps(answer.body)])


@pytest.mark.slow
def test_the_ui_sends_the_key_from_its_key_file_to_triton_and_never_to_the_browser(
    proxy: FakeTriton, tmp_path: Path
) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    with running_ui(proxy.url, "--api-key-file", str(key_file)) as base:
        status, body = get_json(f"{base}/v1/models")
        assert status == 200, body
        assert contract.ENSEMBLE_MODEL in [model["name"] for model in body["models"]]
        seen_by_the_browser = _everything_the_browser_gets(base)
    assert KEY not in seen_by_the_browser
    # Health, readiness, config and inference: every request carried the key.
    assert proxy.infer_requests == 1 and len(proxy.authorizations) > 3
    assert set(proxy.authorizations) == {f"Bearer {KEY}"}


@pytest.mark.slow
def test_the_ui_takes_the_key_from_the_environment(
    proxy: FakeTriton, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(contract.API_KEY_ENV_VAR, KEY)
    with running_ui(proxy.url) as base:
        assert KEY not in _everything_the_browser_gets(base)
    assert set(proxy.authorizations) == {f"Bearer {KEY}"}


@pytest.mark.slow
def test_without_the_key_the_page_is_told_which_key_to_set(proxy: FakeTriton) -> None:
    with running_ui(proxy.url) as base:
        status, body = get_json(f"{base}/v1/models")
    assert status == 503
    assert "asks for an inference API key" in body["error"] and "none was sent" in body["error"]
    assert "--api-key-file" in body["error"]
    assert proxy.authorizations == [None]


@pytest.mark.slow
def test_an_unsafe_key_file_stops_the_ui_before_it_listens(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY)
    key_file.chmod(0o644)
    command = [sys.executable, "-m", "resnet18_triton.cli", "ui", "--api-key-file", str(key_file)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"the inference API key file {key_file} is readable by other users" in done.stderr
    assert KEY not in done.stdout + done.stderr


def test_the_ui_has_no_option_that_takes_the_key_itself() -> None:
    from click.testing import CliRunner

    from resnet18_triton.ui.cli import ui

    options = {option for param in ui.params for option in param.opts}
    assert "--api-key-file" in options and "--api-key" not in options
    result = CliRunner().invoke(ui, ["--help"])
    text = " ".join(result.output.split())
    assert contract.API_KEY_ENV_VAR in text and "never sent to the browser" in text
