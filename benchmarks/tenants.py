"""Tenants through the proxy: polite callers at a fixed rate, alone and beside two kinds of flood.

``python -m benchmarks.tenants --repo model_repository [--replicas 2] [--seconds 20]
[--key-in-flight 4] [--key-large-in-flight 2] [--max-large-in-flight 4]``

One ``cluster`` (real ``serve`` replicas, nginx with TLS, two API keys, the default limits). Each
caller has its own loopback address, as on a real edge:

1. **alone, closed loop**: 8 polite callers (key ``benchmark``) each send one 500x375 JPEG at a
   time; their throughput is what the polite tenant gets alone;
2. **alone, fixed rate**: the polite callers send ``--share`` (35 %) of that rate, spread evenly,
   each request retried after ``Retry-After`` up to 5 tries, as the project's client does;
3. **beside a keyed flood**: the same fixed rate while another tenant (key ``abusive``, 4
   addresses x 48 connections) sends 6.8 MB noise PNGs in closed loops;
4. **beside an unauthenticated flood**: the same fixed rate while 192 connections without a key
   send the same PNGs.

For each fixed-rate run: the share of the scheduled requests answered (after the polite retries),
p50 and p99 from the scheduled time to the answer (retries included), and each flood's outcomes,
refusals by kind, and the replicas' memory; and, from the proxy's own tenant metrics, each
key's answers, refusals and replica time (the seconds the replicas spent on its answers: its
share of the server). Prints markdown; figures belong in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import ssl
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.edge import secured_cluster
from resnet18_triton import contract
from resnet18_triton.deploy import keys, proxy
from resnet18_triton.deploy.cluster import Cluster
from resnet18_triton.perf import flood, harness
from resnet18_triton.perf.images import encode, gradient_image, noisy_png

POLITE_CALLERS = 8
FLOOD_ADDRESSES = 4
FLOOD_CONNECTIONS = 192
POLITE_TRIES = 5


@dataclass
class FixedRate:
    """A fixed-rate run of the polite tenant: what was scheduled and how each request ended."""

    scheduled: int = 0
    answered: list[float] = field(default_factory=list)  # seconds from schedule to answer
    retries: int = 0
    failed: Counter[str] = field(default_factory=Counter)

    def share_answered(self) -> float:
        return len(self.answered) / self.scheduled if self.scheduled else float("nan")

    def quantile_ms(self, q: float) -> float:
        if not self.answered:
            return float("nan")
        ordered = sorted(self.answered)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def polite_at_rate(
    target: flood.Target, image: bytes, expected: np.ndarray, rate: float, seconds: float
) -> FixedRate:
    """Requests at ``rate`` per second for ``seconds``, round-robin over the target's addresses,
    each on its own thread, retried after Retry-After (429 or 503) up to ``POLITE_TRIES``."""
    result = FixedRate()
    lock = threading.Lock()
    request = harness.infer_request(image)
    threads = []

    def one(number: int, scheduled_at: float) -> None:
        for attempt in range(POLITE_TRIES):
            outcome = flood.send(target, contract.ENSEMBLE_MODEL, request, expected, 60.0, 1e-5,
                                 number)  # fmt: skip
            if outcome.kind == "ok":
                with lock:
                    result.answered.append(time.monotonic() - scheduled_at)
                    result.retries += attempt
                return
            if outcome.kind != "refused" or outcome.status not in (429, 503):
                break
            time.sleep(1.0)  # the proxy's Retry-After
        with lock:
            result.failed[f"{outcome.kind} {outcome.status or ''}".strip()] += 1

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
    return result


def beside(
    flood_target: flood.Target,
    large: bytes,
    large_expected: np.ndarray,
    polite: flood.Target,
    photo: bytes,
    expected: np.ndarray,
    rate: float,
    seconds: float,
    replica_pid: int,
) -> tuple[FixedRate, flood.FloodReport]:
    """The polite fixed-rate run while ``flood_target`` floods with ``large`` in closed loops."""
    reports: list[flood.FloodReport] = []
    flooding = threading.Thread(
        target=lambda: reports.append(
            flood.run_flood(
                flood_target,
                contract.ENSEMBLE_MODEL,
                large,
                large_expected,
                clients=FLOOD_CONNECTIONS,
                seconds=seconds + 4,
                server_pid=replica_pid,
            )
        )
    )
    flooding.start()
    time.sleep(4)  # the flood fills the proxy first
    fixed = polite_at_rate(polite, photo, expected, rate, seconds)
    flooding.join()
    return fixed, reports[0]


Counters = dict[tuple[str, str], float]


def tenant_counters(metrics_url: str) -> Counters:
    """(tenant, outcome) -> requests, and (tenant, "replica_s") -> replica seconds, from the
    proxy's tenant metrics."""
    counters: Counters = {}
    for (name, pairs), value in harness.metric_samples(metrics_url).items():
        labels = dict(pairs)
        tenant = labels.get("tenant", "")
        if name == "resnet18_proxy_requests_total":
            key = (tenant, labels["outcome"])
            counters[key] = counters.get(key, 0.0) + value
        elif name == "resnet18_proxy_upstream_seconds_total":
            counters[tenant, "replica_s"] = counters.get((tenant, "replica_s"), 0.0) + value
    return counters


def _tenant_lines(name: str, before: Counters, after: Counters) -> list[str]:
    """Per tenant during one run: answers, refusals by kind, replica seconds and their share."""
    grown = {key: value - before.get(key, 0.0) for key, value in after.items()}
    grown = {key: value for key, value in grown.items() if value > 0}
    total_s = sum(value for (_, kind), value in grown.items() if kind == "replica_s")
    lines = []
    for tenant in sorted({tenant for tenant, _ in grown}):
        outcomes = ", ".join(
            f"{kind} {value:.0f}"
            for (who, kind), value in sorted(grown.items())
            if who == tenant and kind != "replica_s"
        )
        seconds = grown.get((tenant, "replica_s"), 0.0)
        share = 100 * seconds / total_s if total_s else 0.0
        answered = grown.get((tenant, "answered"), 0.0)
        each = f", {1000 * seconds / answered:.0f} ms per answer" if answered else ""
        lines.append(
            f"- {name}, tenant `{tenant}`: {outcomes}; replica time {seconds:.1f} s "
            f"({share:.0f} % of the replicas' time{each})"
        )
    return lines


def _row(name: str, fixed: FixedRate) -> str:
    failed = ", ".join(f"{n} {kind}" for kind, n in fixed.failed.items()) or "0"
    answered = f"{len(fixed.answered)} ({100 * fixed.share_answered():.1f} %)"
    return (
        f"| {name} | {fixed.scheduled} | {answered} | {fixed.quantile_ms(0.5):.0f} "
        f"| {fixed.quantile_ms(0.99):.0f} | {fixed.retries} | {failed} |"
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
    secured = secured_cluster(args.repo, args.replicas, "tenants-benchmark-", limits)
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
        alone_closed = flood.run_flood(polite, contract.ENSEMBLE_MODEL, photo, expected,
                                       clients=POLITE_CALLERS, seconds=args.seconds,
                                       server_pid=replica.pid)  # fmt: skip
        rate = args.share * alone_closed.accepted_per_s
        counters.append(tenant_counters(cluster.metrics_url))
        alone = polite_at_rate(polite, photo, expected, rate, args.seconds)
        counters.append(tenant_counters(cluster.metrics_url))
        keyed_fixed, keyed_flood = beside(keyed, large, large_expected, polite, photo, expected,
                                          rate, args.seconds, replica.pid)  # fmt: skip
        counters.append(tenant_counters(cluster.metrics_url))
        anon_fixed, anon_flood = beside(anonymous, large, large_expected, polite, photo, expected,
                                        rate, args.seconds, replica.pid)  # fmt: skip
        counters.append(tenant_counters(cluster.metrics_url))
    print(f"CPU: {harness.machine().cpu}; {args.replicas} replica(s); limits: {limits}")
    print()
    print(f"Polite tenant alone, closed loop ({POLITE_CALLERS} callers): "
          f"{alone_closed.accepted_per_s:.1f} img/s; fixed rate {rate:.1f} img/s "
          f"({100 * args.share:.0f} %)")  # fmt: skip
    print()
    print("| polite at a fixed rate | scheduled | answered | p50 ms | p99 ms | retries | failed |")
    print("|---|---|---|---|---|---|---|")
    for name, fixed in (("alone", alone), ("beside a keyed flood", keyed_fixed),
                        ("beside an unauthenticated flood", anon_fixed)):  # fmt: skip
        print(_row(name, fixed))
    print()
    print(_flood_line("keyed flood (abusive, 6.8 MB PNGs)", keyed_flood))
    print(_flood_line("unauthenticated flood (6.8 MB PNGs)", anon_flood))
    print()
    print("From the proxy's tenant metrics (replica time: nginx's upstream time of the answers):")
    runs = ("alone, fixed rate", "beside the keyed flood", "beside the unauthenticated flood")
    for index, run in enumerate(runs, start=2):
        for line in _tenant_lines(run, counters[index - 1], counters[index]):
            print(line)
    print()
    p99_ratio = keyed_fixed.quantile_ms(0.99) / alone.quantile_ms(0.99)
    print(f"- p99 beside the keyed flood / alone: {p99_ratio:.1f}x; median latency alone "
          f"{statistics.median(alone.answered) * 1000:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
