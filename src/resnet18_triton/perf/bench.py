"""``bench``: in-process engines and the served paths, measured in one run on the same cores.

Order: images, then every in-process engine in its own fresh process (nothing else of ours runs
meanwhile), then the server (started here unless a URL is given) with perf_analyzer sweeps of
the ensemble (500x375, then 12-MP JPEGs), of the raw model (1 image per request over HTTP and
through shared memory, 8 per request through shared memory) and of the model clients call of
each variant the repository holds, while the stack's RSS is sampled, then in-process ORT and the
fastest raw path alternated a few times per batch size. What is timed follows from
``repository.variants.REGISTRY``: a variant declared there is swept (and its ONNX Runtime model
file timed in-process) with no code here. A variant on another engine (OpenVINO) of the default
classifier is also compared with ONNX Runtime FP32 where noise hurts least: in-process, alternated
call by call in one process at its precision and at f32 (``side_by_side``), and served, its JPEG
path and the FP32 ensemble back to back (``back_to_back``). Writes
``bench.json`` (every measurement), ``bench.md`` (the table, the ratios of ``perf.ratios`` with
their targets, the sweeps, the comparison), ``served.csv`` and ``served.png`` into the output
folder.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from resnet18_triton import contract
from resnet18_triton.contract import VERSION, ClassifierNames
from resnet18_triton.errors import ExportError
from resnet18_triton.perf import harness, inprocess
from resnet18_triton.perf import images as image_sets
from resnet18_triton.perf import perf_analyzer as pa
from resnet18_triton.perf.inprocess import InProcessEngine
from resnet18_triton.perf.measurements import (
    FP32,
    LARGE,
    TYPICAL,
    BackToBack,
    BenchResults,
    EngineRow,
    InProcessSpec,
    InterleavedPair,
    ServedSpec,
    ServedSweep,
    fastest_raw,
)
from resnet18_triton.perf.ratios import BATCHES, FULL_BATCH, RATIOS, RatioValue, evaluate
from resnet18_triton.perf.report import (
    markdown_table,
    plot_throughput_latency,
    sweep_table,
    write_rows_csv,
)
from resnet18_triton.perf.stack import StackSampler
from resnet18_triton.repository import variants
from resnet18_triton.repository.layout import classifiers, onnx_model_path, served_models
from resnet18_triton.repository.variants import Variant

Echo = Callable[[str], None]

# Full batches at 1 and 2 requests in flight.
FULL_BATCH_CONCURRENCY = "1:2:1"
# A fast engine (INT8) needs about a full batch in flight before dynamic batching and the
# overlap of preprocessing with inference peak (the measurements: docs/decisions.md, "`bench`
# sweeps the INT8 ensemble to 8"): every variant's JPEG path is swept up to this concurrency at
# least, so that variants are compared at the same loads.
FAST_ENSEMBLE_MIN_CONCURRENCY = 8
# The raw-model target compares two measurements a few percent apart; minutes of drift on a
# shared machine between the in-process phase and the served phase can exceed that. So they are
# also alternated (in-process, served, in-process, served, ...) and compared by their medians.
INTERLEAVED_ROUNDS = 3
INTERLEAVED_SECONDS = 5.0
# The comparison with another engine: its JPEG path and the FP32 ensemble back to back, this many
# rounds of short measurements at one concurrency; in-process, each engine at these batches for
# half of ``BenchPlan.seconds``.
BACK_TO_BACK_ROUNDS = 8
BACK_TO_BACK_CONCURRENCY = 2
BACK_TO_BACK_INTERVAL_MS = 3000
SIDE_BY_SIDE_MIN_ITERATIONS = 5


@dataclass(frozen=True)
class BenchPlan:
    """What to measure and how. With ``url`` the server there is timed (``server_pid`` gives the
    stack's RSS; ``settings.admin_key`` allows the shared-memory paths); without, one is started
    on ``repo`` (or on a repository exported into ``out``). ``name`` is the classifier timed."""

    out: Path
    name: str = contract.DEFAULT_CLASSIFIER
    repo: Path | None = None
    url: str | None = None
    server_pid: int | None = None
    settings: pa.SweepSettings = field(
        default_factory=lambda: pa.SweepSettings(measurement_interval_ms=5000)
    )
    threads: int = 2
    seconds: float = 10.0
    typical_count: int = 16
    large_count: int = 4
    engines: tuple[InProcessEngine, ...] = ("eager", "torchscript", "ort")
    batches: tuple[int, ...] = BATCHES
    # Keys of variants whose JPEG path is swept even when the repository lacks them (a server
    # at ``url`` may hold more than ``repo``); those the repository holds are always swept.
    variants: tuple[str, ...] = ()
    # Build the OpenVINO variant with this precision when the repository lacks it; its rows are
    # measured whenever the repository holds the variant.
    openvino: str | None = None


@dataclass(frozen=True)
class BenchModels:
    """The models of one classifier that ``bench`` times, by the names the repository serves
    them under: its ensemble and ONNX model, and the variants of it in ``present``
    (``variants.present``). ``forced`` are keys of variants swept even when not present."""

    names: ClassifierNames
    present: tuple[Variant, ...] = ()
    forced: tuple[str, ...] = ()

    @property
    def swept(self) -> tuple[Variant, ...]:
        """The variants whose JPEG path is swept: those present and those forced, in registry
        (serving) order."""
        keys = {variant.key for variant in self.present} | set(self.forced)
        return tuple(variant for variant in variants.REGISTRY if variant.key in keys)

    @property
    def timed_files(self) -> tuple[Variant, ...]:
        """The variants whose own model file the in-process ONNX Runtime engines time: those
        present that run on ONNX Runtime and are not fused (a fused variant runs the file of
        the one it fuses)."""
        return tuple(
            variant
            for variant in self.present
            if variant.engine == "onnxruntime" and not variant.fused
        )

    @property
    def openvino(self) -> bool:
        """The OpenVINO comparison runs (``side_by_side``, ``back_to_back``): for the default
        classifier's variant only."""
        return variants.OPENVINO in self.present and self.names == ClassifierNames.of()

    def served(self, spec: ServedSpec) -> str:
        """The Triton model ``spec``'s path sends requests to: the classifier model (raw) or the
        model clients call (JPEG in) of ``spec.variant``."""
        raw = spec.path == "raw"
        if spec.variant == FP32:
            return self.names.onnx if raw else self.names.ensemble
        variant = variants.by_key(spec.variant)
        return variant.classifier(self.names) if raw else variant.entry(self.names)

    def onnx_path(self, repo: Path, variant: str = FP32) -> Path:
        """The model file the in-process engines run for variant key ``variant``."""
        if variant == FP32:
            return onnx_model_path(repo, self.names.onnx)
        return variants.by_key(variant).model_path(repo, self.names)

    def preprocess_path(self, repo: Path) -> Path:
        """The classifier's served preprocessing code (the in-process pipeline runs it)."""
        return repo / self.names.preprocess / VERSION / "model.py"

    def listing(self) -> list[str]:
        """The models timed, for the log and the report."""
        specs = served_specs(True, self.swept)
        return list(dict.fromkeys(self.served(spec) for spec in specs))


def bench_models(plan: BenchPlan, repo: Path) -> BenchModels:
    """What ``plan`` times in ``repo``: classifier ``plan.name`` and its variants there."""
    names = ClassifierNames.of(plan.name)
    return BenchModels(names, variants.present(repo, names), plan.variants)


def check_plan(plan: BenchPlan) -> None:
    """Refuse now, not minutes into a run, a plan whose repository lacks its classifier or whose
    classifier the in-process engines cannot feed (they time 224x224 tensors)."""
    if plan.repo is None:
        return
    names = ClassifierNames.of(plan.name)
    if names not in classifiers(plan.repo):
        held = ", ".join(item.name for item in classifiers(plan.repo)) or "none"
        raise ExportError(
            f"{plan.repo} holds no classifier {plan.name!r} (classifiers: {held}); run "
            f"`resnet18-triton export --name {plan.name}` first"
        )
    from resnet18_triton.repository.configs.parser import repository_classifier

    size = repository_classifier(plan.repo, plan.name).preprocessing.input_size
    if size != contract.IMAGE_SIZE:
        raise ExportError(
            f"classifier {plan.name!r} takes {size}x{size} images; bench's in-process engines "
            f"time {contract.IMAGE_SIZE}x{contract.IMAGE_SIZE} (use `resnet18-triton loadtest "
            f"--name {plan.name}` for its served paths)"
        )


def _export_repository(repo: Path, echo: Echo, name: str = contract.DEFAULT_CLASSIFIER) -> Path:
    """A verified repository with random weights (seed 0) and the default settings, holding
    classifier ``name``."""
    echo(
        f"exporting a model repository (classifier {name}, random weights, seed 0, default "
        f"settings) to {repo}"
    )
    return harness.export_random(repo, name)


def _environment(plan: BenchPlan) -> dict[str, object]:
    import onnxruntime

    here = harness.machine()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": here.cpu,
        "cores": here.cores,
        "load_average_at_start": list(here.load_average),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "threads": plan.threads,
    }


def engine_specs(plan: BenchPlan, timed: tuple[Variant, ...] = ()) -> list[InProcessSpec]:
    """The in-process runs, in order: each engine at each batch, ORT also with spinning off (as
    served; the served paths are compared with the faster of the two), the model file of each
    variant of ``timed`` (``BenchModels.timed_files``) like the served FP32 one (and its
    decode+preprocess+ORT pipeline on 500x375 JPEGs), and the FP32 decode+preprocess+ORT
    pipeline on each JPEG set."""
    specs = [InProcessSpec(engine, batch) for engine in plan.engines for batch in plan.batches]
    if "ort" in plan.engines:
        specs += [InProcessSpec("ort", batch, spinning=False) for batch in plan.batches]
    for variant in timed:
        specs += [
            InProcessSpec("ort", batch, variant.key, spinning=False) for batch in plan.batches
        ]
        specs.append(InProcessSpec("pipeline", variant=variant.key, images=TYPICAL))
    return specs + [InProcessSpec("pipeline", images=name) for name in (TYPICAL, LARGE)]


def _inprocess_spec(
    spec: InProcessSpec,
    plan: BenchPlan,
    repo: Path,
    files: dict[str, list[Path]],
    seconds: float,
    models: BenchModels,
) -> inprocess.EngineSpec:
    pipeline = spec.engine == "pipeline"
    return inprocess.EngineSpec(
        spec.engine,
        spec.batch,
        plan.threads,
        seconds,
        onnx_path=str(models.onnx_path(repo, spec.variant)),
        preprocess_path=str(models.preprocess_path(repo)) if pipeline else None,
        images=[str(path) for path in files[spec.images or TYPICAL]] if pipeline else [],
        allow_spinning=spec.spinning,
    )


def run_engines(
    plan: BenchPlan, repo: Path, files: dict[str, list[Path]], echo: Echo, models: BenchModels
) -> list[EngineRow]:
    """Every in-process run of ``engine_specs``, each in a fresh process."""
    rows = []
    for spec in engine_specs(plan, models.timed_files):
        echo(f"in-process: {spec.label} batch {spec.batch} ...")
        result = inprocess.measure(_inprocess_spec(spec, plan, repo, files, plan.seconds, models))
        row = EngineRow(
            spec, result.ms_per_image, result.images_per_s, result.peak_rss_mb, result.extra
        )
        echo(
            f"  {row.ms_per_image:.1f} ms/img, {row.images_per_s:.1f} img/s, "
            f"peak RSS {row.peak_rss_mb:.0f} MB"
        )
        rows.append(row)
    return rows


def served_specs(shared_memory: bool, swept: tuple[Variant, ...] = ()) -> list[ServedSpec]:
    """The served sweeps, in order. The ensembles first: the stack's RSS during them is then what
    serving JPEGs costs, not swollen by the buffers of the raw model's 8-image requests (which
    RSS never gives back). The raw model 1 image per request over HTTP and (with an admin key)
    through shared memory, then full batches, so each compares with in-process ORT at the same
    batch size. Last, the model clients call of each variant of ``swept``
    (``BenchModels.swept``) with 500x375 JPEGs, in that order."""
    specs = [ServedSpec("ensemble", images=TYPICAL), ServedSpec("ensemble", images=LARGE)]
    specs.append(ServedSpec("raw"))
    if shared_memory:
        specs.append(ServedSpec("raw", shared_memory=True))
    specs.append(ServedSpec("raw", FULL_BATCH, shared_memory=shared_memory))
    specs += [ServedSpec("ensemble", variant=variant.key, images=TYPICAL) for variant in swept]
    return specs


def sweep_for(
    spec: ServedSpec,
    url: str,
    settings: pa.SweepSettings,
    input_data: dict[str, Path],
    models: BenchModels | None = None,
) -> pa.Sweep:
    """The perf_analyzer run of ``spec`` against ``models``' model for it (default: the default
    classifier's): its batch and transport over the common settings; full batches at
    FULL_BATCH_CONCURRENCY, every variant's JPEG path up to at least
    FAST_ENSEMBLE_MIN_CONCURRENCY in flight."""
    settings = replace(
        settings,
        batch_size=spec.batch,
        shared_memory="system" if spec.shared_memory else "none",
    )
    if spec.batch > 1:
        settings = replace(settings, concurrency=FULL_BATCH_CONCURRENCY)
    elif spec.variant != FP32 and spec.images and not settings.request_rate:
        widened = extend_range(settings.concurrency, FAST_ENSEMBLE_MIN_CONCURRENCY)
        settings = replace(settings, concurrency=widened)
    data = input_data[spec.images] if spec.images else None
    model = (models or BenchModels(ClassifierNames.of())).served(spec)
    return pa.Sweep(model, url, settings, data)


def extend_range(span: str, end: int) -> str:
    """A perf_analyzer START:END:STEP range reaching at least ``end`` (start and step kept)."""
    parts = span.split(":")
    if len(parts) != 3:
        return span
    start, stop, step = (int(part) for part in parts)
    return f"{start}:{max(stop, end)}:{step}"


def _measure_sweep(
    analyzer: pa.PerfAnalyzer, spec: ServedSpec, sweep: pa.Sweep, pid: int | None, out: Path
) -> ServedSweep:
    images_before = pa.model_inference_count(sweep.url, sweep.model)
    client_before = _children_cpu_s()
    sampler = StackSampler(pid).start() if pid else None
    try:
        result = pa.run(analyzer, sweep, out / f"perf_{_slug(spec.label)}.csv", label=spec.label)
    finally:
        if sampler is not None:
            sampler.stop()
    images_after = pa.model_inference_count(sweep.url, sweep.model)
    cpu: dict[str, float] = {}
    if sampler is not None and sampler.cpu_seconds:
        cpu = {**sampler.cpu_seconds, "perf_analyzer": _children_cpu_s() - client_before}
    return ServedSweep(
        spec,
        tuple(result.rows),
        result.failed_requests,
        sampler.peak_total_mb if sampler else None,
        dict(sampler.peak_breakdown) if sampler else {},
        cpu_per_image(cpu, images_before, images_after),
    )


def _children_cpu_s() -> float:
    """CPU seconds of this process's finished children (perf_analyzer runs are waited for; the
    embedded server, still running, is not counted)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_per_image(
    cpu_seconds: dict[str, float], images_before: int | None, images_after: int | None
) -> dict[str, float]:
    """core-ms per image of each process kind; empty without both image counts or any image."""
    if images_before is None or images_after is None or images_after <= images_before:
        return {}
    images = images_after - images_before
    return {label: 1000.0 * seconds / images for label, seconds in cpu_seconds.items()}


def run_served(
    plan: BenchPlan,
    url: str,
    pid: int | None,
    settings: pa.SweepSettings,
    input_data: dict[str, Path],
    echo: Echo,
    models: BenchModels,
) -> list[ServedSweep]:
    """Every served sweep of ``served_specs`` for ``models``, in order, sampling the stack's RSS
    with ``pid``; ``input_data`` holds perf_analyzer's input file of each JPEG set."""
    analyzer = pa.locate()
    sweeps = []
    for spec in served_specs(bool(settings.admin_key), models.swept):
        sweep = sweep_for(spec, url, settings, input_data, models)
        echo(
            f"served: {spec.label}, {sweep.model} (perf_analyzer, concurrency "
            f"{sweep.settings.concurrency}) ..."
        )
        measured = _measure_sweep(analyzer, spec, sweep, pid, plan.out)
        top = measured.best
        echo(
            f"  best {top.throughput:.1f} img/s at concurrency {top.load:g}, "
            f"p50 at c=1 {measured.first_p50_ms:.1f} ms, failed {measured.failed_requests}"
        )
        sweeps.append(measured)
    return sweeps


def _input_data(plan: BenchPlan, files: dict[str, list[Path]]) -> dict[str, Path]:
    """perf_analyzer's input file of each JPEG set, written into ``plan.out``."""
    return {
        name: pa.write_input_data(
            [path.read_bytes() for path in paths],
            contract.ENSEMBLE_INPUT,
            plan.out / f"input_data_{name}.json",
        )
        for name, paths in files.items()
    }


def _slug(label: str) -> str:
    return label.replace(" ", "_")


def run_interleaved(
    plan: BenchPlan,
    repo: Path,
    url: str,
    settings: pa.SweepSettings,
    served: list[ServedSweep],
    echo: Echo,
    models: BenchModels,
) -> list[InterleavedPair]:
    """For batch 1 and the full batch: in-process ORT (served settings) and the fastest served raw
    path at its best concurrency, alternated INTERLEAVED_ROUNDS times."""
    analyzer = pa.locate()
    pairs = []
    for batch in BATCHES:
        fastest = fastest_raw(served, batch)
        if fastest is None:
            continue
        spec, load = fastest.spec, fastest.best.load
        sweep = sweep_for(spec, url, settings, {}, models)
        sweep = replace(sweep, settings=replace(sweep.settings, concurrency=f"{load:g}"))
        engine = _inprocess_spec(
            InProcessSpec("ort", batch, FP32, spinning=False),
            plan,
            repo,
            {},
            INTERLEAVED_SECONDS,
            models,
        )
        in_process, served_rates = [], []
        for round_ in range(1, INTERLEAVED_ROUNDS + 1):
            echo(
                f"interleaved {round_}/{INTERLEAVED_ROUNDS}: in-process ORT batch {batch}, "
                f"then served {spec.label} at concurrency {load:g} ..."
            )
            engine_rate = inprocess.measure(engine).images_per_s
            csv_path = plan.out / f"interleaved_{_slug(spec.label)}_{round_}.csv"
            served_rate = served_round(analyzer, sweep, csv_path, spec.label)
            if served_rate is None:
                echo(f"  round {round_} dropped: perf_analyzer found no stable window")
                continue
            in_process.append(engine_rate)
            served_rates.append(served_rate)
        if not served_rates:
            echo(f"  batch {batch}: no round measured; no interleaved pair")
            continue
        pairs.append(InterleavedPair(spec, load, tuple(in_process), tuple(served_rates)))
        echo(f"  batch {batch}: in-process {in_process} vs served {served_rates} img/s")
    return pairs


def served_round(
    analyzer: pa.PerfAnalyzer, sweep: pa.Sweep, csv_path: Path, label: str
) -> float | None:
    """The best served images/s of one interleaved round; None when perf_analyzer found no
    stable window (a busy host), so that one noisy round drops only itself, not a bench of many
    minutes. Any other failure of perf_analyzer raises."""
    try:
        result = pa.run(analyzer, sweep, csv_path, label=label)
    except pa.PerfAnalyzerError as error:
        if pa.UNSTABLE_MESSAGE not in str(error):
            raise
        return None
    return max(row.throughput for row in result.rows)


@contextmanager
def _server(plan: BenchPlan, repo: Path) -> Iterator[tuple[str, int | None, str | None]]:
    """(url, server pid, admin key) of the server to time: ``plan.url``, or one started here."""
    if plan.url:
        yield plan.url, plan.server_pid, plan.settings.admin_key
        return
    options = harness.local_options(repo, exit_timeout_s=10, models=served_models(repo))
    with harness.local_server(options, plan.out / "tritonserver.log") as server:
        yield server.url, server.pid, options.effective_admin_key


def _image_files(plan: BenchPlan) -> dict[str, list[Path]]:
    cache = plan.out.parent / "images"
    return {
        TYPICAL: image_sets.jpeg_set(cache / TYPICAL, image_sets.TYPICAL_SIZE, plan.typical_count),
        LARGE: image_sets.jpeg_set(
            cache / LARGE, image_sets.LARGE_SIZE, plan.large_count, seed=100
        ),
    }


def run_bench(plan: BenchPlan, echo: Echo = print) -> BenchResults:
    """Measure everything, write ``bench.json`` and the report, and return the results."""
    check_plan(plan)
    plan.out.mkdir(parents=True, exist_ok=True)
    environment = _environment(plan)
    repo = plan.repo or _export_repository(plan.out / "model_repository", echo, plan.name)
    files = _image_files(plan)
    if plan.openvino and not plan.url:
        add_openvino_variant(repo, plan.openvino, files[TYPICAL])
    models = bench_models(plan, repo)
    environment["classifier"] = plan.name
    echo(f"timing classifier {plan.name}: {', '.join(models.listing())}")
    if variants.OPENVINO in models.present and not models.openvino:
        echo(
            f"note: the OpenVINO comparison times the {contract.DEFAULT_CLASSIFIER} classifier's "
            f"variant only, not {plan.name}'s"
        )
    engines = run_engines(plan, repo, files, echo, models)
    side_by_side: list[EngineRow] = []
    if models.openvino:
        precision = openvino_precision(repo, models.names)
        environment.update(openvino_environment(), openvino_precision=precision)
        side_by_side = run_side_by_side(plan, repo, echo, models)
    back_to_back: list[BackToBack] = []
    with _server(plan, repo) as (url, pid, admin_key):
        if not admin_key:
            echo(
                "no admin key (--admin-key-file or $RESNET18_TRITON_ADMIN_KEY): "
                "the raw model is timed over HTTP only (no shared memory)"
            )
        settings = replace(plan.settings, admin_key=admin_key)
        input_data = _input_data(plan, files)
        served = run_served(plan, url, pid, settings, input_data, echo, models)
        interleaved = run_interleaved(plan, repo, url, settings, served, echo, models)
        if models.openvino:
            back_to_back = run_back_to_back(plan, url, input_data, echo, models)
    results = BenchResults(
        tuple(engines),
        tuple(served),
        tuple(interleaved),
        environment,
        tuple(side_by_side),
        tuple(back_to_back),
    )
    (plan.out / "bench.json").write_text(json.dumps(results_json(results), indent=2, default=str))
    write_report(plan, results, repo)
    return results


def add_openvino_variant(repo: Path, precision: str, typical: list[Path]) -> None:
    """Build the OpenVINO variant at ``precision`` into ``repo`` unless it holds one.

    The fidelity gate is forced: a random-weight export has near-flat logits, and this variant
    is for measuring speed (fidelity is measured on the fitted digits model in the tests).
    """
    from resnet18_triton.export.openvino_variant import build_openvino_variant
    from resnet18_triton.export.quantize import load_preprocess_module, preprocess_files

    if variants.holds(repo, variants.OPENVINO):
        return
    held_out = preprocess_files(typical, load_preprocess_module(repo))
    report = build_openvino_variant(repo, precision, held_out, force=True)
    print(f"OpenVINO {precision} variant written; fidelity on the bench JPEGs:\n{report.table()}")


def openvino_config(
    repo: Path, names: ClassifierNames, precision: str | None = None
) -> dict[str, Any]:
    """The OpenVINO variant's classifier config as JSON, as served; with ``precision`` "f32" the
    same config at f32 (its precision parameters replaced by OpenVINO's f32 hint)."""
    from resnet18_triton.repository.configs.parser import as_json, read_config

    config = as_json(read_config(repo, variants.OPENVINO.classifier(names)))
    if precision == "f32":
        parameters = config.setdefault("parameters", {})
        for key in ("HINT_BF16", contract.PRECISION_PARAMETER):
            parameters.pop(key, None)
        parameters["INFERENCE_PRECISION_HINT"] = {"string_value": "f32"}
    return config


def openvino_precision(repo: Path, names: ClassifierNames) -> str:
    """The precision the OpenVINO variant of ``names`` in ``repo`` was built with."""
    parameters: dict[str, Any] = openvino_config(repo, names).get("parameters", {})
    return str(parameters.get(contract.PRECISION_PARAMETER, {}).get("string_value", "unknown"))


def openvino_environment() -> dict[str, object]:
    """The OpenVINO version and the CPU's BF16/INT8 flags (what decides its precisions)."""
    import openvino

    from resnet18_triton.cpu_flags import BF16_FLAGS, INT8_FLAGS, cpu_flags, present

    flags = ", ".join(present(BF16_FLAGS + INT8_FLAGS, cpu_flags())) or "none"
    return {"openvino": openvino.__version__, "cpu_flags": flags}


def side_by_side_specs(plan: BenchPlan, precision: str) -> list[InProcessSpec]:
    """ORT FP32 (spinning off, as served) and the OpenVINO variant at ``precision`` and at f32,
    at each batch of ``plan``: the engines ``run_side_by_side`` alternates, batch by batch."""
    precisions = dict.fromkeys((precision, "f32"))
    return [
        spec
        for batch in plan.batches
        for spec in (
            InProcessSpec("ort", batch, spinning=False),
            *(
                InProcessSpec("openvino", batch, variants.OPENVINO.key, precision=value)
                for value in precisions
            ),
        )
    ]


def run_side_by_side(
    plan: BenchPlan, repo: Path, echo: Echo, models: BenchModels
) -> list[EngineRow]:
    """The engines of ``side_by_side_specs``, those of one batch alternated call by call in one
    fresh process, each for half of ``plan.seconds``."""
    rows = []
    specs = side_by_side_specs(plan, openvino_precision(repo, models.names))
    for batch in plan.batches:
        group = [spec for spec in specs if spec.batch == batch]
        echo(f"in-process, alternated: {', '.join(spec.label for spec in group)} batch {batch} ...")
        engines = [
            replace(
                _inprocess_spec(spec, plan, repo, {}, plan.seconds / 2, models),
                min_iterations=SIDE_BY_SIDE_MIN_ITERATIONS,
                openvino_config=(
                    openvino_config(repo, models.names, spec.precision)
                    if spec.engine == "openvino"
                    else None
                ),
            )
            for spec in group
        ]
        for spec, result in zip(group, inprocess.measure_interleaved(engines), strict=True):
            row = EngineRow(spec, result.ms_per_image, result.images_per_s, result.peak_rss_mb)
            echo(f"  {spec.label}: {row.ms_per_image:.1f} ms/img, {row.images_per_s:.1f} img/s")
            rows.append(row)
    return rows


def run_back_to_back(
    plan: BenchPlan, url: str, input_data: dict[str, Path], echo: Echo, models: BenchModels
) -> list[BackToBack]:
    """The FP32 ensemble then the OpenVINO variant's ensemble (500x375 JPEGs), seconds apart at
    BACK_TO_BACK_CONCURRENCY, BACK_TO_BACK_ROUNDS times."""
    analyzer = pa.locate()
    first = ServedSpec("ensemble", images=TYPICAL)
    second = ServedSpec("ensemble", variant=variants.OPENVINO.key, images=TYPICAL)
    settings = pa.SweepSettings(
        concurrency=str(BACK_TO_BACK_CONCURRENCY),
        measurement_interval_ms=BACK_TO_BACK_INTERVAL_MS,
    )
    rates: dict[ServedSpec, list[float]] = {first: [], second: []}
    for round_ in range(1, BACK_TO_BACK_ROUNDS + 1):
        for spec, measured in rates.items():
            sweep = pa.Sweep(models.served(spec), url, settings, input_data[TYPICAL])
            csv_path = plan.out / f"back_to_back_{_slug(spec.label)}_{round_}.csv"
            measured.append(pa.run(analyzer, sweep, csv_path, label=spec.label).rows[0].throughput)
        echo(
            f"back to back {round_}/{BACK_TO_BACK_ROUNDS}: {first.label} {rates[first][-1]:.1f}, "
            f"{second.label} {rates[second][-1]:.1f} img/s -> "
            f"{rates[second][-1] / rates[first][-1]:.2f}x"
        )
    pair = BackToBack(
        first, second, BACK_TO_BACK_CONCURRENCY, tuple(rates[first]), tuple(rates[second])
    )
    return [pair]


def results_json(results: BenchResults) -> dict[str, object]:
    """``results`` as JSON-ready data, each measurement with its label."""
    document = asdict(results)
    labels = {
        "engines": [row.label for row in results.engines],
        "served": [sweep.label for sweep in results.served],
        "interleaved": [pair.served.label for pair in results.interleaved],
        "side_by_side": [row.label for row in results.side_by_side],
        "back_to_back": [
            f"{pair.second.label} / {pair.first.label}" for pair in results.back_to_back
        ],
    }
    for key, names in labels.items():
        for entry, name in zip(document[key], names, strict=True):
            entry["label"] = name
    return document


def ratios(results: BenchResults) -> list[RatioValue]:
    """The report's ratios (``perf.ratios.RATIOS``) over ``results``."""
    return evaluate(RATIOS, results)


def _engine_row(row: EngineRow) -> list[str]:
    note = ", ".join(f"{k.replace('_ms_median', '')} {v:.1f} ms" for k, v in row.extra.items())
    return [
        f"in-process {row.label}",
        str(row.spec.batch),
        f"{row.ms_per_image:.1f}",
        f"{row.images_per_s:.1f}",
        f"{row.peak_rss_mb:.0f}",
        note,
    ]


def _served_row(sweep: ServedSweep) -> list[str]:
    top, first = sweep.best, sweep.rows[0]
    rss = f"{sweep.stack_rss_mb:.0f} (whole stack)" if sweep.stack_rss_mb else "-"
    return [
        f"served {sweep.label}",
        f"{sweep.spec.batch}/request, c={top.load:g} (best)",
        f"{1000 / top.throughput:.1f}",
        f"{top.throughput:.1f}",
        rss,
        f"p50 {first.p50_ms:.1f} / p99 {first.p99_ms:.1f} ms at c=1; "
        f"p50 {top.p50_ms:.1f} / p99 {top.p99_ms:.1f} ms at c={top.load:g}; "
        f"failed {sweep.failed_requests}",
    ]


def _ratio_row(value: RatioValue) -> list[str]:
    target = value.ratio.target
    status = "-" if value.met is None else ("met" if value.met else "NOT met")
    return [value.ratio.name, f"{value.value:.3f}", str(target or "-"), status, value.detail]


def cpu_table(served: list[ServedSweep], cores: int) -> str:
    """core-ms per image by process kind for each sampled sweep, with the total and the img/s
    ``cores`` cores would allow if they did nothing else."""
    sampled = [sweep for sweep in served if sweep.cpu_ms_per_image]
    kinds = sorted({kind for sweep in sampled for kind in sweep.cpu_ms_per_image})
    rows = []
    for sweep in sampled:
        total = sum(sweep.cpu_ms_per_image.values())
        cells = [f"{sweep.cpu_ms_per_image.get(kind, 0.0):.2f}" for kind in kinds]
        rows.append([sweep.label, *cells, f"{total:.2f}", f"{cores * 1000 / total:.0f}"])
    headers = ["path", *kinds, "total", f"img/s bound on {cores} cores"]
    return markdown_table(headers, rows)


def _cpu_section(served: list[ServedSweep], cores: int) -> list[str]:
    if not any(sweep.cpu_ms_per_image for sweep in served):
        return []
    return [
        "## CPU per image, by process (core-ms/img over each whole sweep)",
        "",
        "User + system time of each process of the stack (a model's instances summed) and of "
        "perf_analyzer, divided by the images the path served in that time. The bound is "
        "cores x 1000 / total: what the machine could serve at 100 % CPU with this split.",
        "",
        cpu_table(served, cores),
        "",
    ]


def _on_openvino(spec: ServedSpec) -> bool:
    return spec.variant != FP32 and variants.by_key(spec.variant).engine == variants.OPENVINO.engine


def served_vs_side_by_side(results: BenchResults) -> list[tuple[ServedSweep, EngineRow]]:
    """(500x375 JPEG path, its engine's fastest side-by-side row): the FP32 ensemble with ORT,
    each OpenVINO path with OpenVINO at the variant's precision; paths without a row are left
    out."""
    precision = results.environment.get("openvino_precision")
    found = []
    for sweep in results.served:
        spec = sweep.spec
        if not sweep.rows or spec.path != "ensemble" or spec.images != TYPICAL:
            continue
        if spec.variant == FP32:
            rows = [row for row in results.side_by_side if row.spec.engine == "ort"]
        elif _on_openvino(spec):
            rows = [
                row
                for row in results.side_by_side
                if row.spec.engine == "openvino" and row.spec.precision == precision
            ]
        else:
            continue
        if rows:
            found.append((sweep, max(rows, key=lambda row: row.images_per_s)))
    return found


def comparison_section(results: BenchResults) -> list[str]:
    """The OpenVINO comparison's Markdown (``side_by_side``, ``back_to_back``, and each OpenVINO
    path's sweep against the FP32 ensemble's); none when it did not run."""
    if not results.side_by_side and not results.back_to_back:
        return []
    env = results.environment
    lines = [
        "## OpenVINO variant against ONNX Runtime FP32",
        "",
        f"OpenVINO {env.get('openvino')}, variant built at {env.get('openvino_precision')}; CPU "
        f"flags: {env.get('cpu_flags')}. In-process, the engines of one batch ran alternated call "
        "by call in one process, so their ratios hold on a busy machine.",
        "",
        markdown_table(
            ["engine (in-process, alternated)", "batch", "ms/img (median)", "img/s"],
            [
                [
                    row.label,
                    str(row.spec.batch),
                    f"{row.ms_per_image:.1f}",
                    f"{row.images_per_s:.1f}",
                ]
                for row in results.side_by_side
            ],
        ),
        "",
    ]
    versus = served_vs_side_by_side(results)
    if versus:
        lines += [
            markdown_table(
                [
                    "served / in-process, same engine and precision",
                    "served best img/s",
                    "in-process best img/s (any batch)",
                    "ratio",
                ],
                [
                    [
                        f"{sweep.label} / {row.label}",
                        f"{sweep.best_images_per_s:.1f}",
                        f"{row.images_per_s:.1f}",
                        f"{sweep.best_images_per_s / row.images_per_s:.2f}x",
                    ]
                    for sweep, row in versus
                ],
            ),
            "",
        ]
    fp32 = results.sweep(ServedSpec("ensemble", images=TYPICAL))
    for sweep in results.served:
        if fp32 and sweep.rows and sweep.spec.images == TYPICAL and _on_openvino(sweep.spec):
            ratio = sweep.best_images_per_s / fp32.best_images_per_s
            lines += [
                f"**{sweep.label} / {fp32.label}: {ratio:.2f}x** (best img/s, same server)",
                "",
            ]
    for pair in results.back_to_back:
        ratios = pair.ratios
        lines += [
            f"Back to back at concurrency {pair.concurrency}, {pair.second.label} / "
            f"{pair.first.label}: median ratio **{statistics.median(ratios):.2f}x** (range "
            f"{min(ratios):.2f}-{max(ratios):.2f}x, {len(ratios)} rounds)",
            "",
        ]
    return lines


def write_report(plan: BenchPlan, results: BenchResults, repo: Path) -> Path:
    """``bench.md`` (table, ratios, sweeps, the OpenVINO comparison when it ran), ``served.csv``
    and ``served.png`` in ``plan.out``."""
    env = results.environment
    served = [sweep for sweep in results.served if sweep.rows]
    table = markdown_table(
        ["engine / path", "batch", "ms/img", "img/s", "peak RSS MB", "notes"],
        [_engine_row(row) for row in results.engines] + [_served_row(sweep) for sweep in served],
    )
    ratio_table = markdown_table(
        ["ratio", "value", "target", "status", "figures"],
        [_ratio_row(value) for value in ratios(results)],
    )
    all_rows = [replace(row, label=sweep.label) for sweep in served for row in sweep.rows]
    write_rows_csv(all_rows, plan.out / "served.csv")
    plot_throughput_latency(all_rows, plan.out / "served.png", "served paths (perf_analyzer)")
    breakdown = "; ".join(
        f"{sweep.label}: " + ", ".join(f"{k} {v:.0f} MB" for k, v in sweep.stack_breakdown.items())
        for sweep in served
        if sweep.stack_breakdown
    )
    text = "\n".join(
        [
            "# ResNet-18 benchmark: in-process engines vs the served paths",
            "",
            f"Measured {env.get('date')} on {env.get('cores')} cores ({env.get('cpu')}), "
            f"load average at start {env.get('load_average_at_start')}, "
            f"{plan.threads} threads per engine, classifier {plan.name} of repository {repo}. "
            "ms/img for served paths = 1000 / img/s at the best concurrency.",
            "",
            table,
            "",
            "## Ratios",
            "",
            "The raw-model target is carried by the interleaved rows (same minutes); the "
            "sequential rows are context.",
            "",
            ratio_table,
            "",
            f"Stack RSS at its peak: {breakdown or '-'}",
            "",
            *_cpu_section(served, int(str(env.get("cores") or 1))),
            "## Served sweeps",
            "",
            sweep_table(all_rows),
            "",
            "![served](served.png)",
            "",
            *comparison_section(results),
        ]
    )
    path = plan.out / "bench.md"
    path.write_text(text)
    return path
