"""The signals of a command that runs in the foreground (``serve``, ``cluster``) and its wait loop.

SIGINT and SIGTERM ask it to stop, SIGHUP (where the command takes it) to reload. The handlers
only set events: the command's own thread does the work between waits, so nothing runs inside a
handler but ``on_stop``. Standard library only.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable


class ForegroundSignals:
    """What the signals asked for since ``install``: ``stop`` (SIGINT, SIGTERM) and ``reload``
    (SIGHUP); ``wake`` is set by each of them and ends a wait."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.wake = threading.Event()

    @classmethod
    def install(
        cls, on_stop: Callable[[], None] | None = None, reload: bool = False
    ) -> ForegroundSignals:
        """Handle SIGINT and SIGTERM, and SIGHUP with ``reload``, in this process from now on.

        ``on_stop`` also runs in the handler of a stop signal (e.g. to abort a start-up that is
        under way), so it must return quickly. Call from the main thread (Python's rule for
        ``signal.signal``).
        """
        signals = cls()

        def request_stop(signum: int, _frame: object) -> None:
            signals.stop.set()
            signals.wake.set()
            if on_stop is not None:
                on_stop()

        def request_reload(signum: int, _frame: object) -> None:
            signals.reload.set()
            signals.wake.set()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        if reload:
            signal.signal(signal.SIGHUP, request_reload)
        return signals

    def take_reload(self) -> bool:
        """True, once per request, when a reload was asked for and no stop since; clears it."""
        if not self.reload.is_set() or self.stop.is_set():
            return False
        self.reload.clear()
        return True

    def wait_for_stop(self, check: Callable[[], None], every_s: float | None = None) -> None:
        """Return once a stop was asked for. Until then run ``check`` now, after each signal and,
        with ``every_s``, at least that often; an exception from ``check`` ends the wait."""
        while not self.stop.is_set():
            check()
            self.wake.wait(every_s)
            self.wake.clear()
