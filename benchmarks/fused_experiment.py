"""Interleaved A/B of the INT8 serving paths: the INT8 ensemble, the fused INT8 model, the engine.

Copies the default classifier's FP32 and INT8 models of ``--repo`` into a scratch repository
(hard links), with the fused model as ``quantize`` writes it (``NAME_int8_fused``, N instances of
1 thread for N cores) and the same model at 1 x N and N x N instances x threads
(``ALTERNATIVE_SPLITS``), to check the instance split. Each round starts an embedded server with
all of them, perf_analyzer loads each in turn at the same concurrency with the same JPEGs (the
stack's CPU per image is read for every run) and then at concurrency 1 (a lone request's
latency), and, once the server has stopped, ONNX Runtime INT8 is timed in-process on uint8
tensors, so every round gives served / in-process ratios from the same minutes. Prints a markdown
table.

    python -m benchmarks.fused_experiment --repo model_repository --rounds 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from dataclasses import replace
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
from resnet18_triton.perf.tune_repository import copy_models
from resnet18_triton.repository import variants
from resnet18_triton.repository.configs import instance_count, parse, render
from resnet18_triton.repository.layout import CONFIG_FILENAME
from resnet18_triton.repository.writer import write_fused_model

# Other instance x thread splits of the fused model measured beside the one quantize writes
# (cores instances x 1 thread): all cores in one instance, and every instance with every core
# (oversubscribed at full load, but a lone request gets all cores).
ALTERNATIVE_SPLITS = ("1xN", "NxN")


def fused_variant(repo: Path, names: ClassifierNames, split: str) -> str:
    """A copy of the fused model with the split ``1xN`` or ``NxN`` (N: its instance count as
    written); returns its name (e.g. ``fused_1x2``)."""
    source = repo / variants.INT8_FUSED.entry(names)
    config = parse((source / CONFIG_FILENAME).read_text())
    cores = instance_count(config)
    instances = 1 if split == "1xN" else cores
    name = f"fused_{instances}x{cores}"
    shutil.copytree(source, repo / name, copy_function=link_or_copy)
    config.name = name
    del config.instance_group[:]
    config.instance_group.add(count=instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    config.parameters[variants.INTRA_OP_THREADS].string_value = str(cores)
    # Replaced by rename: the copied config is a hard link to the original's.
    write_text_atomically(repo / name / CONFIG_FILENAME, render(config))
    return name


def scratch_repository(source: Path, target: Path) -> tuple[str, ...]:
    """Copy the default classifier (FP32, INT8, fused INT8) and add the alternative fused splits;
    returns every model to load, in load order."""
    names = ClassifierNames.of()
    if not variants.holds(source, variants.INT8, names):
        raise SystemExit(f"{source} has no INT8 variant: run `resnet18-triton quantize` first")
    served = (names.preprocess, names.onnx, names.ensemble, *variants.INT8.models(names))
    copy_models(source, target, served)
    write_fused_model(target, variants.INT8_FUSED, names)
    alternatives = tuple(fused_variant(target, names, split) for split in ALTERNATIVE_SPLITS)
    return (*served, variants.INT8_FUSED.entry(names), *alternatives)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--interval-ms", type=int, default=5000)
    args = parser.parse_args()
    names = ClassifierNames.of()
    analyzer = pa.locate()
    with tempfile.TemporaryDirectory(prefix="fused-") as scratch:
        work = Path(scratch)
        models = scratch_repository(args.repo.resolve(), work / "repo")
        targets = (variants.INT8.entry(names), *models[-1 - len(ALTERNATIVE_SPLITS) :])
        images = [jpeg_bytes(*TYPICAL_SIZE, seed) for seed in range(16)]
        data = pa.write_input_data(images, contract.ENSEMBLE_INPUT, work / "input.json")
        settings = pa.SweepSettings(
            concurrency=f"{args.concurrency}:{args.concurrency}:1",
            measurement_interval_ms=args.interval_ms,
            max_trials=6,
        )
        options = harness.local_options(work / "repo", models=models, exit_timeout_s=5)
        single = replace(settings, concurrency="1:1:1")
        runs: dict[str, list[tuple[float, float, float]]] = {target: [] for target in targets}
        engine: list[float] = []
        for round_index in range(args.rounds):
            with harness.local_server(options, work / "server.log", append_log=True) as server:
                assert server.process is not None
                for target in targets:
                    before = pa.model_inference_count(server.url, target) or 0
                    sampler = StackSampler(server.process.pid).start()
                    sweep = pa.Sweep(target, server.url, settings, data)
                    result = pa.run(analyzer, sweep, work / f"{target}_{round_index}.csv")
                    sampler.stop()
                    served = (pa.model_inference_count(server.url, target) or 0) - before
                    core_ms = 1000 * sum(sampler.cpu_seconds.values()) / max(served, 1)
                    # Latency of a lone request: what a split gives up at low load.
                    alone_run = pa.run(
                        analyzer,
                        pa.Sweep(target, server.url, single, data),
                        work / f"{target}_{round_index}_c1.csv",
                    )
                    rate = max(row.throughput for row in result.rows)
                    runs[target].append((rate, core_ms, alone_run.rows[0].p50_ms))
            # The engine alone, in-process, in the same minutes, once the server has stopped.
            engine.append(engine_images_per_s(args.repo, variants.INT8.classifier(names)))
    print(f"concurrency {args.concurrency}, {args.rounds} interleaved rounds, 500x375 JPEGs\n")
    print("| model | img/s per round | median img/s | / in-process INT8, per round | ", end="")
    print("stack core-ms/img per round | p50 ms at concurrency 1, per round |")
    print("|---|---|---|---|---|---|")
    for target, values in runs.items():
        rates = ", ".join(f"{rate:.1f}" for rate, _, _ in values)
        pairs = zip(values, engine, strict=True)
        ratios = ", ".join(f"{rate / alone:.2f}" for (rate, _, _), alone in pairs)
        cpu = ", ".join(f"{core_ms:.2f}" for _, core_ms, _ in values)
        latency = ", ".join(f"{p50:.1f}" for _, _, p50 in values)
        median = statistics.median(rate for rate, _, _ in values)
        print(f"| {target} | {rates} | {median:.1f} | {ratios} | {cpu} | {latency} |")
    alone = ", ".join(f"{rate:.1f}" for rate in engine)
    int8 = variants.INT8.classifier(names)
    print(f"| in-process {int8} (uint8 tensors, batch 8, 2 threads) | {alone} | ", end="")
    print(f"{statistics.median(engine):.1f} | - | - | - |")


if __name__ == "__main__":
    main()
