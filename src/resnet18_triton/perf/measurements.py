"""What ``bench`` measures, as typed values: a spec per measurement and a result per spec.

Every label the report prints is computed from a spec (engine, variant, batch, transport,
shared memory), so code never tells measurements apart by parsing strings or file names.
Results are looked up by spec (specs are frozen, hence comparable and hashable). A spec names a
variant by its key in ``repository.variants.REGISTRY`` (``FP32``: the classifier's own models),
so a variant added there is measured and labelled with no code here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from resnet18_triton.perf.inprocess import InProcessEngine
from resnet18_triton.perf.perf_analyzer import Row
from resnet18_triton.perf.report import best
from resnet18_triton.repository import variants

# The classifier's own FP32 models (its ensemble and ONNX model), beside the registry's keys.
FP32: Final = variants.FP32_ENSEMBLE
# The two JPEG sets: typical photos and 12-megapixel ones (see perf/images.py).
TYPICAL, LARGE = "500x375", "12MP"


@dataclass(frozen=True)
class InProcessSpec:
    """One in-process engine run.

    ``engine``: "eager", "torchscript", "ort" (tensors in) or "pipeline" (JPEG decode + the
    served preprocessing + ORT, batch 1, on the ``images`` set) or "openvino" (a variant on
    OpenVINO, compiled at ``precision``). ``variant`` is the key of the variant whose model file
    the engine runs (``FP32``: the exported one); ``spinning`` is ORT's intra-op spinning (the
    served model runs with it off).
    """

    engine: InProcessEngine
    batch: int = 1
    variant: str = FP32
    spinning: bool = True
    images: str | None = None
    precision: str | None = None

    @property
    def label(self) -> str:
        """E.g. "eager", "ort", "ort-nospin", "ort-int8-nospin", "pipeline 500x375",
        "openvino-bf16"."""
        if self.engine == "pipeline":
            variant = "" if self.variant == FP32 else f"-{self.variant}"
            return f"pipeline{variant} {self.images}"
        parts: list[str] = [self.engine]
        # A variant named after its engine (openvino) is said once.
        if self.variant not in (FP32, self.engine):
            parts.append(self.variant)
        if self.precision:
            parts.append(self.precision)
        if not self.spinning:
            parts.append("nospin")
        return "-".join(parts)


@dataclass(frozen=True)
class ServedSpec:
    """One served path swept with perf_analyzer.

    ``path``: "ensemble" (encoded images of the ``images`` set into the model clients call: the
    ensemble, or a fused variant's one model doing both steps) or "raw" (uint8 pixel tensors
    into the classifier model). ``variant`` is the key of the variant served (``FP32``: the
    classifier's own models). ``batch`` is images per request; ``shared_memory`` sends the
    tensors through system shared memory instead of the HTTP body.
    """

    path: str
    batch: int = 1
    variant: str = FP32
    images: str | None = None
    shared_memory: bool = False

    @property
    def label(self) -> str:
        """E.g. "ensemble 500x375", "int8 ensemble 500x375", "int8 fused 500x375", "raw",
        "raw shm", "raw b8 shm"."""
        parts = [] if self.variant == FP32 else [variant_words(self.variant)]
        if self.variant == FP32 or not variants.by_key(self.variant).fused:
            parts.append(self.path)
        if self.batch != 1:
            parts.append(f"b{self.batch}")
        if self.images:
            parts.append(self.images)
        if self.shared_memory:
            parts.append("shm")
        return " ".join(parts)


def variant_words(key: str) -> str:
    """A variant's key as the report writes it: "int8", "int8 fused", "openvino fused"."""
    return key.replace("_", " ")


@dataclass(frozen=True)
class EngineRow:
    """An in-process result: median ms per image, images/s over the run, the process's peak
    RSS, and for the pipeline the median split (``preprocess_ms_median``, ...)."""

    spec: InProcessSpec
    ms_per_image: float
    images_per_s: float
    peak_rss_mb: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.spec.label


@dataclass(frozen=True)
class ServedSweep:
    """A served result: perf_analyzer's rows (sorted by load, at least one), the server's
    failed-request count, the whole stack's peak RSS during the sweep (when sampled), and the
    CPU time per image each process kind spent over the whole sweep, perf_analyzer included
    (core-ms/img; when sampled)."""

    spec: ServedSpec
    rows: tuple[Row, ...]
    failed_requests: int | None = None
    stack_rss_mb: float | None = None
    stack_breakdown: dict[str, float] = field(default_factory=dict)
    cpu_ms_per_image: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def best(self) -> Row:
        """The row with the highest throughput."""
        return best(list(self.rows))

    @property
    def best_images_per_s(self) -> float:
        return self.best.throughput

    @property
    def first_p50_ms(self) -> float:
        """Median latency at the lowest load (concurrency 1 in every bench sweep)."""
        return self.rows[0].p50_ms


@dataclass(frozen=True)
class InterleavedPair:
    """In-process ORT (served settings) and one served raw path at one concurrency, alternated
    round by round; images/s of each round, in order."""

    served: ServedSpec
    concurrency: float
    in_process: tuple[float, ...]
    served_images_per_s: tuple[float, ...]

    @property
    def batch(self) -> int:
        return self.served.batch


@dataclass(frozen=True)
class BackToBack:
    """Two served paths at one concurrency, measured back to back (``first`` then ``second``,
    seconds apart) round by round; images/s of each round, in order. A ratio taken within one
    round is far less exposed to other processes' load than best-of-sweep figures minutes
    apart."""

    first: ServedSpec
    second: ServedSpec
    concurrency: int
    first_images_per_s: tuple[float, ...]
    second_images_per_s: tuple[float, ...]

    @property
    def ratios(self) -> tuple[float, ...]:
        """second / first, round by round."""
        pairs = zip(self.second_images_per_s, self.first_images_per_s, strict=True)
        return tuple(second / first for second, first in pairs)


@dataclass(frozen=True)
class BenchResults:
    """Everything one ``bench`` run measured, plus where it ran. ``side_by_side`` are in-process
    engines timed alternated in one process (a non-ONNX Runtime variant against ORT FP32);
    ``back_to_back`` its served path against the FP32 ensemble."""

    engines: tuple[EngineRow, ...] = ()
    served: tuple[ServedSweep, ...] = ()
    interleaved: tuple[InterleavedPair, ...] = ()
    environment: dict[str, object] = field(default_factory=dict)
    side_by_side: tuple[EngineRow, ...] = ()
    back_to_back: tuple[BackToBack, ...] = ()

    def engine(self, spec: InProcessSpec) -> EngineRow | None:
        return next((row for row in self.engines if row.spec == spec), None)

    def sweep(self, spec: ServedSpec) -> ServedSweep | None:
        return next((sweep for sweep in self.served if sweep.spec == spec and sweep.rows), None)

    def pair(self, batch: int) -> InterleavedPair | None:
        return next((pair for pair in self.interleaved if pair.batch == batch), None)


def fastest_raw(
    served: tuple[ServedSweep, ...] | list[ServedSweep], batch: int
) -> ServedSweep | None:
    """The FP32 raw-model sweep with the highest best throughput at ``batch`` images per
    request; None when none produced rows."""
    candidates = [
        sweep
        for sweep in served
        if sweep.rows
        and sweep.spec.path == "raw"
        and sweep.spec.variant == FP32
        and sweep.spec.batch == batch
    ]
    return max(candidates, key=lambda sweep: sweep.best_images_per_s, default=None)
