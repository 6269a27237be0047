"""``bench``: in-process engines and the served paths, measured in one run on the same cores.

Order: images, then every in-process engine in its own fresh process (nothing else of ours runs
meanwhile), then the server (started here unless a URL is given) with perf_analyzer sweeps of
the ensemble (500x375, then 12-MP JPEGs) and of the raw model (1 image per request over HTTP and
through shared memory, 8 per request through shared memory) while the stack's RSS is sampled,
then in-process ORT and the fastest raw path alternated a few times (the raw target is a few
percent; drift between phases is not). The report lists the table, the ratios and the targets.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from resnet18_triton import contract
from resnet18_triton.layout import (
    INT8_ENSEMBLE_MODEL,
    INT8_MODEL,
    has_int8,
    onnx_model_path,
    served_models,
)
from resnet18_triton.perf import images as image_sets
from resnet18_triton.perf import inprocess
from resnet18_triton.perf import perf_analyzer as pa
from resnet18_triton.perf.report import (
    best,
    markdown_table,
    plot_throughput_latency,
    sweep_table,
    write_rows_csv,
)
from resnet18_triton.perf.stack import StackSampler

# The targets.
SERVED_ENSEMBLE_VS_ORT = 0.95
SERVED_RAW_VS_ORT = 0.98
ENSEMBLE_P50_SLACK_MS = 3.0
LARGE_VS_TYPICAL = 0.6
STACK_RSS_VS_ORT = 1.5

# Full-batch requests for the raw model: the configs' max_batch_size, at 1 and 2 in flight.
FULL_BATCH = 8
FULL_BATCH_CONCURRENCY = "1:2:1"
# The raw-model target compares two measurements a few percent apart; minutes of drift on a
# shared machine between the in-process phase and the served phase can exceed that. So they are
# also alternated (in-process, served, in-process, served, ...) and compared by their medians.
INTERLEAVED_ROUNDS = 3
INTERLEAVED_SECONDS = 5.0


@dataclass
class BenchPlan:
    out: Path
    repo: Path | None = None
    url: str | None = None
    server_pid: int | None = None  # with --url: the server's pid, for the stack RSS
    # With --url: the server's admin key, so the raw model can also be timed with tensors in
    # shared memory (registering a region is a restricted API). Our own server gets one here.
    admin_key: str | None = None
    threads: int = 2
    seconds: float = 10.0
    typical_count: int = 16
    large_count: int = 4
    concurrency: str = "1:4:1"
    measurement_interval_ms: int = 5000
    stability_percentage: int = 50
    max_trials: int = 10
    engines: tuple[str, ...] = ("eager", "torchscript", "ort")
    batches: tuple[int, ...] = (1, 8)
    # Also sweep the INT8 ensemble (set when the repository holds one, see `quantize`).
    int8: bool = False


@dataclass
class BenchResults:
    engines: list[dict] = field(default_factory=list)
    served: dict = field(default_factory=dict)  # label -> list of row dicts
    failed_requests: dict = field(default_factory=dict)
    batch_sizes: dict = field(default_factory=dict)  # sweep label -> images per request
    # batch size -> {"label", "concurrency", "in_process": [img/s...], "served": [img/s...]}
    interleaved: dict = field(default_factory=dict)
    stack_rss_mb: dict = field(default_factory=dict)  # sweep label -> peak RSS of the stack
    stack_breakdown: dict = field(default_factory=dict)  # sweep label -> {process: MB}
    environment: dict = field(default_factory=dict)


def _export_repository(repo: Path, echo) -> Path:
    from resnet18_triton.export.model_configs import ServingSettings
    from resnet18_triton.export.onnx_export import export_onnx
    from resnet18_triton.export.repository import fill_repository
    from resnet18_triton.export.verify import verify_onnx
    from resnet18_triton.export.weights import imagenet_categories, load_resnet18

    echo(f"exporting a model repository (random weights, seed 0, default settings) to {repo}")
    model, provenance = load_resnet18("random", seed=0)
    onnx_path = export_onnx(model, onnx_model_path(repo), provenance=provenance)
    verify_onnx(model, onnx_path)
    fill_repository(
        repo, ServingSettings.from_core_budget(), provenance.to_json(), imagenet_categories()
    )
    return repo


def _environment(plan: BenchPlan) -> dict:
    import onnxruntime

    load = os.getloadavg()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "load_average_at_start": [round(value, 2) for value in load],
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "threads": plan.threads,
    }


def run_engines(
    plan: BenchPlan, repo: Path, typical: list[Path], large: list[Path], echo
) -> list[dict]:
    onnx = str(onnx_model_path(repo))
    preprocess = str(repo / contract.PREPROCESS_MODEL / "1" / "model.py")
    specs = [
        inprocess.EngineSpec(engine, batch, plan.threads, plan.seconds, onnx_path=onnx)
        for engine in plan.engines
        for batch in plan.batches
    ]
    if "ort" in plan.engines:
        # The served model runs with spinning off; time in-process ORT both ways and compare the
        # served paths with the faster of the two.
        specs += [
            inprocess.EngineSpec(
                "ort", batch, plan.threads, plan.seconds, onnx_path=onnx, allow_spinning=False
            )
            for batch in plan.batches
        ]
    int8 = onnx_model_path(repo, INT8_MODEL)
    if int8.is_file():
        # The INT8 variant, timed like the served FP32 model (spinning off), side by side.
        specs += [
            inprocess.EngineSpec(
                "ort", batch, plan.threads, plan.seconds, onnx_path=str(int8), allow_spinning=False
            )
            for batch in plan.batches
        ]
    for label, files in (("500x375", typical), ("12MP", large)):
        specs.append(
            inprocess.EngineSpec(
                "pipeline",
                1,
                plan.threads,
                plan.seconds,
                onnx_path=onnx,
                preprocess_path=preprocess,
                images=[str(path) for path in files],
            )
        )
    results = []
    for spec in specs:
        echo(f"in-process: {spec.engine} batch {spec.batch} ...")
        result = asdict(inprocess.measure(spec))
        if spec.engine == "pipeline":
            result["engine"] = f"pipeline {'12MP' if 'x3000' in spec.images[0] else '500x375'}"
        elif spec.engine == "ort" and spec.onnx_path == str(int8):
            result["engine"] = "ort-int8-nospin"
        elif spec.engine == "ort" and not spec.allow_spinning:
            result["engine"] = "ort-nospin"
        echo(
            f"  {result['ms_per_image']:.1f} ms/img, {result['images_per_s']:.1f} img/s, "
            f"peak RSS {result['peak_rss_mb']:.0f} MB"
        )
        results.append(result)
    return results


def raw_sweeps(plan: BenchPlan, common: dict, admin_key: str | None) -> list[tuple[str, pa.Sweep]]:
    """The raw model three ways: 1 image per request over HTTP, the same with the tensors in
    system shared memory, and full batches (8 images per request), so each compares with the
    in-process engine at the same batch size. Without an admin key, no shared memory."""
    model = contract.ONNX_MODEL
    sweeps = [("raw", pa.Sweep(model=model, **common))]
    transport = {}
    if admin_key:
        transport = dict(shared_memory="system", headers=pa.admin_headers(admin_key))
        sweeps.append(("raw shm", pa.Sweep(model=model, **transport, **common)))
    full = dict(common, concurrency=FULL_BATCH_CONCURRENCY)
    label = f"raw b{FULL_BATCH}" + (" shm" if transport else "")
    sweeps.append((label, pa.Sweep(model=model, batch_size=FULL_BATCH, **transport, **full)))
    return sweeps


def run_served(
    plan: BenchPlan,
    url: str,
    pid: int | None,
    typical: list[Path],
    large: list[Path],
    results: BenchResults,
    echo,
    admin_key: str | None = None,
) -> dict[str, pa.Sweep]:
    """Every served sweep, in order; returns them by label (for the interleaved comparison)."""
    analyzer = pa.locate()
    common = dict(
        url=url,
        concurrency=plan.concurrency,
        measurement_interval_ms=plan.measurement_interval_ms,
        stability_percentage=plan.stability_percentage,
        max_trials=plan.max_trials,
    )
    typical_data = pa.write_input_data(
        [p.read_bytes() for p in typical],
        contract.ENSEMBLE_INPUT,
        plan.out / "input_data_500x375.json",
    )
    large_data = pa.write_input_data(
        [p.read_bytes() for p in large], contract.ENSEMBLE_INPUT, plan.out / "input_data_12MP.json"
    )
    # The ensembles first: the stack's RSS during them is then what serving JPEGs costs, not
    # swollen by the buffers of the raw model's 8-image requests (which RSS never gives back).
    sweeps = [
        (
            "ensemble 500x375",
            pa.Sweep(model=contract.ENSEMBLE_MODEL, input_data=typical_data, **common),
        ),
        ("ensemble 12MP", pa.Sweep(model=contract.ENSEMBLE_MODEL, input_data=large_data, **common)),
        *raw_sweeps(plan, common, admin_key),
    ]
    if plan.int8:
        sweeps.append(
            (
                "int8 ensemble 500x375",
                pa.Sweep(model=INT8_ENSEMBLE_MODEL, input_data=typical_data, **common),
            )
        )
    for label, sweep in sweeps:
        echo(f"served: {label} (perf_analyzer, concurrency {sweep.concurrency}) ...")
        sampler = StackSampler(pid).start() if pid else None
        try:
            result = pa.run(analyzer, sweep, plan.out / f"perf_{_slug(label)}.csv", label=label)
        finally:
            if sampler is not None:
                sampler.stop()
                results.stack_rss_mb[label] = sampler.peak_total_mb
                results.stack_breakdown[label] = sampler.peak_breakdown
        results.served[label] = [row.as_dict() for row in result.rows]
        results.batch_sizes[label] = sweep.batch_size
        results.failed_requests[label] = result.failed_requests
        top = best(result.rows)
        echo(
            f"  best {top.throughput:.1f} img/s at concurrency {top.load:g}, "
            f"p50 at c=1 {result.rows[0].p50_ms:.1f} ms, failed {result.failed_requests}"
        )
    return dict(sweeps)


def _slug(label: str) -> str:
    return label.replace(" ", "_")


def _raw_paths(results: BenchResults) -> dict[str, list]:
    """The raw model's sweeps that produced rows: label -> rows."""
    return {
        label: rows
        for label in results.served
        if label.startswith("raw") and (rows := _rows(results, label))
    }


def _fastest_raw_path(results: BenchResults, batch: int | None = None):
    """(label, best row) of the fastest raw sweep, of any batch size or of ``batch`` images per
    request; None when there is none."""
    return max(
        (
            (label, best(rows))
            for label, rows in _raw_paths(results).items()
            if batch is None or results.batch_sizes.get(label, 1) == batch
        ),
        key=lambda item: item[1].throughput,
        default=None,
    )


def run_interleaved_raw(
    plan: BenchPlan, repo: Path, sweeps: dict[str, pa.Sweep], results: BenchResults, echo
) -> None:
    """For batch 1 and the full batch: in-process ORT (served settings) and the fastest served raw
    path at its best concurrency, alternated INTERLEAVED_ROUNDS times."""
    analyzer = pa.locate()
    onnx = str(onnx_model_path(repo))
    for batch in (1, FULL_BATCH):
        fastest = _fastest_raw_path(results, batch)
        if fastest is None:
            continue
        label, top = fastest
        sweep = replace(sweeps[label], concurrency=f"{top.load:g}")
        entry = {"label": label, "concurrency": top.load, "in_process": [], "served": []}
        for round_ in range(1, INTERLEAVED_ROUNDS + 1):
            echo(
                f"interleaved {round_}/{INTERLEAVED_ROUNDS}: in-process ORT batch {batch}, "
                f"then served {label} at concurrency {top.load:g} ..."
            )
            engine = inprocess.measure(
                inprocess.EngineSpec(
                    "ort",
                    batch,
                    plan.threads,
                    INTERLEAVED_SECONDS,
                    onnx_path=onnx,
                    allow_spinning=False,
                )
            )
            entry["in_process"].append(engine.images_per_s)
            csv_path = plan.out / f"interleaved_{_slug(label)}_{round_}.csv"
            served = pa.run(analyzer, sweep, csv_path, label=label)
            entry["served"].append(best(served.rows).throughput)
        results.interleaved[batch] = entry
        echo(f"  batch {batch}: in-process {entry['in_process']} vs served {entry['served']} img/s")


def run_bench(plan: BenchPlan, echo=print) -> BenchResults:
    plan.out.mkdir(parents=True, exist_ok=True)
    results = BenchResults(environment=_environment(plan))
    repo = plan.repo or _export_repository(plan.out / "model_repository", echo)
    cache = plan.out.parent / "images"
    typical = image_sets.jpeg_set(cache / "500x375", image_sets.TYPICAL_SIZE, plan.typical_count)
    large = image_sets.jpeg_set(cache / "12MP", image_sets.LARGE_SIZE, plan.large_count, seed=100)
    results.engines = run_engines(plan, repo, typical, large, echo)
    plan.int8 = plan.int8 or has_int8(repo)
    if plan.url:
        if not plan.admin_key:
            echo("no --admin-key: the raw model is timed over HTTP only (no shared memory)")
        sweeps = run_served(
            plan, plan.url, plan.server_pid, typical, large, results, echo, plan.admin_key
        )
        run_interleaved_raw(plan, repo, sweeps, results, echo)
    else:
        from resnet18_triton.server.embedded import EmbeddedServer, ServerOptions, free_port

        options = ServerOptions(
            repository=repo.resolve(),
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            exit_timeout_s=10,
            models=served_models(repo),
        )
        echo(f"starting the embedded server on {options.http_url} ...")
        with (
            open(plan.out / "tritonserver.log", "w") as log,
            EmbeddedServer(options, log_stream=log) as server,
        ):
            sweeps = run_served(
                plan,
                server.url,
                server.process.pid,
                typical,
                large,
                results,
                echo,
                options.effective_admin_key,
            )
            run_interleaved_raw(plan, repo, sweeps, results, echo)
    (plan.out / "bench.json").write_text(json.dumps(asdict(results), indent=2, default=str))
    write_report(plan, results, repo)
    return results


def _engine(results: BenchResults, engine: str, batch: int = 1) -> dict | None:
    for entry in results.engines:
        if entry["engine"] == engine and entry["batch"] == batch:
            return entry
    return None


def _rows(results: BenchResults, label: str):
    from resnet18_triton.perf.perf_analyzer import Row

    return [Row(**row) for row in results.served.get(label, [])]


def ratios(results: BenchResults) -> list[tuple[str, float | None, str, bool | None, str]]:
    """(name, value, target text, met, detail) for each ratio of the report."""
    ort1 = _engine(results, "ort", 1)
    ort_all = [e for e in results.engines if e["engine"] in ("ort", "ort-nospin")]
    eager1 = _engine(results, "eager", 1)
    ts1 = _engine(results, "torchscript", 1)
    pipe = _engine(results, "pipeline 500x375", 1)
    ort_best = max((e["images_per_s"] for e in ort_all), default=None)
    raw = _rows(results, "raw")
    ens = _rows(results, "ensemble 500x375")
    large = _rows(results, "ensemble 12MP")
    out: list = []

    def add(name, numerator, denominator, target, op, detail):
        if numerator is None or denominator in (None, 0):
            out.append((name, None, target, None, detail))
            return
        value = numerator / denominator
        met = None if op is None else (value >= op if isinstance(op, float) else op(value))
        out.append((name, value, target, met, detail))

    if ens and ort_best:
        add(
            "served ensemble (500x375 JPEG) / in-process ORT FP32 (tensors, best variant), best img/s",
            best(ens).throughput,
            ort_best,
            f">= {SERVED_ENSEMBLE_VS_ORT}",
            SERVED_ENSEMBLE_VS_ORT,
            f"{best(ens).throughput:.1f} vs {ort_best:.1f} img/s",
        )
    raw_best = _fastest_raw_path(results)
    for batch, entry in sorted(results.interleaved.items()):
        served, local = statistics.median(entry["served"]), statistics.median(entry["in_process"])
        add(
            f"served raw model / in-process ORT FP32 (spinning off, as served), batch {batch}, "
            f"interleaved x{len(entry['served'])}, medians",
            served,
            local,
            f">= {SERVED_RAW_VS_ORT}",
            SERVED_RAW_VS_ORT,
            f"{served:.1f} img/s ({entry['label']}, c={entry['concurrency']:g}) vs {local:.1f} img/s; "
            f"served {_figures(entry['served'])}, in-process {_figures(entry['in_process'])}",
        )
    if raw_best and ort_best:
        label, top = raw_best
        ort_top = max(ort_all, key=lambda e: e["images_per_s"])
        # With the interleaved rows present, they carry the target (same-minute comparison).
        target = "-" if results.interleaved else f">= {SERVED_RAW_VS_ORT}"
        add(
            "served raw model, best path / in-process ORT FP32, best variant, best img/s "
            "(sequential phases)",
            top.throughput,
            ort_best,
            target,
            None if results.interleaved else SERVED_RAW_VS_ORT,
            f"{top.throughput:.1f} img/s ({label}, c={top.load:g}) vs {ort_best:.1f} img/s "
            f"({ort_top['engine']} batch {ort_top['batch']})",
        )
    for batch in (1, FULL_BATCH):
        fastest, engine = _fastest_raw_path(results, batch), _engine(results, "ort-nospin", batch)
        if fastest and engine:
            top = fastest[1]
            add(
                f"served raw model / in-process ORT FP32 (spinning off, as served), batch {batch}, "
                "best img/s (sequential phases)",
                top.throughput,
                engine["images_per_s"],
                "-",
                None,
                f"{top.throughput:.1f} vs {engine['images_per_s']:.1f} img/s",
            )
    if ens and pipe:
        p50 = ens[0].p50_ms
        limit = pipe["ms_per_image"] + ENSEMBLE_P50_SLACK_MS
        out.append(
            (
                "ensemble p50 at concurrency 1 - in-process decode+preprocess+ORT (ms)",
                p50 - pipe["ms_per_image"],
                f"<= +{ENSEMBLE_P50_SLACK_MS:g} ms",
                p50 <= limit,
                f"{p50:.1f} ms vs {pipe['ms_per_image']:.1f} ms",
            )
        )
    if ens and large:
        add(
            "ensemble 12-MP / ensemble 500x375, best img/s",
            best(large).throughput,
            best(ens).throughput,
            f">= {LARGE_VS_TYPICAL}",
            LARGE_VS_TYPICAL,
            f"{best(large).throughput:.1f} vs {best(ens).throughput:.1f} img/s",
        )
    for label, engine in (
        ("ensemble 500x375", pipe),
        ("ensemble 12MP", _engine(results, "pipeline 12MP")),
    ):
        stack = results.stack_rss_mb.get(label)
        if stack and engine:
            add(
                f"served stack peak RSS during {label} / in-process ORT process peak RSS "
                f"({engine['engine']}: decode+preprocess+ORT)",
                stack,
                engine["peak_rss_mb"],
                f"<= {STACK_RSS_VS_ORT}",
                lambda value: value <= STACK_RSS_VS_ORT,
                f"{stack:.0f} vs {engine['peak_rss_mb']:.0f} MB",
            )
    for label in _raw_paths(results):
        stack, engine = (
            results.stack_rss_mb.get(label),
            _engine(results, "ort-nospin", results.batch_sizes.get(label, 1)),
        )
        if stack and engine:
            add(
                f"served stack peak RSS during {label} / in-process ORT process peak RSS "
                f"(batch {engine['batch']})",
                stack,
                engine["peak_rss_mb"],
                "-",
                None,
                f"{stack:.0f} vs {engine['peak_rss_mb']:.0f} MB",
            )
    for name, engine in (("ORT FP32 / PyTorch eager", ort1), ("TorchScript / PyTorch eager", ts1)):
        if engine and eager1:
            add(
                f"{name}, batch 1 img/s",
                engine["images_per_s"],
                eager1["images_per_s"],
                "-",
                None,
                f"{engine['images_per_s']:.1f} vs {eager1['images_per_s']:.1f} img/s",
            )
    if raw and ens:
        add(
            "served ensemble / served raw, best img/s",
            best(ens).throughput,
            best(raw).throughput,
            "-",
            None,
            "",
        )
    int8_ens = _rows(results, "int8 ensemble 500x375")
    if int8_ens and ens:
        add(
            "served INT8 ensemble / served FP32 ensemble (500x375), best img/s",
            best(int8_ens).throughput,
            best(ens).throughput,
            "-",
            None,
            f"{best(int8_ens).throughput:.1f} vs {best(ens).throughput:.1f} img/s",
        )
    for batch in (1, 8):
        int8_engine, fp32_engine = (
            _engine(results, "ort-int8-nospin", batch),
            _engine(results, "ort-nospin", batch),
        )
        if int8_engine and fp32_engine:
            add(
                f"in-process ORT INT8 / FP32 (spinning off), batch {batch} img/s",
                int8_engine["images_per_s"],
                fp32_engine["images_per_s"],
                "-",
                None,
                f"{int8_engine['images_per_s']:.1f} vs {fp32_engine['images_per_s']:.1f} img/s",
            )
    return out


def _figures(values: list[float]) -> str:
    return "/".join(f"{value:.1f}" for value in values)


def write_report(plan: BenchPlan, results: BenchResults, repo: Path) -> Path:
    env = results.environment
    rows = []
    for entry in results.engines:
        extra = entry.get("extra") or {}
        note = ", ".join(f"{k.replace('_ms_median', '')} {v:.1f} ms" for k, v in extra.items())
        rows.append(
            [
                f"in-process {entry['engine']}",
                str(entry["batch"]),
                f"{entry['ms_per_image']:.1f}",
                f"{entry['images_per_s']:.1f}",
                f"{entry['peak_rss_mb']:.0f}",
                note,
            ]
        )
    for label in results.served:
        served_rows = _rows(results, label)
        top = best(served_rows)
        first = served_rows[0]
        stack = results.stack_rss_mb.get(label)
        rss = f"{stack:.0f} (whole stack)" if stack else "-"
        per_request = results.batch_sizes.get(label, 1)
        rows.append(
            [
                f"served {label}",
                f"{per_request}/request, c={top.load:g} (best)",
                f"{1000 / top.throughput:.1f}",
                f"{top.throughput:.1f}",
                rss,
                f"p50 {first.p50_ms:.1f} / p99 {first.p99_ms:.1f} ms at c=1; "
                f"p50 {top.p50_ms:.1f} / p99 {top.p99_ms:.1f} ms at c={top.load:g}; "
                f"failed {results.failed_requests.get(label)}",
            ]
        )
    table = markdown_table(
        ["engine / path", "batch", "ms/img", "img/s", "peak RSS MB", "notes"], rows
    )
    ratio_rows = [
        [
            name,
            "-" if value is None else f"{value:.3f}",
            target,
            "-" if met is None else ("met" if met else "NOT met"),
            detail,
        ]
        for name, value, target, met, detail in ratios(results)
    ]
    all_rows = [row for label in results.served for row in _rows(results, label)]
    write_rows_csv(all_rows, plan.out / "served.csv")
    plot_throughput_latency(all_rows, plan.out / "served.png", "served paths (perf_analyzer)")
    breakdown = "; ".join(
        f"{label}: " + ", ".join(f"{k} {v:.0f} MB" for k, v in usage.items())
        for label, usage in results.stack_breakdown.items()
    )
    text = "\n".join(
        [
            "# ResNet-18 benchmark: in-process engines vs the served paths",
            "",
            f"Measured {env.get('date')} on {env.get('cores')} cores ({env.get('cpu')}), load average "
            f"at start {env.get('load_average_at_start')}, {plan.threads} threads per engine, "
            f"repository {repo}. ms/img for served paths = 1000 / img/s at the best concurrency.",
            "",
            table,
            "",
            "## Ratios",
            "",
            markdown_table(["ratio", "value", "target", "status", "figures"], ratio_rows),
            "",
            f"Stack RSS at its peak: {breakdown or '-'}",
            "",
            "## Served sweeps",
            "",
            sweep_table(all_rows),
            "",
            "![served](served.png)",
            "",
        ]
    )
    path = plan.out / "bench.md"
    path.write_text(text)
    return path
