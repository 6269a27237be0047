"""``loadtest``: perf_analyzer sweeps against a running server, as CSV, markdown and a PNG plot."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from resnet18_triton import contract
from resnet18_triton.errors import PerfAnalyzerError
from resnet18_triton.perf import perf_analyzer as pa
from resnet18_triton.perf.report import best, plot_throughput_latency, sweep_table, write_rows_csv

TARGETS = ("ensemble", "raw")


@dataclass(frozen=True)
class LoadTestPlan:
    """What to sweep (``targets``: "ensemble" needs ``images``), where, and with which settings.

    ``stats_url`` is the HTTP address read for failed-request counts (needed with gRPC).
    """

    url: str
    out: Path
    settings: pa.SweepSettings = field(default_factory=pa.SweepSettings)
    targets: tuple[str, ...] = TARGETS
    images: tuple[Path, ...] = ()
    stats_url: str | None = None
    image_label: str = "jpeg"
    # The classifier whose ensemble and ONNX model are loaded (ClassifierNames.of).
    classifier: str = contract.DEFAULT_CLASSIFIER


def sweeps(plan: LoadTestPlan) -> list[tuple[str, pa.Sweep]]:
    """(label, sweep) for each target; the ensemble gets the images as --input-data."""
    planned = []
    names = contract.ClassifierNames.of(plan.classifier)
    for target in plan.targets:
        if target == "ensemble":
            if not plan.images:
                raise PerfAnalyzerError("the ensemble load test needs images (--images DIR)")
            data = pa.write_input_data(
                [path.read_bytes() for path in plan.images],
                contract.ENSEMBLE_INPUT,
                plan.out / f"input_data_{plan.image_label}.json",
            )
            sweep = pa.Sweep(names.ensemble, plan.url, plan.settings, data)
            planned.append((f"{names.ensemble} ({plan.image_label})", sweep))
        elif target == "raw":
            # uint8 pixels of the config's fixed shape: perf_analyzer's random data is fine.
            planned.append((names.onnx, pa.Sweep(names.onnx, plan.url, plan.settings)))
        else:
            raise ValueError(f"unknown target {target!r}")
    return planned


def run_loadtest(
    plan: LoadTestPlan,
    analyzer: pa.PerfAnalyzer | None = None,
    echo: Callable[[str], None] = print,
) -> list[pa.SweepResult]:
    analyzer = analyzer or pa.locate()
    plan.out.mkdir(parents=True, exist_ok=True)
    results = []
    for label, sweep in sweeps(plan):
        echo(f"perf_analyzer: {label} ...")
        slug = label.replace(" ", "_").replace("(", "").replace(")", "")
        result = pa.run(
            analyzer, sweep, plan.out / f"perf_{slug}.csv", label=label, stats_url=plan.stats_url
        )
        top = best(result.rows)
        echo(
            f"  best {top.throughput:.1f} infer/s at {top.mode} {top.load:g}; "
            f"failed requests: {_count(result.failed_requests)}"
        )
        results.append(result)
    write_summary(plan, results)
    return results


def write_summary(plan: LoadTestPlan, results: list[pa.SweepResult]) -> None:
    rows = [row for result in results for row in result.rows]
    write_rows_csv(rows, plan.out / "loadtest.csv")
    plot_throughput_latency(
        rows,
        plan.out / "loadtest.png",
        f"perf_analyzer against {plan.url} ({plan.settings.protocol})",
    )
    settings = plan.settings
    transport = f"{settings.protocol}, batch {settings.batch_size}"
    if settings.shared_memory != "none":
        transport += f", {settings.shared_memory} shared memory"
    lines = [
        f"# Load test against {plan.url} ({transport})",
        "",
        sweep_table(rows),
        "",
        "| target | best img/s | at | failed requests | successful requests |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        top = best(result.rows)
        lines.append(
            f"| {result.label} | {top.throughput:.1f} | {top.mode} {top.load:g} | "
            f"{_count(result.failed_requests)} | {_count(result.successful_requests)} |"
        )
    lines += [
        "",
        "![throughput vs latency](loadtest.png)",
        "",
        "Raw perf_analyzer CSVs: " + ", ".join(f"`{r.csv_path.name}`" for r in results),
        "",
    ]
    (plan.out / "loadtest.md").write_text("\n".join(lines))


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)
