"""Interleaved A/B of a fused model against the ensemble it fuses, and against its engine.

``--variant`` names a fused variant of ``repository.variants`` (default ``int8_fused``; also
``fp32_fused``, ``openvino_fused``). Copies the default classifier's FP32 models of ``--repo``
and those of the ensemble variant it fuses (if any) into a scratch repository (hard links), with
the fused model as its writer writes it (``write_fused_model``: N instances of 1 thread for N
cores) and, unless ``--splits ''``, the same model at 1 x N and N x N instances x threads
(``ALTERNATIVE_SPLITS``), to check the instance split. perf_analyzer then loads each model in turn
at each ``--concurrency`` with the same JPEGs (the stack's CPU per image is read for every run),
alternating which goes first from round to round; once the server has stopped, the engine is
timed in-process on the fused model's file (batch 8, 2 threads), so every round gives served /
in-process ratios from the same minutes. One server per round, or with ``--one-server`` one
server (same ports) for every round. Prints a markdown table per concurrency.

    python -m benchmarks.fused_experiment --repo model_repository --rounds 3
    python -m benchmarks.fused_experiment --repo R --variant fp32_fused --concurrency 1,2,4,8 \\
        --splits '' --one-server --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from benchmarks.ab_served import engine_images_per_s
from resnet18_triton import contract
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.files import link_or_copy, write_text_atomically
from resnet18_triton.perf import harness
from resnet18_triton.perf import perf_analyzer as pa
from resnet18_triton.perf.images import TYPICAL_SIZE, jpeg_bytes
from resnet18_triton.perf.stack import StackSampler
from resnet18_triton.perf.tune.repository import copy_models
from resnet18_triton.repository import variants
from resnet18_triton.repository.configs.builders import instance_count
from resnet18_triton.repository.configs.parser import parse, render
from resnet18_triton.repository.layout import CONFIG_FILENAME
from resnet18_triton.repository.variants import Variant
from resnet18_triton.repository.writer import write_fused_model
from resnet18_triton.server.embedded import EmbeddedServer

# Other instance x thread splits of the fused model measured beside the one its writer writes
# (cores instances x 1 thread): all cores in one instance, and every instance with every core
# (oversubscribed at full load, but a lone request gets all cores).
ALTERNATIVE_SPLITS = ("1xN", "NxN")


@dataclass(frozen=True)
class Run:
    """One model at one concurrency in one round."""

    images_per_s: float
    p50_ms: float
    p99_ms: float
    core_ms_per_image: float
    load_average: float


def fused_variant(repo: Path, variant: Variant, names: ClassifierNames, split: str) -> str:
    """A copy of fused ``variant``'s model with the split ``1xN`` or ``NxN`` (N: its instance
    count as written); returns its name (e.g. ``fused_1x2``)."""
    source = repo / variant.entry(names)
    config = parse((source / CONFIG_FILENAME).read_text())
    cores = instance_count(config)
    instances = 1 if split == "1xN" else cores
    name = f"fused_{instances}x{cores}"
    shutil.copytree(source, repo / name, copy_function=link_or_copy)
    config.name = name
    del config.instance_group[:]
    config.instance_group.add(count=instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    config.parameters[variants.THREAD_KEYS[variant.engine]].string_value = str(cores)
    # Replaced by rename: the copied config is a hard link to the original's.
    write_text_atomically(repo / name / CONFIG_FILENAME, render(config))
    return name


def scratch_repository(
    source: Path, target: Path, variant: Variant, splits: tuple[str, ...] = ALTERNATIVE_SPLITS
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Copy the default classifier and the ensemble variant ``variant`` fuses, write ``variant``
    and its alternative ``splits``; returns every model to load (in load order) and the models
    to measure (the ensemble it fuses first)."""
    names = ClassifierNames.of()
    base = variants.fused_source(variant)
    if base is not None and not variants.holds(source, base, names):
        raise SystemExit(f"{source} has no {base.key} variant: run `{base.write_command}` first")
    served = (*names.served, *(base.models(names) if base else ()))
    copy_models(source, target, served)
    write_fused_model(target, variant, names)
    alternatives = tuple(fused_variant(target, variant, names, split) for split in splits)
    ensemble = base.entry(names) if base else names.ensemble
    fused = (variant.entry(names), *alternatives)
    return (*served, *fused), (ensemble, *fused)


def measure(
    analyzer: pa.PerfAnalyzer,
    server: EmbeddedServer,
    target: str,
    settings: pa.SweepSettings,
    data: Path,
    csv: Path,
) -> Run:
    """perf_analyzer on ``target`` at the settings' one concurrency, with the stack's CPU time
    per image served over the run."""
    assert server.process is not None
    load_average = os.getloadavg()[0]
    before = pa.model_inference_count(server.url, target) or 0
    sampler = StackSampler(server.process.pid).start()
    result = pa.run(analyzer, pa.Sweep(target, server.url, settings, data), csv)
    sampler.stop()
    served = (pa.model_inference_count(server.url, target) or 0) - before
    top = max(result.rows, key=lambda row: row.throughput)
    core_ms = 1000 * sum(sampler.cpu_seconds.values()) / max(served, 1)
    return Run(top.throughput, top.p50_ms, top.p99_ms, core_ms, load_average)


def _cells(values: list[float], digits: int = 1) -> str:
    return ", ".join(f"{value:.{digits}f}" for value in values)


def print_table(concurrency: int, runs: dict[str, list[Run]], engine: list[float]) -> None:
    """One markdown table of every model's rounds at ``concurrency``, the first model (the
    ensemble) the reference of the ``vs ensemble`` column."""
    print(f"\nconcurrency {concurrency}:\n")
    print(
        "| model | img/s per round | median img/s | vs ensemble | / in-process, per round | ",
        end="",
    )
    print("p50 / p99 ms (median) | stack core-ms/img per round | load average |")
    print("|---|---|---|---|---|---|---|---|")
    base = statistics.median(run.images_per_s for run in next(iter(runs.values())))
    for target, values in runs.items():
        rates = [run.images_per_s for run in values]
        median = statistics.median(rates)
        ratios = [rate / alone for rate, alone in zip(rates, engine, strict=True)]
        p50 = statistics.median(run.p50_ms for run in values)
        p99 = statistics.median(run.p99_ms for run in values)
        loads = [run.load_average for run in values]
        print(
            f"| {target} | {_cells(rates)} | {median:.1f} | {median / base:.3f}x | "
            f"{_cells(ratios, 2)} | {p50:.1f} / {p99:.1f} | "
            f"{_cells([run.core_ms_per_image for run in values], 2)} | "
            f"{min(loads):.1f}-{max(loads):.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--variant", default=variants.INT8_FUSED.key)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="8,1", help="comma-separated, in order")
    parser.add_argument("--splits", default=",".join(ALTERNATIVE_SPLITS))
    parser.add_argument("--one-server", action="store_true", help="one server for every round")
    parser.add_argument("--interval-ms", type=int, default=5000)
    args = parser.parse_args()
    variant = variants.by_key(args.variant)
    if not variant.fused:
        raise SystemExit(f"{variant.key} is not a fused variant")
    concurrencies = [int(value) for value in args.concurrency.split(",")]
    splits = tuple(split for split in args.splits.split(",") if split)
    names = ClassifierNames.of()
    analyzer = pa.locate()
    with tempfile.TemporaryDirectory(prefix="fused-") as scratch:
        work = Path(scratch)
        models, targets = scratch_repository(args.repo.resolve(), work / "repo", variant, splits)
        images = [jpeg_bytes(*TYPICAL_SIZE, seed) for seed in range(16)]
        data = pa.write_input_data(images, contract.ENSEMBLE_INPUT, work / "input.json")
        settings = pa.SweepSettings(measurement_interval_ms=args.interval_ms, max_trials=6)
        options = harness.local_options(work / "repo", models=models, exit_timeout_s=5)
        runs: dict[int, dict[str, list[Run]]] = {
            concurrency: {target: [] for target in targets} for concurrency in concurrencies
        }
        engine: list[float] = []

        @contextlib.contextmanager
        def server_for_round() -> Iterator[EmbeddedServer]:
            with harness.local_server(options, work / "server.log", append_log=True) as server:
                yield server

        with contextlib.ExitStack() as shared:
            kept = shared.enter_context(server_for_round()) if args.one_server else None
            for round_index in range(args.rounds):
                with contextlib.ExitStack() as own:
                    server = kept or own.enter_context(server_for_round())
                    # Which model goes first alternates, so drift within a round hits both.
                    order = targets if round_index % 2 == 0 else targets[::-1]
                    for concurrency in concurrencies:
                        at = replace(settings, concurrency=f"{concurrency}:{concurrency}:1")
                        for target in order:
                            csv = work / f"{target}_c{concurrency}_{round_index}.csv"
                            run = measure(analyzer, server, target, at, data, csv)
                            runs[concurrency][target].append(run)
                            print(f"round {round_index + 1} c={concurrency} {target}: {run}")
                # The engine alone, in-process, in the same minutes; with --one-server the
                # server idles meanwhile.
                engine.append(engine_images_per_s(args.repo, variant.fused_classifier(names)))
    print(f"\n{variant.key}: {args.rounds} interleaved rounds, 500x375 JPEGs, ", end="")
    print(f"{'one server' if args.one_server else 'one server per round'}")
    for concurrency in concurrencies:
        print_table(concurrency, runs[concurrency], engine)
    print(f"\nin-process {variant.fused_classifier(names)} (batch 8, 2 threads): ", end="")
    print(f"{_cells(engine)} img/s, median {statistics.median(engine):.1f}")


if __name__ == "__main__":
    main()
