"""A flood against one server or the proxy: many more clients than cores, large images.

Each client sends the same large PNG to the ensemble in a closed loop over its own connection
(Triton's binary HTTP protocol, so the body is the image and the answer is float32 bytes). Every
request ends as one of: ``ok`` (probabilities equal to the expected ones within ``atol``),
``wrong`` (an answer that differs), ``refused`` (an explicit HTTP error: the queue is full, the
queue timeout passed), ``error`` (the connection broke), or ``timeout`` (no answer within the
client's time-out: the failure the queue bounds exist to prevent). Meanwhile one thread asks
``/v2/health/ready`` and another samples the memory of the server's process tree.

``tests/integration/test_flood.py`` asserts on a short flood; ``benchmarks/flood.py`` runs a long
one for the report (accepted throughput and p99 under the flood against the unloaded server).
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from resnet18_triton import contract
from resnet18_triton.perf import harness

OUTCOMES = ("ok", "wrong", "refused", "error", "timeout")


@dataclass(frozen=True)
class Outcome:
    """How one request ended, when, and after how long."""

    kind: str
    seconds: float
    at: float
    status: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class Target:
    """Where the flood goes: a server, or a proxy with TLS and an API key. A proxy limits per
    client address, so client ``n`` connects from ``sources[n % len(sources)]``."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    api_key: str | None = None
    sources: tuple[str, ...] = ("127.0.0.1",)

    @classmethod
    def from_url(cls, url: str) -> Target:
        host, port = url.rsplit(":", 1)
        return cls(host, int(port))

    def connect(self, timeout_s: float, client: int = 0) -> http.client.HTTPConnection:
        source = self.sources[client % len(self.sources)]
        return harness.connect(
            self.host, self.port, source=source, tls=self.tls, timeout_s=timeout_s
        )

    def headers(self, headers: dict[str, str]) -> dict[str, str]:
        if self.api_key is None:
            return headers
        return {**headers, contract.API_KEY_HEADER: f"Bearer {self.api_key}"}


def send(
    target: Target,
    model: str,
    request: tuple[bytes, dict[str, str]],
    expected: NDArray[np.float32],
    timeout_s: float,
    atol: float,
    client: int = 0,
) -> Outcome:
    """One request on a fresh connection, classified as an ``Outcome``."""
    connection = target.connect(timeout_s, client)
    try:
        return exchange(connection, target, model, request, expected, atol)
    finally:
        connection.close()


def exchange(
    connection: http.client.HTTPConnection,
    target: Target,
    model: str,
    request: tuple[bytes, dict[str, str]],
    expected: NDArray[np.float32],
    atol: float,
) -> Outcome:
    """One request on ``connection`` (opened first if it is not open), classified as an
    ``Outcome``. A connection that failed is closed, so the next request opens it again."""
    start = time.monotonic()
    try:
        path = f"/v2/models/{model}/infer"
        connection.request("POST", path, request[0], target.headers(request[1]))
        response = connection.getresponse()
        payload = response.read()
    except TimeoutError:
        connection.close()
        return Outcome("timeout", time.monotonic() - start, start)
    except (OSError, http.client.HTTPException) as error:
        connection.close()
        return Outcome("error", time.monotonic() - start, start, detail=type(error).__name__)
    seconds = time.monotonic() - start
    if response.status != 200:
        detail = payload[:200].decode(errors="replace")
        return Outcome("refused", seconds, start, response.status, detail)
    probabilities = harness.binary_probabilities(
        payload, response.getheader("Inference-Header-Content-Length")
    )
    if probabilities.shape != expected.shape or not np.allclose(probabilities, expected, atol=atol):
        return Outcome("wrong", seconds, start, 200)
    return Outcome("ok", seconds, start, 200)


@dataclass
class FloodReport:
    """What a flood did: every outcome, the readiness checks, the memory of the process tree."""

    clients: int
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)
    ready_checks: int = 0
    not_ready: list[str] = field(default_factory=list)
    rss_before_mb: float = 0.0
    rss_peak_mb: float = 0.0
    # (seconds into the flood, MB): whether the growth levels off or keeps climbing.
    rss_samples: list[tuple[float, float]] = field(default_factory=list)
    # Each process's growth at its peak, so the report says where the memory went.
    rss_peak_by_process_mb: dict[str, float] = field(default_factory=dict)
    rss_before_by_process_mb: dict[str, float] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        counted = Counter(outcome.kind for outcome in self.outcomes)
        return {kind: counted.get(kind, 0) for kind in OUTCOMES}

    @property
    def refusals(self) -> Counter[str]:
        """Refusal status and the end of Triton's message (its start names the ensemble and the
        request) -> how many."""
        return Counter(
            f"{outcome.status} {outcome.detail.rstrip(chr(34) + '}')[-60:]}"
            for outcome in self.outcomes
            if outcome.kind == "refused"
        )

    @property
    def accepted_per_s(self) -> float:
        return self.counts["ok"] / self.seconds

    def growth_by_quarter_mb(self) -> list[float]:
        """The tree's growth at the end of each quarter of the flood (the peak within it)."""
        quarters = [0.0, 0.0, 0.0, 0.0]
        for at, rss in self.rss_samples:
            index = min(3, int(4 * at / self.seconds))
            quarters[index] = max(quarters[index], rss - self.rss_before_mb)
        return quarters

    def latency_s(self, quantile: float) -> float:
        times = sorted(o.seconds for o in self.outcomes if o.kind == "ok")
        if not times:
            return float("nan")
        return times[min(len(times) - 1, int(quantile * len(times)))]

    @property
    def growth_mb(self) -> float:
        return self.rss_peak_mb - self.rss_before_mb


def _watch(stop: threading.Event, interval_s: float, check: Callable[[], None]) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            check()
            stop.wait(interval_s)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def run_flood(
    target: Target,
    model: str,
    image: bytes,
    expected: NDArray[np.float32],
    *,
    clients: int,
    seconds: float,
    server_pid: int,
    timeout_s: float = 60.0,
    atol: float = 1e-5,
) -> FloodReport:
    """``clients`` closed loops sending ``image`` to ``model`` for ``seconds`` (requests started
    before the end run to completion), with readiness and memory watched throughout."""
    request = harness.infer_request(image)
    before = harness.tree_rss_mb(server_pid)
    report = FloodReport(clients, seconds, rss_before_mb=sum(before.values()))
    report.rss_before_by_process_mb = before
    report.rss_peak_mb = report.rss_before_mb
    lock = threading.Lock()
    stop = threading.Event()

    def ready() -> None:
        try:
            connection = target.connect(5)
            connection.request("GET", "/v2/health/ready")
            status = connection.getresponse().status
            connection.close()
            result = "" if status == 200 else f"HTTP {status}"
        except OSError as error:
            result = type(error).__name__
        with lock:
            report.ready_checks += 1
            if result:
                report.not_ready.append(result)

    started = time.monotonic()

    def memory() -> None:
        sizes = harness.tree_rss_mb(server_pid)
        rss = sum(sizes.values())
        with lock:
            for name, mb in sizes.items():
                peak = report.rss_peak_by_process_mb.get(name, 0.0)
                report.rss_peak_by_process_mb[name] = max(peak, mb)
            report.rss_peak_mb = max(report.rss_peak_mb, rss)
            report.rss_samples.append((time.monotonic() - started, rss))

    watchers = [_watch(stop, 0.5, ready), _watch(stop, 0.2, memory)]
    deadline = time.monotonic() + seconds

    def client(number: int) -> None:
        while time.monotonic() < deadline:
            outcome = send(target, model, request, expected, timeout_s, atol, number)
            with lock:
                report.outcomes.append(outcome)

    threads = [
        threading.Thread(target=client, args=(number,), daemon=True) for number in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    for watcher in watchers:
        watcher.join()
    return report


def lone_latency_s(
    target: Target, model: str, image: bytes, expected: NDArray[np.float32], atol: float = 1e-5
) -> float:
    """Seconds one request on an otherwise idle connection takes; raises on a wrong answer."""
    outcome = send(target, model, harness.infer_request(image), expected, 60.0, atol)
    if outcome.kind != "ok":
        raise RuntimeError(f"a lone request ended {outcome.kind}: {outcome.detail}")
    return outcome.seconds
