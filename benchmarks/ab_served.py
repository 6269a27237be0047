"""Before/after of a serving lever, measured interleaved: A, B, A, B, ... with perf_analyzer.

Each arm is a model repository served by a given checkout of this package (its ``src`` folder
goes first on PYTHONPATH, so the arm's own server code, backend and CLI run). Each round starts
the arm's server, sweeps each model with the same JPEG set and the same perf_analyzer settings,
and stops it, so that on a shared machine the drift of minutes hits both arms alike. Prints a
markdown table of every round and the median per arm and model. With ``--engine MODEL`` (a
classifier of the repository, e.g. resnet18_int8) each round also times that model in-process
with ONNX Runtime on ready uint8/float tensors (2 threads, spinning off, batch 8) after the
server has stopped, so the served/in-process ratio is measured in the same minutes.

    python -m benchmarks.ab_served --images DIR --rounds 2 \\
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


def engine_images_per_s(repo: Path, model: str, seconds: float = 10.0) -> float:
    """In-process ONNX Runtime img/s of ``repo``'s ``model`` on random tensors of its input
    type, batch 8, 2 threads, spinning off (as served)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    path = repo / model / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (first,) = session.get_inputs()
    rng = np.random.default_rng(0)
    shape = (8, contract.CHANNELS, contract.IMAGE_SIZE, contract.IMAGE_SIZE)
    batch: np.ndarray
    if first.type == "tensor(uint8)":
        batch = rng.integers(0, 256, shape, dtype=np.uint8)
    else:
        batch = rng.standard_normal(shape, dtype=np.float32)
    session.run(None, {first.name: batch})  # warm-up
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {first.name: batch})
        runs += 1
    return runs * len(batch) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arm", action="append", required=True, type=Arm.parse)
    parser.add_argument("--model", action="append", default=None)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="4")
    parser.add_argument("--interval-ms", type=int, default=5000)
    parser.add_argument("--engine", default=None, help="also time this classifier in-process")
    options = parser.parse_args()
    models = options.model or [contract.ENSEMBLE_MODEL]
    columns = models + ([f"in-process {options.engine}"] if options.engine else [])
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
        print(f"| round | arm | {' | '.join(columns)} |\n|---|---|{'---|' * len(columns)}")
        for round_index in range(options.rounds):
            for arm in options.arm:
                figures = measure(arm, models, data, settings)
                if options.engine:
                    figures[columns[-1]] = engine_images_per_s(arm.repo, options.engine)
                for model, value in figures.items():
                    results.setdefault((arm.label, model), []).append(value)
                row = " | ".join(f"{figures[column]:.1f}" for column in columns)
                print(f"| {round_index + 1} | {arm.label} | {row} |", flush=True)
    print(f"\n| arm | {' | '.join(columns)} (median img/s) |\n|---|{'---|' * len(columns)}")
    for arm in options.arm:
        row = " | ".join(f"{_median(results[arm.label, c]):.1f}" for c in columns)
        print(f"| {arm.label} | {row} |")
    if options.engine:
        print(f"\n| arm | {' | '.join(models)} / {columns[-1]}, per round (median) |")
        print(f"|---|{'---|' * len(models)}")
        for arm in options.arm:
            engine = results[arm.label, columns[-1]]
            cells = []
            for model in models:
                ratios = [a / b for a, b in zip(results[arm.label, model], engine, strict=True)]
                cells.append(f"{' / '.join(f'{r:.2f}' for r in ratios)} ({_median(ratios):.2f})")
            print(f"| {arm.label} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
