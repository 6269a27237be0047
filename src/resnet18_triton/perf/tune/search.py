"""``resnet18-triton tune``: measure serving plans on this machine and pick the best.

Each plan (``tune.space.Candidate``) is measured the same way: its configs are rendered into a
scratch copy of the repository (``tune.repository``), a fresh ``EmbeddedServer`` starts on free
loopback ports with that plan's models, and one perf_analyzer sweep of the ensemble runs with
real JPEG input at fixed concurrency levels (the same levels for every plan, so plans are compared
at equal load). The server's statistics give each model's compute time per image. Then the server
stops and the next plan starts from a clean process.

The report folder holds ``tune.csv`` (every load level of every plan), ``tune.md`` (one line per
plan, best first, and the winner), ``tune.png`` (throughput against p99 latency) and the raw
perf_analyzer CSVs and server logs.
"""

from __future__ import annotations

import csv
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from resnet18_triton import contract
from resnet18_triton.errors import PerfAnalyzerError, ResNet18TritonError, TuneError
from resnet18_triton.perf import harness
from resnet18_triton.perf import perf_analyzer as pa
from resnet18_triton.perf.report import markdown_table, save_plot
from resnet18_triton.perf.tune.repository import (
    scratch_repository,
    variant_models,
    write_plan_configs,
)
from resnet18_triton.perf.tune.space import (
    Candidate,
    Measurement,
    SearchSpace,
    best_by_median,
    coordinate_descent,
    interleaved,
    median_scores,
    select_winner,
    top_plans,
)

Echo = Callable[[str], None]


@dataclass(frozen=True)
class TunePlan:
    """What to search and how to measure each plan.

    ``sweep`` is perf_analyzer's settings (concurrency levels, window); ``images`` the JPEGs
    sent to the ensemble; ``max_p99_ms`` the latency limit (None: throughput only).
    """

    repository: Path
    out: Path
    space: SearchSpace
    images: tuple[Path, ...]
    sweep: pa.SweepSettings = field(
        default_factory=lambda: pa.SweepSettings(
            concurrency="2:8:6", measurement_interval_ms=2000, max_trials=6
        )
    )
    max_p99_ms: float | None = None
    exhaustive: bool = False
    name: str = contract.ENSEMBLE_MODEL
    # Instead of a search: measure exactly these plans, interleaved, ``rounds`` times each.
    compare: tuple[Candidate, ...] = ()
    # After a search, the best ``finalists`` plans are measured ``rounds`` more times,
    # interleaved, and the winner is the best median: one measurement per plan is not enough
    # on a shared machine. Also the rounds of ``compare``.
    rounds: int = 2
    finalists: int = 3


@dataclass(frozen=True)
class TuneResult:
    measurements: list[Measurement]
    winner: Measurement
    winner_score: float  # the median over rounds when comparing
    seconds: float
    report: Path


def model_compute_ms(http_url: str, model: str) -> float | None:
    """Mean compute time per image of ``model`` (input + infer + output, ms) from the server's
    statistics; None when unavailable."""
    total_ns = images = 0
    for entry in pa.model_stats(http_url, model):
        inference = entry.get("inference_stats", {})
        for key in ("compute_input", "compute_infer", "compute_output"):
            total_ns += int(inference.get(key, {}).get("ns", 0))
        images += int(entry.get("inference_count", 0))
    return total_ns / images / 1e6 if images else None


def one_line(message: str) -> str:
    """A multi-line error (perf_analyzer's or the server's log tail) as its first and last
    lines, the what and the why, for one table cell."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else message
    return f"{lines[0]} ... {lines[-1]}".replace("|", "/")


class PlanMeasurer:
    """Measures plans one at a time in a scratch copy of the repository (see module doc)."""

    def __init__(self, plan: TunePlan, analyzer: pa.PerfAnalyzer, echo: Echo = print) -> None:
        self.plan = plan
        self.analyzer = analyzer
        self.echo = echo
        self.scratch = scratch_repository(
            plan.repository, plan.out / "scratch_repository", plan.name
        )
        self.input_data = pa.write_input_data(
            [path.read_bytes() for path in plan.images],
            contract.ENSEMBLE_INPUT,
            plan.out / "input_data.json",
        )
        self.count = 0

    def __call__(self, candidate: Candidate) -> Measurement:
        self.count += 1
        self.echo(f"[{self.count}] {candidate.label} ...")
        try:
            measurement = self._measure_retrying_unstable(candidate)
        except ResNet18TritonError as error:
            summary = one_line(str(error))
            self.echo(f"    failed: {summary}")
            return Measurement(candidate, (), error=summary)
        top = measurement.best_row(self.plan.max_p99_ms) or measurement.best_row()
        if top is not None:
            self.echo(
                f"    {top.throughput:.1f} img/s at concurrency {top.load:g}, "
                f"p50 {top.p50_ms:.1f} ms, p99 {top.p99_ms:.1f} ms, "
                f"failed requests: {measurement.failed_requests}"
            )
        return measurement

    def _measure_retrying_unstable(self, candidate: Candidate) -> Measurement:
        """One retry when perf_analyzer found no stable window: on a shared machine that is
        usually a neighbour's burst, not the plan, and a plan must not lose by bad luck."""
        try:
            return self._measure(candidate)
        except PerfAnalyzerError as error:
            if pa.UNSTABLE_MESSAGE not in str(error):
                raise
            self.echo("    no stable measurement; measuring once more")
            return self._measure(candidate)

    def _measure(self, candidate: Candidate) -> Measurement:
        write_plan_configs(
            self.plan.repository, self.scratch, candidate, self.plan.space.cores, self.plan.name
        )
        models = variant_models(self.plan.name, candidate.variant)
        slug = candidate.label.replace(" ", "_")
        options = harness.local_options(self.scratch, models=models.load_order, exit_timeout_s=5)
        logs = self.plan.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with harness.local_server(options, logs / f"{slug}.log") as server:
            sweep = pa.Sweep(models.ensemble, server.url, self.plan.sweep, self.input_data)
            result = pa.run(
                self.analyzer, sweep, self.plan.out / "perf" / f"{slug}.csv", label=candidate.label
            )
            compute = {
                role: value
                for role, model in (
                    ("preprocess", models.preprocess),
                    ("classifier", models.classifier),
                )
                if model and (value := model_compute_ms(server.url, model)) is not None
            }
        return Measurement(candidate, tuple(result.rows), result.failed_requests, compute)


def run_tune(
    plan: TunePlan, analyzer: pa.PerfAnalyzer | None = None, echo: Echo = print
) -> TuneResult:
    """Search the plan's space (quick, or the full grid with ``exhaustive``), write the report
    and return every measurement and the winner. Raises TuneError when no plan qualifies."""
    started = time.monotonic()
    plan.out.mkdir(parents=True, exist_ok=True)
    measure = PlanMeasurer(plan, analyzer or pa.locate(), echo)
    try:
        if plan.compare:
            searched: list[Measurement] = []
            finalists = list(plan.compare)
        elif plan.exhaustive:
            searched = [measure(candidate) for candidate in plan.space.grid()]
            finalists = top_plans(searched, plan.finalists, plan.max_p99_ms)
        else:
            searched = coordinate_descent(plan.space, measure, plan.max_p99_ms)
            finalists = top_plans(searched, plan.finalists, plan.max_p99_ms)
        rounds = plan.rounds if plan.compare or len(finalists) > 1 else 0
        if plan.compare and rounds < 1:
            raise TuneError("--compare needs at least one round")
        confirmed = interleaved(finalists, measure, rounds) if rounds else []
    finally:
        # Hard links to the repository's files: cheap, but not part of the report.
        shutil.rmtree(measure.scratch, ignore_errors=True)
    seconds = time.monotonic() - started
    measurements = searched + confirmed
    compared = [m for m in measurements if m.candidate in finalists] if confirmed else []
    if compared:
        winner, score = best_by_median(compared, plan.max_p99_ms)
    else:
        winner = select_winner(measurements, plan.max_p99_ms)
        score = winner.score(plan.max_p99_ms)
    report = write_report(plan, measurements, compared, winner, seconds)
    return TuneResult(measurements, winner, score, seconds, report)


# --- report ----------------------------------------------------------------------------------

CSV_FIELDS = (
    "plan",
    "variant",
    "onnx_instances",
    "intra_op_threads",
    "preprocess_instances",
    "max_batch_size",
    "max_queue_delay_us",
    "concurrency",
    "throughput",
    "p50_ms",
    "p99_ms",
    "failed_requests",
    "preprocess_compute_ms",
    "classifier_compute_ms",
    "error",
)


def csv_records(measurements: list[Measurement]) -> list[dict[str, object]]:
    """One record per measured load level (one per plan that could not be measured)."""
    records = []
    for m in measurements:
        c = m.candidate
        base: dict[str, object] = {
            "plan": c.label,
            "variant": c.variant,
            "onnx_instances": c.onnx_instances,
            "intra_op_threads": c.intra_op_threads,
            "preprocess_instances": c.preprocess_instances,
            "max_batch_size": c.max_batch_size,
            "max_queue_delay_us": c.max_queue_delay_us,
            "failed_requests": m.failed_requests,
            "preprocess_compute_ms": round(m.compute_ms.get("preprocess", math.nan), 3),
            "classifier_compute_ms": round(m.compute_ms.get("classifier", math.nan), 3),
            "error": m.error or "",
        }
        if not m.rows:
            records.append(base)
        for row in m.rows:
            records.append(
                base
                | {
                    "concurrency": row.load,
                    "throughput": round(row.throughput, 2),
                    "p50_ms": round(row.p50_ms, 2),
                    "p99_ms": round(row.p99_ms, 2),
                }
            )
    return records


def summary_table(measurements: list[Measurement], max_p99_ms: float | None) -> str:
    """One line per plan, best score first."""
    ranked = sorted(measurements, key=lambda m: m.score(max_p99_ms), reverse=True)
    lines = []
    for m in ranked:
        top = m.best_row(max_p99_ms)
        compute = " / ".join(
            f"{m.compute_ms[role]:.1f}" if role in m.compute_ms else "-"
            for role in ("preprocess", "classifier")
        )
        lines.append(
            [
                m.candidate.label,
                f"{m.score(max_p99_ms):.1f}",
                f"{top.load:g}" if top else "-",
                f"{top.p50_ms:.1f}" if top else "-",
                f"{top.p99_ms:.1f}" if top else "-",
                compute,
                m.error or str(m.failed_requests),
            ]
        )
    return markdown_table(
        [
            "plan",
            "img/s",
            "at concurrency",
            "p50 ms",
            "p99 ms",
            "compute ms/img (preprocess / classifier)",
            "failed requests",
        ],
        lines,
    )


def comparison_table(measurements: list[Measurement], max_p99_ms: float | None) -> str:
    """Interleaved runs: each plan's score per round, its median and its ratio to the first
    plan's median."""
    medians = median_scores(measurements, max_p99_ms)
    first = next(iter(medians.values()))
    lines = []
    for plan, median in medians.items():
        rounds = [f"{m.score(max_p99_ms):.1f}" for m in measurements if m.candidate == plan]
        ratio = f"{median / first:.3f}" if first > 0 else "-"
        lines.append([plan.label, ", ".join(rounds), f"{median:.1f}", ratio])
    return markdown_table(
        ["plan", "img/s per round", "median img/s", "median / first plan's"], lines
    )


def write_report(
    plan: TunePlan,
    measurements: list[Measurement],
    compared: list[Measurement],
    winner: Measurement,
    seconds: float,
) -> Path:
    out = plan.out
    with (out / "tune.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(csv_records(measurements))
    plot_plans(measurements, winner, out / "tune.png", plan.max_p99_ms)
    limit = f"p99 <= {plan.max_p99_ms:g} ms" if plan.max_p99_ms else "none"
    search = "exhaustive grid" if plan.exhaustive else "coordinate descent from the rule of thumb"
    if plan.compare:
        search = "the named plans"
    if compared:
        search += f"; then side by side, interleaved, {plan.rounds} round(s), best median wins"
    lines = [
        f"# Tuning {plan.name} on {plan.space.cores} core(s)",
        "",
        f"- search: {search}, {len(measurements)} plans in {seconds / 60:.1f} min",
        f"- objective: highest throughput; latency limit: {limit}",
        f"- load: perf_analyzer concurrency {plan.sweep.concurrency}, "
        f"{plan.sweep.measurement_interval_ms} ms windows, {len(plan.images)} JPEG(s)",
        "- plan label: variant, ONNX Runtime instances x intra-op threads, preprocess "
        "instances, max batch size, queue delay (us)",
        "",
        f"**Winner: {winner.candidate.label}**",
        "",
        *([comparison_table(compared, plan.max_p99_ms), ""] if compared else []),
        summary_table(measurements, plan.max_p99_ms),
        "",
        "![throughput vs p99 latency](tune.png)",
        "",
        "Every load level: `tune.csv`; raw perf_analyzer CSVs: `perf/`; server logs: `logs/`.",
        "",
    ]
    path = out / "tune.md"
    path.write_text("\n".join(lines))
    return path


def plot_plans(
    measurements: list[Measurement], winner: Measurement, path: Path, max_p99_ms: float | None
) -> Path | None:
    """Throughput (x) against p99 latency (y): one point per plan and load level, the winner
    highlighted, the latency limit drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(8, 5))
    labelled = False
    for m in measurements:
        if not m.rows:
            continue
        is_winner = m.candidate == winner.candidate
        label = f"winner {m.candidate.label}" if is_winner and not labelled else None
        labelled = labelled or is_winner
        axis.plot(
            [row.throughput for row in m.rows],
            [row.p99_ms for row in m.rows],
            "o-" if is_winner else ".:",
            color="C3" if is_winner else "0.6",
            label=label,
            zorder=3 if is_winner else 1,
        )
    if max_p99_ms is not None:
        axis.axhline(max_p99_ms, color="C0", linestyle="--", label=f"p99 limit {max_p99_ms:g} ms")
    axis.set_xlabel("throughput (images/s)")
    axis.set_ylabel("p99 latency (ms)")
    axis.set_title(f"{len(measurements)} plans, one point per concurrency level")
    return save_plot(figure, axis, path, dpi=100)
