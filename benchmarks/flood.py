"""A flood against one server or the proxy: many more clients than cores, large images.

The flood itself (``resnet18_triton.perf.flood``): each client sends the same large PNG to the
ensemble in a closed loop over its own connection; every request ends ``ok``, ``wrong``,
``refused``, ``error`` or ``timeout``, while readiness and the process tree's memory are watched.

The integration test ``tests/integration/test_flood.py`` asserts on a short flood; run this file
for the report (accepted throughput and p99 under the flood against the unloaded server):

    .venv/bin/python -m benchmarks.flood --repo model_repository --clients 96 --seconds 25
    .venv/bin/python -m benchmarks.flood --repo model_repository --through-proxy
    .venv/bin/python -m benchmarks.flood --repo model_repository --allocator system  # glibc

``--through-proxy`` floods ``cluster``'s proxy instead (one replica, TLS, an API key, the default
per-client limits), each client from its own loopback address.

``--url`` floods something already running, each client from its own loopback address, and
watches the memory of the process tree of ``--tree-pid``; for compose's default services:

    docker-compose up -d
    .venv/bin/python -m benchmarks.flood --url 127.0.0.1:8000 --clients 192 \
        --tree-pid "$(docker inspect -f '{{.State.Pid}}' "$(docker-compose ps -q triton)")"

(8000 is the edge in front of the server; 8010, the server's own port, is the path without it).

Prints a markdown report; numbers belong in docs/reliability.md, not in tests.
"""

from __future__ import annotations

import argparse
import os
import ssl
import statistics
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from benchmarks.edge import secured_cluster
from resnet18_triton import contract
from resnet18_triton.deploy.cluster import Cluster
from resnet18_triton.perf import harness, images
from resnet18_triton.perf.flood import FloodReport, Target, lone_latency_s, run_flood


def markdown(unloaded: FloodReport, flood: FloodReport, cpu: str) -> str:
    """The benchmark's report."""
    rows = []
    for label, report in (("unloaded (best)", unloaded), ("flood", flood)):
        counts = report.counts
        rows.append(
            f"| {label} | {report.clients} | {report.accepted_per_s:.1f} | "
            f"{report.latency_s(0.5) * 1000:.0f} | {report.latency_s(0.99) * 1000:.0f} | "
            f"{counts['refused']} | {counts['wrong']} | {counts['timeout'] + counts['error']} | "
            f"{report.growth_mb:.0f} |"
        )
    ratio = flood.accepted_per_s / unloaded.accepted_per_s
    return "\n".join(
        [
            f"CPU: {cpu}",
            "",
            "| load | clients | accepted img/s | p50 ms | p99 ms | refused | wrong | "
            "time-outs+errors | tree growth MB |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"accepted throughput under the flood / unloaded best: {ratio:.2f}x",
            f"refusals: {dict(flood.refusals)}",
            f"ready checks failed: {len(flood.not_ready)} of {flood.ready_checks}",
            "tree growth by quarter of the flood (MB): "
            + ", ".join(f"{mb:.0f}" for mb in flood.growth_by_quarter_mb()),
            "peak by process (MB, before -> peak): "
            + ", ".join(
                f"{name} {flood.rss_before_by_process_mb.get(name, 0):.0f} -> {mb:.0f}"
                for name, mb in sorted(flood.rss_peak_by_process_mb.items())
            ),
        ]
    )


def measure(
    target: Target, server_pid: int, args: argparse.Namespace, image: bytes
) -> tuple[FloodReport, FloodReport, float]:
    """The best unloaded run, the flood, and a lone request's latency after it."""
    expected = _answer(target, args.model, image)
    runs = [
        run_flood(
            target,
            args.model,
            image,
            expected,
            clients=int(count),
            seconds=args.seconds / 2,
            server_pid=server_pid,
        )
        for count in args.unloaded_clients.split(",")
    ]
    unloaded = max(runs, key=lambda report: report.accepted_per_s)
    flood = run_flood(
        target,
        args.model,
        image,
        expected,
        clients=args.clients,
        seconds=args.seconds,
        server_pid=server_pid,
    )
    recovery = statistics.median(
        lone_latency_s(target, args.model, image, expected) for _ in range(3)
    )
    return unloaded, flood, recovery


def through_proxy(args: argparse.Namespace, image: bytes) -> tuple[FloodReport, FloodReport, float]:
    """The same flood through ``cluster``'s proxy (one replica, TLS, an API key, the default
    per-client limits), each client from its own loopback address as distinct callers would."""
    with (
        secured_cluster(args.repo, 1, "flood-benchmark-") as secured,
        Cluster(secured.options) as cluster,
    ):
        options = secured.options
        replica = cluster.replicas[0].process
        assert replica is not None
        target = Target(
            "127.0.0.1",
            options.http_port,
            ssl.create_default_context(cafile=str(secured.certificate)),
            secured.api_key,
            tuple(harness.loopback_address(number) for number in range(args.clients)),
        )
        return measure(target, replica.pid, args, image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--model", default=contract.ENSEMBLE_MODEL)
    parser.add_argument("--clients", type=int, default=96)
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--unloaded-clients", default="1,2,4")
    parser.add_argument(
        "--through-proxy",
        action="store_true",
        help="Flood `cluster`'s proxy (TLS, API key, per-client limits) over one replica.",
    )
    parser.add_argument(
        "--url",
        help="Flood this HOST:PORT, already running (e.g. compose's edge), from one loopback "
        "address per client; needs --tree-pid.",
    )
    parser.add_argument(
        "--tree-pid",
        type=int,
        help="With --url: the process whose tree's memory is watched (a container's first "
        "process: docker inspect -f '{{.State.Pid}}' CONTAINER).",
    )
    parser.add_argument(
        "--allocator",
        default="tcmalloc",
        help="serve's --allocator for the server (tcmalloc, the default, or system: glibc).",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Set for the server only (e.g. LD_PRELOAD=... to compare allocators).",
    )
    args = parser.parse_args()
    # The server inherits this process's environment; this process itself started before it.
    os.environ.update(item.split("=", 1) for item in args.server_env)
    image = images.noisy_png()
    if args.url:
        if args.tree_pid is None:
            parser.error("--url needs --tree-pid: the process tree whose memory to watch")
        host, port = args.url.rsplit(":", 1)
        sources = tuple(harness.loopback_address(number) for number in range(args.clients))
        target = Target(host, int(port), sources=sources)
        unloaded, flood, recovery = measure(target, args.tree_pid, args, image)
    elif args.through_proxy:
        unloaded, flood, recovery = through_proxy(args, image)
    else:
        options = harness.local_options(args.repo, metrics=False, allocator=args.allocator)
        with harness.local_server(options) as server:
            unloaded, flood, recovery = measure(
                Target.from_url(server.url), server.pid, args, image
            )
    print(markdown(unloaded, flood, harness.cpu_model()))
    print(f"lone request after the flood: {recovery * 1000:.0f} ms")


def _answer(target: Target, model: str, image: bytes) -> NDArray[np.float32]:
    """The server's own answer, used only as the benchmark's consistency check (the test compares
    with an independent PyTorch reference)."""
    connection = target.connect(60)
    body, headers = harness.infer_request(image)
    connection.request("POST", f"/v2/models/{model}/infer", body, target.headers(headers))
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
        raise SystemExit(f"the server refused the first request: {response.status} {payload!r}")
    return harness.binary_probabilities(
        payload, response.getheader("Inference-Header-Content-Length")
    )


if __name__ == "__main__":
    main()
