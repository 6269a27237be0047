"""Run the real ``resnet18-triton ui`` app (a subprocess, as a user starts it) and talk to it
with the real curl binary."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet18_triton.server.embedded import free_port
from tests.support import stop_process

CLI = [sys.executable, "-m", "resnet18_triton.cli"]
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class CurlAnswer:
    status: int
    body: dict[str, Any]
    headers: str


@contextlib.contextmanager
def running_ui(triton_url: str, *options: str) -> Iterator[str]:
    """Start ``resnet18-triton ui`` on a free loopback port; yields its base URL."""
    port = free_port()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [*CLI, "ui", "--url", triton_url, "--port", str(port), *options],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_until_listening(base, process, log)
            yield base
        finally:
            stop_process(process, signal.SIGINT, timeout_s=15)


def _wait_until_listening(base: str, process: subprocess.Popen[bytes], log: Any) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the ui app exited with {process.returncode}:\n{log.read()}")
        try:
            with urllib.request.urlopen(f"{base}/openapi.json", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise RuntimeError(f"the ui app did not listen within {START_TIMEOUT_S:g} s")


def curl_command(base: str, files: Sequence[Path], query: str = "") -> list[str]:
    """``curl -F image=@FILE ...`` printing the headers, then the body."""
    command = ["curl", "--silent", "--show-error", "--include", "--max-time", "120"]
    for path in files:
        command += ["-F", f"image=@{path}"]
    return [*command, f"{base}/v1/classify{query}"]


def parse_curl_output(output: bytes) -> CurlAnswer:
    """Split ``curl --include`` output into status, JSON body and header text."""
    text = output.decode("utf-8")
    head, _, body = text.rpartition("\r\n\r\n")
    # After an interim "HTTP/1.1 100 Continue" block comes the final response's.
    headers = head.rpartition("\r\n\r\n")[2]
    status = int(headers.split("\r\n")[0].split()[1]) if headers else 0
    return CurlAnswer(status, json.loads(body), headers)


def curl(base: str, files: Sequence[Path], query: str = "") -> CurlAnswer:
    done = subprocess.run(curl_command(base, files, query), capture_output=True, timeout=150)
    assert done.returncode == 0, done.stderr.decode()
    return parse_curl_output(done.stdout)


def classify_json(triton_url: str, files: Sequence[Path], *options: str) -> list[dict[str, Any]]:
    """What ``resnet18-triton classify --json`` prints, run from the files' directory so that
    each ``image`` is the bare file name, as the browser and curl send it."""
    directory = files[0].parent
    assert all(path.parent == directory for path in files)
    done = subprocess.run(
        [*CLI, "classify", "--url", triton_url, "--json", *options, *(p.name for p in files)],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 1), done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]
