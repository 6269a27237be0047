"""The signals of a command that runs in the foreground (``serve``, ``cluster``) and its wait loop.

SIGINT and SIGTERM ask it to stop, SIGHUP (where the command takes it) to reload. The handlers
only set flags and write a byte to a pipe that ends the wait: they take no lock, because Python
runs a handler in the main thread between two bytecodes, possibly while that thread holds a
lock a handler would need (a ``threading.Event``'s, inside ``wait`` or ``set``), and a second
signal can arrive inside the first one's handler. Two stop signals back to back (``cluster``'s
SIGTERM, and the kernel's parent-death SIGTERM when the thread that started a restarted replica
ends) deadlocked ``serve`` that way. The command's own thread does the work between waits, so
nothing runs inside a handler but ``on_stop``, which must take no lock either. Standard library
only.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Callable
from typing import Any


class ForegroundSignals:
    """What the signals asked for since ``install``: a stop (SIGINT, SIGTERM), which ends
    ``wait_for_stop``, and a reload (SIGHUP, ``take_reload``); each of them also ends the wait
    between two checks. As a context manager, leaving it is ``close``."""

    def __init__(self) -> None:
        self._stop = False
        self._reload = False
        self._previous: dict[int, Any] = {}  # signal -> the handler before install
        # The self-pipe: a handler writes a byte, the wait reads it (both ends non-blocking, so
        # a handler never blocks on a full pipe; one byte is as good as many).
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)

    @classmethod
    def install(
        cls, on_stop: Callable[[], None] | None = None, reload: bool = False
    ) -> ForegroundSignals:
        """Handle SIGINT and SIGTERM, and SIGHUP with ``reload``, in this process from now on.

        ``on_stop`` also runs in the handler of a stop signal (e.g. to abort a start-up that is
        under way), so it must return quickly and take no lock. Call from the main thread
        (Python's rule for ``signal.signal``).
        """
        signals = cls()

        def request_stop(signum: int, _frame: object) -> None:
            signals._stop = True
            signals._wake()
            if on_stop is not None:
                on_stop()

        def request_reload(signum: int, _frame: object) -> None:
            signals._reload = True
            signals._wake()

        handlers = {signal.SIGINT: request_stop, signal.SIGTERM: request_stop}
        if reload:
            handlers[signal.SIGHUP] = request_reload
        for signum, handler in handlers.items():
            signals._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, handler)
        return signals

    def close(self) -> None:
        """Give each signal back the handler it had before ``install``, then close the pipe.
        Call from the main thread, once the command no longer waits; a second call does
        nothing."""
        # Handlers first: a handler of ours that ran after the pipe closed would write to a
        # closed descriptor (or to whatever file reused its number).
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        if self._wake_read >= 0:
            os.close(self._wake_read)
            os.close(self._wake_write)
            self._wake_read = self._wake_write = -1

    def __enter__(self) -> ForegroundSignals:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"\0")

    def take_reload(self) -> bool:
        """True, once per request, when a reload was asked for and no stop since; clears it."""
        if not self._reload or self._stop:
            return False
        self._reload = False
        return True

    def wait_for_stop(self, check: Callable[[], None], every_s: float | None = None) -> None:
        """Return once a stop was asked for. Until then run ``check`` now, after each signal and,
        with ``every_s``, at least that often; an exception from ``check`` ends the wait."""
        while not self._stop:
            check()
            select.select([self._wake_read], [], [], every_s)
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_read, 4096)
