"""Tenants through the proxy: polite callers at a fixed rate, alone and beside two kinds of flood.

``python -m benchmarks.tenants --repo model_repository [--replicas 2] [--seconds 20]
[--key-in-flight 4] [--key-large-in-flight 2] [--max-large-in-flight 4] [--flood-nice 10]
[--fresh-connections]``

One ``cluster`` (real ``serve`` replicas, nginx with TLS, two API keys, the default limits). Each
caller has its own loopback address, as on a real edge:

1. **alone, closed loop**: 8 polite callers (key ``benchmark``) each send one 500x375 JPEG at a
   time, waiting 1 s after a 429 as Retry-After asks; their throughput is what the polite tenant
   gets alone;
2. **alone, fixed rate**: the polite callers send ``--share`` (35 %) of that rate, spread evenly,
   each request retried after ``Retry-After`` up to 5 tries, as the project's client does. Each
   caller keeps its TLS connection, as the project's client does (``--fresh-connections``: a
   handshake per request);
3. **beside a keyed flood**: the same fixed rate while another tenant (key ``abusive``, 4
   addresses x 48 connections) sends 6.8 MB noise PNGs in closed loops, a new connection each;
4. **beside an unauthenticated flood**: the same fixed rate while 192 connections without a key
   send the same PNGs;
5. **both busy**: the polite callers in a closed loop again, beside the keyed flood: each key's
   share of the replicas' CPU against its fair share, half. A key's CPU is its answers times the
   CPU seconds one answer to its image costs the replicas' process trees, measured before the
   runs with one request at a time straight to a replica (``cpu_per_answer``); the sum is checked
   against the trees' measured CPU over the run. nginx's upstream time per key is printed too,
   but it counts a request's wait in the replica's queue as its own: a key with more requests in
   flight looks busier than it is.

The flood runs in a process of its own, at ``--flood-nice`` (10): its senders stand for other
machines, so they must neither hold the polite callers' GIL nor take the cores first.

For each fixed-rate run: the share of the scheduled requests answered (after the polite retries),
p50, p95, p99 and mean from the scheduled time to the answer (retries included), and each flood's
outcomes, refusals by kind, and the replicas' memory; and, from the proxy's own tenant metrics,
each key's answers, refusals, replica time (the seconds the replicas spent on its answers: its
share of the server) and time in nginx per request (from its first byte to its last: what the
client waited beyond it went to connecting and the TLS handshake). Prints markdown; figures
belong in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import http.client
import multiprocessing
import os
import queue
import ssl
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from benchmarks.edge import SecuredCluster, secured_cluster
from resnet18_triton import contract
from resnet18_triton.deploy import keys, proxy
from resnet18_triton.deploy.cluster import Cluster
from resnet18_triton.perf import flood, harness
from resnet18_triton.perf.images import encode, gradient_image, noisy_png

POLITE_CALLERS = 8
FLOOD_ADDRESSES = 4
FLOOD_CONNECTIONS = 192
POLITE_TRIES = 5
T = TypeVar("T")


@dataclass
class FixedRate:
    """A fixed-rate run of the polite tenant: what was scheduled and how each request ended."""

    scheduled: int = 0
    answered: list[float] = field(default_factory=list)  # seconds from schedule to answer
    retries: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)  # broken connections, resent

    def share_answered(self) -> float:
        return len(self.answered) / self.scheduled if self.scheduled else float("nan")

    def mean_ms(self) -> float:
        return 1000 * statistics.fmean(self.answered) if self.answered else float("nan")

    def quantile_ms(self, q: float) -> float:
        if not self.answered:
            return float("nan")
        ordered = sorted(self.answered)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def polite_at_rate(
    target: flood.Target,
    image: bytes,
    expected: np.ndarray,
    rate: float,
    seconds: float,
    keep_alive: bool = True,
) -> FixedRate:
    """Requests at ``rate`` per second for ``seconds``, each on its own thread, retried after
    Retry-After (429 or 503), or at once after a broken connection, up to ``POLITE_TRIES``.

    ``keep_alive``: each caller (one per address of the target) keeps its TLS connection between
    requests, as the project's client, tritonclient and browsers do; a request waits for a free
    caller. Otherwise each request opens a connection of its own, round-robin over the
    addresses, and pays a TLS handshake.
    """
    result = FixedRate()
    lock = threading.Lock()
    request = harness.infer_request(image)
    threads = []
    callers: queue.Queue[http.client.HTTPConnection] = queue.Queue()
    if keep_alive:
        for connection in _open_connections(target):
            callers.put(connection)

    def attempt(number: int) -> flood.Outcome:
        if not keep_alive:
            return flood.send(target, contract.ENSEMBLE_MODEL, request, expected, 60.0, 1e-5,
                              number)  # fmt: skip
        connection = callers.get()
        try:
            return flood.exchange(connection, target, contract.ENSEMBLE_MODEL, request, expected,
                                  1e-5)  # fmt: skip
        finally:
            callers.put(connection)

    def one(number: int, scheduled_at: float) -> None:
        for tries in range(POLITE_TRIES):
            outcome = attempt(number)
            if outcome.kind == "ok":
                with lock:
                    result.answered.append(time.monotonic() - scheduled_at)
                    result.retries += tries
                return
            if outcome.kind == "error":  # a fault: resent at once, as the client's RetryPolicy
                with lock:
                    result.faults[outcome.detail] += 1
                continue
            if outcome.kind != "refused" or outcome.status not in (429, 503):
                break
            time.sleep(1.0)  # the proxy's Retry-After
        with lock:
            result.failed[f"{outcome.kind} {outcome.status or outcome.detail}".strip()] += 1

    start = time.monotonic()
    count = int(rate * seconds)
    for number in range(count):
        scheduled_at = start + number / rate
        time.sleep(max(0.0, scheduled_at - time.monotonic()))
        thread = threading.Thread(target=one, args=(number, scheduled_at), daemon=True)
        thread.start()
        threads.append(thread)
    result.scheduled = count
    for thread in threads:
        thread.join()
    while not callers.empty():
        callers.get().close()
    return result


def _open_connections(target: flood.Target) -> list[http.client.HTTPConnection]:
    """One connection per address of ``target``, each past its TLS handshake and one request.

    The handshakes run at once, each followed by a readiness check: nginx closes a connection
    that sends no request within ``client_header_timeout`` (10 s) of its handshake, and
    handshakes made one after another behind a flood's queue can take longer than that in all.
    After one request the connection waits under ``keepalive_timeout`` (65 s) instead.
    """

    def open_one(number: int) -> http.client.HTTPConnection:
        connection = target.connect(60.0, number)
        connection.request("GET", "/v2/health/ready")
        connection.getresponse().read()
        return connection

    with ThreadPoolExecutor(len(target.sources)) as pool:
        return list(pool.map(open_one, range(len(target.sources))))


def closed_loop(
    target: flood.Target, image: bytes, expected: np.ndarray, seconds: float, keep_alive: bool
) -> float:
    """One caller per address of ``target`` sending ``image`` in a closed loop for ``seconds``,
    pausing 1 s after a 429 or 503 as Retry-After asks; answers per second. ``keep_alive``:
    each caller keeps its connection (else a new one per request)."""
    request = harness.infer_request(image)
    answered = [0] * len(target.sources)
    deadline = time.monotonic() + seconds

    def caller(number: int) -> None:
        connection = target.connect(60.0, number)
        while time.monotonic() < deadline:
            if not keep_alive:
                connection.close()
            outcome = flood.exchange(connection, target, contract.ENSEMBLE_MODEL, request,
                                     expected, 1e-5)  # fmt: skip
            answered[number] += outcome.kind == "ok"
            if outcome.kind == "refused":
                time.sleep(1.0)
        connection.close()

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(len(target.sources))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(answered) / seconds


def _flood_in_child(
    target: flood.Target,
    large: bytes,
    expected: np.ndarray,
    seconds: float,
    replica_pid: int,
    nice: int,
    reports: multiprocessing.Queue,  # type: ignore[type-arg]
) -> None:
    """The flood, in a process of its own (forked: the TLS context needs no pickling)."""
    os.nice(nice)
    reports.put(flood.run_flood(target, contract.ENSEMBLE_MODEL, large, expected,
                                clients=FLOOD_CONNECTIONS, seconds=seconds,
                                server_pid=replica_pid))  # fmt: skip


def beside(
    flood_target: flood.Target,
    large: bytes,
    large_expected: np.ndarray,
    seconds: float,
    replica_pid: int,
    flood_nice: int,
    polite_run: Callable[[], T],
) -> tuple[T, flood.FloodReport]:
    """``polite_run()`` while ``flood_target`` floods with ``large`` in closed loops for
    ``seconds`` (after 4 s in which the flood fills the proxy first).

    The flood's 192 senders run in a process of their own at niceness ``flood_nice``: on a real
    edge they are other machines. In the polite callers' process their threads would hold the
    GIL between the polite callers' sends and reads, and at the same priority they would take
    the cores the proxy and the replicas need; both would be measured as the server's latency.
    """
    context = multiprocessing.get_context("fork")
    reports = context.Queue()
    flooding = context.Process(
        target=_flood_in_child,
        args=(flood_target, large, large_expected, seconds + 4, replica_pid, flood_nice, reports),
    )
    flooding.start()
    time.sleep(4)
    polite = polite_run()
    report: flood.FloodReport = reports.get(timeout=600)
    flooding.join()
    return polite, report


def cpu_per_answer(url: str, image: bytes, replica_pids: list[int], count: int) -> float:
    """CPU seconds the replicas' process trees spend per answer to ``image``: ``count`` requests
    one at a time to the replica at ``url`` (no queue, no other caller), the trees' CPU before
    and after (the other replicas idle; their few milliseconds count against the estimate)."""
    before = replicas_cpu_seconds(replica_pids)
    for _ in range(count):
        harness.probabilities(url, [image])
    return (replicas_cpu_seconds(replica_pids) - before) / count


def replicas_cpu_seconds(replica_pids: list[int]) -> float:
    """CPU seconds used so far by the process trees of the replicas."""
    return sum(harness.tree_cpu_seconds(pid) for pid in replica_pids)


def normalised(amounts: dict[str, float]) -> dict[str, float]:
    """Each tenant's part of the amounts' total (nothing when the total is 0)."""
    total = sum(amounts.values())
    return {tenant: value / total for tenant, value in amounts.items()} if total else {}


def cpu_shares(answers: dict[str, float], cost: dict[str, float]) -> dict[str, float]:
    """Each tenant's share of the replicas' CPU: its answers times the CPU one of them costs."""
    return normalised({tenant: answers[tenant] * cost[tenant] for tenant in answers})


Counters = dict[tuple[str, str], float]
TIMES = ("replica_s", "proxy_s", "proxy_n")


def tenant_counters(metrics_url: str) -> Counters:
    """(tenant, outcome) -> requests, (tenant, "replica_s") -> replica seconds, and
    (tenant, "proxy_s") and (tenant, "proxy_n") -> the seconds nginx spent on the tenant's
    requests from their first byte to their last, and how many, from the proxy's tenant
    metrics."""
    counters: Counters = {}
    for (name, pairs), value in harness.metric_samples(metrics_url).items():
        labels = dict(pairs)
        tenant = labels.get("tenant", "")
        if name == "resnet18_proxy_requests_total":
            key = (tenant, labels["outcome"])
            counters[key] = counters.get(key, 0.0) + value
        elif name == "resnet18_proxy_upstream_seconds_total":
            counters[tenant, "replica_s"] = counters.get((tenant, "replica_s"), 0.0) + value
        elif name == "resnet18_proxy_request_duration_seconds_sum":
            counters[tenant, "proxy_s"] = value
        elif name == "resnet18_proxy_request_duration_seconds_count":
            counters[tenant, "proxy_n"] = value
    return counters


def replica_shares(before: Counters, after: Counters) -> dict[str, float]:
    """Each tenant's share of the replicas' time between two readings of the counters."""
    grown = {
        tenant: value - before.get((tenant, kind), 0.0)
        for (tenant, kind), value in after.items()
        if kind == "replica_s"
    }
    return normalised({tenant: value for tenant, value in grown.items() if value > 0})


def _tenant_lines(name: str, before: Counters, after: Counters) -> list[str]:
    """Per tenant during one run: answers, refusals by kind, replica seconds and their share."""
    grown = {key: value - before.get(key, 0.0) for key, value in after.items()}
    grown = {key: value for key, value in grown.items() if value > 0}
    shares = replica_shares(before, after)
    lines = []
    for tenant in sorted({tenant for tenant, _ in grown}):
        outcomes = ", ".join(
            f"{kind} {value:.0f}"
            for (who, kind), value in sorted(grown.items())
            if who == tenant and kind not in TIMES
        )
        seconds = grown.get((tenant, "replica_s"), 0.0)
        share = 100 * shares.get(tenant, 0.0)
        answered = grown.get((tenant, "answered"), 0.0)
        each = f", {1000 * seconds / answered:.0f} ms per answer" if answered else ""
        requests = grown.get((tenant, "proxy_n"), 0.0)
        if requests:
            each += f"; in nginx {1000 * grown.get((tenant, 'proxy_s'), 0.0) / requests:.0f} ms"
            each += " per request"
        lines.append(
            f"- {name}, tenant `{tenant}`: {outcomes}; replica time {seconds:.1f} s "
            f"({share:.0f} % of the replicas' time{each})"
        )
    return lines


def _row(name: str, fixed: FixedRate) -> str:
    failed = ", ".join(f"{n} {kind}" for kind, n in fixed.failed.items()) or "0"
    answered = f"{len(fixed.answered)} ({100 * fixed.share_answered():.1f} %)"
    times = " | ".join(f"{fixed.quantile_ms(q):.0f}" for q in (0.5, 0.95, 0.99))
    return (
        f"| {name} | {fixed.scheduled} | {answered} | {times} | {fixed.mean_ms():.0f} "
        f"| {fixed.retries} | {failed} |"
    )


def _flood_line(name: str, report: flood.FloodReport) -> str:
    counts = ", ".join(f"{kind} {n}" for kind, n in report.counts.items() if n)
    refusals = ", ".join(f"{n} x {kind}" for kind, n in report.refusals.most_common(3))
    return (
        f"- {name}: {counts}; refusals: {refusals or 'none'}; replica tree growth "
        f"{report.growth_mb:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--share", type=float, default=0.35)
    parser.add_argument(
        "--flood-nice",
        type=int,
        default=10,
        help="Niceness of the flood's process (0: the same priority as the proxy and replicas).",
    )
    parser.add_argument(
        "--fresh-connections",
        action="store_true",
        help="Each polite request opens a TLS connection of its own (default: each polite caller "
        "keeps its connection, as the project's client does).",
    )
    parser.add_argument(
        "--key-in-flight",
        type=int,
        default=proxy.Limits.key_in_flight,
        help="The proxy's per-key share (max-in-flight, 16, turns it off: the proxy's total).",
    )
    parser.add_argument(
        "--key-large-in-flight",
        type=int,
        default=proxy.Limits.key_large_in_flight,
        help="Of the per-key share, requests with a large body (equal to --key-in-flight: no "
        "separate share for them).",
    )
    parser.add_argument(
        "--max-large-in-flight",
        type=int,
        default=proxy.Limits.max_large_in_flight,
        help="Large requests through the proxy in total (16, the proxy's total: no such cap).",
    )
    args = parser.parse_args()
    limits = dataclasses.replace(
        proxy.Limits(),
        key_in_flight=args.key_in_flight,
        key_large_in_flight=args.key_large_in_flight,
        max_large_in_flight=args.max_large_in_flight,
    )
    with secured_cluster(args.repo, args.replicas, "tenants-benchmark-", limits) as secured:
        _measure(args, secured)


def _measure(args: argparse.Namespace, secured: SecuredCluster) -> None:
    """The runs of the module docstring on the cluster ``secured`` describes; prints the
    report."""
    keep_alive = not args.fresh_connections
    assert secured.options.api_key_file is not None
    abusive_key = keys.add_api_key(secured.options.api_key_file, "abusive")
    context = ssl.create_default_context(cafile=str(secured.certificate))
    photo = encode(gradient_image(500, 375, seed=7), "JPEG")
    large = noisy_png()
    with Cluster(secured.options) as cluster:
        port = secured.options.http_port
        sources = [harness.loopback_address(n, "127.0.3.1") for n in range(POLITE_CALLERS)]
        polite = flood.Target("127.0.0.1", port, context, secured.api_key, tuple(sources))
        keyed = flood.Target("127.0.0.1", port, context, abusive_key,
                             tuple(harness.loopback_address(n, "127.0.4.1")
                                   for n in range(FLOOD_ADDRESSES)))  # fmt: skip
        anonymous = flood.Target("127.0.0.1", port, context, None,
                                 tuple(harness.loopback_address(n, "127.0.5.1")
                                       for n in range(FLOOD_CONNECTIONS)))  # fmt: skip
        assert cluster.metrics_url is not None, "nginx has no Lua module: no tenant metrics"
        counters = [tenant_counters(cluster.metrics_url)]
        expected = harness.probabilities(cluster.replicas[0].url, [photo])[0]
        large_expected = harness.probabilities(cluster.replicas[0].url, [large])[0]
        replica = cluster.replicas[0].process
        assert replica is not None
        pids = [r.process.pid for r in cluster.replicas if r.process is not None]
        cost = {"benchmark": cpu_per_answer(cluster.replicas[0].url, photo, pids, 40),
                "abusive": cpu_per_answer(cluster.replicas[0].url, large, pids, 10)}  # fmt: skip
        alone_closed = closed_loop(polite, photo, expected, args.seconds, keep_alive)
        rate = args.share * alone_closed
        counters.append(tenant_counters(cluster.metrics_url))
        alone = polite_at_rate(polite, photo, expected, rate, args.seconds, keep_alive)
        counters.append(tenant_counters(cluster.metrics_url))
        with_flood = functools.partial(beside, large=large, large_expected=large_expected,
                                       seconds=args.seconds, replica_pid=replica.pid,
                                       flood_nice=args.flood_nice)  # fmt: skip
        at_rate = functools.partial(polite_at_rate, polite, photo, expected, rate, args.seconds,
                                    keep_alive)  # fmt: skip
        keyed_fixed, keyed_flood = with_flood(keyed, polite_run=at_rate)
        counters.append(tenant_counters(cluster.metrics_url))
        anon_fixed, anon_flood = with_flood(anonymous, polite_run=at_rate)
        counters.append(tenant_counters(cluster.metrics_url))
        cpu_before = replicas_cpu_seconds(pids)
        both_busy, _ = with_flood(keyed, polite_run=functools.partial(
            closed_loop, polite, photo, expected, args.seconds, keep_alive))  # fmt: skip
        cpu_measured = replicas_cpu_seconds(pids) - cpu_before
        counters.append(tenant_counters(cluster.metrics_url))
    connections = "keep their connections" if keep_alive else "open a connection per request"
    print(f"CPU: {harness.machine().cpu}; {args.replicas} replica(s); "
          f"limits: {secured.options.limits}; "
          f"flood senders at nice {args.flood_nice}; polite callers {connections}")  # fmt: skip
    print()
    print(f"Polite tenant alone, closed loop ({POLITE_CALLERS} callers): "
          f"{alone_closed:.1f} img/s; fixed rate {rate:.1f} img/s "
          f"({100 * args.share:.0f} %)")  # fmt: skip
    print()
    print("| polite at a fixed rate | scheduled | answered | p50 ms | p95 ms | p99 ms | mean ms "
          "| retries | failed |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    fixed_runs = (("alone", alone), ("beside a keyed flood", keyed_fixed),
                  ("beside an unauthenticated flood", anon_fixed))  # fmt: skip
    for name, fixed in fixed_runs:
        print(_row(name, fixed))
    for name, fixed in fixed_runs:
        if fixed.faults:
            print(f"- polite {name}: connections broken and resent: {dict(fixed.faults)}")
    print()
    print(_flood_line("keyed flood (abusive, 6.8 MB PNGs)", keyed_flood))
    print(_flood_line("unauthenticated flood (6.8 MB PNGs)", anon_flood))
    print()
    print("From the proxy's tenant metrics (replica time: nginx's upstream time of the answers):")
    runs = ("alone, fixed rate", "beside the keyed flood", "beside the unauthenticated flood",
            "both busy (polite in a closed loop beside the keyed flood)")  # fmt: skip
    for index, run in enumerate(runs, start=2):
        for line in _tenant_lines(run, counters[index - 1], counters[index]):
            print(line)
    shares = replica_shares(counters[-2], counters[-1])
    of_fair = ", ".join(f"`{tenant}` {share * len(shares):.2f}" for tenant, share in shares.items())
    answers = {tenant: counters[-1].get((tenant, "answered"), 0.0)
               - counters[-2].get((tenant, "answered"), 0.0) for tenant in cost}  # fmt: skip
    cpu = cpu_shares(answers, cost)
    cpu_of_fair = ", ".join(f"`{tenant}` {share * len(cpu):.2f}" for tenant, share in cpu.items())
    estimated = sum(answers[tenant] * cost[tenant] for tenant in cost)
    print(
        "- CPU per answer, one request at a time: "
        + ", ".join(f"`{tenant}` {1000 * seconds:.0f} ms" for tenant, seconds in cost.items())
    )
    print(f"- both busy: polite {both_busy:.1f} img/s in a closed loop; answers "
          + ", ".join(f"`{tenant}` {n:.0f}" for tenant, n in answers.items())
          + f"; each busy key's share of the replicas' CPU over its fair share: {cpu_of_fair} "
          f"(answers x CPU per answer: {estimated:.1f} CPU-s; the trees measured "
          f"{cpu_measured:.1f} CPU-s over the run); of the replicas' time (nginx's upstream "
          f"time, queueing included): {of_fair}")  # fmt: skip
    print()
    p99_ratio = keyed_fixed.quantile_ms(0.99) / alone.quantile_ms(0.99)
    print(f"- p99 beside the keyed flood / alone: {p99_ratio:.1f}x; median latency alone "
          f"{statistics.median(alone.answered) * 1000:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
