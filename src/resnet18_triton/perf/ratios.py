"""The benchmark's ratios as a declared table, and the one function that evaluates it.

A ``Ratio`` names two ``Figure``s (a number read from ``BenchResults``: an engine's img/s, a
sweep's best img/s, the stack's peak RSS, ...) and an optional ``Target``. ``evaluate`` returns
a ``RatioValue`` for each row whose two figures were measured; rows missing a figure (no INT8
variant, no shared memory, ...) are left out.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from resnet18_triton.perf.measurements import (
    FP32,
    INT8,
    LARGE,
    TYPICAL,
    BenchResults,
    InProcessSpec,
    Precision,
    ServedSpec,
)

# Full-batch requests: the configs' max_batch_size.
FULL_BATCH = 8
BATCHES = (1, FULL_BATCH)

SERVED_ENSEMBLE_VS_ORT = 0.95
# The serving path must not eat a faster engine's gain: the served INT8 paths (JPEG in: the
# ensemble, and the fused model doing both steps in one process) at three quarters or more of
# the INT8 engine on ready tensors.
SERVED_INT8_VS_ORT_INT8 = 0.75
SERVED_RAW_VS_ORT = 0.98
ENSEMBLE_P50_SLACK_MS = 3.0
LARGE_VS_TYPICAL = 0.6
STACK_RSS_VS_ORT = 1.5

UNITS = {
    "images_per_s": "img/s",
    "best_images_per_s": "img/s",
    "ms_per_image": "ms",
    "first_p50_ms": "ms",
    "peak_rss_mb": "MB",
    "stack_rss_mb": "MB",
}


@dataclass(frozen=True)
class Reading:
    """A figure's value, its unit and where it came from (shown in the report)."""

    value: float
    unit: str
    source: str

    def __str__(self) -> str:
        return f"{self.value:.1f} {self.unit} ({self.source})"


class Figure(Protocol):
    def read(self, results: BenchResults) -> Reading | None:
        """The figure, or None when it was not measured."""


@dataclass(frozen=True)
class EngineFigure:
    """``metric`` (an ``EngineRow`` field: images_per_s, ms_per_image, peak_rss_mb) of one
    in-process run."""

    spec: InProcessSpec
    metric: str = "images_per_s"

    def read(self, results: BenchResults) -> Reading | None:
        row = results.engine(self.spec)
        if row is None:
            return None
        source = f"in-process {row.label}, batch {row.spec.batch}"
        return Reading(getattr(row, self.metric), UNITS[self.metric], source)


@dataclass(frozen=True)
class ServedFigure:
    """``metric`` (a ``ServedSweep`` field or property: best_images_per_s, first_p50_ms,
    stack_rss_mb) of one served sweep."""

    spec: ServedSpec
    metric: str = "best_images_per_s"

    def read(self, results: BenchResults) -> Reading | None:
        sweep = results.sweep(self.spec)
        if sweep is None or getattr(sweep, self.metric) is None:
            return None
        value = getattr(sweep, self.metric)
        where = f", c={sweep.best.load:g}" if self.metric == "best_images_per_s" else ""
        return Reading(value, UNITS[self.metric], f"served {sweep.label}{where}")


@dataclass(frozen=True)
class FastestOf:
    """The highest of several figures (those measured)."""

    figures: tuple[Figure, ...]

    def read(self, results: BenchResults) -> Reading | None:
        readings = [reading for figure in self.figures if (reading := figure.read(results))]
        return max(readings, key=lambda reading: reading.value, default=None)


@dataclass(frozen=True)
class InterleavedMedian:
    """Median img/s of one side ("served" or "in_process") of the interleaved pair at ``batch``."""

    batch: int
    side: str

    def read(self, results: BenchResults) -> Reading | None:
        pair = results.pair(self.batch)
        if pair is None:
            return None
        served = self.side == "served"
        values = pair.served_images_per_s if served else pair.in_process
        where = f"served {pair.served.label}, c={pair.concurrency:g}" if served else "in-process"
        rounds = "/".join(f"{value:.1f}" for value in values)
        return Reading(statistics.median(values), "img/s", f"{where}, rounds {rounds}")


@dataclass(frozen=True)
class Target:
    """value >= bound, or value <= bound with ``at_most``."""

    bound: float
    at_most: bool = False
    unit: str = ""

    def met(self, value: float) -> bool:
        return value <= self.bound if self.at_most else value >= self.bound

    def __str__(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.bound:g}{self.unit}"


@dataclass(frozen=True)
class Ratio:
    """numerator / denominator (or numerator - denominator with ``difference``) and its target."""

    name: str
    numerator: Figure
    denominator: Figure
    target: Target | None = None
    difference: bool = False


@dataclass(frozen=True)
class RatioValue:
    ratio: Ratio
    value: float
    met: bool | None  # None: the ratio has no target
    numerator: Reading
    denominator: Reading

    @property
    def detail(self) -> str:
        return f"{self.numerator} vs {self.denominator}"


def evaluate(table: Sequence[Ratio], results: BenchResults) -> list[RatioValue]:
    """The value of each ratio of ``table`` whose figures were both measured, in table order
    (a zero denominator counts as not measured)."""
    values = []
    for ratio in table:
        top, bottom = ratio.numerator.read(results), ratio.denominator.read(results)
        if top is None or bottom is None or (not ratio.difference and bottom.value == 0):
            continue
        value = top.value - bottom.value if ratio.difference else top.value / bottom.value
        met = None if ratio.target is None else ratio.target.met(value)
        values.append(RatioValue(ratio, value, met, top, bottom))
    return values


def _ort(batch: int, spinning: bool = True, precision: Precision = FP32) -> InProcessSpec:
    return InProcessSpec("ort", batch, precision, spinning)


ENSEMBLE = ServedSpec("ensemble", images=TYPICAL)
ENSEMBLE_LARGE = ServedSpec("ensemble", images=LARGE)
INT8_ENSEMBLE = ServedSpec("ensemble", precision=INT8, images=TYPICAL)
INT8_FUSED = ServedSpec("fused", precision=INT8, images=TYPICAL)
RAW = ServedSpec("raw")
RAW_PATHS = tuple(
    ServedSpec("raw", batch, shared_memory=shm) for batch in BATCHES for shm in (False, True)
)
PIPELINE = InProcessSpec("pipeline", images=TYPICAL)
PIPELINE_INT8 = InProcessSpec("pipeline", precision=INT8, images=TYPICAL)
PIPELINE_LARGE = InProcessSpec("pipeline", images=LARGE)
BEST_ORT = FastestOf(
    tuple(EngineFigure(_ort(batch, spinning)) for batch in BATCHES for spinning in (True, False))
)
BEST_ORT_INT8 = FastestOf(
    tuple(EngineFigure(_ort(batch, spinning=False, precision=INT8)) for batch in BATCHES)
)


def _fastest_raw(batches: tuple[int, ...]) -> FastestOf:
    return FastestOf(tuple(ServedFigure(path) for path in RAW_PATHS if path.batch in batches))


AS_SERVED = "in-process ORT FP32 (spinning off, as served)"

RATIOS: tuple[Ratio, ...] = (
    Ratio(
        "served ensemble (500x375 JPEG) / in-process ORT FP32 (tensors, best variant), best img/s",
        ServedFigure(ENSEMBLE),
        BEST_ORT,
        Target(SERVED_ENSEMBLE_VS_ORT),
    ),
    # Alternated in the same minutes: these carry the raw target (drift between phases of a run
    # on a shared machine can exceed the few percent it is about).
    *(
        Ratio(
            f"served raw model / {AS_SERVED}, batch {batch}, interleaved rounds, medians",
            InterleavedMedian(batch, "served"),
            InterleavedMedian(batch, "in_process"),
            Target(SERVED_RAW_VS_ORT),
        )
        for batch in BATCHES
    ),
    Ratio(
        "served raw model, best path / in-process ORT FP32, best variant, best img/s "
        "(sequential phases)",
        _fastest_raw(BATCHES),
        BEST_ORT,
    ),
    *(
        Ratio(
            f"served raw model / {AS_SERVED}, batch {batch}, best img/s (sequential phases)",
            _fastest_raw((batch,)),
            EngineFigure(_ort(batch, spinning=False)),
        )
        for batch in BATCHES
    ),
    Ratio(
        "ensemble p50 at concurrency 1 - in-process decode+preprocess+ORT (ms)",
        ServedFigure(ENSEMBLE, "first_p50_ms"),
        EngineFigure(PIPELINE, "ms_per_image"),
        Target(ENSEMBLE_P50_SLACK_MS, at_most=True, unit=" ms"),
        difference=True,
    ),
    Ratio(
        "ensemble 12-MP / ensemble 500x375, best img/s",
        ServedFigure(ENSEMBLE_LARGE),
        ServedFigure(ENSEMBLE),
        Target(LARGE_VS_TYPICAL),
    ),
    *(
        Ratio(
            f"served stack peak RSS during {served.label} / in-process ORT process peak RSS "
            f"({engine.label}: decode+preprocess+ORT)",
            ServedFigure(served, "stack_rss_mb"),
            EngineFigure(engine, "peak_rss_mb"),
            Target(STACK_RSS_VS_ORT, at_most=True),
        )
        for served, engine in ((ENSEMBLE, PIPELINE), (ENSEMBLE_LARGE, PIPELINE_LARGE))
    ),
    *(
        Ratio(
            f"served stack peak RSS during {path.label} / in-process ORT process peak RSS "
            f"(batch {path.batch})",
            ServedFigure(path, "stack_rss_mb"),
            EngineFigure(_ort(path.batch, spinning=False), "peak_rss_mb"),
        )
        for path in RAW_PATHS
    ),
    Ratio(
        "ORT FP32 / PyTorch eager, batch 1 img/s",
        EngineFigure(_ort(1)),
        EngineFigure(InProcessSpec("eager")),
    ),
    Ratio(
        "TorchScript / PyTorch eager, batch 1 img/s",
        EngineFigure(InProcessSpec("torchscript")),
        EngineFigure(InProcessSpec("eager")),
    ),
    Ratio("served ensemble / served raw, best img/s", ServedFigure(ENSEMBLE), ServedFigure(RAW)),
    Ratio(
        "served INT8 ensemble / served FP32 ensemble (500x375), best img/s",
        ServedFigure(INT8_ENSEMBLE),
        ServedFigure(ENSEMBLE),
    ),
    *(
        Ratio(
            f"served INT8 {path} (500x375 JPEG) / in-process ORT INT8 (tensors, best batch), "
            "best img/s",
            ServedFigure(served),
            BEST_ORT_INT8,
            Target(SERVED_INT8_VS_ORT_INT8),
        )
        for path, served in (("ensemble", INT8_ENSEMBLE), ("fused model", INT8_FUSED))
    ),
    *(
        Ratio(
            f"served {precision} {path} (500x375 JPEG) / in-process {precision} decode + "
            "preprocess + ORT loop, best img/s",
            ServedFigure(served),
            EngineFigure(loop),
        )
        for precision, path, served, loop in (
            ("FP32", "ensemble", ENSEMBLE, PIPELINE),
            ("INT8", "ensemble", INT8_ENSEMBLE, PIPELINE_INT8),
            ("INT8", "fused model", INT8_FUSED, PIPELINE_INT8),
        )
    ),
    Ratio(
        "served INT8 fused model / served INT8 ensemble (500x375), best img/s",
        ServedFigure(INT8_FUSED),
        ServedFigure(INT8_ENSEMBLE),
    ),
    *(
        Ratio(
            f"in-process ORT INT8 / FP32 (spinning off), batch {batch} img/s",
            EngineFigure(_ort(batch, spinning=False, precision=INT8)),
            EngineFigure(_ort(batch, spinning=False)),
        )
        for batch in BATCHES
    ),
)
