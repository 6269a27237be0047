"""Served throughput in the project's container against the embedded server, interleaved.

Both serve the same model repository on the same host: the embedded server (`serve` on the host)
and the server image run with docker-compose.yml's hardening (read-only root, no capabilities,
non-root, the CPU quota of the compose file). perf_analyzer sends real JPEGs to the ensemble at
a fixed concurrency, one server at a time while the other idles, in the order A B B A per round,
so drift on the host hits both alike. Also reports the image's size by layer and the container's
start-up time to ready.

Run with the project's venv, as root or with access to a Docker engine, after
`bash scripts/build-image.sh`:

    .venv/bin/python -m benchmarks.container --repo model_repository --rounds 3

Prints a markdown report; numbers belong in docs/decisions.md, not in tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from resnet18_triton.perf import harness
from resnet18_triton.perf import perf_analyzer as pa
from resnet18_triton.perf.images import distinct_jpegs
from resnet18_triton.server.embedded import free_port

CONTAINER = "resnet18-triton-bench"


def docker(*args: str, timeout: float = 300) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def wait_ready(url: str, timeout_s: float = 300) -> float:
    """Seconds until /v2/health/ready answers 200."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=2) as reply:
                if reply.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready within {timeout_s} s")


def start_container(image: str, repo: Path, port: int, cpus: str) -> float:
    docker("rm", "-f", CONTAINER)
    docker(
        "run", "-d", "--name", CONTAINER, "--network", "host", "--read-only",
        "--tmpfs", "/tmp:size=256m", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--shm-size", "1g", "--cpus", cpus,
        "--memory", "4g", "--pids-limit", "1024", "-v", f"{repo}:/models:ro", image,
        "serve", "--repo", "/models", *harness.serve_port_arguments(port),
    )  # fmt: skip
    return wait_ready(f"127.0.0.1:{port}")


def layer_table(image: str) -> list[str]:
    rows = docker("history", "--no-trunc", "--format", "{{json .}}", image).splitlines()
    lines = ["| layer | size |", "|---|---|"]
    for row in map(json.loads, rows):
        if row["Size"] in ("0B", "0"):
            continue
        created = " ".join(row["CreatedBy"].split())
        lines.append(f"| `{created[:90]}` | {row['Size']} |")
    total = docker("image", "inspect", "-f", "{{.Size}}", image).strip()
    lines.append(f"| **total (uncompressed)** | **{int(total) / 1e6:.0f} MB** |")
    return lines


def measure(analyzer: pa.PerfAnalyzer, url: str, data: Path, work: Path, args) -> pa.Row:
    settings = pa.SweepSettings(
        concurrency=f"{args.concurrency}:{args.concurrency}:1",
        measurement_interval_ms=args.window_ms,
        stability_percentage=25,
    )
    sweep = pa.Sweep(args.model, url, settings, data)
    result = pa.run(analyzer, sweep, work / f"{time.monotonic_ns()}.csv")
    if result.failed_requests:
        raise SystemExit(f"{result.failed_requests} failed requests at {url}")
    return result.rows[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--image", default="resnet18-triton/server:0.1.0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--window-ms", type=int, default=5000)
    parser.add_argument("--cpus", default="2")
    parser.add_argument("--model", default="resnet18")
    args = parser.parse_args()
    repo = args.repo.resolve()
    work = Path(tempfile.mkdtemp(prefix="container-bench-"))
    data = pa.write_input_data(distinct_jpegs(16), "IMAGE", work / "images.json")
    analyzer = pa.locate()

    container_port = free_port()
    startup_s = start_container(args.image, repo, container_port, args.cpus)
    options = harness.local_options(repo)
    results: dict[str, list[pa.Row]] = {"embedded": [], "container": []}
    urls = {"embedded": options.http_url, "container": f"127.0.0.1:{container_port}"}
    try:
        with harness.local_server(options):
            for name in urls:  # warm both up once, unmeasured
                measure(analyzer, urls[name], data, work, args)
            for round_index in range(args.rounds):
                order = (
                    ("embedded", "container") if round_index % 2 == 0 else ("container", "embedded")
                )
                for name in (*order, *reversed(order)):
                    results[name].append(measure(analyzer, urls[name], data, work, args))
    finally:
        docker("rm", "-f", CONTAINER)
    cpu = harness.cpu_model()
    embedded = statistics.median(row.throughput for row in results["embedded"])
    contained = statistics.median(row.throughput for row in results["container"])
    print(f"# Container vs embedded server ({cpu}, {args.model}, concurrency {args.concurrency})\n")
    print("| server | img/s (median) | every run | p99 ms (median) |")
    print("|---|---|---|---|")
    for name, value in (("embedded", embedded), ("container", contained)):
        runs = ", ".join(f"{row.throughput:.1f}" for row in results[name])
        p99 = statistics.median(row.p99_ms for row in results[name])
        print(f"| {name} | {value:.1f} | {runs} | {p99:.1f} |")
    print(f"\ncontainer / embedded: **{contained / embedded:.3f}x**\n")
    print(f"container start to ready: {startup_s:.1f} s\n")
    print("\n".join(layer_table(args.image)))


if __name__ == "__main__":
    main()
