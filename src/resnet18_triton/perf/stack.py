"""Resident memory of the whole served stack: tritonserver + every backend stub process.

Triton's Python backend (and this project's Python-based ONNX Runtime backend) runs each model
instance in a ``triton_python_backend_stub`` child of the server, so the stack's memory is the
server's RSS plus its children's. ``StackSampler`` samples that sum in a thread during a load test
and keeps the peak and the per-process breakdown at the peak.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from resnet18_triton.layout import stub_model


def _label(process) -> str:
    try:
        cmdline = process.cmdline()
    except Exception:
        return "?"
    if not cmdline:
        return process.name()
    if cmdline[0].endswith("tritonserver"):
        return "tritonserver"
    model = stub_model(cmdline)
    return f"stub:{model}" if model else process.name()


def stack_rss(pid: int) -> dict[str, float]:
    """RSS in MB of ``pid`` and each descendant, keyed by a readable label."""
    psutil = __import__("psutil")
    root = psutil.Process(pid)
    usage: dict[str, float] = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            rss = process.memory_info().rss / (1024 * 1024)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        label = _label(process)
        while label in usage:
            label += "'"
        usage[label] = rss
    return usage


@dataclass
class StackSampler:
    """Samples ``stack_rss(pid)`` every ``interval_s`` between ``start()`` and ``stop()``."""

    pid: int
    interval_s: float = 0.5
    peak_total_mb: float = 0.0
    peak_breakdown: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

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
        self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sample()

    def __enter__(self) -> StackSampler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
