"""Markdown summaries, CSV files and the throughput-vs-latency plot."""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from resnet18_triton.perf.perf_analyzer import Row

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def write_rows_csv(rows: list[Row], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as stream:
        fields = list(Row.__dataclass_fields__)
        writer = csv.DictWriter(stream, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow(row.as_dict())
    return path


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def sweep_table(rows: list[Row]) -> str:
    load = "request rate (/s)" if rows and rows[0].mode == "request_rate" else "concurrency"
    return markdown_table(
        [
            "target",
            load,
            "img/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "avg ms",
            "server queue ms",
            "server compute ms",
        ],
        [
            [
                row.label,
                _fmt(row.load, 0 if row.mode == "concurrency" else 1),
                _fmt(row.throughput),
                _fmt(row.p50_ms),
                _fmt(row.p90_ms),
                _fmt(row.p99_ms),
                _fmt(row.avg_ms),
                _fmt(row.server_queue_ms),
                _fmt(row.server_compute_ms),
            ]
            for row in rows
        ],
    )


def best(rows: list[Row]) -> Row:
    return max(rows, key=lambda row: row.throughput)


def plot_throughput_latency(rows: list[Row], path: Path, title: str) -> Path | None:
    """Throughput (x) vs p50 and p99 latency (y), one line pair per target."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(8, 5))
    labels = list(dict.fromkeys(row.label for row in rows))
    for index, label in enumerate(labels):
        mine = sorted((row for row in rows if row.label == label), key=lambda row: row.load)
        color = f"C{index}"
        xs = [row.throughput for row in mine]
        axis.plot(xs, [row.p50_ms for row in mine], "o-", color=color, label=f"{label} p50")
        axis.plot(xs, [row.p99_ms for row in mine], "s--", color=color, label=f"{label} p99")
        for row in mine:
            axis.annotate(
                f"{row.load:g}",
                (row.throughput, row.p50_ms),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color=color,
            )
    axis.set_xlabel("throughput (inferences/s)")
    axis.set_ylabel("latency (ms)")
    axis.set_title(title)
    return save_plot(figure, axis, path, dpi=110)


def save_plot(figure: Figure, axis: Axes, path: Path, dpi: int) -> Path:
    """Grid, legend and a tight layout for ``axis``, then ``figure`` written to ``path`` (parents
    created) at ``dpi`` and closed; returns ``path``. Needs matplotlib (the ``perf`` extra)."""
    import matplotlib.pyplot as plt

    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


@dataclass(frozen=True)
class RoundMeasurement:
    """One configuration measured once, in one of the interleaved rounds of a comparison."""

    label: str
    round: int
    throughput: float
    p50_ms: float
    p99_ms: float
    load_average: float  # 1-minute load average when the measurement started


def rounds_report(measurements: list[RoundMeasurement], labels: list[str], header: str) -> str:
    """``header`` and a Markdown table: one row per configuration (``labels``, in order), each
    round's throughput, their median, its ratio to the first configuration's, the median p50
    and p99, and the range of load averages its rounds started at."""
    rounds = sorted({m.round for m in measurements})
    medians = {
        label: statistics.median(m.throughput for m in measurements if m.label == label)
        for label in labels
    }
    base = medians[labels[0]]
    lines = [
        header,
        "",
        "| layout | "
        + " | ".join(f"round {r} img/s" for r in rounds)
        + " | median img/s | vs first | p50 / p99 ms (median) | load average |",
        "|---|" + "---|" * len(rounds) + "---|---|---|---|",
    ]
    for label in labels:
        own = [m for m in measurements if m.label == label]
        by_round = {m.round: m for m in own}
        cells = [f"{by_round[r].throughput:.1f}" if r in by_round else "-" for r in rounds]
        p50 = statistics.median(m.p50_ms for m in own)
        p99 = statistics.median(m.p99_ms for m in own)
        loads = [m.load_average for m in own]
        lines.append(
            f"| {label} | "
            + " | ".join(cells)
            + f" | {medians[label]:.1f} | {medians[label] / base:.2f}x"
            + f" | {p50:.0f} / {p99:.0f} | {min(loads):.1f}-{max(loads):.1f} |"
        )
    return "\n".join(lines) + "\n"
