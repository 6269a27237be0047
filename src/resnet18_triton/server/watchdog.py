"""Heal the embedded server when a Python-backend stub process dies.

Triton 2.51's Python backend never restarts a stub that died (SIGKILL, OOM kill): the model stays
READY but answers 500 "Stub process ... is not healthy" forever (a known upstream limitation,
see docs/reliability.md). ``StubWatchdog`` watches the server's stub
processes in /proc and reloads (unload + load, through the admin-key-protected repository API) the
model of a stub that died. Measured recovery times are in docs/reliability.md.
"""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from resnet18_triton.contract import ADMIN_KEY_HEADER
from resnet18_triton.layout import stub_model


class WatchedOptions(Protocol):
    """The server settings the watchdog reads."""

    @property
    def effective_admin_key(self) -> str: ...

    @property
    def ready_timeout_s(self) -> float: ...


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

    Polls every ``interval_s``; each dead stub is handled once. Uses the model-repository API
    with the server's admin key. Requests in the gap get 500 (stub dead) or 404 (model
    reloading); see docs/reliability.md for measured recovery times.
    """

    def __init__(self, server: WatchedServer, interval_s: float = 0.5) -> None:
        self.server = server
        self.interval_s = interval_s
        self.recoveries: list[StubRecovery] = []
        self._models: dict[int, str] = {}
        self._handled: set[int] = set()
        self._suspects: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stub-watchdog", daemon=True)

    def start(self) -> StubWatchdog:
        self._scan()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

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
                    self._recover(pid, model)
            except Exception as error:
                self._note(f"stub watchdog error: {error}")

    def _recover(self, pid: int, model: str) -> None:
        detected = time.monotonic()
        self._note(f"backend stub {pid} of model '{model}' died; reloading '{model}'")
        ok, detail = True, ""
        for action, body in (
            ("unload", b'{"parameters":{"unload_dependents":false}}'),
            ("load", b""),
        ):
            if self._stop.is_set():
                return
            status, text = self._post(f"/v2/repository/models/{model}/{action}", body)
            if status != 200:
                ok, detail = False, f"{action} answered {status}: {text}"
                break
        self.recoveries.append(StubRecovery(model, pid, detected, time.monotonic(), ok, detail))
        self._note(
            f"model '{model}' reloaded after its stub died"
            if ok
            else f"could not reload '{model}': {detail}"
        )

    def _post(self, path: str, body: bytes) -> tuple[int, str]:
        request = urllib.request.Request(
            f"http://{self.server.url}{path}",
            data=body,
            method="POST",
            headers={
                ADMIN_KEY_HEADER: self.server.options.effective_admin_key,
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(
                request, timeout=self.server.options.ready_timeout_s
            ) as reply:
                return reply.status, ""
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")[:300]
        except OSError as error:
            return 0, str(error)

    def _note(self, message: str) -> None:
        self.server.log_note(message)
