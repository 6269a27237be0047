"""Before/after of a serving lever, measured interleaved: A, B, A, B, ... with perf_analyzer.

Each arm is a model repository served by a given checkout of this package (its ``src`` folder
goes first on PYTHONPATH, so the arm's own server code, backend and CLI run). Each round starts
the arm's server, sweeps each model with the same JPEG set and the same perf_analyzer settings,
and stops it, so that on a shared machine the drift of minutes hits both arms alike. Prints a
markdown table of every round and the median per arm and model.

    python scripts/ab_served.py --images DIR --rounds 2 \\
        --arm before=/path/to/old/src:/tmp/repo_before --arm after=src:/tmp/repo_after \\
        --model resnet18 --model resnet18_int8_ensemble
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from resnet18_triton import contract
from resnet18_triton.perf import perf_analyzer as pa
from resnet18_triton.server.embedded import free_port


@dataclass(frozen=True)
class Arm:
    label: str
    src: Path
    repo: Path

    @classmethod
    def parse(cls, text: str) -> Arm:
        label, _, paths = text.partition("=")
        src, _, repo = paths.partition(":")
        return cls(label, Path(src).resolve(), Path(repo).resolve())


def start(arm: Arm, port: int, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(arm.src))
    command = [sys.executable, "-m", "resnet18_triton.cli", "serve", "--repo", str(arm.repo)]
    command += ["--http-port", str(port), "--grpc-port", str(port + 1)]
    command += ["--metrics-port", str(port + 2), "--quiet"]
    with log.open("w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"the server at {url} was not ready within {timeout_s:.0f} s")


def measure(arm: Arm, models: list[str], data: Path, settings: pa.SweepSettings) -> dict:
    port = free_port()
    url = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="ab-served-") as work:
        process = start(arm, port, Path(work) / "server.log")
        try:
            wait_ready(url, process)
            analyzer = pa.locate()
            figures = {}
            for model in models:
                sweep = pa.Sweep(model, url, settings, data)
                try:
                    result = pa.run(analyzer, sweep, Path(work) / f"{model}.csv")
                    figures[model] = max(row.throughput for row in result.rows)
                except pa.PerfAnalyzerError as error:  # one failed window must not end the run
                    print(f"{arm.label} {model}: {error}", file=sys.stderr)
                    figures[model] = float("nan")
            return figures
        finally:
            process.terminate()
            process.wait(timeout=120)


def _median(values: list[float]) -> float:
    measured = [value for value in values if value == value]  # NaN marks a failed sweep
    return statistics.median(measured) if measured else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arm", action="append", required=True, type=Arm.parse)
    parser.add_argument("--model", action="append", default=None)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="4")
    parser.add_argument("--interval-ms", type=int, default=5000)
    options = parser.parse_args()
    models = options.model or [contract.ENSEMBLE_MODEL]
    images = [path.read_bytes() for path in sorted(options.images.glob("*.jpg"))]
    # A shared machine never looks stable to perf_analyzer's default 10% criterion: take three
    # windows as they come and let the interleaving and the median across rounds absorb the noise.
    settings = pa.SweepSettings(
        concurrency=options.concurrency,
        measurement_interval_ms=options.interval_ms,
        stability_percentage=100,
        max_trials=3,
    )
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="ab-served-data-") as work:
        data = pa.write_input_data(images, contract.ENSEMBLE_INPUT, Path(work) / "images.json")
        print(f"| round | arm | {' | '.join(models)} |\n|---|---|{'---|' * len(models)}")
        for round_index in range(options.rounds):
            for arm in options.arm:
                figures = measure(arm, models, data, settings)
                for model, value in figures.items():
                    results.setdefault((arm.label, model), []).append(value)
                row = " | ".join(f"{figures[model]:.1f}" for model in models)
                print(f"| {round_index + 1} | {arm.label} | {row} |", flush=True)
    print(f"\n| arm | {' | '.join(models)} (median img/s) |\n|---|{'---|' * len(models)}")
    for arm in options.arm:
        row = " | ".join(f"{_median(results[arm.label, m]):.1f}" for m in models)
        print(f"| {arm.label} | {row} |")


if __name__ == "__main__":
    main()
