"""The launcher: clear failures (port taken, empty repository), clean stop with no orphans."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from resnet18_triton import contract
from resnet18_triton.errors import ServerStartError
from resnet18_triton.perf import harness
from resnet18_triton.repository.layout import stub_model
from resnet18_triton.server.embedded import EmbeddedServer, ServerOptions, free_port
from tests.support import missing

CLI = [sys.executable, "-m", "resnet18_triton.cli"]


def test_empty_repository_fails_with_a_hint(tmp_path: Path) -> None:
    server = EmbeddedServer(ServerOptions(repository=tmp_path, http_port=free_port()))
    with pytest.raises(ServerStartError, match="resnet18-triton export"):
        server.start()


def test_port_taken_is_named(exported_repository: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        options = dataclasses.replace(harness.local_options(exported_repository), http_port=port)
        with pytest.raises(ServerStartError, match=f"127.0.0.1:{port}"):
            EmbeddedServer(options).start()


def _wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("serve did not become ready")


class _StderrLines:
    """Collects a process's stderr lines in a thread, so a test can wait for one of them (the
    launcher's own "ready:" comes after Triton's HTTP readiness)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stderr:
            self.lines.append(line)

    def wait_for(self, prefix: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(line.startswith(prefix) for line in self.lines):
                return
            assert process.poll() is None, "".join(self.lines)
            time.sleep(0.1)
        raise AssertionError(f"no line starting with {prefix!r}: {''.join(self.lines)}")

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_without_orphans(exported_repository: Path, stop_signal: int) -> None:
    process = subprocess.Popen(
        _serve_command(exported_repository, free_port(), "--exit-timeout", "5"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr_lines = _StderrLines(process)
    try:
        # The launcher's own "ready:" line: a signal before it is a start-up abort (exit 130).
        stderr_lines.wait_for("ready:", process)
        family = psutil.Process(process.pid).children(recursive=True)
        assert any("tritonserver" in p.name() for p in family)
        # One backend stub per model instance: preprocess and the ONNX classifier (the softmax
        # is in its graph; there is no postprocess model).
        stubs = sorted(filter(None, (stub_model(p.cmdline()) for p in family)))
        assert stubs == sorted([contract.PREPROCESS_MODEL, contract.ONNX_MODEL])
        process.send_signal(stop_signal)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = stderr_lines.text()
    assert process.returncode == 0, stderr
    assert "stopped" in stderr
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"orphans left: {[p.pid for p in alive]}"


def test_killed_launcher_takes_the_server_with_it(exported_repository: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        _serve_command(exported_repository, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_ready(f"127.0.0.1:{port}", process)
        family = psutil.Process(process.pid).children(recursive=True)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, f"orphans left after SIGKILL of the launcher: {[p.pid for p in alive]}"


def _serve_command(repository: Path, port: int, *extra: str) -> list[str]:
    """``serve --quiet`` of ``repository`` on HTTP ``port`` and free other ports."""
    return [
        *CLI, "serve", "--repo", str(repository), *harness.serve_port_arguments(port), "--quiet",
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_start_up_stops_the_launcher_before_ready(
    exported_repository: Path, stop_signal: int
) -> None:
    process = subprocess.Popen(
        _serve_command(exported_repository, free_port(), "--ready-timeout", "600"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        family = _wait_for_tritonserver(process)
        process.send_signal(stop_signal)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "start-up interrupted" in stderr and "ready:" not in stderr, stderr
    # Triton 2.51 takes the admin key only on its argv: serve says so, with the mitigation.
    assert "hidepid=2" in stderr and "dedicated user" in stderr
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"orphans left: {[p.pid for p in alive]}"


def _wait_for_tritonserver(process: subprocess.Popen, timeout_s: float = 120) -> list:
    """The launcher's children as soon as tritonserver is among them (models still loading)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        family = psutil.Process(process.pid).children(recursive=True)
        if any("tritonserver" in p.name() for p in family):
            return family
        time.sleep(0.05)
    raise AssertionError("serve never started tritonserver")


def test_an_ipv6_host_becomes_ready_and_answers(exported_repository: Path, reference) -> None:
    from tests.support import PROBABILITY_ATOL, classify_ensemble, encode, gradient_image

    options = harness.local_options(exported_repository, host="::1", exit_timeout_s=5)
    image = encode(gradient_image(320, 240, seed=77), "JPEG")
    with harness.local_server(options) as server:
        assert server.url == f"[::1]:{options.http_port}"
        served = classify_ensemble(server.url, contract.ENSEMBLE_MODEL, [image])
    assert abs(served - reference.probabilities([image])).max() <= PROBABILITY_ATOL


def test_every_stub_starts_with_the_configured_shared_memory(server: EmbeddedServer) -> None:
    """The stub's command line carries its region's start and growth sizes (Triton 2.51: the
    model path, the region name, then the two sizes); both Python-based backends got ours."""
    stubs = {
        stub_model(process.cmdline()): process.cmdline()
        for process in psutil.Process(server.pid).children()
    }
    expected = [str(server.options.python_shm_default_bytes)]
    expected.append(str(server.options.python_shm_growth_bytes))
    assert {contract.PREPROCESS_MODEL, contract.ONNX_MODEL} <= set(stubs)
    for model in (contract.PREPROCESS_MODEL, contract.ONNX_MODEL):
        assert stubs[model][3:5] == expected, stubs[model]
    assert server.options.python_shm_default_bytes > 2**20  # more than Triton's 1 MiB default


def test_the_server_and_its_stubs_run_on_tcmalloc_when_it_is_installed(server) -> None:
    from resnet18_triton.server.embedded import allocator_library

    library = allocator_library("tcmalloc")
    if library is None:
        missing("libtcmalloc-minimal4 is not installed (scripts/setup.sh installs it)")
    root = psutil.Process(server.pid)
    stubs = [child for child in root.children(recursive=True) if stub_model(child.cmdline())]
    assert stubs, "no Python-backend stub found"
    for process in (root, *stubs):
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert library.name in maps, process.cmdline()[:2]
