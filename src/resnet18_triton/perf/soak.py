"""Soak the ResNet-18 ensemble: high-concurrency load for minutes, every answer checked.

``run_soak`` loads a running server: ``concurrency`` threads, each with its own HTTP client,
send distinct images (one per request) back to back. Every answer is compared with the answer
the same image got before the load (and, given ``reference`` probabilities, with those). RSS of
every server process (tritonserver and each Python stub) is sampled after the warm-up and at the
end. ``verdict`` lists what failed: requests, wrong answers, changed answers, RSS growth beyond a
bound, replaced processes. ``own_server`` exports a repository (random weights, seed 0) and
starts an embedded Triton on free loopback ports for a soak without a running server.
``resnet18-triton soak`` runs it from the command line; tests/integration/test_soak.py runs a
short one in the test suite. ``LoadGenerator`` is also the background load of the reliability
tests.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import psutil

    from resnet18_triton.client.api import ImageClassifier

from resnet18_triton.perf import harness
from resnet18_triton.perf.images import distinct_jpegs

PROBABILITY_ATOL = 1e-6

Probabilities = npt.NDArray[np.float32]


# --- server processes ---------------------------------------------------------------------------


def peak_rss_mb(
    processes: dict[str, psutil.Process], window_s: float = 2.0, interval_s: float = 0.05
) -> dict[str, float]:
    """Each process's highest RSS over ``window_s`` under load.

    One snapshot is not a level: with ONNX Runtime's memory arena off (the default), the ORT stub
    mallocs and frees a batch's activations on every run (the size: docs/performance.md,
    "Figures behind the code's contracts"), so a single sample depends on what is in flight at
    that instant. The peak over a window is the level a leak would raise.
    """
    peak: dict[str, float] = {}
    deadline = time.monotonic() + window_s
    while True:
        for role, read in harness.rss_mb(processes).items():
            mb = round(read, 1)
            peak[role] = max(peak.get(role, mb), mb)
        if time.monotonic() >= deadline:
            return peak
        time.sleep(interval_s)


# --- load -------------------------------------------------------------------------------------


def distinct_images(count: int, seed: int = 1000) -> list[bytes]:
    """``count`` distinct small JPEGs (see ``images.distinct_jpegs``)."""
    return distinct_jpegs(count, seed)


def expected_answers(url: str, images: list[bytes]) -> Probabilities:
    """The probabilities each image gets (stacked in ``images`` order), without retries."""
    return harness.probabilities(url, images, network_timeout=60.0)


@dataclass
class LoadStats:
    ok: int = 0
    failed: int = 0
    wrong: int = 0
    errors: list[str] = field(default_factory=list)
    # (monotonic time, ok?) of each request's end, for recovery times.
    timeline: list[tuple[float, bool]] = field(default_factory=list)


class LoadGenerator:
    """``concurrency`` threads sending single-image requests until ``stop()`` (or ``max_s``).

    Every loop is bounded: each request by the client's network timeout, the run by ``max_s``.
    """

    def __init__(
        self,
        url: str,
        images: list[bytes],
        expected: Probabilities | None,
        concurrency: int,
        max_s: float = 3600.0,
        network_timeout: float = 30.0,
        retry: bool = False,
    ) -> None:
        self.url = url
        self.images = images
        self.expected = expected
        self.concurrency = concurrency
        self.max_s = max_s
        self.network_timeout = network_timeout
        self.retry = retry
        self.stats = LoadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> LoadGenerator:
        self._deadline = time.monotonic() + self.max_s
        self._threads = [
            threading.Thread(target=self._worker, args=(n,), daemon=True)
            for n in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, join_timeout: float = 60.0) -> LoadStats:
        self._stop.set()
        end = time.monotonic() + join_timeout
        for thread in self._threads:
            thread.join(timeout=max(0.1, end - time.monotonic()))
        return self.stats

    @property
    def alive(self) -> int:
        return sum(thread.is_alive() for thread in self._threads)

    def _record(self, ok: bool, wrong: bool = False, error: str | None = None) -> None:
        with self._lock:
            self.stats.timeline.append((time.monotonic(), ok and not wrong))
            if wrong:
                self.stats.wrong += 1
            elif ok:
                self.stats.ok += 1
            else:
                self.stats.failed += 1
            if error and len(self.stats.errors) < 20:
                self.stats.errors.append(error)

    def _worker(self, number: int) -> None:
        client = self._client()
        index = number
        try:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                position = index % len(self.images)
                index += self.concurrency
                try:
                    answer = client.probabilities([self.images[position]])[0]
                except Exception as error:
                    self._record(False, error=f"{type(error).__name__}: {error}"[:300])
                    # A new connection after a failure: the old one may be half closed.
                    client.close()
                    client = self._client()
                    self._stop.wait(0.05)
                    continue
                wrong = (
                    self.expected is not None
                    and np.abs(answer - self.expected[position]).max() > PROBABILITY_ATOL
                )
                self._record(
                    True, wrong=wrong, error=f"wrong answer for image {position}" if wrong else None
                )
        finally:
            client.close()

    def _client(self) -> ImageClassifier:
        """One thread's client: one connection, every failure counted (no retries)."""
        return harness.measuring_classifier(
            self.url, connection_timeout=5.0, network_timeout=self.network_timeout
        )


# --- the soak -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoakSummary:
    """What one ``run_soak`` measured; ``dataclasses.asdict`` of it is the JSON summary
    ``resnet18-triton soak`` prints and writes, keys in field order.

    RSS figures are MB per server process role (``harness.stack_processes``), NaN where a process
    could not be read; the ``after_warmup`` and ``end`` ones are peaks over a short window
    (``peak_rss_mb``). ``rss_growth_percent_after_warmup`` is the end over the after-warm-up
    peak, per role readable both times; ``max_rss_growth_percent`` its largest value (None when
    no role was readable). ``errors`` holds the first few failures' messages.
    ``max_difference_from_reference`` is None without reference probabilities.
    """

    url: str
    concurrency: int
    warmup_s: float
    duration_s: float
    distinct_images: int
    requests_ok: int
    requests_failed: int
    answers_wrong: int
    requests_per_s_after_warmup: float | None
    errors: tuple[str, ...]
    rss_mb_start: dict[str, float]
    rss_mb_after_warmup: dict[str, float]
    rss_mb_end: dict[str, float]
    rss_growth_percent_after_warmup: dict[str, float]
    max_rss_growth_percent: float | None
    answers_after_soak_equal: bool
    max_difference_from_reference: float | None
    processes_alive_at_end: bool
    pids_unchanged: bool


def run_soak(
    url: str,
    server_pid: int,
    duration_s: float,
    concurrency: int,
    warmup_s: float,
    image_count: int = 64,
    reference: Probabilities | None = None,
    images: list[bytes] | None = None,
) -> SoakSummary:
    """Soak the server at ``url`` (tritonserver pid ``server_pid``): ``concurrency`` clients for
    ``warmup_s`` then ``duration_s`` seconds, sending ``images`` (default: ``image_count``
    distinct ones) in turn; every answer compared with the one before the load."""
    images = images or distinct_images(image_count)
    expected = expected_answers(url, images)
    reference_error = float(np.abs(expected - reference).max()) if reference is not None else None
    processes = harness.stack_processes(server_pid)
    rss_start = {role: round(mb, 1) for role, mb in harness.rss_mb(processes).items()}
    load = LoadGenerator(
        url, images, expected, concurrency, max_s=warmup_s + duration_s + 30
    ).start()
    time.sleep(warmup_s)
    rss_warm = peak_rss_mb(processes)
    warm = (load.stats.ok, time.monotonic())
    time.sleep(duration_s)
    rss_end = peak_rss_mb(processes)
    stats = load.stop()
    elapsed = time.monotonic() - warm[1]
    after_warmup = stats.ok - warm[0]
    final = expected_answers(url, images)
    growth = {
        role: round(100.0 * (rss_end[role] - rss_warm[role]) / rss_warm[role], 2)
        for role in rss_warm
        if rss_warm[role] == rss_warm[role] and rss_warm[role] > 0
    }
    return SoakSummary(
        url=url,
        concurrency=concurrency,
        warmup_s=warmup_s,
        duration_s=duration_s,
        distinct_images=len(images),
        requests_ok=stats.ok,
        requests_failed=stats.failed,
        answers_wrong=stats.wrong,
        requests_per_s_after_warmup=round(after_warmup / elapsed, 1) if elapsed > 0 else None,
        errors=tuple(stats.errors[:5]),
        rss_mb_start=rss_start,
        rss_mb_after_warmup=rss_warm,
        rss_mb_end=rss_end,
        rss_growth_percent_after_warmup=growth,
        max_rss_growth_percent=max(growth.values()) if growth else None,
        answers_after_soak_equal=bool(np.abs(final - expected).max() <= PROBABILITY_ATOL),
        max_difference_from_reference=reference_error,
        processes_alive_at_end=all(p.is_running() for p in processes.values()),
        pids_unchanged={r: p.pid for r, p in processes.items()}
        == {r: p.pid for r, p in harness.stack_processes(server_pid).items()},
    )


def markdown(summary: SoakSummary) -> str:
    """The summary as a few lines and a per-process RSS table (Markdown)."""
    lines = [
        f"Soak: {summary.duration_s:g} s after {summary.warmup_s:g} s warm-up, "
        f"concurrency {summary.concurrency}, {summary.distinct_images} distinct images",
        "",
        f"- requests served: {summary.requests_ok} ({summary.requests_per_s_after_warmup} /s "
        "after warm-up)",
        f"- failed: {summary.requests_failed}, wrong answers: {summary.answers_wrong}, "
        f"answers after the soak equal: {summary.answers_after_soak_equal}",
        "",
        "| process | RSS start MB | after warm-up MB | end MB | growth after warm-up |",
        "|---|---|---|---|---|",
    ]
    for role, warm in summary.rss_mb_after_warmup.items():
        lines.append(
            f"| {role} | {summary.rss_mb_start.get(role)} | {warm} | "
            f"{summary.rss_mb_end.get(role)} | "
            f"{summary.rss_growth_percent_after_warmup.get(role)} % |"
        )
    return "\n".join(lines)


def verdict(summary: SoakSummary, max_rss_growth_percent: float) -> list[str]:
    """What failed in a ``run_soak`` summary, one sentence each; empty when the soak passed."""
    checks = [
        (summary.requests_failed == 0, f"{summary.requests_failed} requests failed"),
        (summary.answers_wrong == 0, f"{summary.answers_wrong} answers were wrong"),
        (summary.answers_after_soak_equal, "answers after the soak differ from before"),
        (
            (summary.max_rss_growth_percent or 0.0) < max_rss_growth_percent,
            f"a server process grew by {summary.max_rss_growth_percent} % "
            f"(bound {max_rss_growth_percent:g} %)",
        ),
        (summary.pids_unchanged, "a server process was replaced during the soak"),
    ]
    difference = summary.max_difference_from_reference
    if difference is not None:
        checks.append(
            (
                difference <= PROBABILITY_ATOL,
                f"answers differ from the reference by {difference:.3g} "
                f"(tolerance {PROBABILITY_ATOL:g})",
            )
        )
    return [message for passed, message in checks if not passed]


@contextmanager
def own_server(repository: Path | None = None) -> Iterator[tuple[str, int]]:
    """(url, pid) of an embedded Triton serving ``repository`` (default: a scratch repository,
    random weights, seed 0, a 2 ms queue delay so that requests under load are batched) on free
    loopback ports, stopped on exit."""
    with contextlib.ExitStack() as stack:
        if repository is None:
            repository = stack.enter_context(
                harness.scratch_repository("soak-repo-", max_queue_delay_us=2000)
            )
        options = harness.local_options(repository, exit_timeout_s=10)
        server = stack.enter_context(harness.local_server(options))
        yield server.url, server.pid
