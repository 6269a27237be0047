"""One real Triton server per test session, on free loopback ports, serving a fresh export: the
default classifier (random weights) and, beside it, a digits classifier exported by name."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from resnet18_triton.deploy.cluster import Cluster
from resnet18_triton.perf import harness
from resnet18_triton.server.embedded import EmbeddedServer
from tests.edge_support import SecuredOptions, secured_cluster
from tests.support import DigitsClassifier, TorchReference, tree_digest
from tests.ui_support import running_ui

ADMIN_KEY = "integration-test-key"
EXPORT_SEED = 0  # harness.export_random's
DIGITS_NAME = "digits"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def exported_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository filled by the export pipeline (random weights, seed 0, a 2 ms queue
    delay)."""
    target = tmp_path_factory.mktemp("model_repository")
    return harness.export_random(target, max_queue_delay_us=2000)


@pytest.fixture(scope="session")
def session_repository(
    exported_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, DigitsClassifier]:
    """The default classifier's repository plus a digits classifier (10 classes, its own labels and
    preprocessing) added by the real ``export --name digits`` from a Lightning checkpoint."""
    from click.testing import CliRunner

    from resnet18_triton.contract import ClassifierNames
    from resnet18_triton.export.cli.export import export
    from tests import digits

    work = tmp_path_factory.mktemp("digits")
    repo = work / "model_repository"
    shutil.copytree(exported_repository, repo)
    model, splits, accuracy = digits.custom_digits_model()
    checkpoint = digits.save_lightning_checkpoint(model, work / "digits-epoch3.ckpt")
    labels = digits.write_digit_labels(work / "digit_labels.txt")
    default_models = ClassifierNames.of().served
    before = tree_digest(repo, default_models)
    result = CliRunner().invoke(
        export,
        [
            "--repo", str(repo),
            "--weights", str(checkpoint),
            "--name", DIGITS_NAME,
            "--labels", str(labels),
            *digits.custom_export_options(),
            "--max-queue-delay-us", "2000",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    classifier = DigitsClassifier(
        DIGITS_NAME,
        checkpoint,
        labels,
        model,
        splits,
        accuracy,
        before,
        tree_digest(repo, default_models),
    )
    return repo, classifier


@pytest.fixture(scope="session")
def digits_classifier(session_repository: tuple[Path, DigitsClassifier]) -> DigitsClassifier:
    return session_repository[1]


@pytest.fixture(scope="session")
def server(
    session_repository: tuple[Path, DigitsClassifier], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedServer]:
    """The session server: the default classifier and the digits classifier, side by side."""
    log_path = tmp_path_factory.mktemp("logs") / "tritonserver.log"
    options = harness.local_options(session_repository[0], admin_key=ADMIN_KEY, exit_timeout_s=10)
    with harness.local_server(options, log_path) as running:
        yield running
    sys.stderr.write(f"tritonserver log: {log_path}\n")


@pytest.fixture(scope="session")
def admin_key() -> str:
    """The session server's key for its restricted APIs (repository, shared memory, ...)."""
    return ADMIN_KEY


@pytest.fixture(scope="module")
def secured(
    exported_repository: Path,
    admin_key: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Cluster, SecuredOptions]]:
    """The test module's secured cluster, running for the module: ``REPLICAS`` replicas of the
    exported repository behind the proxy with TLS, the module's ``KEYS`` (key-file lines) and
    ``LIMITS``."""
    module = request.module
    work = tmp_path_factory.mktemp(module.__name__.rsplit(".", 1)[-1])
    with secured_cluster(
        exported_repository,
        module.REPLICAS,
        work,
        list(module.KEYS),
        admin_key=admin_key,
        limits=module.LIMITS,
    ) as running:
        yield running


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


@dataclass(frozen=True)
class VariantStack:
    """Every registered variant at every precision this CPU serves it at (``serving_matrix``),
    one digits classifier per precision, served by ``resnet18-triton serve`` as it starts with
    no option."""

    url: str
    repository: Path
    matrix: list[Any]
    log: Path


@pytest.fixture(scope="session")
def variant_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VariantStack]:
    pytest.importorskip("sklearn")
    pytest.importorskip("openvino")
    from resnet18_triton.cpu_flags import cpu_flags
    from tests.support import serve_process
    from tests.variant_support import serving_matrix, write_matrix

    work = tmp_path_factory.mktemp("variants")
    matrix = serving_matrix(cpu_flags())
    repo = write_matrix(work / "model_repository", matrix, work)
    log = work / "serve.log"
    with serve_process(repo, log) as url:
        yield VariantStack(url, repo, matrix, log)
