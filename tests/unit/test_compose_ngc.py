"""Checks on docker-compose.ngc.yml and docker/ngc.Dockerfile: the NGC alternative, which cannot
be pulled here, so it is only rendered and read, never run.

No Docker engine is needed: `docker-compose config` validates and renders the file offline.

PyYAML is imported directly, not through ``pytest.importorskip``: it is part of the project's
``test`` extra, and a missing PyYAML must fail these tests in CI rather than skip them silently.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import tomllib

from resnet18_triton.contract import SERVED_MODELS
from tests.compose_support import (
    REPO_ROOT,
    clean_env,
    command_options,
    compose_binary,
    cpu_limit,
    dockerfile_instructions,
    port_bindings,
    render,
    service_command,
    size_bytes,
    volumes,
)

COMPOSE_FILE = REPO_ROOT / "docker-compose.ngc.yml"
DOCKERFILE = REPO_ROOT / "docker" / "ngc.Dockerfile"

SERVER_SERVICE = "triton"
PERF_SERVICE = "perf_analyzer"
PERF_PROFILE = "perf"
MODEL_MOUNT = "/models"
# Triton's release that matches the embedded server (nvidia-pytriton 0.7.0 = Triton 2.51).
TRITON_RELEASE = "24.10"
# Default CPU quota = ONNX instances (1) x intra-op threads (2) in the exported config.
DEFAULT_CPUS = 2.0
# Docker's default /dev/shm is 64 MB; the Python backend needs more.
MIN_SHM_BYTES = 256 * 1024**2


# compose refuses to start without a key; every rendering but the one that checks that sets one.
TEST_KEY = "compose-test-key"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _render(tmp_path_factory.mktemp("compose"), TRITON_ADMIN_KEY=TEST_KEY)


@pytest.fixture(scope="module")
def server(rendered: dict) -> dict:
    assert SERVER_SERVICE in rendered["services"], sorted(rendered["services"])
    return rendered["services"][SERVER_SERVICE]


@pytest.fixture(scope="module")
def perf(rendered: dict) -> dict:
    assert PERF_SERVICE in rendered["services"], sorted(rendered["services"])
    return rendered["services"][PERF_SERVICE]


def _render(tmp_path: Path, **variables: str) -> dict:
    return render(COMPOSE_FILE, tmp_path, **variables)


# --- tests


def _config_quiet(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    return subprocess.run(
        [
            compose_binary(),
            "--env-file",
            str(env_file),
            "-f",
            str(COMPOSE_FILE),
            "config",
            "-q",
        ],
        cwd=REPO_ROOT,
        env={**clean_env(), **variables},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_compose_file_validates(tmp_path: Path) -> None:
    result = _config_quiet(tmp_path, TRITON_ADMIN_KEY=TEST_KEY)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_compose_refuses_to_start_without_an_admin_key(tmp_path: Path) -> None:
    """No known fallback key: without TRITON_ADMIN_KEY compose fails, naming the variable."""
    result = _config_quiet(tmp_path)
    assert result.returncode != 0
    assert "set TRITON_ADMIN_KEY to a long random secret" in result.stderr
    assert "change-me" not in COMPOSE_FILE.read_text()


def test_published_ports_bind_loopback_only(rendered: dict) -> None:
    for name, service in rendered["services"].items():
        for host_ip, published, target in port_bindings(service):
            assert host_ip == "127.0.0.1", f"{name}: port {published}->{target} binds {host_ip!r}"


def test_server_publishes_http_and_metrics_but_not_grpc(server: dict) -> None:
    """gRPC stays inside: the documented request-size limit in front covers HTTP only."""
    targets = {target for _, _, target in port_bindings(server)}
    assert targets == {"8000", "8002"}


def test_server_runs_read_only_without_capabilities(server: dict) -> None:
    assert server.get("read_only") is True
    assert server.get("cap_drop") == ["ALL"]
    assert "no-new-privileges:true" in server.get("security_opt", [])
    tmpfs = server.get("tmpfs", [])
    tmpfs = [tmpfs] if isinstance(tmpfs, str) else tmpfs
    assert any(str(entry).split(":")[0] == "/tmp" for entry in tmpfs), tmpfs


def test_memory_and_process_count_are_limited(server: dict) -> None:
    memory = str(server.get("mem_limit", ""))
    assert memory, "no mem_limit: one runaway request could exhaust the host"
    assert 0 < int(server.get("pids_limit", 0)) <= 4096


def test_model_repository_is_mounted_read_only(server: dict) -> None:
    mounts = {target: (source, read_only) for source, target, read_only in volumes(server)}
    assert MODEL_MOUNT in mounts, f"no volume at {MODEL_MOUNT}: {server.get('volumes')}"
    source, read_only = mounts[MODEL_MOUNT]
    assert Path(source).name == "model_repository"
    assert read_only, f"{MODEL_MOUNT} must be mounted read-only"


def test_server_command_loads_the_served_models_explicitly(server: dict) -> None:
    command = service_command(server)
    assert command and command[0] == "tritonserver", command
    options = command_options(command)
    assert ("--model-repository", MODEL_MOUNT) in options
    assert ("--model-control-mode", "explicit") in options
    loaded = [value for name, value in options if name == "--load-model"]
    assert sorted(loaded) == sorted(SERVED_MODELS)
    # The ensemble needs its steps: it must be loaded last.
    assert loaded[-1] == SERVED_MODELS[-1]


def test_model_repository_api_is_restricted(server: dict) -> None:
    options = dict(command_options(service_command(server)))
    for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
        assert flag in options, f"{flag} missing"
        apis, _, key = options[flag].partition(":")
        assert "model-repository" in apis.split(","), options[flag]
        assert key.startswith("triton-admin-key="), options[flag]


@pytest.mark.slow
def test_admin_key_comes_from_the_environment(tmp_path: Path) -> None:
    server = _render(tmp_path, TRITON_ADMIN_KEY="s3cret")["services"][SERVER_SERVICE]
    options = dict(command_options(service_command(server)))
    assert options["--http-restricted-api"].endswith("triton-admin-key=s3cret")
    assert options["--grpc-restricted-protocol"].endswith("triton-admin-key=s3cret")


def test_healthcheck_targets_ready_endpoint(server: dict) -> None:
    test = server.get("healthcheck", {}).get("test")
    assert test, "triton has no healthcheck"
    text = " ".join(test) if isinstance(test, list) else str(test)
    assert "/v2/health/ready" in text
    assert ":8000/" in text


def test_shm_size_is_large_enough_for_python_backend(server: dict) -> None:
    assert "shm_size" in server, "shm_size not set (Docker's 64 MB default is too small)"
    assert size_bytes(server["shm_size"]) >= MIN_SHM_BYTES


def test_cpu_limit_defaults_to_the_onnx_thread_budget(server: dict) -> None:
    limit = cpu_limit(server)
    assert limit is not None, "no CPU limit on triton"
    assert limit == DEFAULT_CPUS


@pytest.mark.slow
def test_cpu_limit_follows_triton_cpus(tmp_path: Path) -> None:
    server = _render(tmp_path, TRITON_CPUS="3", TRITON_ADMIN_KEY=TEST_KEY)["services"][
        SERVER_SERVICE
    ]
    assert cpu_limit(server) == 3.0


def test_perf_analyzer_is_only_in_perf_profile(server: dict, perf: dict) -> None:
    assert PERF_PROFILE in perf.get("profiles", [])
    # The server itself must start with a plain `docker-compose up`.
    assert not server.get("profiles")


def test_perf_analyzer_targets_the_server(perf: dict) -> None:
    assert SERVER_SERVICE in perf.get("depends_on", {})
    command = service_command(perf)
    assert command and command[0] == "perf_analyzer", command
    assert f"{SERVER_SERVICE}:8000" in command
    # The SDK image must be the same release as the server image.
    assert perf["image"] == f"nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3-sdk"


def test_perf_analyzer_writes_reports_and_reads_test_data(perf: dict) -> None:
    mounts = {Path(source).name: read_only for source, _, read_only in volumes(perf)}
    assert mounts.get("reports") is False, "./reports must be mounted read-write"
    assert mounts.get("data") is True, "./tests/data must be mounted read-only"


# --- Dockerfile


def test_dockerfile_runs_as_non_root_user() -> None:
    users = [value for keyword, value in dockerfile_instructions(DOCKERFILE) if keyword == "USER"]
    assert users, "Dockerfile sets no USER: the server would run as root"
    user = users[-1].split(":", 1)[0]
    assert user not in {"root", "0"}, f"final USER is {users[-1]!r}"


def test_dockerfile_uses_the_release_of_the_embedded_server() -> None:
    bases = [value for keyword, value in dockerfile_instructions(DOCKERFILE) if keyword == "FROM"]
    assert bases == [f"nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3"], bases


def test_dockerfile_installs_python_backend_dependencies() -> None:
    runs = " ".join(
        value for keyword, value in dockerfile_instructions(DOCKERFILE) if keyword == "RUN"
    )
    assert "pip" in runs and "--no-cache-dir" in runs
    assert "pillow" in runs.lower()
    assert re.search(r"numpy<2", runs), "numpy must be pinned below 2"
    assert "onnxruntime" in runs, "the fused INT8 model runs ONNX Runtime in its Python stub"


def test_dockerfile_pins_the_pillow_of_the_embedded_server() -> None:
    """Bit-identical resizing in both places needs one Pillow version: the Dockerfile's pin,
    the server extra's pin and the Pillow these tests run with agree."""
    from PIL import __version__ as installed

    runs = " ".join(
        value for keyword, value in dockerfile_instructions(DOCKERFILE) if keyword == "RUN"
    )
    (docker_pin,) = re.findall(r"pillow==([\w.]+)", runs, flags=re.IGNORECASE)
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    server_extra = pyproject["project"]["optional-dependencies"]["server"]
    (extra_pin,) = [pin.split("==")[1] for pin in server_extra if pin.startswith("pillow==")]
    assert docker_pin == extra_pin == installed
