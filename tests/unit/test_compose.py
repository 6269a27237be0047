"""Checks on docker-compose.yml and docker/Dockerfile (the container path).

No Docker engine is needed: `docker-compose config` validates and renders the file offline.

PyYAML is imported directly, not through ``pytest.importorskip``: it is part of the project's
``test`` extra, and a missing PyYAML must fail these tests in CI rather than skip them silently.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib
import yaml

from resnet18_triton.contract import SERVED_MODELS

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
COMPOSE_BINARY = "docker-compose"

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


def _compose_binary() -> str:
    path = shutil.which(COMPOSE_BINARY)
    if path is None:
        message = (
            f"`{COMPOSE_BINARY}` not found; install it with `apt-get install docker-compose` "
            "(Debian's docker-compose 1.29 needs no Docker engine for `config`)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _clean_env() -> dict[str, str]:
    """The caller's environment without the variables the compose file reads."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("TRITON_", "COMPOSE_"))}


def _render(tmp_path: Path, **variables: str) -> dict:
    """`docker-compose config` output as a dict, with defaults unless variables are given."""
    binary = _compose_binary()
    # An empty env file, so that a developer's .env does not change the rendered defaults.
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    env = _clean_env()
    env.update(variables)
    result = subprocess.run(
        [binary, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert isinstance(rendered, dict) and "services" in rendered, result.stdout
    return rendered


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


# --- parsing helpers: accept both docker-compose 1.29 (short strings) and Compose v2 (long form)


def _port_bindings(service: dict) -> list[tuple[str, str, str]]:
    """(host_ip, published, target) for each published port; host_ip is '' when unbound."""
    bindings = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            bindings.append(
                (str(port.get("host_ip", "")), str(port.get("published", "")), str(port["target"]))
            )
            continue
        spec = str(port).split("/", 1)[0]
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            bindings.append((parts[0], parts[1], parts[2]))
        elif len(parts) == 2:
            bindings.append(("", parts[0], parts[1]))
        else:
            bindings.append(("", "", parts[0]))
    return bindings


def _volumes(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) for each volume."""
    volumes = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            volumes.append(
                (str(volume.get("source", "")), volume["target"], bool(volume.get("read_only")))
            )
            continue
        parts = str(volume).split(":")
        options = parts[2].split(",") if len(parts) > 2 else []
        volumes.append((parts[0], parts[1] if len(parts) > 1 else parts[0], "ro" in options))
    return volumes


def _command(service: dict) -> list[str]:
    command = service.get("command", [])
    if isinstance(command, str):
        command = command.split()
    return [str(token) for token in command]


def _options(command: list[str]) -> list[tuple[str, str]]:
    """(--flag, value) pairs from `--flag=value` and `--flag value` tokens."""
    options = []
    for index, token in enumerate(command):
        if not token.startswith("--"):
            continue
        name, equals, value = token.partition("=")
        if not equals and index + 1 < len(command) and not command[index + 1].startswith("-"):
            value = command[index + 1]
        options.append((name, value))
    return options


def _size_bytes(value: object) -> int:
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(value).lower())
    assert match, f"cannot parse size {value!r}"
    number, unit = match.groups()
    return int(float(number) * 1024 ** " kmgt".index(unit or " "))


def _cpu_limit(service: dict) -> float | None:
    value = service.get("cpus")
    if value is None:
        value = service.get("deploy", {}).get("resources", {}).get("limits", {}).get("cpus")
    return None if value is None else float(value)


# --- tests


def _config_quiet(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    return subprocess.run(
        [
            _compose_binary(),
            "--env-file",
            str(env_file),
            "-f",
            "docker-compose.yml",
            "config",
            "-q",
        ],
        cwd=REPO_ROOT,
        env={**_clean_env(), **variables},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_file_validates(tmp_path: Path) -> None:
    result = _config_quiet(tmp_path, TRITON_ADMIN_KEY=TEST_KEY)
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_an_admin_key(tmp_path: Path) -> None:
    """No known fallback key: without TRITON_ADMIN_KEY compose fails, naming the variable."""
    result = _config_quiet(tmp_path)
    assert result.returncode != 0
    assert "set TRITON_ADMIN_KEY to a long random secret" in result.stderr
    assert "change-me" not in COMPOSE_FILE.read_text()


def test_published_ports_bind_loopback_only(rendered: dict) -> None:
    for name, service in rendered["services"].items():
        for host_ip, published, target in _port_bindings(service):
            assert host_ip == "127.0.0.1", f"{name}: port {published}->{target} binds {host_ip!r}"


def test_server_publishes_http_and_metrics_but_not_grpc(server: dict) -> None:
    """gRPC stays inside: the documented request-size limit in front covers HTTP only."""
    targets = {target for _, _, target in _port_bindings(server)}
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
    mounts = {target: (source, read_only) for source, target, read_only in _volumes(server)}
    assert MODEL_MOUNT in mounts, f"no volume at {MODEL_MOUNT}: {server.get('volumes')}"
    source, read_only = mounts[MODEL_MOUNT]
    assert Path(source).name == "model_repository"
    assert read_only, f"{MODEL_MOUNT} must be mounted read-only"


def test_server_command_loads_the_served_models_explicitly(server: dict) -> None:
    command = _command(server)
    assert command and command[0] == "tritonserver", command
    options = _options(command)
    assert ("--model-repository", MODEL_MOUNT) in options
    assert ("--model-control-mode", "explicit") in options
    loaded = [value for name, value in options if name == "--load-model"]
    assert sorted(loaded) == sorted(SERVED_MODELS)
    # The ensemble needs its steps: it must be loaded last.
    assert loaded[-1] == SERVED_MODELS[-1]


def test_model_repository_api_is_restricted(server: dict) -> None:
    options = dict(_options(_command(server)))
    for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
        assert flag in options, f"{flag} missing"
        apis, _, key = options[flag].partition(":")
        assert "model-repository" in apis.split(","), options[flag]
        assert key.startswith("triton-admin-key="), options[flag]


def test_admin_key_comes_from_the_environment(tmp_path: Path) -> None:
    server = _render(tmp_path, TRITON_ADMIN_KEY="s3cret")["services"][SERVER_SERVICE]
    options = dict(_options(_command(server)))
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
    assert _size_bytes(server["shm_size"]) >= MIN_SHM_BYTES


def test_cpu_limit_defaults_to_the_onnx_thread_budget(server: dict) -> None:
    limit = _cpu_limit(server)
    assert limit is not None, "no CPU limit on triton"
    assert limit == DEFAULT_CPUS


def test_cpu_limit_follows_triton_cpus(tmp_path: Path) -> None:
    server = _render(tmp_path, TRITON_CPUS="3", TRITON_ADMIN_KEY=TEST_KEY)["services"][
        SERVER_SERVICE
    ]
    assert _cpu_limit(server) == 3.0


def test_perf_analyzer_is_only_in_perf_profile(server: dict, perf: dict) -> None:
    assert PERF_PROFILE in perf.get("profiles", [])
    # The server itself must start with a plain `docker-compose up`.
    assert not server.get("profiles")


def test_perf_analyzer_targets_the_server(perf: dict) -> None:
    assert SERVER_SERVICE in perf.get("depends_on", {})
    command = _command(perf)
    assert command and command[0] == "perf_analyzer", command
    assert f"{SERVER_SERVICE}:8000" in command
    # The SDK image must be the same release as the server image.
    assert perf["image"] == f"nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3-sdk"


def test_perf_analyzer_writes_reports_and_reads_test_data(perf: dict) -> None:
    mounts = {Path(source).name: read_only for source, _, read_only in _volumes(perf)}
    assert mounts.get("reports") is False, "./reports must be mounted read-write"
    assert mounts.get("data") is True, "./tests/data must be mounted read-only"


# --- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text()
    # Join continuation lines, drop comments and blank lines.
    text = re.sub(r"\\\s*\n", " ", text)
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_runs_as_non_root_user() -> None:
    users = [value for keyword, value in _dockerfile_instructions() if keyword == "USER"]
    assert users, "Dockerfile sets no USER: the server would run as root"
    user = users[-1].split(":", 1)[0]
    assert user not in {"root", "0"}, f"final USER is {users[-1]!r}"


def test_dockerfile_uses_the_release_of_the_embedded_server() -> None:
    bases = [value for keyword, value in _dockerfile_instructions() if keyword == "FROM"]
    assert bases == [f"nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3"], bases


def test_dockerfile_installs_python_backend_dependencies() -> None:
    runs = " ".join(value for keyword, value in _dockerfile_instructions() if keyword == "RUN")
    assert "pip" in runs and "--no-cache-dir" in runs
    assert "pillow" in runs.lower()
    assert re.search(r"numpy<2", runs), "numpy must be pinned below 2"
    assert "onnxruntime" in runs, "the fused INT8 model runs ONNX Runtime in its Python stub"


def test_dockerfile_pins_the_pillow_of_the_embedded_server() -> None:
    """Bit-identical resizing in both places needs one Pillow version: the Dockerfile's pin,
    the server extra's pin and the Pillow these tests run with agree."""
    from PIL import __version__ as installed

    runs = " ".join(value for keyword, value in _dockerfile_instructions() if keyword == "RUN")
    (docker_pin,) = re.findall(r"pillow==([\w.]+)", runs, flags=re.IGNORECASE)
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    server_extra = pyproject["project"]["optional-dependencies"]["server"]
    (extra_pin,) = [pin.split("==")[1] for pin in server_extra if pin.startswith("pillow==")]
    assert docker_pin == extra_pin == installed


# --- profile "replicas": N Triton replicas behind nginx

REPLICAS_PROFILE = "replicas"
PROXY_SERVICE = "proxy"


def _replica_names(rendered: dict) -> list[str]:
    return sorted(
        name
        for name, service in rendered["services"].items()
        if name.startswith(f"{SERVER_SERVICE}-") and REPLICAS_PROFILE in service.get("profiles", [])
    )


def test_replicas_profile_has_two_replicas_and_a_proxy(rendered: dict) -> None:
    assert _replica_names(rendered) == ["triton-1", "triton-2"]
    assert REPLICAS_PROFILE in rendered["services"][PROXY_SERVICE].get("profiles", [])


def test_replicas_run_the_same_server_command_as_the_single_server(
    rendered: dict, server: dict
) -> None:
    for name in _replica_names(rendered):
        replica = rendered["services"][name]
        assert _command(replica) == _command(server), name
        assert _cpu_limit(replica) == DEFAULT_CPUS
        assert replica.get("healthcheck", {}).get("test") == server["healthcheck"]["test"]


def test_in_the_replicas_profile_only_the_proxy_publishes_ports(rendered: dict) -> None:
    for name in _replica_names(rendered):
        assert not rendered["services"][name].get("ports"), f"{name} publishes a port"
    proxy = rendered["services"][PROXY_SERVICE]
    bindings = _port_bindings(proxy)
    assert {target for _, _, target in bindings} == {"8080", "8081"}
    assert {host_ip for host_ip, _, _ in bindings} == {"127.0.0.1"}


def test_proxy_waits_for_healthy_replicas_and_runs_unprivileged(rendered: dict) -> None:
    proxy = rendered["services"][PROXY_SERVICE]
    depends = proxy.get("depends_on", {})
    assert sorted(depends) == _replica_names(rendered)
    assert all(entry.get("condition") == "service_healthy" for entry in depends.values())
    assert proxy.get("user", "").split(":")[0] not in ("", "0", "root")
    assert proxy.get("read_only") is True
    assert "ALL" in proxy.get("cap_drop", [])


def test_proxy_mounts_the_config_rendered_for_the_replica_service_names(rendered: dict) -> None:
    from resnet18_triton.deploy import render

    proxy = rendered["services"][PROXY_SERVICE]
    sources = {Path(source).resolve(): read_only for source, _, read_only in _volumes(proxy)}
    config = (REPO_ROOT / render.COMPOSE_PROXY_CONFIG).resolve()
    assert sources.get(config) is True, f"{config} not mounted read-only: {proxy.get('volumes')}"
    text = config.read_text()
    for name in _replica_names(rendered):
        assert f"server {name}:8000 " in text and f"server {name}:8001 " in text, name
    command = _command(proxy)
    config_argument = command[command.index("-c") + 1]
    assert any(target == config_argument for _, target, _ in _volumes(proxy))
