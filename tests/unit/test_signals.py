"""The foreground commands' signals (``serve``, ``cluster``): what each asks for, and the wait."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from resnet18_triton.signals import ForegroundSignals

Handler = Callable[[int, object], None]


@pytest.fixture
def handlers(monkeypatch: pytest.MonkeyPatch) -> dict[int, Handler]:
    """The handlers ``install`` sets, caught instead of installed in the test process."""
    caught: dict[int, Handler] = {}
    monkeypatch.setattr(
        signal, "signal", lambda signum, handler: caught.__setitem__(signum, handler)
    )
    return caught


def test_a_stop_signal_ends_the_wait_and_a_reload_is_taken_once(
    handlers: dict[int, Handler],
) -> None:
    stops: list[str] = []
    signals = ForegroundSignals.install(on_stop=lambda: stops.append("stop"), reload=True)
    assert set(handlers) == {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    taken: list[bool] = []

    def check() -> None:
        taken.append(signals.take_reload())
        if len(taken) == 1:
            handlers[signal.SIGHUP](signal.SIGHUP, None)
        elif len(taken) == 2:
            handlers[signal.SIGTERM](signal.SIGTERM, None)

    signals.wait_for_stop(check)
    assert taken == [False, True] and stops == ["stop"]


def test_a_reload_asked_for_after_a_stop_is_not_taken(handlers: dict[int, Handler]) -> None:
    signals = ForegroundSignals.install(reload=True)
    handlers[signal.SIGINT](signal.SIGINT, None)
    handlers[signal.SIGHUP](signal.SIGHUP, None)
    assert not signals.take_reload()


def test_without_reload_sighup_keeps_its_handler_and_the_check_runs_on_a_timer(
    handlers: dict[int, Handler],
) -> None:
    signals = ForegroundSignals.install()
    assert set(handlers) == {signal.SIGINT, signal.SIGTERM}
    checks: list[int] = []

    def check() -> None:
        checks.append(1)
        if len(checks) == 3:
            handlers[signal.SIGTERM](signal.SIGTERM, None)

    signals.wait_for_stop(check, every_s=0.01)
    assert len(checks) == 3


def test_an_error_from_the_check_ends_the_wait(handlers: dict[int, Handler]) -> None:
    signals = ForegroundSignals.install()

    def check() -> None:
        raise RuntimeError("the server exited")

    with pytest.raises(RuntimeError, match="exited"):
        signals.wait_for_stop(check, every_s=0.01)


def test_closing_gives_each_signal_its_earlier_handler_back_and_closes_the_pipe() -> None:
    def earlier(signum: int, frame: object) -> None:
        raise AssertionError("not called in this test")

    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGTERM, earlier)
    descriptors = len(os.listdir("/proc/self/fd"))
    try:
        with ForegroundSignals.install(reload=True) as signals:
            assert signal.getsignal(signal.SIGTERM) is not earlier
            assert len(os.listdir("/proc/self/fd")) == descriptors + 2  # the pipe's two ends
        assert signal.getsignal(signal.SIGTERM) is earlier
        assert signal.getsignal(signal.SIGHUP) == saved[signal.SIGHUP]
        assert len(os.listdir("/proc/self/fd")) == descriptors
        signals.close()  # a second close does nothing
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
