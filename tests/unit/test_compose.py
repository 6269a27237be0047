"""Checks on docker-compose.yml and the project's own images, read without a Docker engine.

The same file runs for real in tests/container (a real Docker engine); these checks render it
with `docker-compose config` and read the Dockerfiles, so a mistake shows in seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from resnet18_triton.deploy import proxy, render
from tests.compose_support import (
    REPO_ROOT,
    cpu_limit,
    dockerfile_instructions,
    service_command,
    size_bytes,
    volumes,
)
from tests.compose_support import (
    render as render_compose,
)

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
SERVER_DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
PROXY_DOCKERFILE = REPO_ROOT / "docker" / "proxy.Dockerfile"
REPOSITORY_DOCKERFILE = REPO_ROOT / "docker" / "model-repository.Dockerfile"
SERVER_SERVICES = ("triton", "triton-1", "triton-2")
REPLICAS = ("triton-1", "triton-2")
KEY_FILE_IN_CONTAINER = "/run/secrets/admin_key"
PROXY_CONFIG = "/etc/nginx/resnet18/nginx.conf"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return render_compose(COMPOSE_FILE, tmp_path_factory.mktemp("compose"))


@pytest.fixture(scope="module")
def services(rendered: dict) -> dict:
    return rendered["services"]


def _flag(command: list[str], name: str) -> str:
    values = [part.split("=", 1)[1] for part in command if part.startswith(f"{name}=")]
    assert len(values) == 1, f"{name} given {len(values)} times in {command}"
    return values[0]


def test_every_server_runs_the_projects_image_with_serve(services: dict) -> None:
    for name in SERVER_SERVICES:
        service = services[name]
        assert service["image"] == "resnet18-triton/server:0.1.0", name
        command = service_command(service)
        assert command[0] == "serve" and _flag(command, "--repo") == "/models", command


def test_no_service_needs_an_image_from_a_registry(services: dict) -> None:
    for name, service in services.items():
        assert service["image"].startswith("resnet18-triton/"), (name, service["image"])


def test_servers_listen_on_loopback_of_the_host(services: dict) -> None:
    """Host networking and serve's default --host (127.0.0.1): no port reaches other machines."""
    for name, service in services.items():
        assert service.get("network_mode") == "host", name
        assert not service.get("ports"), f"{name} publishes ports: with host networking it binds"
        assert "--host" not in " ".join(service_command(service)), name


def test_containers_run_read_only_unprivileged_and_limited(services: dict) -> None:
    for name, service in services.items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("user", "").split(":")[0] not in ("", "0", "root"), name
        assert any(str(mount).startswith("/tmp") for mount in service.get("tmpfs", [])), name
        assert size_bytes(service["mem_limit"]) > 0 and service.get("pids_limit"), name


def test_the_model_repository_is_mounted_read_only(services: dict) -> None:
    for name in SERVER_SERVICES:
        mounts = {target: read_only for _, target, read_only in volumes(services[name])}
        assert mounts.get("/models") is True, (name, services[name].get("volumes"))


def test_the_admin_key_comes_from_a_secret_file_never_a_command_line(
    rendered: dict, services: dict
) -> None:
    assert rendered["secrets"]["admin_key"]["file"].endswith("secrets/admin-key")
    for name in SERVER_SERVICES:
        service = services[name]
        environment = service.get("environment", {})
        assert environment.get("RESNET18_TRITON_ADMIN_KEY_FILE") == KEY_FILE_IN_CONTAINER
        secrets = [
            entry if isinstance(entry, str) else entry["source"] for entry in service["secrets"]
        ]
        assert secrets == ["admin_key"], name
        assert "key" not in " ".join(service_command(service)).lower(), name


def test_the_healthcheck_classifies_a_probe_image_on_the_services_own_port(
    services: dict,
) -> None:
    for name in SERVER_SERVICES:
        service = services[name]
        test = service["healthcheck"]["test"]
        assert test[:4] == ["CMD", "resnet18-triton", "health", "--probe"], test
        port = _flag(service_command(service), "--http-port")
        assert test[test.index("--url") + 1] == f"127.0.0.1:{port}", (name, test)


def test_the_edge_fronts_the_default_server_on_tritons_standard_ports(services: dict) -> None:
    text = (REPO_ROOT / render.COMPOSE_EDGE_CONFIG).read_text()
    assert text == proxy.render(proxy.compose_edge_settings())
    command = service_command(services["triton"])
    upstream = proxy.COMPOSE_SERVER_UPSTREAM
    assert _flag(command, "--http-port") == str(upstream.http_port)
    assert _flag(command, "--grpc-port") == str(upstream.grpc_port)
    assert f"server 127.0.0.1:{upstream.http_port} " in text
    assert "listen 127.0.0.1:8000;" in text and "listen 127.0.0.1:8001 http2;" in text
    mounts = {Path(source).resolve(): target for source, target, _ in volumes(services["edge"])}
    canaries = proxy.compose_edge_settings().canaries
    assert canaries is not None
    assert mounts == {
        (REPO_ROOT / render.COMPOSE_EDGE_CONFIG).resolve(): PROXY_CONFIG,
        (REPO_ROOT / render.COMPOSE_PROXY_SCRIPT).resolve(): canaries.script,
        (REPO_ROOT / "model_repository").resolve(): canaries.repository,
    }
    assert services["edge"]["depends_on"] == {"triton": {"condition": "service_healthy"}}


def test_both_proxies_read_canaries_from_the_repository_the_servers_serve_read_only(
    services: dict,
) -> None:
    served = {source for source, target, _ in volumes(services["triton"]) if target == "/models"}
    for name, settings in (
        ("edge", proxy.compose_edge_settings()),
        ("proxy", proxy.compose_settings(len(REPLICAS))),
    ):
        assert settings.canaries is not None, name
        text = proxy.render(settings)
        assert f'set $canary_repository "{settings.canaries.repository}";' in text, name
        mounted = [
            (source, read_only)
            for source, target, read_only in volumes(services[name])
            if target == settings.canaries.repository
        ]
        assert [source for source, _ in mounted] == sorted(served) and mounted[0][1], name


def test_shared_memory_and_cpus_fit_the_exported_budget(services: dict) -> None:
    for name in SERVER_SERVICES:
        assert size_bytes(services[name]["shm_size"]) >= 256 * 1024**2, name
        assert cpu_limit(services[name]) == 2.0, name


def test_docker_waits_longer_than_the_servers_drain(services: dict) -> None:
    from resnet18_triton.contract import SERVER_EXIT_TIMEOUT_S

    for name in SERVER_SERVICES:
        grace = services[name]["stop_grace_period"]
        assert grace.endswith("s") and int(grace[:-1]) > SERVER_EXIT_TIMEOUT_S, grace


def test_only_the_server_and_its_edge_start_without_a_profile(services: dict) -> None:
    assert not services["triton"].get("profiles") and not services["edge"].get("profiles")
    for name in (*REPLICAS, "proxy"):
        assert services[name].get("profiles") == ["replicas"], name


def test_the_proxy_config_names_the_replicas_ports(services: dict) -> None:
    text = (REPO_ROOT / render.COMPOSE_PROXY_CONFIG).read_text()
    assert text == proxy.render(proxy.compose_settings(len(REPLICAS)))
    for index, name in enumerate(REPLICAS, start=1):
        upstream = proxy.compose_replica_upstream(index)
        command = service_command(services[name])
        assert _flag(command, "--http-port") == str(upstream.http_port), name
        assert _flag(command, "--grpc-port") == str(upstream.grpc_port), name
        assert f"server 127.0.0.1:{upstream.http_port} " in text
    assert "listen 127.0.0.1:8080 ssl;" in text


def test_the_proxy_waits_for_healthy_replicas_and_mounts_its_config(services: dict) -> None:
    service = services["proxy"]
    assert sorted(service["depends_on"]) == list(REPLICAS)
    assert all(entry["condition"] == "service_healthy" for entry in service["depends_on"].values())
    mounts = {Path(source).resolve(): target for source, target, _ in volumes(service)}
    assert mounts[(REPO_ROOT / render.COMPOSE_PROXY_CONFIG).resolve()] == PROXY_CONFIG
    settings = proxy.compose_settings(len(REPLICAS))
    assert settings.auth is not None
    assert mounts[(REPO_ROOT / render.COMPOSE_PROXY_SCRIPT).resolve()] == settings.auth.script


def test_the_proxy_reads_key_hashes_and_its_certificate_from_its_secrets_folder(
    services: dict, rendered: dict
) -> None:
    settings = proxy.compose_settings(len(REPLICAS))
    assert settings.auth is not None and settings.tls is not None
    for path in (settings.auth.key_map, settings.tls.certificate, settings.tls.key):
        assert Path(path).parent == Path(proxy.COMPOSE_SECRETS_DIR), path
    mounts = {target: (Path(source), ro) for source, target, ro in volumes(services["proxy"])}
    assert mounts[proxy.COMPOSE_SECRETS_DIR] == ((REPO_ROOT / "secrets" / "proxy").resolve(), True)
    # No compose file secret but the admin key: docker-compose checks every service's secret
    # files on every command, so `up -d triton` would warn about the proxy's missing ones.
    assert sorted(rendered["secrets"]) == ["admin_key"]
    assert "secrets" not in services["proxy"]
    # The replicas get the admin key, never the proxy's secrets.
    for name in REPLICAS:
        assert [_secret_name(entry) for entry in services[name]["secrets"]] == ["admin_key"]


def _secret_name(entry: str | dict) -> str:
    return entry if isinstance(entry, str) else str(entry["source"])


@pytest.mark.parametrize("name", ["edge", "proxy"])
def test_each_proxys_tmpfs_and_memory_hold_the_body_budget(services: dict, name: str) -> None:
    service = services[name]
    tmpfs = next(entry for entry in service["tmpfs"] if entry.startswith("/tmp:"))
    budget = proxy.Limits().body_budget_bytes
    assert size_bytes(tmpfs.split("size=")[1]) > budget
    assert size_bytes(service["mem_limit"]) > size_bytes(tmpfs.split("size=")[1])


# --- Dockerfiles


def _stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, value in dockerfile_instructions(dockerfile):
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, value))
    return stages


def test_every_image_builds_on_the_debian_base_argument() -> None:
    for dockerfile in (SERVER_DOCKERFILE, PROXY_DOCKERFILE, REPOSITORY_DOCKERFILE):
        instructions = dockerfile_instructions(dockerfile)
        assert ("ARG", "BASE_IMAGE=debian:bookworm-slim") in instructions, dockerfile.name
        bases = {value.split()[0] for keyword, value in instructions if keyword == "FROM"}
        assert bases == {"${BASE_IMAGE}"}, (dockerfile.name, bases)


def test_every_image_ends_as_a_non_root_user() -> None:
    for dockerfile in (SERVER_DOCKERFILE, PROXY_DOCKERFILE, REPOSITORY_DOCKERFILE):
        final = _stages(dockerfile)[-1]
        users = [value for keyword, value in final if keyword == "USER"]
        assert users and users[-1].split(":")[0] not in ("0", "root"), dockerfile.name


def test_the_server_image_installs_offline_and_keeps_no_wheels_or_pip() -> None:
    build, final = _stages(SERVER_DOCKERFILE)
    build_runs = " ".join(value for keyword, value in build if keyword == "RUN")
    assert "--no-index" in build_runs and "--no-cache-dir" in build_runs
    assert "resnet18_triton.server.embedded /opt/resnet18-triton/backends" in build_runs
    final_text = " ".join(value for _, value in final)
    assert "wheels" not in final_text and "pip " not in final_text
    assert ("ENTRYPOINT", '["/usr/bin/tini", "--", "resnet18-triton"]') in final
    assert any(
        keyword == "ENV" and "RESNET18_TRITON_BACKEND_DIR=/opt/resnet18-triton/backends" in value
        for keyword, value in final
    )
