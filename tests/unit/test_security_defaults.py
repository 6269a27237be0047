"""Safe defaults: loopback, explicit model control, restricted admin APIs, limits.

No server is started: these check the arguments the launcher would pass, the compose file, the
Dockerfile and the preprocessing's limits, so a change of default fails here first.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from resnet18_triton.contract import (
    ADMIN_KEY_ENV_VAR,
    ADMIN_KEY_FILE_ENV_VAR,
    ADMIN_KEY_HEADER,
    BACKEND_DIR_ENV_VAR,
)
from resnet18_triton.server.embedded import (
    RESTRICTED_APIS,
    ServerOptions,
    TritonInstall,
    server_arguments,
)
from tests.compose_support import render, service_command, volumes
from tests.support import PROJECT_ROOT, preprocess_module

INSTALL = TritonInstall(
    server_binary=Path("/x/tritonserver"),
    library_dir=Path("/x/lib"),
    python_backend_dir=Path("/x/python"),
    python_stub=Path("/x/stub"),
    cache_dir=Path("/x/caches"),
)


def _args(**options) -> list[str]:
    return server_arguments(ServerOptions(repository=Path("/repo"), **options), INSTALL, Path("/b"))


def _value(args: list[str], flag: str) -> list[str]:
    return [arg.split("=", 1)[1] for arg in args if arg.startswith(flag + "=")]


def test_embedded_server_listens_on_loopback_only_by_default() -> None:
    args = _args()
    for flag in ("--http-address", "--grpc-address", "--metrics-address"):
        assert _value(args, flag) == ["127.0.0.1"], flag


def test_serve_command_defaults_to_loopback() -> None:
    from resnet18_triton.server.cli import serve

    host = next(p for p in serve.params if p.name == "host")
    assert host.default == "127.0.0.1"


def test_model_control_is_explicit_and_loads_only_the_served_models() -> None:
    args = _args()
    assert _value(args, "--model-control-mode") == ["explicit"]
    assert _value(args, "--load-model") == ["preprocess", "resnet18_onnx", "resnet18"]
    assert not any(arg.startswith("--repository-poll-secs") for arg in args)


@pytest.mark.parametrize("api", ["model-repository", "shared-memory", "logging", "trace"])
def test_admin_apis_are_restricted_on_http_and_grpc(api: str) -> None:
    args = _args(admin_key="secret")
    for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
        (value,) = _value(args, flag)
        apis, key = value.split(":", 1)
        assert api in apis.split(",")
        assert key == f"{ADMIN_KEY_HEADER}=secret"
    assert api in RESTRICTED_APIS.split(",")


def test_without_an_admin_key_a_random_one_keeps_the_admin_apis_closed() -> None:
    first, second = ServerOptions(repository=Path("/r")), ServerOptions(repository=Path("/r"))
    assert first.admin_key is None
    assert len(first.effective_admin_key) >= 24
    assert first.effective_admin_key != second.effective_admin_key
    (value,) = _value(server_arguments(first, INSTALL, Path("/b")), "--http-restricted-api")
    assert value.endswith(f"{ADMIN_KEY_HEADER}={first.effective_admin_key}")


def test_strict_readiness_and_a_bounded_exit_timeout() -> None:
    args = _args()
    assert _value(args, "--strict-readiness") == ["true"]
    assert 0 < int(_value(args, "--exit-timeout-secs")[0]) <= 60


def test_dead_backend_stubs_are_watched_by_default() -> None:
    assert ServerOptions(repository=Path("/r")).restart_dead_stubs


@pytest.fixture(scope="module")
def compose_services(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """docker-compose.yml as docker-compose renders it with its defaults (anchors merged)."""
    return render(PROJECT_ROOT / "docker-compose.yml", tmp_path_factory.mktemp("compose"))[
        "services"
    ]


def _compose_servers(services: dict) -> dict[str, dict]:
    servers = {name: service for name, service in services.items() if "command" in service}
    assert "triton" in servers, sorted(services)
    return servers


def _serve_parameters(command: list[str], monkeypatch: pytest.MonkeyPatch) -> dict:
    """The parameters serve's own parser makes of a compose command (which must start "serve")."""
    from resnet18_triton.server.cli import serve

    # --backend-dir reads this variable and must name an existing directory: a value set on the
    # test host is not the container's and would make the parse fail.
    monkeypatch.delenv(BACKEND_DIR_ENV_VAR, raising=False)
    assert command[0] == "serve", command
    return serve.make_context("serve", list(command[1:])).params


def _environment(service: dict) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(entry.split("=", 1) for entry in environment)
    return {str(key): str(value) for key, value in environment.items()}


def test_compose_keeps_every_listener_on_host_loopback_with_no_published_ports(
    compose_services: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With host networking the listen address is the exposure, and published ports would be
    # ignored; so nothing is published and no command overrides serve's 127.0.0.1.
    for name, service in compose_services.items():
        assert service.get("network_mode") == "host", name
        assert not service.get("ports"), name
        assert not any(part.startswith("--host") for part in service_command(service)), name
    for name, service in _compose_servers(compose_services).items():
        parameters = _serve_parameters(service_command(service), monkeypatch)
        assert parameters["host"] == "127.0.0.1", name
        mounts = {target: read_only for _, target, read_only in volumes(service)}
        assert mounts.get("/models") is True, name
    # The proxy shares the host's network too: its mounted config must listen on loopback only.
    (config,) = [
        Path(source)
        for source, _, _ in volumes(compose_services["proxy"])
        if source.endswith(".conf")
    ]
    listens = [line.split()[1] for line in config.read_text().splitlines() if "listen " in line]
    assert listens and all(address.startswith("127.0.0.1:") for address in listens), listens


def test_compose_gives_the_admin_key_only_as_a_secret_file_named_by_the_environment(
    compose_services: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, service in _compose_servers(compose_services).items():
        environment = _environment(service)
        # Docker mounts the secret `admin_key` at /run/secrets/admin_key.
        assert environment.get(ADMIN_KEY_FILE_ENV_VAR) == "/run/secrets/admin_key", name
        assert ADMIN_KEY_ENV_VAR not in environment, name
        secrets = [s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])]
        assert secrets == ["admin_key"], name
        command = service_command(service)
        assert not any("key" in part.lower() for part in command), (name, command)
        assert _serve_parameters(command, monkeypatch)["admin_key_file"] is None, name


def test_compose_leaves_model_loading_and_admin_apis_to_serve(
    compose_services: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # serve finds the repository's classifiers itself and starts tritonserver with the explicit
    # model control and restricted APIs checked above; a compose command that named models or
    # passed Triton's own flags would bypass both, and serve's parser refuses unknown flags.
    for name, service in _compose_servers(compose_services).items():
        command = service_command(service)
        parameters = _serve_parameters(command, monkeypatch)
        assert parameters["repository"] == Path("/models"), name
        assert not any(
            part.startswith(("--load-model", "--model-control-mode", "--http-restricted-api"))
            for part in command
        ), (name, command)


def test_container_runs_as_non_root() -> None:
    lines = (PROJECT_ROOT / "docker" / "Dockerfile").read_text().splitlines()
    users = [line.split()[1] for line in lines if line.strip().upper().startswith("USER ")]
    assert users and users[-1] not in ("root", "0")


def test_pixel_and_byte_limits_are_explicit_configured_and_enforced_in_pillow() -> None:
    from PIL import Image

    from resnet18_triton.repository.configs.builders import preprocess_model_config
    from resnet18_triton.repository.configs.settings import ServingSettings

    preprocess = preprocess_module()
    settings = ServingSettings(max_image_pixels=1_000_000, max_image_bytes=2_000_000)
    config = preprocess_model_config(settings)
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters["max_image_pixels"] == "1000000"
    assert parameters["max_image_bytes"] == "2000000"
    previous = Image.MAX_IMAGE_PIXELS
    try:
        model = preprocess.TritonPythonModel()
        model.initialize(
            {
                "model_config": json.dumps(
                    {
                        "input": [{"name": "IMAGE"}],
                        "output": [{"name": "PIXELS"}],
                        "parameters": {
                            key: {"string_value": value} for key, value in parameters.items()
                        },
                    }
                )
            }
        )
        assert model.limits == preprocess.Limits(1_000_000, 2_000_000)
        assert Image.MAX_IMAGE_PIXELS == 1_000_000  # Pillow's own bomb check follows the limit
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    # The defaults exported are the model's own defaults: explicit, not Pillow's.
    defaults = ServingSettings()
    assert defaults.max_image_pixels == preprocess.DEFAULT_MAX_IMAGE_PIXELS
    assert defaults.max_image_bytes == preprocess.DEFAULT_MAX_IMAGE_BYTES


def test_decompression_bomb_is_refused_from_its_header() -> None:
    from tests.corpus import jpeg_bomb, png_bomb

    preprocess = preprocess_module()
    small = preprocess.Limits(max_image_pixels=10_000)
    for data in (png_bomb(50_000, 50_000), jpeg_bomb(60_000, 60_000)):
        with pytest.raises(preprocess.ImageRejected, match="image too large"):
            preprocess.decode_image(data)
    with pytest.raises(preprocess.ImageRejected, match="exceeds the limit of 10000 pixels"):
        preprocess.decode_image(png_bomb(200, 200), small)


def test_the_cli_documents_the_admin_key() -> None:
    from resnet18_triton.server.cli import serve

    result = CliRunner().invoke(serve, ["--help"])
    assert "triton-admin-key" in result.output and "random key" in result.output
