"""What TLS + API-key checking cost at the proxy, per request, against the same proxy in plain HTTP.

``python -m benchmarks.edge --repo model_repository [--rounds 6] [--seconds 8] [--concurrency 8]``

One ``Cluster`` (real ``serve`` replicas) with its nginx in edge mode (TLS with a self-signed
P-256 certificate, API keys hashed by njs, the limits set high enough never to refuse) and, beside
it, a second nginx rendered from the same template without TLS and keys, in front of the same
replicas. Each workload runs on both proxies in turn, ``rounds`` times, the order alternating
(A/B, B/A, ...), so that load from other processes hits both alike. Each run is ``concurrency``
client threads on keep-alive connections for ``seconds``; throughput is completed requests per
second, all of which must be 200. Workloads:

- ``infer``: one 500x375 JPEG through the ensemble (what clients do);
- ``metadata``: ``GET /v2/models/resnet18``, which Triton answers at once: the proxy's own cost
  dominates, the worst case for a relative overhead;
- ``metadata, new connection``: the same with a new connection per request (a full TLS
  handshake each time: clients that do not keep connections).

Throughput on a shared 2-core machine is noisy, and the clients share the cores with the proxy.
So the CPU time of each nginx's workers (utime + stime from /proc) is counted too, per request:
that is the proxy's own cost, whatever else runs. For ``infer``, the replicas' CPU per request
(every process under each ``serve``) is the yardstick: on a CPU-bound node, the extra proxy CPU
divided by proxy + replica CPU is the throughput the edge costs.

Prints a markdown table with every round, the medians and the ratio edge / plain, and the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from resnet18_triton import contract
from resnet18_triton.deploy import keys, proxy
from resnet18_triton.deploy.cluster import Cluster, ClusterOptions
from resnet18_triton.perf import harness
from resnet18_triton.perf.images import encode, gradient_image
from resnet18_triton.server.embedded import free_port

NEVER_REFUSE = proxy.Limits(
    rate_per_s=1_000_000,
    burst=1_000_000,
    client_connections=4096,
    max_in_flight=4096,
    # The per-key shares too: the benchmark's one key sends at --concurrency.
    key_in_flight=4096,
    key_large_in_flight=4096,
    max_large_in_flight=4096,
    body_budget_bytes=4096 * proxy.MIB,
)


@dataclass(frozen=True)
class Target:
    """One proxy as the clients reach it, and its nginx master's pid."""

    name: str
    port: int
    context: ssl.SSLContext | None
    headers: dict[str, str]
    master_pid: int

    def connect(self) -> http.client.HTTPConnection:
        return harness.connect("127.0.0.1", self.port, tls=self.context)


@dataclass(frozen=True)
class Workload:
    name: str
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]
    reuse_connection: bool = True


def self_signed(directory: Path) -> tuple[Path, Path]:
    certificate, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(certificate),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return certificate, key


@dataclass(frozen=True)
class SecuredCluster:
    """A cluster's options with TLS and one API key, and what a client needs to reach it."""

    options: ClusterOptions
    certificate: Path
    api_key: str


@contextlib.contextmanager
def secured_cluster(
    repository: Path, replicas: int, prefix: str, limits: proxy.Limits | None = None
) -> Iterator[SecuredCluster]:
    """Options for ``cluster`` with a self-signed certificate and one new API key, in a fresh
    temporary directory, removed on exit with the keys and the private TLS key in it; the key is
    read from its file, never from argv. ``limits``: the proxy's (None: its defaults)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        workdir = Path(scratch)
        certificate, tls_key = self_signed(workdir)
        key_file = workdir / "keys.txt"
        api_key = keys.add_api_key(key_file, "benchmark")
        options = harness.cluster_options(
            repository,
            replicas,
            workdir / "cluster",
            restart_replicas=False,
            api_key_file=key_file,
            tls_certificate=certificate,
            tls_key=tls_key,
        )
        if limits is not None:
            options = dataclasses.replace(options, limits=limits)
        (workdir / "cluster").mkdir()
        yield SecuredCluster(options, certificate, api_key)


def infer_workload(image: bytes) -> Workload:
    body, headers = harness.infer_request(image)
    return Workload("infer (500x375 JPEG)", "POST", f"/v2/models/{contract.ENSEMBLE_MODEL}/infer",
                    body, headers)  # fmt: skip


@dataclass(frozen=True)
class Run:
    rate: float  # requests/s
    requests: int
    proxy_cpu_s: float  # the nginx workers' CPU during the run
    replica_cpu_s: float  # every process under the replicas' serve processes


def run(
    target: Target,
    workload: Workload,
    concurrency: int,
    seconds: float,
    replica_pids: list[int] | None = None,
) -> Run:
    """``concurrency`` threads for ``seconds``: throughput and CPU; every answer must be 200."""
    counts = [0] * concurrency
    failures: list[str] = []
    deadline = time.monotonic() + seconds

    def client(slot: int) -> None:
        connection = target.connect()
        headers = {**workload.headers, **target.headers}
        while time.monotonic() < deadline:
            if not workload.reuse_connection:
                connection.close()
                connection = target.connect()
            connection.request(workload.method, workload.path, workload.body, headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                failures.append(f"{target.name}: HTTP {response.status}")
                return
            counts[slot] += 1
        connection.close()

    replicas = replica_pids or []
    proxy_before = harness.tree_cpu_seconds(target.master_pid, include_root=False)
    replicas_before = sum(harness.tree_cpu_seconds(pid) for pid in replicas)
    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(slot,)) for slot in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    proxy_cpu = harness.tree_cpu_seconds(target.master_pid, include_root=False) - proxy_before
    replica_cpu = sum(harness.tree_cpu_seconds(pid) for pid in replicas) - replicas_before
    if failures:
        raise SystemExit(f"a request failed, the comparison is void: {failures[0]}")
    return Run(sum(counts) / elapsed, sum(counts), proxy_cpu, replica_cpu)


def start_plain_proxy(cluster: Cluster, workdir: Path) -> tuple[int, int, Callable[[], None]]:
    """A second nginx without TLS or keys in front of ``cluster``'s replicas; (port, pid, stop)."""
    assert cluster.settings is not None
    port = free_port()
    runtime = workdir / "plain"
    proxy.prepare_runtime_dir(runtime)
    settings = proxy.ProxySettings(
        upstreams=cluster.settings.upstreams,
        listen_http=f"127.0.0.1:{port}",
        listen_grpc=f"127.0.0.1:{free_port()}",
        max_body_bytes=cluster.settings.max_body_bytes,
        runtime_dir=str(runtime),
        error_log=str(workdir / "plain-error.log"),
        access_log=str(workdir / "plain-access.log"),  # both proxies log, as in production
        user=cluster.settings.user,
        limits=NEVER_REFUSE,
    )
    config = workdir / "plain.conf"
    config.write_text(proxy.render(settings))
    proxy.check_config(config, runtime)
    process = proxy.start_nginx(config, runtime, workdir / "plain.log")
    for _ in range(100):
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/v2/health/ready")
            if connection.getresponse().status == 200:
                break
        except OSError:
            time.sleep(0.1)
    else:
        process.terminate()
        raise SystemExit(f"the plain nginx did not start; see {workdir / 'plain-error.log'}")

    def stop() -> None:
        process.terminate()
        process.wait(timeout=30)

    return port, process.pid, stop


@click.command()
@click.option("--repo", "repository", type=click.Path(file_okay=False, path_type=Path),
              default=Path("model_repository"), show_default=True)  # fmt: skip
@click.option("--replicas", default=1, show_default=True)
@click.option("--rounds", default=6, show_default=True)
@click.option("--seconds", default=8.0, show_default=True)
@click.option("--concurrency", default=8, show_default=True)
def main(repository: Path, replicas: int, rounds: int, seconds: float, concurrency: int) -> None:
    with secured_cluster(repository, replicas, "edge-benchmark-", NEVER_REFUSE) as secured:
        _compare(secured, rounds, seconds, concurrency)


def _compare(secured: SecuredCluster, rounds: int, seconds: float, concurrency: int) -> None:
    options, certificate, api_key = secured.options, secured.certificate, secured.api_key
    workdir = certificate.parent
    image = encode(gradient_image(500, 375, seed=7), "JPEG")
    workloads = [
        infer_workload(image),
        Workload("metadata", "GET", f"/v2/models/{contract.ENSEMBLE_MODEL}", None, {}),
        Workload("metadata, new connection", "GET", f"/v2/models/{contract.ENSEMBLE_MODEL}",
                 None, {}, reuse_connection=False),
    ]  # fmt: skip
    with Cluster(options) as cluster:
        plain_port, plain_pid, stop_plain = start_plain_proxy(cluster, workdir)
        assert cluster.nginx is not None
        replica_pids = [r.process.pid for r in cluster.replicas if r.process is not None]
        try:
            edge = Target(
                "TLS + key",
                cluster.options.http_port,
                ssl.create_default_context(cafile=str(certificate)),
                {contract.API_KEY_HEADER: f"Bearer {api_key}"},
                cluster.nginx.pid,
            )
            plain = Target("plain", plain_port, None, {}, plain_pid)
            results: dict[tuple[str, str], list[Run]] = {}
            loads: list[float] = []
            for workload in workloads:
                run(plain, workload, concurrency, 2.0)  # warm-up, both paths
                run(edge, workload, concurrency, 2.0)
                for round_ in range(rounds):
                    order = (plain, edge) if round_ % 2 == 0 else (edge, plain)
                    for target in order:
                        loads.append(os.getloadavg()[0])
                        measured = run(target, workload, concurrency, seconds, replica_pids)
                        results.setdefault((workload.name, target.name), []).append(measured)
        finally:
            stop_plain()
    here = harness.machine()
    print(f"\nCPU: {here.cpu}, {here.logical_cpus} logical CPUs; {options.replicas} replica(s); "
          f"{concurrency} client threads; {rounds} rounds x {seconds:.0f} s, A/B alternating; "
          f"load average {min(loads):.1f}-{max(loads):.1f}\n")  # fmt: skip
    print(
        "| workload | plain req/s (median) | TLS + key req/s (median) | TLS + key / plain "
        "| rounds plain | rounds TLS + key | nginx CPU µs/request plain | TLS + key |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for workload in workloads:
        a, b = results[(workload.name, "plain")], results[(workload.name, "TLS + key")]
        ratio = statistics.median(r.rate for r in b) / statistics.median(r.rate for r in a)
        print(
            f"| {workload.name} | {statistics.median(r.rate for r in a):.1f} | "
            f"{statistics.median(r.rate for r in b):.1f} | {ratio:.3f} | "
            f"{', '.join(f'{r.rate:.0f}' for r in a)} | {', '.join(f'{r.rate:.0f}' for r in b)} | "
            f"{cpu_per_request(a):.0f} | {cpu_per_request(b):.0f} |"
        )
    infer = workloads[0].name
    a, b = results[(infer, "plain")], results[(infer, "TLS + key")]
    replica_us = 1e6 * sum(r.replica_cpu_s for r in a + b) / sum(r.requests for r in a + b)
    extra_us = cpu_per_request(b) - cpu_per_request(a)
    share = extra_us / (replica_us + cpu_per_request(b))
    print(
        f"\n{infer}: replicas {replica_us:.0f} µs CPU/request; the edge adds {extra_us:.0f} µs "
        f"at the proxy: {100 * share:.2f} % of the CPU per request (the throughput it costs on "
        "a CPU-bound node)"
    )


def cpu_per_request(runs: list[Run]) -> float:
    """nginx worker CPU µs per request over all rounds (ticks are 10 ms; summing rounds helps)."""
    return 1e6 * sum(r.proxy_cpu_s for r in runs) / sum(r.requests for r in runs)


if __name__ == "__main__":
    main()
