"""The stub watchdog: reloads only the files it started with, retries with backoff, stops fast.

Talks real HTTP to Triton's repository API as the local stand-in (``tests.fake_triton``) answers it
(the full kill-a-stub path against the real Triton server is in
tests/integration/test_reliability_faults.py).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from resnet18_triton.server.watchdog import StubWatchdog, model_fingerprint
from tests.fake_triton import FakeTriton, serving


@dataclass
class _Options:
    repository: Path
    models: tuple[str, ...] = ("preprocess",)
    effective_admin_key: str = "key"
    ready_timeout_s: float = 600.0

    @property
    def load_order(self) -> tuple[str, ...]:
        return self.models


@dataclass
class _Server:
    url: str
    options: _Options
    notes: list[str] = field(default_factory=list)
    process: None = None

    def log_note(self, message: str) -> None:
        self.notes.append(message)


@pytest.fixture()
def repository(tmp_path: Path) -> Path:
    model = tmp_path / "preprocess" / "1"
    model.mkdir(parents=True)
    (model / "model.py").write_text("# version one\n")
    (tmp_path / "preprocess" / "config.pbtxt").write_text('name: "preprocess"\n')
    return tmp_path


@pytest.fixture()
def api() -> Iterator[FakeTriton]:
    """Triton's repository API: each load or unload gets the next of ``repository_statuses``."""
    with serving(FakeTriton()) as fake:
        yield fake


def test_the_fingerprint_follows_the_files_but_not_the_bytecode_cache(repository: Path) -> None:
    model = repository / "preprocess"
    before = model_fingerprint(model)
    (model / "1" / "__pycache__").mkdir()
    (model / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"cache")
    assert model_fingerprint(model) == before
    (model / "1" / "model.py").write_text("# version two\n")
    assert model_fingerprint(model) != before


def test_changed_files_are_not_reloaded_and_the_refusal_is_reported(
    repository: Path, api: FakeTriton
) -> None:
    server = _Server(api.url, _Options(repository))
    watchdog = StubWatchdog(server, retry_s=0.0)
    watchdog.fingerprints = watchdog._fingerprints()
    (repository / "preprocess" / "1" / "model.py").write_text("# re-exported\n")
    watchdog._pending["preprocess"] = (1234, 0.0, 0.0, 0.0)
    watchdog._attempt_due()
    (refused,) = watchdog.recoveries
    assert not refused.ok and "changed on disk since the server started" in refused.detail
    assert api.repository_calls == []  # nothing was unloaded or loaded
    assert any("could not reload 'preprocess'" in note for note in server.notes)


def test_a_failed_reload_is_retried_until_it_succeeds(repository: Path, api: FakeTriton) -> None:
    api.repository_statuses = [500, 200, 200]  # unload fails once, then unload + load succeed
    server = _Server(api.url, _Options(repository))
    watchdog = StubWatchdog(server, retry_s=0.0)
    watchdog.fingerprints = watchdog._fingerprints()
    watchdog._pending["preprocess"] = (1234, 0.0, 0.0, 0.0)
    watchdog._attempt_due()
    watchdog._attempt_due()
    assert [r.ok for r in watchdog.recoveries] == [False, True]
    assert api.repository_calls == [
        "/v2/repository/models/preprocess/unload",
        "/v2/repository/models/preprocess/unload",
        "/v2/repository/models/preprocess/load",
    ]
    assert not watchdog._pending


def test_the_backoff_doubles_up_to_its_ceiling(repository: Path) -> None:
    watchdog = StubWatchdog(_Server("unused", _Options(repository)), max_retry_s=8.0)
    steps = [1.0]
    for _ in range(5):
        steps.append(watchdog._next(steps[-1]))
    assert steps == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_stop_does_not_wait_for_a_reload_in_flight(repository: Path) -> None:
    """The repository API never answers (600 s timeout): stop() still returns."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        server = _Server(f"127.0.0.1:{silent.getsockname()[1]}", _Options(repository))
        watchdog = StubWatchdog(server, retry_s=0.0)
        watchdog.fingerprints = watchdog._fingerprints()
        watchdog._pending["preprocess"] = (1234, 0.0, 0.0, 0.0)
        reload = threading.Thread(target=watchdog._attempt_due, daemon=True)
        reload.start()
        stopper = threading.Thread(target=watchdog.stop)
        stopper.start()
        stopper.join(timeout=60)
        assert not stopper.is_alive(), "stop() waited on the HTTP call"
        assert reload.is_alive()  # still blocked on the silent socket: stop did not wait
