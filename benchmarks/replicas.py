"""Throughput of 1 vs N replicas behind nginx, measured with perf_analyzer through the proxy.

``python -m benchmarks.replicas --repo model_repository [--repo-1t DIR] --out DIR``

Each configuration starts its own ``Cluster`` (real ``serve`` replicas + nginx), sends the
ensemble real JPEG bytes at a fixed concurrency, and stops it again. Configurations are run
in turn, ``rounds`` times (interleaved), so that a machine shared with other work slows them
all alike; the report gives every round and the median. Writes ``replicas.csv`` and
``replicas.md``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import click

from resnet18_triton import contract
from resnet18_triton.deploy.cluster import Cluster
from resnet18_triton.perf import harness, perf_analyzer
from resnet18_triton.perf.images import jpeg_set
from resnet18_triton.perf.report import RoundMeasurement, rounds_report


@dataclass(frozen=True)
class Layout:
    """One configuration: replicas of a repository (whose config fixes the thread count)."""

    label: str
    repository: Path
    replicas: int
    through_proxy: bool = True


def measure(
    layout: Layout, input_data: Path, concurrency: int, workdir: Path, round_: int
) -> RoundMeasurement:
    """Start the layout, run one perf_analyzer level through the proxy (or the replica)."""
    cluster_dir = workdir / f"{_slug(layout.label)}-{round_}"
    cluster_dir.mkdir(parents=True, exist_ok=True)
    options = harness.cluster_options(
        layout.repository, layout.replicas, cluster_dir, restart_replicas=False
    )
    with Cluster(options) as cluster:
        load_average = harness.machine().load_average[0]
        url = cluster.url if layout.through_proxy else cluster.replicas[0].url
        # On a machine shared with other work a tight stability criterion never settles; the
        # interleaved rounds carry the comparison instead.
        settings = perf_analyzer.SweepSettings(
            concurrency=str(concurrency),
            measurement_interval_ms=6000,
            stability_percentage=100,
            max_trials=10,
        )
        sweep = perf_analyzer.Sweep(
            model=contract.ENSEMBLE_MODEL, url=url, settings=settings, input_data=input_data
        )
        result = perf_analyzer.run(
            perf_analyzer.locate(),
            sweep,
            workdir / f"{_slug(layout.label)}-{round_}.csv",
            label=layout.label,
        )
    row = result.rows[-1]
    return RoundMeasurement(
        layout.label,
        round_,
        row.throughput,
        row.p50_ms,
        row.p99_ms,
        load_average,
    )


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-")


@click.command()
@click.option("--repo", "repository", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--repo-1t",
    "repository_1t",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A repository exported with --cores 1 (1 thread per replica) for the sized layout.",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--concurrency", default=8, show_default=True)
@click.option("--rounds", default=2, show_default=True)
def main(
    repository: Path, repository_1t: Path | None, out: Path, concurrency: int, rounds: int
) -> None:
    """Measure 1 vs 2 replicas behind nginx (and the proxy's own cost) on this machine."""
    out.mkdir(parents=True, exist_ok=True)
    repository = repository.resolve()
    layouts = [
        Layout("1 replica x 2 threads, direct (no proxy)", repository, 1, through_proxy=False),
        Layout("1 replica x 2 threads, via nginx", repository, 1),
        Layout("2 replicas x 2 threads, via nginx", repository, 2),
    ]
    if repository_1t is not None:
        layouts.append(Layout("2 replicas x 1 thread, via nginx", repository_1t.resolve(), 2))
    images = [path.read_bytes() for path in jpeg_set(out / "images", (500, 375), 16)]
    input_data = perf_analyzer.write_input_data(images, contract.ENSEMBLE_INPUT, out / "input.json")
    measurements = []
    for round_ in range(1, rounds + 1):
        for layout in layouts:
            measured = measure(layout, input_data, concurrency, out, round_)
            click.echo(
                f"round {round_} {layout.label}: {measured.throughput:.1f} img/s, "
                f"p50 {measured.p50_ms:.0f} ms, p99 {measured.p99_ms:.0f} ms",
                err=True,
            )
            measurements.append(measured)
    with (out / "replicas.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["layout", "round", "throughput", "p50_ms", "p99_ms", "load_average"])
        for m in measurements:
            writer.writerow([m.label, m.round, m.throughput, m.p50_ms, m.p99_ms, m.load_average])
    header = (
        f"perf_analyzer, ensemble `{contract.ENSEMBLE_MODEL}`, 500x375 JPEGs, concurrency "
        f"{concurrency}, {harness.machine().cores} cores"
    )
    text = rounds_report(measurements, [layout.label for layout in layouts], header)
    (out / "replicas.md").write_text(text)
    click.echo(text)


if __name__ == "__main__":
    main()
