"""The Kubernetes liveness probe sees a dead Python stub that Triton's health API misses.

A server of its own, with the stub watchdog OFF (as in a container whose watchdog could not mend
the model): the exec command of the liveness probe in deploy/kubernetes/triton-deployment.yaml
is run as written, except that ``--url`` names this server and ``resnet18-triton`` is the venv's
console script (the same entry point the image puts on PATH). It passes against a healthy server.
After the preprocess stub is killed with SIGKILL, Triton still says live and ready, and the probe
fails within the manifest's ``timeoutSeconds``; after the model is reloaded, it passes again. It
also fails while the ensemble is not loaded at all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from resnet18_triton import contract
from resnet18_triton.perf import harness
from resnet18_triton.server.embedded import EmbeddedServer
from resnet18_triton.server.watchdog import stub_processes

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = REPO_ROOT / "deploy" / "kubernetes" / "triton-deployment.yaml"
CONSOLE_SCRIPT = Path(sys.executable).parent / "resnet18-triton"


@pytest.fixture(scope="module")
def unwatched(
    exported_repository: Path, admin_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedServer]:
    options = harness.local_options(
        exported_repository, admin_key=admin_key, exit_timeout_s=5, restart_dead_stubs=False
    )
    log_path = tmp_path_factory.mktemp("liveness") / "tritonserver.log"
    with harness.local_server(options, log_path) as running:
        yield running


@pytest.fixture(scope="module")
def liveness() -> dict:
    deployment = yaml.safe_load(DEPLOYMENT.read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return container["livenessProbe"]


def manifest_command(liveness: dict, url: str) -> list[str]:
    """The probe's exec command with only the server address and the script's path changed."""
    command = list(liveness["exec"]["command"])
    # Fail here, not with a misleading probe result, if the manifest's form of the command moves.
    assert command[0] == "resnet18-triton" and command.count("--url") == 1, command
    assert CONSOLE_SCRIPT.is_file(), f"{CONSOLE_SCRIPT} missing: pip install -e . in this venv"
    command[0] = str(CONSOLE_SCRIPT)
    command[command.index("--url") + 1] = url
    return command


def run_manifest_probe(liveness: dict, url: str) -> tuple[int, str, float]:
    started = time.monotonic()
    result = subprocess.run(
        manifest_command(liveness, url),
        capture_output=True,
        text=True,
        timeout=liveness["timeoutSeconds"] + 30,
    )
    return result.returncode, result.stdout + result.stderr, time.monotonic() - started


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status == 200
    except OSError:
        return False


def model_control(url: str, admin_key: str, model: str, action: str) -> None:
    # unload_dependents false: only this model goes, the others stay as they are.
    body = b'{"parameters":{"unload_dependents":false}}' if action == "unload" else b""
    request = urllib.request.Request(
        f"http://{url}/v2/repository/models/{model}/{action}",
        data=body,
        method="POST",
        headers={contract.ADMIN_KEY_HEADER: admin_key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as reply:
        assert reply.status == 200


def reload_model(url: str, admin_key: str, model: str) -> None:
    model_control(url, admin_key, model, "unload")
    model_control(url, admin_key, model, "load")


def kill_stub(server: EmbeddedServer, model: str) -> int:
    assert server.process is not None
    stubs = [
        pid
        for pid, (name, alive) in stub_processes(server.process.pid).items()
        if name == model and alive
    ]
    assert len(stubs) == 1, stubs
    os.kill(stubs[0], signal.SIGKILL)
    return stubs[0]


def test_manifest_liveness_fails_within_its_timeout_on_a_dead_stub_and_passes_after_a_reload(
    unwatched: EmbeddedServer, admin_key: str, liveness: dict
) -> None:
    url = unwatched.url
    period = liveness["periodSeconds"]
    timeout = liveness["timeoutSeconds"]

    code, output, _ = run_manifest_probe(liveness, url)
    assert code == 0 and output.startswith("live:"), output

    kill_stub(unwatched, contract.PREPROCESS_MODEL)
    time.sleep(0.5)
    # What Triton 2.51 reports: still live and ready, with a dead stub.
    assert http_ok(f"http://{url}/v2/health/live")
    assert http_ok(f"http://{url}/v2/health/ready")

    code, output, seconds = run_manifest_probe(liveness, url)
    assert code == 1 and output.startswith("NOT LIVE"), output
    print(
        f"\nFIGURE liveness on a dead stub: the manifest's probe failed in {seconds:.2f} s "
        f"(Python start-up included); timeout {timeout} s, period {period} s"
    )
    # The run ends (failed) within the probe's own timeout, Python start-up included, so the
    # kubelet counts a failure rather than a timeout and restarts the pod after
    # failureThreshold x periodSeconds.
    assert seconds <= timeout

    reload_model(url, admin_key, contract.PREPROCESS_MODEL)
    code, output, _ = run_manifest_probe(liveness, url)
    assert code == 0 and output.startswith("live:"), output


def test_manifest_liveness_fails_while_the_ensemble_is_not_loaded(
    unwatched: EmbeddedServer, admin_key: str, liveness: dict
) -> None:
    url = unwatched.url
    model_control(url, admin_key, contract.ENSEMBLE_MODEL, "unload")
    try:
        code, output, _ = run_manifest_probe(liveness, url)
        assert code == 1 and output.startswith("NOT LIVE"), output
    finally:
        model_control(url, admin_key, contract.ENSEMBLE_MODEL, "load")
    code, output, _ = run_manifest_probe(liveness, url)
    assert code == 0 and output.startswith("live:"), output
