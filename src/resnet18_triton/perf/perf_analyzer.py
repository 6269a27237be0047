"""Run Triton's ``perf_analyzer`` (from the ``tritonclient==2.50.0`` wheel) and read its CSV.

* ``locate()`` finds the binary next to this interpreter (``.venv/bin/perf_analyzer``) or on PATH
  and builds the environment it needs: ``libcudart.so.12`` from the ``nvidia-cuda-runtime-cu12``
  wheel on ``LD_LIBRARY_PATH``; ``libb64.so.0d`` comes from the Debian package ``libb64-0d``.
* ``input_data_json()`` builds the ``--input-data`` document for the ensemble's ``TYPE_STRING``
  input: each image's bytes with a 4-byte little-endian length prefix, base64-encoded (perf_analyzer
  sends ``content.b64`` as raw tensor bytes, and Triton's BYTES tensors are length-prefixed).
* ``run()`` runs one sweep (concurrency or request rate), writes perf_analyzer's CSV and returns
  its rows, plus the failed-request count read from the server's statistics before and after.
"""

from __future__ import annotations

import base64
import csv
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from resnet18_triton.contract import ADMIN_KEY_ENV_VAR, ADMIN_KEY_HEADER

# Re-exported: callers catch the error of the tool they drive (pa.PerfAnalyzerError).
from resnet18_triton.errors import PerfAnalyzerError as PerfAnalyzerError

# What perf_analyzer prints when no window met --stability-percentage within --max-trials.
UNSTABLE_MESSAGE = "Failed to obtain stable measurement"

BINARY_NAME = "perf_analyzer"


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    env: dict[str, str]

    def version(self) -> str:
        result = subprocess.run(
            [str(self.binary), "--version"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        _raise_for_loader_error(result.stdout + result.stderr)
        return (result.stdout or result.stderr).strip()


def cuda_runtime_lib_dir() -> Path | None:
    """``site-packages/nvidia/cuda_runtime/lib`` (holds libcudart.so.12), if installed."""
    try:
        spec = importlib.util.find_spec("nvidia.cuda_runtime")
    except ModuleNotFoundError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        lib = Path(location) / "lib"
        if (lib / "libcudart.so.12").exists():
            return lib
    return None


def locate(binary: str | Path | None = None) -> PerfAnalyzer:
    """The perf_analyzer binary and an environment in which its shared libraries load."""
    if binary is None:
        beside = Path(sys.executable).parent / BINARY_NAME
        found = str(beside) if beside.is_file() else shutil.which(BINARY_NAME)
        if found is None:
            raise PerfAnalyzerError(
                "perf_analyzer not found: pip install 'resnet18-triton[perf]' "
                "(tritonclient==2.50.0 ships it in bin/)"
            )
        binary = found
    env = dict(os.environ)
    lib = cuda_runtime_lib_dir()
    if lib is None:
        raise PerfAnalyzerError(
            "perf_analyzer needs libcudart.so.12: pip install nvidia-cuda-runtime-cu12 "
            "(part of the 'perf' extra)"
        )
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib), env.get("LD_LIBRARY_PATH")]))
    return PerfAnalyzer(Path(binary), env)


def _raise_for_loader_error(output: str) -> None:
    if "error while loading shared libraries" in output:
        hint = ""
        if "libb64" in output:
            hint = " (install the Debian/Ubuntu package libb64-0d: apt-get install libb64-0d)"
        raise PerfAnalyzerError(f"perf_analyzer cannot start: {output.strip()}{hint}")


def admin_headers(admin_key: str | None) -> dict[str, str]:
    """The header that opens our server's restricted APIs (shared-memory registration)."""
    return {ADMIN_KEY_HEADER: admin_key} if admin_key else {}


def length_prefixed(data: bytes) -> bytes:
    """One element of a Triton BYTES tensor: 4-byte little-endian length, then the bytes."""
    return struct.pack("<I", len(data)) + data


def input_data_json(images: list[bytes], input_name: str) -> dict[str, Any]:
    """``--input-data`` document: one entry per image, each a [1] BYTES tensor of the file."""
    if not images:
        raise PerfAnalyzerError("no images to send")
    return {
        "data": [
            {
                input_name: {
                    "content": {"b64": base64.b64encode(length_prefixed(data)).decode("ascii")},
                    "shape": [1],
                }
            }
            for data in images
        ]
    }


def write_input_data(images: list[bytes], input_name: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(input_data_json(images, input_name)))
    return path


@dataclass(frozen=True)
class SweepSettings:
    """perf_analyzer's knobs, shared by ``loadtest``, ``bench`` and every ``Sweep``.

    ``request_rate`` (start:end:step, requests/s), when set, replaces the concurrency sweep.
    ``shared_memory="system"`` sends tensors through POSIX shared memory registered with the
    server instead of the HTTP body (client and server on one host); registering a region is a
    restricted API on our server, so it needs ``admin_key``, sent as a header over HTTP only
    (perf_analyzer ignores ``-H`` on gRPC) and only with shared memory (no other call needs it).
    """

    concurrency: str = "1:4:1"  # start:end:step
    request_rate: str | None = None
    measurement_interval_ms: int = 4000
    stability_percentage: int = 50
    max_trials: int = 10
    batch_size: int = 1
    shared_memory: str = "none"  # or "system"
    protocol: str = "http"  # or "grpc"
    admin_key: str | None = field(default=None, repr=False)

    @property
    def mode(self) -> str:
        """ "request_rate" or "concurrency": what a row's load figure counts."""
        return "request_rate" if self.request_rate else "concurrency"

    def arguments(self) -> list[str]:
        """The command-line arguments these settings stand for."""
        args = [
            "-i",
            self.protocol,
            "-b",
            str(self.batch_size),
            "-p",
            str(self.measurement_interval_ms),
            "-s",
            str(self.stability_percentage),
            "-r",
            str(self.max_trials),
        ]
        if self.request_rate:
            args += ["--request-rate-range", self.request_rate]
        else:
            args += ["--concurrency-range", self.concurrency]
        if self.shared_memory != "none":
            args += ["--shared-memory", self.shared_memory]
            for name, value in admin_headers(self.admin_key).items():
                args += ["-H", f"{name}:{value}"]
        return args


@dataclass(frozen=True)
class Sweep:
    """One perf_analyzer invocation: a model at a URL with some settings (and input data)."""

    model: str
    url: str
    settings: SweepSettings = field(default_factory=SweepSettings)
    input_data: Path | None = None

    def arguments(self, csv_path: Path) -> list[str]:
        args = ["-m", self.model, "-u", self.url, *self.settings.arguments()]
        args += ["-f", str(csv_path), "--verbose-csv"]
        if self.input_data is not None:
            args += ["--input-data", str(self.input_data)]
        return args


@dataclass(frozen=True)
class Row:
    """One measured load level (a concurrency or a request rate)."""

    model: str
    label: str
    load: float  # concurrency, or requests/s for request-rate sweeps
    mode: str  # "concurrency" or "request_rate"
    throughput: float  # inferences/s
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float
    server_queue_ms: float
    server_compute_ms: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class SweepResult:
    sweep: Sweep
    label: str
    rows: list[Row]
    csv_path: Path
    failed_requests: int | None
    successful_requests: int | None
    log: str


def parse_csv(path: Path, model: str, label: str, mode: str) -> list[Row]:
    """perf_analyzer's ``-f`` CSV (latencies in microseconds) -> rows in milliseconds."""
    rows = []
    with path.open(newline="") as stream:
        reader = csv.DictReader(stream)
        for record in reader:
            first = next(iter(reader.fieldnames or ()), "")
            if not record.get(first) or not record[first].strip():
                continue

            def ms(key: str, record: dict[str, str] = record) -> float:
                value = record.get(key)
                return float(value) / 1000.0 if value not in (None, "") else float("nan")

            compute = (
                sum(
                    float(record.get(key) or 0)
                    for key in (
                        "Server Compute Input",
                        "Server Compute Infer",
                        "Server Compute Output",
                    )
                )
                / 1000.0
            )
            rows.append(
                Row(
                    model=model,
                    label=label,
                    load=float(record[first]),
                    mode=mode,
                    throughput=float(record["Inferences/Second"]),
                    p50_ms=ms("p50 latency"),
                    p90_ms=ms("p90 latency"),
                    p95_ms=ms("p95 latency"),
                    p99_ms=ms("p99 latency"),
                    avg_ms=ms("Avg latency"),
                    server_queue_ms=ms("Server Queue"),
                    server_compute_ms=compute,
                )
            )
    return sorted(rows, key=lambda row: row.load)


def model_stats(http_url: str, model: str) -> list[dict[str, Any]]:
    """The ``model_stats`` entries (one per version) of the server's statistics API for
    ``model``; empty when the server cannot say."""
    try:
        with urllib.request.urlopen(
            f"http://{http_url}/v2/models/{model}/stats", timeout=10
        ) as reply:
            stats = json.load(reply)
    except (urllib.error.URLError, OSError, ValueError):
        return []
    entries = stats.get("model_stats", []) if isinstance(stats, dict) else []
    return [entry for entry in entries if isinstance(entry, dict)]


def model_request_counts(http_url: str, model: str) -> tuple[int, int] | None:
    """(successful, failed) inference requests of ``model`` from the server's statistics API."""
    entries = model_stats(http_url, model)
    if not entries:
        return None
    success = failed = 0
    for entry in entries:
        inference = entry.get("inference_stats", {})
        success += int(inference.get("success", {}).get("count", 0))
        failed += int(inference.get("fail", {}).get("count", 0))
    return success, failed


def model_inference_count(http_url: str, model: str) -> int | None:
    """Images ``model`` has inferred so far (batch-weighted), from the statistics API."""
    entries = model_stats(http_url, model)
    return sum(int(entry.get("inference_count", 0)) for entry in entries) if entries else None


def run(
    analyzer: PerfAnalyzer,
    sweep: Sweep,
    csv_path: Path,
    label: str | None = None,
    stats_url: str | None = None,
    timeout_s: float = 1800.0,
) -> SweepResult:
    """Run one sweep; raises PerfAnalyzerError when perf_analyzer fails or writes no CSV."""
    label = label or sweep.model
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.unlink(missing_ok=True)
    if stats_url is None and sweep.settings.protocol == "http":
        stats_url = sweep.url
    before = model_request_counts(stats_url, sweep.model) if stats_url else None
    result = subprocess.run(
        [str(analyzer.binary), *sweep.arguments(csv_path)],
        env=analyzer.env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    log = result.stdout + result.stderr
    _raise_for_loader_error(log)
    if result.returncode != 0 or not csv_path.is_file():
        tail = "\n".join(log.strip().splitlines()[-15:])
        hint = ""
        if "API is restricted" in log:
            hint = (
                f"\n(the server keeps shared-memory registration behind its admin key: pass "
                f"--admin-key-file or set {ADMIN_KEY_ENV_VAR})"
            )
        raise PerfAnalyzerError(
            f"perf_analyzer failed on {sweep.model} (exit code {result.returncode}):\n{tail}{hint}"
        )
    after = model_request_counts(stats_url, sweep.model) if stats_url else None
    failed = successful = None
    if before is not None and after is not None:
        successful, failed = after[0] - before[0], after[1] - before[1]
    return SweepResult(
        sweep,
        label,
        parse_csv(csv_path, sweep.model, label, sweep.settings.mode),
        csv_path,
        failed,
        successful,
        log,
    )
