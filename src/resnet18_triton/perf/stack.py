"""Memory and CPU of the whole served stack: tritonserver + every backend stub process.

Triton's Python backend (and this project's Python-based ONNX Runtime backend) runs each model
instance in a ``triton_python_backend_stub`` child of the server, so the stack's memory is the
server's RSS plus its children's. ``StackSampler`` samples that sum (``harness.tree_rss_mb``) in a
thread during a load test and keeps the peak and the per-process breakdown at the peak, by
process role (``tritonserver``, or the model a stub serves). It also reads each process's CPU
time (user + system) at start and stop, so ``cpu_seconds`` says where the CPU went during the
test, per role (instances of one model are summed).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from resnet18_triton.perf import harness


def cpu_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds each process role used between two ``harness.cpu_seconds`` readings; a process
    that started in between counts from 0, one that ended in between is not counted."""
    spent: dict[str, float] = {}
    for pid, (label, seconds) in after.items():
        start = before.get(pid, (label, 0.0))[1]
        spent[label] = spent.get(label, 0.0) + max(seconds - start, 0.0)
    return spent


@dataclass
class StackSampler:
    """Samples ``harness.tree_rss_mb(pid)`` every ``interval_s`` between ``start()`` and
    ``stop()``, and the stack's CPU time at both ends (``cpu_seconds``, per process role)."""

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
            return harness.cpu_seconds(self.pid)
        except Exception:
            return {}

    def sample(self) -> None:
        try:
            usage = harness.tree_rss_mb(self.pid)
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
