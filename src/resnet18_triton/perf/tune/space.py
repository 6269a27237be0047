"""The search space of ``resnet18-triton tune`` and the choice of a winner: pure functions.

A ``Candidate`` is one serving plan for a classifier: the model variant (FP32, INT8, ...), ONNX
Runtime instances x intra-op threads, preprocessing instances, max batch size and dynamic-batching
queue delay. ``SearchSpace`` lists the values each knob may take; its plans never give ONNX Runtime
more threads than ``cores`` (instances x threads <= cores).

Two ways through the space:

* ``SearchSpace.grid()``: every plan (``tune --exhaustive``);
* ``coordinate_descent``: start from the rule of thumb (``SearchSpace.seed()``: one instance using
  every core, the largest batch, no queue delay), then move one knob at a time to its best value
  with the others held, until a pass changes nothing. The ONNX Runtime thread split and the
  preprocessing instances move together, as one knob, because they divide the same cores.
  Thread splits are pruned to those that use every core they can (threads = cores // instances):
  an idle core never raises throughput.

``Measurement.score`` is the objective: the highest throughput among the measured load levels,
or, with a p99 limit, among those whose p99 latency is within it. ``select_winner`` picks the
highest score.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from resnet18_triton.errors import TuneError
from resnet18_triton.perf.measurements import FP32 as FP32
from resnet18_triton.perf.perf_analyzer import Row


@dataclass(frozen=True, order=True)
class Candidate:
    """One serving plan; ``label`` names it in reports (``fp32 i1xt2 p1 b8 q0``)."""

    # FP32 (the classifier's own models) or the key of a registered variant
    # (``repository.variants``), served in whatever precision its command built it.
    variant: str = FP32
    onnx_instances: int = 1
    intra_op_threads: int = 2
    preprocess_instances: int = 1
    max_batch_size: int = 8
    max_queue_delay_us: int = 0

    @property
    def threads(self) -> int:
        """ONNX Runtime intra-op threads over all instances (what ``--cores`` bounds)."""
        return self.onnx_instances * self.intra_op_threads

    @property
    def label(self) -> str:
        return (
            f"{self.variant} i{self.onnx_instances}xt{self.intra_op_threads} "
            f"p{self.preprocess_instances} b{self.max_batch_size} q{self.max_queue_delay_us}"
        )


_LABEL = re.compile(r"^(\w+) i(\d+)xt(\d+) p(\d+) b(\d+) q(\d+)$")


def parse_label(label: str) -> Candidate:
    """The plan a ``Candidate.label`` names (``"int8 i2xt1 p1 b1 q0"``); TuneError otherwise."""
    match = _LABEL.match(" ".join(label.split()))
    if match is None:
        raise TuneError(
            f"not a plan label: {label!r}; expected e.g. 'fp32 i1xt2 p1 b8 q0' (variant, "
            "instances x threads, preprocess instances, max batch size, queue delay in us)"
        )
    variant, *numbers = match.groups()
    return Candidate(variant, *(int(number) for number in numbers))


def thread_splits(cores: int, full_only: bool = False) -> list[tuple[int, int]]:
    """(instances, intra-op threads) pairs with instances x threads <= ``cores``.

    ``full_only`` keeps the split that uses the most cores for each instance count
    (threads = cores // instances), the pruned set of the quick search.
    """
    if cores < 1:
        raise TuneError("--cores must be at least 1")
    splits: list[tuple[int, int]] = []
    for instances in range(1, cores + 1):
        most = cores // instances
        threads = [most] if full_only else list(range(1, most + 1))
        splits.extend((instances, count) for count in threads)
    return splits


@dataclass(frozen=True)
class SearchSpace:
    """The values each knob may take; every plan it yields fits in ``cores``."""

    cores: int
    variants: tuple[str, ...] = (FP32,)
    preprocess_instances: tuple[int, ...] = (1, 2)
    max_batch_sizes: tuple[int, ...] = (1, 4, 8)
    queue_delays_us: tuple[int, ...] = (0, 2000)

    def __post_init__(self) -> None:
        for name in ("variants", "preprocess_instances", "max_batch_sizes", "queue_delays_us"):
            if not getattr(self, name):
                raise TuneError(f"the search space has no values for {name.replace('_', ' ')}")
        if min(self.preprocess_instances) < 1 or min(self.max_batch_sizes) < 1:
            raise TuneError("instance counts and batch sizes must be at least 1")
        if min(self.queue_delays_us) < 0:
            raise TuneError("queue delays cannot be negative")
        thread_splits(self.cores)

    def grid(self) -> list[Candidate]:
        """Every plan of the space (the exhaustive search), in a stable order."""
        return [
            Candidate(variant, instances, threads, pre, batch, delay)
            for variant in self.variants
            for instances, threads in thread_splits(self.cores)
            for pre in sorted(self.preprocess_instances)
            for batch in sorted(self.max_batch_sizes)
            for delay in sorted(self.queue_delays_us)
        ]

    def seed(self) -> Candidate:
        """The rule of thumb the quick search starts from: the first variant, one ONNX Runtime
        instance using every core, the fewest preprocessing instances, the largest batch, the
        shortest queue delay (the export defaults on a machine with ``cores`` cores)."""
        return Candidate(
            self.variants[0],
            1,
            self.cores,
            min(self.preprocess_instances),
            max(self.max_batch_sizes),
            min(self.queue_delays_us),
        )

    def axes(self) -> list[Callable[[Candidate], list[Candidate]]]:
        """One function per knob: a plan -> the plans that differ from it in that knob only
        (itself included). The thread split and the preprocessing instances are one knob (they
        share the cores); thread splits are pruned (``thread_splits(full_only=True)``)."""

        def variants(plan: Candidate) -> list[Candidate]:
            return [replace(plan, variant=value) for value in self.variants]

        def cores(plan: Candidate) -> list[Candidate]:
            # One axis, not two: the thread split and the preprocessing instances divide the
            # same cores, so their best values depend on each other (2 single-thread instances
            # pay only with a second preprocessing instance to feed them).
            pairs = thread_splits(self.cores, full_only=True)
            return [
                replace(plan, onnx_instances=i, intra_op_threads=t, preprocess_instances=n)
                for i, t in pairs
                for n in sorted(self.preprocess_instances)
            ]

        def batches(plan: Candidate) -> list[Candidate]:
            return [replace(plan, max_batch_size=n) for n in sorted(self.max_batch_sizes)]

        def delays(plan: Candidate) -> list[Candidate]:
            return [replace(plan, max_queue_delay_us=n) for n in sorted(self.queue_delays_us)]

        return [variants, cores, batches, delays]


@dataclass(frozen=True)
class Measurement:
    """One plan measured: perf_analyzer's rows (one per load level), failed requests and the
    per-model compute time per inference that the server's statistics report (ms)."""

    candidate: Candidate
    rows: tuple[Row, ...]
    failed_requests: int | None = None
    compute_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def eligible(self, max_p99_ms: float | None) -> list[Row]:
        """Rows that count for the objective: all, or those with p99 within the limit."""
        if self.error is not None or self.failed_requests:
            return []
        rows = [row for row in self.rows if not math.isnan(row.throughput)]
        if max_p99_ms is None:
            return rows
        return [row for row in rows if row.p99_ms <= max_p99_ms]

    def best_row(self, max_p99_ms: float | None = None) -> Row | None:
        rows = self.eligible(max_p99_ms)
        return max(rows, key=lambda row: row.throughput) if rows else None

    def score(self, max_p99_ms: float | None = None) -> float:
        """Throughput (inferences/s) of the best eligible row; 0 when none is eligible."""
        row = self.best_row(max_p99_ms)
        return row.throughput if row is not None else 0.0


def select_winner(
    measurements: Sequence[Measurement], max_p99_ms: float | None = None
) -> Measurement:
    """The plan with the highest score; on a tie, the one with fewer ONNX Runtime threads and
    instances (cheaper). Raises TuneError naming the lowest p99 seen when no plan qualifies."""
    qualified = [m for m in measurements if m.score(max_p99_ms) > 0]
    if not qualified:
        raise TuneError(_nothing_qualified(measurements, max_p99_ms))
    return max(
        qualified,
        key=lambda m: (
            m.score(max_p99_ms),
            -m.candidate.threads,
            -m.candidate.onnx_instances,
            -m.candidate.preprocess_instances,
        ),
    )


def _nothing_qualified(measurements: Sequence[Measurement], max_p99_ms: float | None) -> str:
    p99s = [row.p99_ms for m in measurements if m.error is None for row in m.rows]
    if max_p99_ms is not None and p99s:
        return (
            f"no plan kept p99 latency within {max_p99_ms:g} ms (the lowest measured was "
            f"{min(p99s):.1f} ms): raise --max-p99-ms or lower the --concurrency sweep"
        )
    errors = [m.error for m in measurements if m.error]
    detail = f" (first error: {errors[0]})" if errors else ""
    return f"no plan could be measured without failed requests{detail}"


def coordinate_descent(
    space: SearchSpace,
    measure: Callable[[Candidate], Measurement],
    max_p99_ms: float | None = None,
    max_passes: int = 2,
) -> list[Measurement]:
    """Measure the seed, then each knob's values in turn with the others at the best so far,
    moving to a better plan as soon as one is found; stop after a pass without a move or after
    ``max_passes``. Every plan is measured at most once. Returns the measurements in order."""
    measured: dict[Candidate, Measurement] = {}

    def visit(plans: Iterable[Candidate]) -> None:
        for plan in plans:
            if plan not in measured:
                measured[plan] = measure(plan)

    current = space.seed()
    visit([current])
    for _ in range(max_passes):
        start = current
        for axis in space.axes():
            neighbours = axis(current)
            visit(neighbours)
            current = _best_of([measured[plan] for plan in neighbours], current, max_p99_ms)
        if current == start:
            break
    return list(measured.values())


def _best_of(
    measurements: Sequence[Measurement], current: Candidate, max_p99_ms: float | None
) -> Candidate:
    """The best plan among ``measurements``; ``current`` when none qualifies."""
    try:
        return select_winner(measurements, max_p99_ms).candidate
    except TuneError:
        return current


def interleaved(
    plans: Sequence[Candidate], measure: Callable[[Candidate], Measurement], rounds: int
) -> list[Measurement]:
    """Measure ``plans`` in turn, ``rounds`` times (A B C A B C ...), so that a slow spell of a
    shared machine hits every plan alike instead of one."""
    if rounds < 1 or not plans:
        raise TuneError("comparing needs at least one plan and one round")
    return [measure(plan) for _ in range(rounds) for plan in plans]


def median_scores(
    measurements: Sequence[Measurement], max_p99_ms: float | None = None
) -> dict[Candidate, float]:
    """Each plan's median score over its measurements, in first-measured order."""
    scores: dict[Candidate, list[float]] = {}
    for m in measurements:
        scores.setdefault(m.candidate, []).append(m.score(max_p99_ms))
    return {plan: statistics.median(values) for plan, values in scores.items()}


def top_plans(
    measurements: Sequence[Measurement], count: int, max_p99_ms: float | None = None
) -> list[Candidate]:
    """The ``count`` best-scoring distinct plans that qualify, best first."""
    ranked = sorted(measurements, key=lambda m: m.score(max_p99_ms), reverse=True)
    plans: list[Candidate] = []
    for m in ranked:
        if m.score(max_p99_ms) > 0 and m.candidate not in plans:
            plans.append(m.candidate)
    return plans[:count]


def best_by_median(
    measurements: Sequence[Measurement], max_p99_ms: float | None = None
) -> tuple[Measurement, float]:
    """The plan with the best median score, as (its best measurement, its median)."""
    medians = median_scores(measurements, max_p99_ms)
    best = max(medians, key=lambda plan: medians[plan])
    if medians[best] <= 0:
        raise TuneError(_nothing_qualified(measurements, max_p99_ms))
    mine = [m for m in measurements if m.candidate == best]
    return max(mine, key=lambda m: m.score(max_p99_ms)), medians[best]
