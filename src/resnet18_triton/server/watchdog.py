"""Heal the embedded server when a Python-backend stub process dies.

Triton 2.51's Python backend never restarts a stub that died (SIGKILL, OOM kill): the model stays
READY but answers 500 "Stub process ... is not healthy" forever (a known upstream limitation,
see docs/reliability.md). ``StubWatchdog`` watches the server's stub
processes in /proc and reloads (unload + load, through the admin-key-protected repository API) the
model of a stub that died. Measured recovery times are in docs/reliability.md.

It reloads only what it was serving: each model directory's files are fingerprinted (sha256) when
the watchdog starts, and a model whose files changed since (a re-export, a half-written copy) is
not reloaded; the refusal is reported in the log and in ``recoveries``. The one change it
accepts is one the server itself loaded: ``publish`` and ``rollback`` record the fingerprints of
the models they loaded (``record_loaded``). A failed reload is retried
with exponential backoff. ``stop()`` never waits for a reload in flight.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from resnet18_triton.files import write_text_atomically
from resnet18_triton.repository.layout import stub_model
from resnet18_triton.server.admin import AdminEndpoint

# In the repository (so a container that mounts it sees it): model -> fingerprint of the files a
# server loaded through the repository API after it started (``record_loaded``).
LOADED_RECORD = ".loaded-fingerprints.json"


class WatchedOptions(Protocol):
    """The server settings the watchdog reads."""

    @property
    def effective_admin_key(self) -> str: ...

    @property
    def ready_timeout_s(self) -> float: ...

    @property
    def repository(self) -> Path: ...

    @property
    def load_order(self) -> tuple[str, ...]: ...


class WatchedServer(Protocol):
    """What the watchdog needs of a server (``EmbeddedServer`` is one); a protocol, so that
    embedded.py can import this module without this module importing it back."""

    @property
    def process(self) -> subprocess.Popen[str] | None: ...

    @property
    def url(self) -> str: ...

    @property
    def options(self) -> WatchedOptions: ...

    def log_note(self, message: str) -> None: ...


@dataclass(frozen=True)
class StubRecovery:
    model: str
    dead_pid: int
    detected_at: float  # time.monotonic()
    reloaded_at: float
    ok: bool
    detail: str = ""


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over every file of a model directory (relative paths and contents, sorted)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        if "__pycache__" in path.parts:
            continue  # written by the stub itself when it imports model.py
        digest.update(str(path.relative_to(model_dir)).encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def record_loaded(repository: Path, models: Iterable[str]) -> None:
    """Record that ``models`` of ``repository`` were loaded as their files are now, so that a
    watchdog reloads them after a stub dies instead of refusing their changed files."""
    record = loaded_record(repository)
    record.update({model: model_fingerprint(repository / model) for model in models})
    write_text_atomically(repository / LOADED_RECORD, json.dumps(record, sort_keys=True) + "\n")


def loaded_record(repository: Path) -> dict[str, str]:
    """The fingerprints ``record_loaded`` wrote; empty when none (or unreadable)."""
    try:
        record = json.loads((repository / LOADED_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in record.items()} if isinstance(record, dict) else {}


def stub_processes(server_pid: int) -> dict[int, tuple[str, bool]]:
    """pid -> (model, alive) of the server's backend stubs, read from /proc (Linux).

    A stub that died stays a zombie child of tritonserver (2.51 does not reap it): not alive.
    """
    found: dict[int, tuple[str, bool]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) != server_pid:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        state = fields[0]
        model = stub_model([part.decode(errors="replace") for part in argv])
        if model is not None:
            found[int(entry.name)] = (model, state not in ("Z", "X"))
        elif state == "Z" and int(entry.name) not in found:
            # A zombie's cmdline is empty: remember it as dead; its model is known from before.
            found[int(entry.name)] = ("", False)
    return found


class StubWatchdog:
    """Reload (unload + load) the model of a backend stub that died, so the server heals.

    Polls every ``interval_s``; each dead stub is handled once, its reload retried with backoff
    (``retry_s``, doubling up to ``max_retry_s``) until it succeeds or the watchdog stops. A model
    whose files changed on disk since ``start()`` is never reloaded. Uses the model-repository API
    with the server's admin key. Requests in the gap get 500 (stub dead) or 404 (model
    reloading); see docs/reliability.md for measured recovery times.
    """

    def __init__(
        self,
        server: WatchedServer,
        interval_s: float = 0.5,
        retry_s: float = 1.0,
        max_retry_s: float = 30.0,
    ) -> None:
        self.server = server
        self.interval_s = interval_s
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.recoveries: list[StubRecovery] = []
        self.fingerprints: dict[str, str] = {}
        self._models: dict[int, str] = {}
        self._handled: set[int] = set()
        self._suspects: set[int] = set()
        # model -> (dead pid, detected at, next attempt at, current backoff)
        self._pending: dict[str, tuple[int, float, float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stub-watchdog", daemon=True)

    def start(self) -> StubWatchdog:
        self.fingerprints = self._fingerprints()
        self._scan()
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop polling; a reload in flight is abandoned (its daemon thread ends with the
        server), so this returns within ``timeout_s``."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def _fingerprints(self) -> dict[str, str]:
        options = self.server.options
        return {
            model: model_fingerprint(Path(options.repository) / model)
            for model in options.load_order
            if (Path(options.repository) / model).is_dir()
        }

    def _scan(self) -> list[tuple[int, str]]:
        process = self.server.process
        if process is None or process.poll() is not None:
            return []
        dead, suspects = [], set()
        for pid, (model, alive) in stub_processes(process.pid).items():
            if alive and model:
                self._models[pid] = model
            elif not alive and pid not in self._handled and pid in self._models:
                # A stub Triton stops on unload is reaped at once; one still a zombie on the
                # next scan died on its own.
                suspects.add(pid)
                if pid in self._suspects:
                    dead.append((pid, self._models[pid]))
        self._suspects = suspects
        return dead

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                for pid, model in self._scan():
                    self._handled.add(pid)
                    self._note(f"backend stub {pid} of model '{model}' died; reloading '{model}'")
                    self._pending[model] = (pid, time.monotonic(), 0.0, self.retry_s)
                self._attempt_due()
            except Exception as error:
                self._note(f"stub watchdog error: {error}")

    def _attempt_due(self) -> None:
        now = time.monotonic()
        for model, (pid, detected, due, backoff) in list(self._pending.items()):
            if now < due or self._stop.is_set():
                continue
            ok, detail = self._recover(model)
            if self._stop.is_set():
                return
            self.recoveries.append(StubRecovery(model, pid, detected, time.monotonic(), ok, detail))
            if ok:
                del self._pending[model]
                self._note(f"model '{model}' reloaded after its stub died")
                continue
            self._pending[model] = (pid, detected, time.monotonic() + backoff, self._next(backoff))
            self._note(f"could not reload '{model}': {detail}; retrying in {backoff:g} s")

    def _next(self, backoff: float) -> float:
        return min(backoff * 2, self.max_retry_s)

    def _recover(self, model: str) -> tuple[bool, str]:
        """(ok, why not): unload + load, unless the model's files are not the ones served."""
        repository = Path(self.server.options.repository)
        expected = self.fingerprints.get(model)
        if expected is not None:
            current = model_fingerprint(repository / model)
            if current == loaded_record(repository).get(model):
                self.fingerprints[model] = expected = current
            if current != expected:
                return False, (
                    f"the files of '{model}' changed on disk since the server started, so a "
                    "reload would serve different weights; restart the server to serve them"
                )
        options = self.server.options
        endpoint = AdminEndpoint(
            self.server.url, options.effective_admin_key, timeout_s=options.ready_timeout_s
        )
        return endpoint.reload(model)

    def _note(self, message: str) -> None:
        self.server.log_note(message)
