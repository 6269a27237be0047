"""OpenVINO rows for ``bench``: in-process engines and served ensembles, measured side by side.

Self-contained so ``bench`` can call it as one step:

* ``inprocess_rows``: ONNX Runtime FP32 (spinning off, as served) and OpenVINO compiled from the
  variant's own config (its precision) and at f32, timed interleaved (A, B, C, A, B, C, ...) in
  this process so that noise from other processes hits all alike;
* ``served_rows``: perf_analyzer on the ONNX Runtime FP32 ensemble and the OpenVINO ensemble with
  the same 500x375 JPEGs, alternating the two for ``rounds`` rounds on the same server and cores;
* ``served_pairs``: short back-to-back ORT/OpenVINO measurements at one concurrency, one ratio
  per pair (the figure least exposed to other processes' load);
* ``served_ratios``: best img/s of each OpenVINO path over the best ONNX Runtime ensemble's.

``python -m resnet18_triton.perf.openvino_bench --out DIR`` exports a random-weight repository
(or uses ``--repo``), adds the OpenVINO variant if missing, starts the embedded server and writes
``openvino_bench.json`` and ``openvino_bench.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

from resnet18_triton import contract
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.perf import harness
from resnet18_triton.perf import images as image_sets
from resnet18_triton.perf import perf_analyzer as pa
from resnet18_triton.repository import variants
from resnet18_triton.repository.layout import onnx_model_path, served_models

# The benchmark measures the default classifier's variant.
DEFAULT = ClassifierNames.of()

ORT_LABEL = "ort fp32 ensemble 500x375"

# A model config as JSON (``export.openvino_variant.as_json``).
JsonObject = dict[str, Any]
# One in-process engine: runs a uint8 [batch, 3, 224, 224] batch, outputs unused.
Runner = Callable[[npt.NDArray[np.uint8]], object]
Echo = Callable[[str], None]


@dataclass(frozen=True)
class InProcessRow:
    """One engine at one batch size, timed in this process: median ms per image and images/s
    (batch over the median batch time), over ``iterations`` timed runs."""

    engine: str
    batch: int
    threads: int
    iterations: int
    ms_per_image: float
    images_per_s: float


@dataclass(frozen=True)
class ServedRound:
    """A perf_analyzer row of one served path and the round (from 0) it was measured in."""

    row: pa.Row
    round: int

    def as_dict(self) -> dict[str, object]:
        """The row's fields, then ``round``: its entry in the JSON figures."""
        return {**self.row.as_dict(), "round": self.round}


@dataclass(frozen=True)
class ServedPair:
    """One back-to-back measurement: ORT then OpenVINO img/s at ``concurrency``, and
    ``ratio`` = OpenVINO over ORT."""

    pair: int
    concurrency: int
    ort_img_s: float
    openvino_img_s: float
    ratio: float


class BenchEnvironment(TypedDict):
    """Where the figures were measured: date, CPU model, usable cores, the CPU's BF16/INT8
    flags and the OpenVINO version."""

    date: str
    cpu: str
    cores: int
    flags: str
    openvino: str


def _variant_config(repo: Path) -> JsonObject:
    from resnet18_triton.repository.configs import as_json, read_config

    return as_json(read_config(repo, variants.OPENVINO.classifier(DEFAULT)))


def variant_precision(repo: Path) -> str:
    """The precision the repository's OpenVINO variant was built with."""
    parameters = _variant_config(repo).get("parameters", {})
    return str(parameters.get(contract.PRECISION_PARAMETER, {}).get("string_value", "unknown"))


def _runners(repo: Path, threads: int) -> dict[str, Runner]:
    """name -> callable(batch) for each in-process engine."""
    import onnxruntime as ort

    from resnet18_triton.export.openvino_variant import openvino_backend

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(onnx_model_path(repo)), sess_options=options, providers=["CPUExecutionProvider"]
    )
    backend = openvino_backend()
    config = _variant_config(repo)
    f32 = json.loads(json.dumps(config))
    for key in ("HINT_BF16", contract.PRECISION_PARAMETER):
        f32.get("parameters", {}).pop(key, None)
    f32["parameters"]["INFERENCE_PRECISION_HINT"] = {"string_value": "f32"}
    runners: dict[str, Runner] = {
        "ort-fp32": lambda batch: session.run(None, {contract.ONNX_INPUT: batch})
    }
    for name, variant in ((f"openvino-{variant_precision(repo)}", config), ("openvino-f32", f32)):
        request = backend.compile_model(str(variants.OPENVINO.model_path(repo, DEFAULT)), variant)
        runners[name] = _openvino_runner(backend, request.create_infer_request())
    return runners


def _openvino_runner(backend: Any, request: Any) -> Runner:
    return lambda batch: backend.infer(
        request, {contract.ONNX_INPUT: batch}, [contract.ONNX_OUTPUT]
    )


def inprocess_rows(
    repo: Path, threads: int = 2, seconds: float = 5.0, batch_sizes: tuple[int, ...] = (1, 8)
) -> list[InProcessRow]:
    """Median ms/img and img/s per engine and batch size, timed interleaved."""
    runners = _runners(repo, threads)
    rng = np.random.default_rng(0)
    rows = []
    for batch_size in batch_sizes:
        shape = (batch_size, contract.CHANNELS, contract.IMAGE_SIZE, contract.IMAGE_SIZE)
        batch = rng.integers(0, 256, shape, dtype=np.uint8)  # the graphs take uint8 pixels
        times: dict[str, list[float]] = {name: [] for name in runners}
        for run in runners.values():  # warm-up, not timed
            run(batch)
        deadline = time.perf_counter() + seconds * len(runners)
        while time.perf_counter() < deadline or min(len(t) for t in times.values()) < 5:
            for name, run in runners.items():
                start = time.perf_counter()
                run(batch)
                times[name].append(time.perf_counter() - start)
        for name, values in times.items():
            median = statistics.median(values)
            rows.append(
                InProcessRow(
                    engine=name,
                    batch=batch_size,
                    threads=threads,
                    iterations=len(values),
                    ms_per_image=1000 * median / batch_size,
                    images_per_s=batch_size / median,
                )
            )
    return rows


def served_rows(
    url: str,
    typical: list[Path],
    out: Path,
    precision: str,
    concurrency: str = "1:4:1",
    rounds: int = 2,
    measurement_interval_ms: int = 5000,
    echo: Echo = print,
    fused: bool = False,
) -> dict[str, list[ServedRound]]:
    """``label -> [rows of every round]``: the two ensembles (and with ``fused`` the OpenVINO
    fused model) on the same JPEGs, alternated."""
    analyzer = pa.locate()
    data = pa.write_input_data(
        [path.read_bytes() for path in typical], contract.ENSEMBLE_INPUT, out / "input_500x375.json"
    )
    models = {
        ORT_LABEL: contract.ENSEMBLE_MODEL,
        f"openvino {precision} ensemble 500x375": variants.OPENVINO.entry(DEFAULT),
    }
    if fused:
        models[f"openvino {precision} fused 500x375"] = variants.OPENVINO_FUSED.entry(DEFAULT)
    served: dict[str, list[ServedRound]] = {label: [] for label in models}
    for round_index in range(rounds):
        for label, model in models.items():
            settings = pa.SweepSettings(
                concurrency=concurrency, measurement_interval_ms=measurement_interval_ms
            )
            sweep = pa.Sweep(model=model, url=url, settings=settings, input_data=data)
            slug = label.replace(" ", "_")
            result = pa.run(analyzer, sweep, out / f"perf_{slug}_{round_index}.csv", label=label)
            top = max(result.rows, key=lambda row: row.throughput)
            echo(f"  {label} round {round_index + 1}: best {top.throughput:.1f} img/s")
            served[label] += [ServedRound(row, round_index) for row in result.rows]
    return served


def served_pairs(
    url: str,
    data: Path,
    out: Path,
    precision: str,
    concurrency: int = 2,
    pairs: int = 8,
    measurement_interval_ms: int = 3000,
    echo: Echo = print,
) -> list[ServedPair]:
    """Short back-to-back measurements, ORT then OpenVINO, ``pairs`` times at one concurrency.

    Load from other processes changes within minutes; a ratio taken within one pair (seconds
    apart) is far less exposed to it than best-of-sweep figures taken minutes apart.
    """
    analyzer = pa.locate()
    models = {"ort": contract.ENSEMBLE_MODEL, "openvino": variants.OPENVINO.entry(DEFAULT)}
    results: list[ServedPair] = []
    for index in range(pairs):
        throughput: dict[str, float] = {}
        for name, model in models.items():
            settings = pa.SweepSettings(
                concurrency=str(concurrency), measurement_interval_ms=measurement_interval_ms
            )
            sweep = pa.Sweep(model=model, url=url, settings=settings, input_data=data)
            result = pa.run(analyzer, sweep, out / f"pair_{name}_{index}.csv", label=name)
            throughput[name] = result.rows[0].throughput
        pair = ServedPair(
            pair=index,
            concurrency=concurrency,
            ort_img_s=throughput["ort"],
            openvino_img_s=throughput["openvino"],
            ratio=throughput["openvino"] / throughput["ort"],
        )
        echo(
            f"  pair {index + 1}: ORT {pair.ort_img_s:.1f}, OpenVINO {precision} "
            f"{pair.openvino_img_s:.1f} img/s -> {pair.ratio:.2f}x"
        )
        results.append(pair)
    return results


def served_ratios(served: Mapping[str, Sequence[ServedRound]]) -> list[tuple[float, str]]:
    """Best img/s of each OpenVINO path (the ensemble, the fused model when served) over the best
    ONNX Runtime FP32 ensemble img/s, with the path's label, in ``served`` order."""
    best = {name: max(entry.row.throughput for entry in rows) for name, rows in served.items()}
    return [(best[name] / best[ORT_LABEL], name) for name in served if name != ORT_LABEL]


def ensure_repository(repo: Path | None, out: Path, precision: str, typical: list[Path]) -> Path:
    """The given repository, or a random-weight export; adds the OpenVINO variant if missing.

    Random weights have near-flat logits, so the fidelity gate is forced here: this repository
    measures speed only (fidelity is measured on the fitted digits model in the tests).
    """
    from resnet18_triton.export.openvino_variant import build_openvino_variant
    from resnet18_triton.export.quantize import load_preprocess_module, preprocess_files

    if repo is None:
        from resnet18_triton.export.pipeline import ExportRequest, export_repository

        request = ExportRequest(repository=out / "model_repository", weights="random", seed=0)
        repo = export_repository(request).repository
    if not variants.holds(repo, variants.OPENVINO):
        held_out = preprocess_files(typical, load_preprocess_module(repo))
        report = build_openvino_variant(repo, precision, held_out, force=True)
        print(
            f"OpenVINO {precision} variant written; fidelity on the bench JPEGs:\n{report.table()}"
        )
    return repo


def served_vs_inprocess(
    served: Mapping[str, Sequence[ServedRound]], inprocess: Sequence[InProcessRow]
) -> list[tuple[str, str, float, float]]:
    """(served label, in-process engine, served best img/s, in-process best img/s) for each served
    path whose engine and precision (``ort fp32 ...`` -> ``ort-fp32``) was also run in-process."""
    found = []
    for label, rows in served.items():
        engine = "-".join(label.split()[:2])
        alone = [row.images_per_s for row in inprocess if row.engine == engine]
        if rows and alone:
            found.append((label, engine, max(entry.row.throughput for entry in rows), max(alone)))
    return found


def report_markdown(
    environment: Mapping[str, object],
    inprocess: Sequence[InProcessRow],
    served: Mapping[str, Sequence[ServedRound]],
    pairs: Sequence[ServedPair] | None = None,
) -> str:
    """The figures as Markdown tables, with the CPU and the served ratio. ``environment`` needs
    the keys ``date``, ``cpu``, ``cores`` and ``flags`` (a ``BenchEnvironment`` has them)."""
    lines = [
        f"# OpenVINO bench ({environment['date']})",
        "",
        f"CPU: {environment['cpu']}, {environment['cores']} cores, flags: {environment['flags']}",
        "",
        "| engine (in-process) | batch | ms/img (median) | img/s |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r.engine} | {r.batch} | {r.ms_per_image:.1f} | {r.images_per_s:.1f} |"
        for r in inprocess
    ]
    lines += [
        "",
        "| served (perf_analyzer) | best img/s per round | p50 ms at c=1 |",
        "|---|---|---|",
    ]
    for label, rows in served.items():
        rounds = sorted({entry.round for entry in rows})
        bests = [max(e.row.throughput for e in rows if e.round == i) for i in rounds]
        p50 = [e.row.p50_ms for e in rows if e.row.load == 1]
        lines.append(
            f"| {label} | {', '.join(f'{b:.1f}' for b in bests)} | "
            f"{', '.join(f'{p:.1f}' for p in p50)} |"
        )
    for ratio, label in served_ratios(served) if served else []:
        lines += ["", f"**{label} / {ORT_LABEL}: {ratio:.2f}x** (best img/s, same server)"]
    versus = served_vs_inprocess(served, inprocess)
    if versus:
        lines += [
            "",
            "| served / in-process, same engine and precision | served best img/s | "
            "in-process best img/s (any batch) | ratio |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {label} / {engine} | {top:.1f} | {alone:.1f} | {top / alone:.2f}x |"
            for label, engine, top, alone in versus
        ]
    if pairs:
        ratios = [pair.ratio for pair in pairs]
        lines += [
            "",
            f"Back-to-back pairs at concurrency {pairs[0].concurrency}: median ratio "
            f"**{statistics.median(ratios):.2f}x** (range {min(ratios):.2f}-{max(ratios):.2f}x, "
            f"{len(ratios)} pairs)",
        ]
    return "\n".join(lines) + "\n"


def figures_json(
    inprocess: Sequence[InProcessRow],
    served: Mapping[str, Sequence[ServedRound]],
    pairs: Sequence[ServedPair],
) -> dict[str, object]:
    """The figures as JSON-ready data: ``inprocess`` and ``pairs`` as lists of objects,
    ``served`` as label -> [row fields plus ``round``]."""
    return {
        "inprocess": [asdict(row) for row in inprocess],
        "served": {label: [entry.as_dict() for entry in rows] for label, rows in served.items()},
        "pairs": [asdict(pair) for pair in pairs],
    }


def environment() -> BenchEnvironment:
    """Where this process runs (see ``BenchEnvironment``)."""
    import openvino

    from resnet18_triton.cpu_flags import BF16_FLAGS, INT8_FLAGS, cpu_flags, present

    here = harness.machine()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": here.cpu,
        "cores": here.cores,
        "flags": ", ".join(present(BF16_FLAGS + INT8_FLAGS, cpu_flags())) or "none",
        "openvino": openvino.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repo", type=Path, default=None)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "f32", "int8"))
    parser.add_argument("--concurrency", default="1:4:1")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pairs", type=int, default=8, help="back-to-back ORT/OpenVINO pairs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    typical = image_sets.jpeg_set(args.out / "images", image_sets.TYPICAL_SIZE, 16)
    repo = ensure_repository(args.repo, args.out, args.precision, typical).resolve()
    env = environment()
    print("in-process engines (interleaved) ...")
    inprocess = inprocess_rows(repo, seconds=args.seconds)
    options = harness.local_options(
        repo, exit_timeout_s=10, models=served_models(repo, int8=False, openvino=True)
    )
    with harness.local_server(options, args.out / "tritonserver.log") as server:
        print(f"served ensembles on {server.url} ...")
        served = served_rows(
            server.url,
            typical,
            args.out,
            variant_precision(repo),
            concurrency=args.concurrency,
            rounds=args.rounds,
            fused=variants.holds(repo, variants.OPENVINO_FUSED),
        )
        pairs = served_pairs(
            server.url,
            args.out / "input_500x375.json",
            args.out,
            variant_precision(repo),
            pairs=args.pairs,
        )
    figures = {"environment": env, **figures_json(inprocess, served, pairs)}
    (args.out / "openvino_bench.json").write_text(json.dumps(figures, indent=2, default=str))
    markdown = report_markdown(env, inprocess, served, pairs)
    (args.out / "openvino_bench.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
