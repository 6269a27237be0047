"""A flood against one server or the proxy: many more clients than cores, large images.

Each client sends the same large PNG to the ensemble in a closed loop over its own connection
(Triton's binary HTTP protocol, so the body is the image and the answer is float32 bytes). Every
request ends as one of: ``ok`` (probabilities equal to the expected ones within ``atol``),
``wrong`` (an answer that differs), ``refused`` (an explicit HTTP error: the queue is full, the
queue timeout passed), ``error`` (the connection broke), or ``timeout`` (no answer within the
client's time-out: the failure the queue bounds exist to prevent). Meanwhile one thread asks
``/v2/health/ready`` and another samples the server's process tree's memory.

The integration test ``tests/integration/test_flood.py`` asserts on a short flood; run this file
for the report (accepted throughput and p99 under the flood against the unloaded server):

    .venv/bin/python -m benchmarks.flood --repo model_repository --clients 96 --seconds 25
    .venv/bin/python -m benchmarks.flood --repo model_repository --through-proxy

``--through-proxy`` floods ``cluster``'s proxy instead (one replica, TLS, an API key, the default
per-client limits), each client from its own loopback address.

Prints a markdown report; numbers belong in docs/reliability.md, not in tests.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import ssl
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import tritonclient.http as httpclient
from numpy.typing import NDArray
from PIL import Image

from resnet18_triton import contract

OUTCOMES = ("ok", "wrong", "refused", "error", "timeout")


def noisy_png(width: int = 1600, height: int = 1420, seed: int = 0) -> bytes:
    """A large PNG that does not compress (noise): about 6.8 MB at the default size."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def infer_request(image: bytes) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a binary KServe v2 request for the ensemble, one encoded image, as
    tritonclient sends it (the answer comes back as float32 bytes)."""
    data = httpclient.InferInput(contract.ENSEMBLE_INPUT, [1, 1], "BYTES")
    data.set_data_from_numpy(np.array([[image]], dtype=object))
    output = httpclient.InferRequestedOutput(contract.ENSEMBLE_OUTPUT, binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([data], [output])
    headers = {"Content-Type": "application/octet-stream"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return body, headers


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
        source = (self.sources[client % len(self.sources)], 0)
        if self.tls is None:
            return http.client.HTTPConnection(
                self.host, self.port, timeout=timeout_s, source_address=source
            )
        return http.client.HTTPSConnection(
            self.host, self.port, timeout=timeout_s, source_address=source, context=self.tls
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
    start = time.monotonic()
    connection = target.connect(timeout_s, client)
    try:
        path = f"/v2/models/{model}/infer"
        connection.request("POST", path, request[0], target.headers(request[1]))
        response = connection.getresponse()
        payload = response.read()
    except TimeoutError:
        return Outcome("timeout", time.monotonic() - start, start)
    except OSError as error:
        return Outcome("error", time.monotonic() - start, start, detail=type(error).__name__)
    finally:
        connection.close()
    seconds = time.monotonic() - start
    if response.status != 200:
        detail = payload[:200].decode(errors="replace")
        return Outcome("refused", seconds, start, response.status, detail)
    offset = int(response.getheader("Inference-Header-Content-Length") or 0)
    probabilities = np.frombuffer(payload[offset:], dtype=np.float32)
    if probabilities.shape != expected.shape or not np.allclose(probabilities, expected, atol=atol):
        return Outcome("wrong", seconds, start, 200)
    return Outcome("ok", seconds, start, 200)


def rss_by_process_mb(pid: int) -> dict[str, float]:
    """Resident memory of process ``pid`` and each descendant (the stubs, by the model each
    serves), in MB."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    sizes: dict[str, float] = {}
    for process in processes:
        try:
            argv = process.cmdline()
            role = Path(argv[1]).parts[-3] if len(argv) > 1 and "stub" in argv[0] else "server"
            sizes[f"{role} {process.pid}"] = process.memory_info().rss / 2**20
        except (psutil.NoSuchProcess, IndexError):
            continue
    return sizes


def tree_rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` and all its descendants (the stubs), in MB."""
    return sum(rss_by_process_mb(pid).values())


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
    request = infer_request(image)
    before = rss_by_process_mb(server_pid)
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
        sizes = rss_by_process_mb(server_pid)
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
    outcome = send(target, model, infer_request(image), expected, 60.0, atol)
    if outcome.kind != "ok":
        raise RuntimeError(f"a lone request ended {outcome.kind}: {outcome.detail}")
    return outcome.seconds


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


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


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
    from benchmarks.edge import secured_cluster
    from resnet18_triton.deploy.cluster import Cluster

    secured = secured_cluster(args.repo, 1, "flood-benchmark-")
    options = secured.options
    with Cluster(options) as cluster:
        replica = cluster.replicas[0].process
        assert replica is not None
        target = Target(
            "127.0.0.1",
            options.http_port,
            ssl.create_default_context(cafile=str(secured.certificate)),
            secured.api_key,
            tuple(f"127.0.0.{2 + number}" for number in range(args.clients)),
        )
        return measure(target, replica.pid, args, image)


def main() -> None:
    from resnet18_triton.server.embedded import EmbeddedServer, ServerOptions, free_port

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
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Set for the server only (e.g. LD_PRELOAD=... to compare allocators).",
    )
    args = parser.parse_args()
    # The server inherits this process's environment; this process itself started before it.
    os.environ.update(item.split("=", 1) for item in args.server_env)
    image = noisy_png()
    if args.through_proxy:
        unloaded, flood, recovery = through_proxy(args, image)
    else:
        options = ServerOptions(
            repository=args.repo, http_port=free_port(), grpc_port=free_port(), metrics_port=0
        )
        with EmbeddedServer(options) as server:
            unloaded, flood, recovery = measure(
                Target.from_url(server.url), server.pid, args, image
            )
    print(markdown(unloaded, flood, cpu_name()))
    print(f"lone request after the flood: {recovery * 1000:.0f} ms")


def _answer(target: Target, model: str, image: bytes) -> NDArray[np.float32]:
    """The server's own answer, used only as the benchmark's consistency check (the test compares
    with an independent PyTorch reference)."""
    connection = target.connect(60)
    body, headers = infer_request(image)
    connection.request("POST", f"/v2/models/{model}/infer", body, target.headers(headers))
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
        raise SystemExit(f"the server refused the first request: {response.status} {payload!r}")
    offset = int(response.getheader("Inference-Header-Content-Length") or 0)
    return np.frombuffer(payload[offset:], dtype=np.float32).copy()


if __name__ == "__main__":
    main()
