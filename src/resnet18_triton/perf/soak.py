#!/usr/bin/env python
"""Soak the ResNet-18 ensemble: high-concurrency load for minutes, every answer checked.

    .venv/bin/python scripts/soak.py --duration 600 --concurrency 64            # own server
    .venv/bin/python scripts/soak.py --url 127.0.0.1:8000 --server-pid PID ...  # a running one

Without ``--url`` it exports a repository (random weights, seed 0) into a temporary directory
and starts its own embedded Triton on free loopback ports. Load: ``--concurrency`` threads, each
with its own HTTP client, sending distinct images (one per request) back to back. Every answer is
compared with the answer the same image got before the load (and, with ``--reference``, with the
PyTorch reference). RSS of every server process (tritonserver and each Python stub) is sampled
after ``--warmup`` seconds of load and at the end.

Prints a JSON summary (``--json-out`` also writes it) and a markdown table; exit status 0 when 0
requests failed, 0 answers were wrong and no process grew by more than ``--max-rss-growth``.
The short version runs in the test suite: tests/integration/test_soak.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from resnet18_triton import contract
from resnet18_triton.layout import stub_model

PROBABILITY_ATOL = 1e-6


# --- server processes ---------------------------------------------------------------------------


def process_role(process) -> str:
    """'tritonserver', or the model a Python stub serves ('preprocess', 'resnet18_onnx', ...)."""
    try:
        cmdline = process.cmdline()
    except Exception:
        return "?"
    model = stub_model(cmdline)
    if model:
        return model
    return Path(cmdline[0]).name if cmdline else "?"


def server_processes(server_pid: int) -> dict[str, object]:
    """role -> psutil.Process for tritonserver and its stubs (one instance each here)."""
    import psutil

    root = psutil.Process(server_pid)
    found = {"tritonserver": root}
    for child in root.children(recursive=True):
        role = process_role(child)
        key, n = role, 1
        while key in found:
            n += 1
            key = f"{role}#{n}"
        found[key] = child
    return found


def rss_mb(processes: dict[str, object]) -> dict[str, float]:
    result = {}
    for role, process in processes.items():
        try:
            result[role] = round(process.memory_info().rss / 2**20, 1)
        except Exception:
            result[role] = float("nan")
    return result


def peak_rss_mb(
    processes: dict[str, object], window_s: float = 2.0, interval_s: float = 0.05
) -> dict[str, float]:
    """Each process's highest RSS over ``window_s`` under load.

    One snapshot is not a level: with ONNX Runtime's memory arena off (the default), the ORT stub
    mallocs and frees a batch's activations (~25 MB at batch 8) on every run, so a single sample
    depends on what is in flight at that instant. The peak over a window is the level a leak
    would raise.
    """
    peak: dict[str, float] = {}
    deadline = time.monotonic() + window_s
    while True:
        for role, mb in rss_mb(processes).items():
            peak[role] = max(peak.get(role, mb), mb)
        if time.monotonic() >= deadline:
            return peak
        time.sleep(interval_s)


# --- load -------------------------------------------------------------------------------------


def distinct_images(count: int, seed: int = 1000) -> list[bytes]:
    from tests.support import encode, gradient_image

    return [
        encode(gradient_image(160 + 7 * (i % 13), 120 + 5 * (i % 11), seed=seed + i), "JPEG")
        for i in range(count)
    ]


def infer_one(client, image: bytes) -> np.ndarray:
    import tritonclient.http as httpclient

    data = httpclient.InferInput(contract.ENSEMBLE_INPUT, [1, 1], "BYTES")
    data.set_data_from_numpy(np.array([[image]], dtype=object))
    result = client.infer(contract.ENSEMBLE_MODEL, [data])
    return result.as_numpy(contract.ENSEMBLE_OUTPUT)[0]


def expected_answers(url: str, images: list[bytes]) -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, network_timeout=60.0)
    try:
        return np.stack([infer_one(client, image) for image in images])
    finally:
        client.close()


@dataclass
class LoadStats:
    ok: int = 0
    failed: int = 0
    wrong: int = 0
    errors: list[str] = field(default_factory=list)
    # (monotonic time, ok?) of each request's end, for recovery times.
    timeline: list[tuple[float, bool]] = field(default_factory=list)


class LoadGenerator:
    """``concurrency`` threads sending single-image requests until ``stop()`` (or ``max_s``).

    Every loop is bounded: each request by the client's network timeout, the run by ``max_s``.
    """

    def __init__(
        self,
        url: str,
        images: list[bytes],
        expected: np.ndarray | None,
        concurrency: int,
        max_s: float = 3600.0,
        network_timeout: float = 30.0,
        retry: bool = False,
    ) -> None:
        self.url = url
        self.images = images
        self.expected = expected
        self.concurrency = concurrency
        self.max_s = max_s
        self.network_timeout = network_timeout
        self.retry = retry
        self.stats = LoadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> LoadGenerator:
        self._deadline = time.monotonic() + self.max_s
        self._threads = [
            threading.Thread(target=self._worker, args=(n,), daemon=True)
            for n in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, join_timeout: float = 60.0) -> LoadStats:
        self._stop.set()
        end = time.monotonic() + join_timeout
        for thread in self._threads:
            thread.join(timeout=max(0.1, end - time.monotonic()))
        return self.stats

    @property
    def alive(self) -> int:
        return sum(thread.is_alive() for thread in self._threads)

    def _record(self, ok: bool, wrong: bool = False, error: str | None = None) -> None:
        with self._lock:
            self.stats.timeline.append((time.monotonic(), ok and not wrong))
            if wrong:
                self.stats.wrong += 1
            elif ok:
                self.stats.ok += 1
            else:
                self.stats.failed += 1
            if error and len(self.stats.errors) < 20:
                self.stats.errors.append(error)

    def _worker(self, number: int) -> None:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(
            self.url, connection_timeout=5.0, network_timeout=self.network_timeout
        )
        index = number
        try:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                position = index % len(self.images)
                index += self.concurrency
                try:
                    answer = infer_one(client, self.images[position])
                except Exception as error:
                    self._record(False, error=f"{type(error).__name__}: {error}"[:300])
                    # A new connection after a failure: the old one may be half closed.
                    client.close()
                    client = httpclient.InferenceServerClient(
                        self.url, connection_timeout=5.0, network_timeout=self.network_timeout
                    )
                    self._stop.wait(0.05)
                    continue
                wrong = (
                    self.expected is not None
                    and np.abs(answer - self.expected[position]).max() > PROBABILITY_ATOL
                )
                self._record(
                    True, wrong=wrong, error=f"wrong answer for image {position}" if wrong else None
                )
        finally:
            client.close()


# --- the soak -----------------------------------------------------------------------------------


def run_soak(
    url: str,
    server_pid: int,
    duration_s: float,
    concurrency: int,
    warmup_s: float,
    image_count: int = 64,
    reference: np.ndarray | None = None,
    images: list[bytes] | None = None,
) -> dict:
    images = images or distinct_images(image_count)
    expected = expected_answers(url, images)
    reference_error = float(np.abs(expected - reference).max()) if reference is not None else None
    processes = server_processes(server_pid)
    rss_start = rss_mb(processes)
    load = LoadGenerator(
        url, images, expected, concurrency, max_s=warmup_s + duration_s + 30
    ).start()
    time.sleep(warmup_s)
    rss_warm = peak_rss_mb(processes)
    warm = (load.stats.ok, time.monotonic())
    time.sleep(duration_s)
    rss_end = peak_rss_mb(processes)
    stats = load.stop()
    elapsed = time.monotonic() - warm[1]
    after_warmup = stats.ok - warm[0]
    final = expected_answers(url, images)
    growth = {
        role: round(100.0 * (rss_end[role] - rss_warm[role]) / rss_warm[role], 2)
        for role in rss_warm
        if rss_warm[role] == rss_warm[role] and rss_warm[role] > 0
    }
    return {
        "url": url,
        "concurrency": concurrency,
        "warmup_s": warmup_s,
        "duration_s": duration_s,
        "distinct_images": len(images),
        "requests_ok": stats.ok,
        "requests_failed": stats.failed,
        "answers_wrong": stats.wrong,
        "requests_per_s_after_warmup": round(after_warmup / elapsed, 1) if elapsed > 0 else None,
        "errors": stats.errors[:5],
        "rss_mb_start": rss_start,
        "rss_mb_after_warmup": rss_warm,
        "rss_mb_end": rss_end,
        "rss_growth_percent_after_warmup": growth,
        "max_rss_growth_percent": max(growth.values()) if growth else None,
        "answers_after_soak_equal": bool(np.abs(final - expected).max() <= PROBABILITY_ATOL),
        "max_difference_from_reference": reference_error,
        "processes_alive_at_end": all(p.is_running() for p in processes.values()),
        "pids_unchanged": {r: p.pid for r, p in processes.items()}
        == {r: p.pid for r, p in server_processes(server_pid).items()},
    }


def markdown(summary: dict) -> str:
    lines = [
        f"Soak: {summary['duration_s']:g} s after {summary['warmup_s']:g} s warm-up, "
        f"concurrency {summary['concurrency']}, {summary['distinct_images']} distinct images",
        "",
        f"- requests served: {summary['requests_ok']} ({summary['requests_per_s_after_warmup']} /s "
        "after warm-up)",
        f"- failed: {summary['requests_failed']}, wrong answers: {summary['answers_wrong']}, "
        f"answers after the soak equal: {summary['answers_after_soak_equal']}",
        "",
        "| process | RSS start MB | after warm-up MB | end MB | growth after warm-up |",
        "|---|---|---|---|---|",
    ]
    for role, warm in summary["rss_mb_after_warmup"].items():
        lines.append(
            f"| {role} | {summary['rss_mb_start'].get(role)} | {warm} | "
            f"{summary['rss_mb_end'].get(role)} | "
            f"{summary['rss_growth_percent_after_warmup'].get(role)} % |"
        )
    return "\n".join(lines)


def _export_repository(target: Path) -> Path:
    from resnet18_triton.export.model_configs import ServingSettings
    from resnet18_triton.export.onnx_export import export_onnx
    from resnet18_triton.export.repository import fill_repository
    from resnet18_triton.export.weights import imagenet_categories, load_resnet18
    from resnet18_triton.layout import onnx_model_path

    model, provenance = load_resnet18("random", seed=0)
    export_onnx(model, onnx_model_path(target), provenance=provenance)
    fill_repository(
        target,
        ServingSettings(max_queue_delay_us=2000),
        provenance.to_json(),
        imagenet_categories(),
    )
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration", type=float, default=300.0, help="seconds of load after warm-up"
    )
    parser.add_argument(
        "--warmup", type=float, default=20.0, help="seconds of load before RSS baseline"
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--images", type=int, default=64, help="distinct images")
    parser.add_argument("--url", help="a running server (then --server-pid is required)")
    parser.add_argument("--server-pid", type=int, help="tritonserver's pid, for RSS")
    parser.add_argument(
        "--repository", type=Path, help="serve this repository (default: export one)"
    )
    parser.add_argument("--reference", action="store_true", help="also check against PyTorch")
    parser.add_argument("--max-rss-growth", type=float, default=10.0, help="percent")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    import tempfile
    from contextlib import ExitStack

    images = distinct_images(args.images)
    reference = None
    if args.reference:
        from tests.support import TorchReference

        reference = TorchReference(seed=0).probabilities(images)
    with ExitStack() as stack:
        url, pid = args.url, args.server_pid
        if url is None:
            from resnet18_triton.server.embedded import EmbeddedServer, ServerOptions, free_port

            repository = args.repository or _export_repository(
                Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-repo-")))
            )
            server = stack.enter_context(
                EmbeddedServer(
                    ServerOptions(
                        repository=repository.resolve(),
                        http_port=free_port(),
                        grpc_port=free_port(),
                        metrics_port=free_port(),
                        exit_timeout_s=10,
                    )
                )
            )
            url, pid = server.url, server.process.pid
        elif pid is None:
            parser.error("--url needs --server-pid (to measure RSS)")
        summary = run_soak(
            url,
            pid,
            args.duration,
            args.concurrency,
            args.warmup,
            reference=reference,
            images=images,
        )
    summary["machine_note"] = "2 cores, shared with other workloads"
    text = json.dumps(summary, indent=2)
    print(text)
    print()
    print(markdown(summary))
    if args.json_out:
        args.json_out.write_text(text + "\n")
    growth = summary["max_rss_growth_percent"] or 0.0
    reference_ok = (
        summary["max_difference_from_reference"] is None
        or summary["max_difference_from_reference"] <= PROBABILITY_ATOL
    )
    passed = (
        summary["requests_failed"] == 0
        and summary["answers_wrong"] == 0
        and summary["answers_after_soak_equal"]
        and growth < args.max_rss_growth
        and reference_ok
        and summary["pids_unchanged"]
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
