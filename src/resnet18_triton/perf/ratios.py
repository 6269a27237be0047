"""The benchmark's ratios as a declared table, and the one function that evaluates it.

A ``Ratio`` names two ``Figure``s (a number read from ``BenchResults``: an engine's img/s, a
sweep's best img/s, the stack's peak RSS, ...) and an optional ``Target``. ``evaluate`` returns
a ``RatioValue`` for each row whose two figures were measured; rows missing a figure (no INT8
variant, no shared memory, ...) are left out. The rows of each variant are derived from its
declaration in ``repository.variants.REGISTRY`` (``variant_ratios``), so a variant declared
there gets its rows with no code here.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from resnet18_triton.perf.measurements import (
    FP32,
    LARGE,
    TYPICAL,
    BenchResults,
    InProcessSpec,
    ServedSpec,
)
from resnet18_triton.repository import variants
from resnet18_triton.repository.variants import Variant

# Full-batch requests: the configs' max_batch_size.
FULL_BATCH = 8
BATCHES = (1, FULL_BATCH)

SERVED_ENSEMBLE_VS_ORT = 0.95
# The serving path must not eat a faster engine's gain: a variant's served path (JPEG in: its
# ensemble, or the fused model doing both steps in one process) at three quarters or more of its
# engine on ready tensors. A path running the FP32 file is held to the FP32 ensemble's bar.
SERVED_VARIANT_VS_ORT = 0.75
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


def _ort(batch: int, spinning: bool = True, variant: str = FP32) -> InProcessSpec:
    return InProcessSpec("ort", batch, variant, spinning)


ENSEMBLE = ServedSpec("ensemble", images=TYPICAL)
ENSEMBLE_LARGE = ServedSpec("ensemble", images=LARGE)
RAW = ServedSpec("raw")
RAW_PATHS = tuple(
    ServedSpec("raw", batch, shared_memory=shm) for batch in BATCHES for shm in (False, True)
)
PIPELINE = InProcessSpec("pipeline", images=TYPICAL)
PIPELINE_LARGE = InProcessSpec("pipeline", images=LARGE)
BEST_ORT = FastestOf(
    tuple(EngineFigure(_ort(batch, spinning)) for batch in BATCHES for spinning in (True, False))
)


def _fastest_raw(batches: tuple[int, ...]) -> FastestOf:
    return FastestOf(tuple(ServedFigure(path) for path in RAW_PATHS if path.batch in batches))


AS_SERVED = "in-process ORT FP32 (spinning off, as served)"


def served_path(key: str) -> ServedSpec:
    """The JPEG path (500x375) of variant key ``key`` (``FP32``: the classifier's ensemble)."""
    return ServedSpec("ensemble", variant=key, images=TYPICAL)


def _file_of(variant: Variant) -> str:
    """The key of the variant whose model file ``variant`` runs: its own, or the one it fuses."""
    return variant.fuses or variant.key


def _title(variant: Variant) -> str:
    """E.g. "INT8 ensemble", "INT8 fused model", "FP32 fused model"."""
    return f"{_file_of(variant).upper()} {'fused model' if variant.fused else 'ensemble'}"


def variant_ratios(variant: Variant) -> tuple[Ratio, ...]:
    """The rows of one registered variant: its JPEG path against its engine on ready tensors
    (best batch, with a target) and against the in-process decode + preprocess + engine loop on
    its model file, and against the path it replaces (the ensemble it fuses, else the FP32
    ensemble); for a variant with a model file of its own, that file against FP32 in-process."""
    served, file = served_path(variant.key), _file_of(variant)
    fuses = variants.by_key(variant.fuses) if variant.fuses not in (None, FP32) else None
    source = _title(fuses) if fuses else "FP32 ensemble"
    best_engine = FastestOf(
        tuple(EngineFigure(_ort(batch, spinning=False, variant=file)) for batch in BATCHES)
    )
    bar = SERVED_ENSEMBLE_VS_ORT if file == FP32 else SERVED_VARIANT_VS_ORT
    rows = [
        Ratio(
            f"served {_title(variant)} (500x375 JPEG) / in-process ORT {file.upper()} (tensors, "
            "best batch), best img/s",
            ServedFigure(served),
            best_engine,
            Target(bar),
        ),
        Ratio(
            f"served {_title(variant)} (500x375 JPEG) / in-process {file.upper()} decode + "
            "preprocess + ORT loop, best img/s",
            ServedFigure(served),
            EngineFigure(InProcessSpec("pipeline", variant=file, images=TYPICAL)),
        ),
        Ratio(
            f"served {_title(variant)} / served {source} (500x375), best img/s",
            ServedFigure(served),
            ServedFigure(served_path(variant.fuses or FP32)),
        ),
    ]
    if not variant.fused:
        rows += [
            Ratio(
                f"in-process ORT {file.upper()} / FP32 (spinning off), batch {batch} img/s",
                EngineFigure(_ort(batch, spinning=False, variant=file)),
                EngineFigure(_ort(batch, spinning=False)),
            )
            for batch in BATCHES
        ]
    return tuple(rows)


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
        "served FP32 ensemble (500x375 JPEG) / in-process FP32 decode + preprocess + ORT loop, "
        "best img/s",
        ServedFigure(ENSEMBLE),
        EngineFigure(PIPELINE),
    ),
    *(ratio for variant in variants.REGISTRY for ratio in variant_ratios(variant)),
)
