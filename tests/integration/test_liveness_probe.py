"""The inference-based liveness check sees a dead Python stub that Triton's health API misses.

A server of its own, with the stub watchdog OFF (as in a container, where nothing reloads the
model): the preprocess stub is killed with SIGKILL, Triton still says live and ready, and both
forms of the check fail: ``resnet18-triton health --probe`` and the exact curl command of the
Kubernetes liveness probe (deploy/kubernetes/triton-deployment.yaml). After the model is
reloaded, both pass again.
"""

from __future__ import annotations

import os
import shutil
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
from resnet18_triton.client.probe import probe_request
from resnet18_triton.server.embedded import EmbeddedServer, ServerOptions, free_port
from resnet18_triton.server.watchdog import stub_processes

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = REPO_ROOT / "deploy" / "kubernetes" / "triton-deployment.yaml"
MANIFEST_URL = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def unwatched(
    exported_repository: Path, admin_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedServer]:
    options = ServerOptions(
        repository=exported_repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        admin_key=admin_key,
        exit_timeout_s=5,
        restart_dead_stubs=False,
    )
    log_path = tmp_path_factory.mktemp("liveness") / "tritonserver.log"
    with open(log_path, "w") as log, EmbeddedServer(options, log_stream=log) as running:
        yield running


@pytest.fixture(scope="module")
def liveness() -> dict:
    deployment = yaml.safe_load(DEPLOYMENT.read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return container["livenessProbe"]


@pytest.fixture(scope="module")
def probe_body(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("probe") / "probe-request.bin"
    path.write_bytes(probe_request()[0])
    return path


def run_cli_probe(url: str, timeout_s: float) -> tuple[int, str, float]:
    started = time.monotonic()
    result = subprocess.run(
        [
            *(sys.executable, "-m", "resnet18_triton.cli", "health", "--probe"),
            *("--url", url, "--timeout", str(timeout_s)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stdout + result.stderr, time.monotonic() - started


def run_manifest_probe(liveness: dict, url: str, body: Path) -> tuple[int, str, float]:
    """The Kubernetes exec probe, verbatim except for the server address and the body's path."""
    command = [
        argument.replace(MANIFEST_URL, f"http://{url}").replace(
            "@/probe/probe-request.bin", f"@{body}"
        )
        for argument in liveness["exec"]["command"]
    ]
    started = time.monotonic()
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=liveness["timeoutSeconds"] + 5
    )
    return result.returncode, result.stdout + result.stderr, time.monotonic() - started


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status == 200
    except OSError:
        return False


def reload_model(url: str, admin_key: str, model: str) -> None:
    for action, body in (("unload", b'{"parameters":{"unload_dependents":false}}'), ("load", b"")):
        request = urllib.request.Request(
            f"http://{url}/v2/repository/models/{model}/{action}",
            data=body,
            method="POST",
            headers={contract.ADMIN_KEY_HEADER: admin_key, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as reply:
            assert reply.status == 200


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


@pytest.fixture(scope="module")
def curl() -> str:
    path = shutil.which("curl")
    if path is None:
        pytest.skip("curl not installed (the Triton image has it; apt-get install curl)")
    return path


def test_inference_based_liveness_fails_within_its_period_on_a_dead_stub_and_recovers(
    unwatched: EmbeddedServer, admin_key: str, liveness: dict, probe_body: Path, curl: str
) -> None:
    url = unwatched.url
    period = liveness["periodSeconds"]
    timeout = liveness["timeoutSeconds"]

    code, output, _ = run_cli_probe(url, timeout_s=4)
    assert code == 0 and output.startswith("live:"), output
    code, output, _ = run_manifest_probe(liveness, url, probe_body)
    assert code == 0, output

    kill_stub(unwatched, contract.PREPROCESS_MODEL)
    time.sleep(0.5)
    # What Triton 2.51 reports: still live and ready, with a dead stub.
    assert http_ok(f"http://{url}/v2/health/live")
    assert http_ok(f"http://{url}/v2/health/ready")

    code, output, cli_seconds = run_cli_probe(url, timeout_s=4)
    assert code == 1 and output.startswith("NOT LIVE"), output
    code, output, curl_seconds = run_manifest_probe(liveness, url, probe_body)
    assert code != 0, output
    print(
        f"\nFIGURE liveness on a dead stub: health --probe failed in {cli_seconds:.2f} s "
        f"(process included), manifest curl probe in {curl_seconds:.2f} s; period {period} s"
    )
    # Each probe run ends (failed) within the probe's own timeout, so the next run finds the
    # failure and the kubelet restarts the pod after failureThreshold x periodSeconds.
    assert curl_seconds <= timeout
    assert cli_seconds <= timeout + 5  # plus starting a Python interpreter

    reload_model(url, admin_key, contract.PREPROCESS_MODEL)
    code, output, _ = run_cli_probe(url, timeout_s=4)
    assert code == 0 and output.startswith("live:"), output
    code, output, _ = run_manifest_probe(liveness, url, probe_body)
    assert code == 0, output
