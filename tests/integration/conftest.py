"""One real Triton server per test session, on free loopback ports, serving a fresh export."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from resnet18_triton.server.embedded import EmbeddedServer, ServerOptions, free_port
from tests.support import TorchReference
from tests.ui_support import running_ui

ADMIN_KEY = "integration-test-key"
EXPORT_SEED = 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def exported_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository filled by the export pipeline (random weights, seed 0)."""
    from resnet18_triton.export.model_configs import ServingSettings
    from resnet18_triton.export.pipeline import ExportRequest, export_repository

    request = ExportRequest(
        repository=tmp_path_factory.mktemp("model_repository"),
        weights="random",
        seed=EXPORT_SEED,
        settings=ServingSettings(max_queue_delay_us=2000),
    )
    return export_repository(request).repository


@pytest.fixture(scope="session")
def server(
    exported_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedServer]:
    log_path = tmp_path_factory.mktemp("logs") / "tritonserver.log"
    options = ServerOptions(
        repository=exported_repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        admin_key=ADMIN_KEY,
        exit_timeout_s=10,
    )
    with open(log_path, "w") as log, EmbeddedServer(options, log_stream=log) as running:
        yield running
    sys.stderr.write(f"tritonserver log: {log_path}\n")


@pytest.fixture(scope="session")
def admin_key() -> str:
    """The session server's key for its restricted APIs (repository, shared memory, ...)."""
    return ADMIN_KEY


@pytest.fixture(scope="session")
def url(server: EmbeddedServer) -> str:
    return server.url


@pytest.fixture(scope="session")
def ui_url(url: str) -> Iterator[str]:
    """The real ``resnet18-triton ui`` app in front of the session server; its base URL.

    Admits more requests than the concurrency tests send, so none of them sees a 503.
    """
    with running_ui(url, "--max-in-flight", "64") as base:
        yield base


@pytest.fixture(scope="session")
def reference() -> TorchReference:
    return TorchReference(seed=EXPORT_SEED)


@pytest.fixture()
def http_client(url: str):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, network_timeout=120.0)
    yield client
    client.close()
