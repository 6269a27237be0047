"""Memory and CPU of the whole served stack: tritonserver + every backend stub process.

Triton's Python backend (and this project's Python-based ONNX Runtime backend) runs each model
instance in a ``triton_python_backend_stub`` child of the server, so the stack's memory is the
server's RSS plus its children's. ``StackSampler`` samples that sum in a thread during a load test
and keeps the peak and the per-process breakdown at the peak. It also reads each process's CPU
time (user + system) at start and stop, so ``cpu_seconds`` says where the CPU went during the
test, per process kind (instances of one model are summed).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from resnet18_triton.repository.layout import stub_model


def _label(process: Any) -> str:
    """The process's kind: ``tritonserver``, ``stub:MODEL`` for a Python-backend stub, else its
    name."""
    try:
        cmdline = process.cmdline()
    except Exception:
        return "?"
    if not cmdline:
        return str(process.name())
    if cmdline[0].endswith("tritonserver"):
        return "tritonserver"
    model = stub_model(cmdline)
    return f"stub:{model}" if model else str(process.name())


def _stack(pid: int) -> tuple[Any, list[Any]]:
    """psutil (imported on use: the ``perf`` extra) and ``pid`` with all its descendants."""
    psutil = __import__("psutil")
    root = psutil.Process(pid)
    return psutil, [root, *root.children(recursive=True)]


def stack_rss(pid: int) -> dict[str, float]:
    """RSS in MB of ``pid`` and each descendant, keyed by a readable label."""
    psutil, processes = _stack(pid)
    usage: dict[str, float] = {}
    for process in processes:
        try:
            rss = process.memory_info().rss / (1024 * 1024)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        label = _label(process)
        while label in usage:
            label += "'"
        usage[label] = rss
    return usage


def stack_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of ``pid`` and each descendant: pid -> (label, s)."""
    psutil, processes = _stack(pid)
    usage: dict[int, tuple[str, float]] = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        usage[process.pid] = (_label(process), times.user + times.system)
    return usage


def cpu_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds each process kind used between two ``stack_cpu_seconds`` readings; a process
    that started in between counts from 0, one that ended in between is not counted."""
    spent: dict[str, float] = {}
    for pid, (label, seconds) in after.items():
        start = before.get(pid, (label, 0.0))[1]
        spent[label] = spent.get(label, 0.0) + max(seconds - start, 0.0)
    return spent


@dataclass
class StackSampler:
    """Samples ``stack_rss(pid)`` every ``interval_s`` between ``start()`` and ``stop()``, and
    the stack's CPU time at both ends (``cpu_seconds``, per process kind)."""

    pid: int
    interval_s: float = 0.5
    peak_total_mb: float = 0.0
    peak_breakdown: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    _cpu_start: dict[int, tuple[str, float]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _read_cpu(self) -> dict[int, tuple[str, float]]:
        try:
            return stack_cpu_seconds(self.pid)
        except Exception:
            return {}

    def sample(self) -> None:
        try:
            usage = stack_rss(self.pid)
        except Exception:
            return
        total = sum(usage.values())
        if total > self.peak_total_mb:
            self.peak_total_mb, self.peak_breakdown = total, usage

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> StackSampler:
        self._cpu_start = self._read_cpu()
        self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sample()
        if self._cpu_start:
            self.cpu_seconds = cpu_delta(self._cpu_start, self._read_cpu())

    def __enter__(self) -> StackSampler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
