"""Images, report and ratio logic of the perf package (no server, no perf_analyzer)."""

from __future__ import annotations

import io
import statistics
from pathlib import Path

import pytest

from resnet18_triton.contract import ClassifierNames
from resnet18_triton.perf import bench, images, ratios, report
from resnet18_triton.perf.measurements import (
    FP32,
    TYPICAL,
    BenchResults,
    EngineRow,
    InProcessSpec,
    InterleavedPair,
    ServedSpec,
    ServedSweep,
)
from resnet18_triton.perf.perf_analyzer import Row
from resnet18_triton.repository import variants

INT8, INT8_FUSED = variants.INT8.key, variants.INT8_FUSED.key


def _row(label: str, load: float, throughput: float, p50: float = 10.0) -> Row:
    return Row(
        model="m",
        label=label,
        load=load,
        mode="concurrency",
        throughput=throughput,
        p50_ms=p50,
        p90_ms=p50 + 1,
        p95_ms=p50 + 2,
        p99_ms=p50 + 3,
        avg_ms=p50,
        server_queue_ms=0.1,
        server_compute_ms=p50 - 1,
    )


def test_jpeg_sets_are_deterministic_and_cached(tmp_path: Path) -> None:
    from PIL import Image

    first = images.jpeg_set(tmp_path / "a", (50, 40), 2)
    second = images.jpeg_set(tmp_path / "b", (50, 40), 2)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert first[0].read_bytes() != first[1].read_bytes()
    with Image.open(io.BytesIO(first[0].read_bytes())) as image:
        assert (image.format, image.size) == ("JPEG", (50, 40))
    mtime = first[0].stat().st_mtime_ns
    images.jpeg_set(tmp_path / "a", (50, 40), 2)
    assert first[0].stat().st_mtime_ns == mtime
    assert images.read_folder(tmp_path / "a") == first


@pytest.mark.slow
def test_rows_csv_and_plot(tmp_path: Path) -> None:
    rows = [_row("raw", 1, 50), _row("raw", 2, 60, 20), _row("ens", 1, 40)]
    path = report.write_rows_csv(rows, tmp_path / "rows.csv")
    assert path.read_text().count("\n") == 4
    assert report.best(rows).throughput == 60
    png = report.plot_throughput_latency(rows, tmp_path / "plot.png", "t")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"
    assert "| raw | 2 | 60.0 |" in report.sweep_table(rows)


# Inputs of the ratio tests: in-process img/s and peak RSS, served best img/s.
EAGER, ORT_SPIN_B1, ORT_SPIN_B8, ORT_NOSPIN_B1, ORT_NOSPIN_B8 = 20.0, 40.0, 38.0, 36.0, 39.0
INT8_NOSPIN_B1 = 54.0
PIPELINE_MS, PIPELINE_RSS, ORT_B1_RSS = 28.0, 220.0, 200.0
RAW_SHM_STACK_RSS = 280.0
RAW, RAW_SHM, RAW_B8_SHM = 33.0, 35.0, 39.5
ENSEMBLE_C1, ENSEMBLE_C2, ENSEMBLE_P50_C1, LARGE = 30.0, 38.5, 30.0, 20.0


def _engine(spec: InProcessSpec, images_per_s: float, rss: float = 250.0) -> EngineRow:
    return EngineRow(spec, 1000 / images_per_s, images_per_s, rss)


def _sweep(spec: ServedSpec, *rows: Row, stack_mb: float | None = None) -> ServedSweep:
    return ServedSweep(spec, rows, failed_requests=0, stack_rss_mb=stack_mb)


def _results(stack_mb: float = 300.0, interleaved: tuple[InterleavedPair, ...] = ()):
    # stack_mb: the served stack's peak RSS during the 500x375 ensemble sweep
    return BenchResults(
        engines=(
            _engine(InProcessSpec("eager"), EAGER, rss=500),
            _engine(InProcessSpec("ort"), ORT_SPIN_B1, rss=ORT_B1_RSS),
            _engine(InProcessSpec("ort", 8), ORT_SPIN_B8),
            _engine(InProcessSpec("ort", spinning=False), ORT_NOSPIN_B1, rss=ORT_B1_RSS),
            _engine(InProcessSpec("ort", 8, spinning=False), ORT_NOSPIN_B8),
            _engine(InProcessSpec("ort", 1, INT8, spinning=False), INT8_NOSPIN_B1),
            EngineRow(InProcessSpec("pipeline", images="500x375"), PIPELINE_MS, 35.0, PIPELINE_RSS),
        ),
        served=(
            _sweep(ServedSpec("raw"), _row("raw", 1, RAW)),
            _sweep(
                ServedSpec("raw", shared_memory=True),
                _row("", 1, RAW_SHM),
                _row("", 2, 34.0),
                stack_mb=RAW_SHM_STACK_RSS,
            ),
            _sweep(ServedSpec("raw", 8, shared_memory=True), _row("", 1, RAW_B8_SHM)),
            _sweep(
                ServedSpec("ensemble", images="500x375"),
                _row("", 1, ENSEMBLE_C1, p50=ENSEMBLE_P50_C1),
                _row("", 2, ENSEMBLE_C2),
                stack_mb=stack_mb,
            ),
            _sweep(ServedSpec("ensemble", images="12MP"), _row("", 1, LARGE)),
        ),
        interleaved=interleaved,
    )


def _by_name(values) -> dict[str, object]:
    return {value.ratio.name: value for value in values}


def _one(values, *fragments: str):
    (found,) = [v for v in values if all(fragment in v.ratio.name for fragment in fragments)]
    return found


def test_in_process_labels_come_from_the_spec() -> None:
    assert InProcessSpec("eager", 8).label == "eager"
    assert InProcessSpec("ort").label == "ort"
    assert InProcessSpec("ort", spinning=False).label == "ort-nospin"
    assert InProcessSpec("ort", 8, INT8, spinning=False).label == "ort-int8-nospin"
    assert InProcessSpec("pipeline", images="12MP").label == "pipeline 12MP"
    assert InProcessSpec("pipeline", variant=INT8, images="12MP").label == "pipeline-int8 12MP"


def test_served_labels_come_from_the_spec() -> None:
    assert ServedSpec("raw").label == "raw"
    assert ServedSpec("raw", shared_memory=True).label == "raw shm"
    assert ServedSpec("raw", 8).label == "raw b8"
    assert ServedSpec("raw", 8, shared_memory=True).label == "raw b8 shm"
    assert ServedSpec("ensemble", images="500x375").label == "ensemble 500x375"
    int8 = ServedSpec("ensemble", variant=INT8, images="500x375")
    assert int8.label == "int8 ensemble 500x375"
    fused = ServedSpec("ensemble", variant=INT8_FUSED, images="500x375")
    assert fused.label == "int8 fused 500x375"


def test_ratio_table_computes_each_ratio_from_its_two_figures() -> None:
    values = bench.ratios(_results(stack_mb=300.0))
    best_ort = max(ORT_SPIN_B1, ORT_SPIN_B8, ORT_NOSPIN_B1, ORT_NOSPIN_B8)
    ensemble = _one(values, "served ensemble (500x375")
    assert ensemble.value == pytest.approx(ENSEMBLE_C2 / best_ort)
    assert ensemble.met is (ENSEMBLE_C2 / best_ort >= 0.95)
    # Best served path (8 images per request) against the best in-process variant (any batch).
    raw = _one(values, "served raw model, best path")
    assert raw.value == pytest.approx(RAW_B8_SHM / best_ort) and raw.met is None
    assert "raw b8 shm" in raw.detail
    # Like for like: each batch size against in-process ORT with the served settings.
    batch1 = _one(values, "batch 1, best img/s (sequential")
    assert batch1.value == pytest.approx(max(RAW, RAW_SHM) / ORT_NOSPIN_B1)
    batch8 = _one(values, "batch 8, best img/s (sequential")
    assert batch8.value == pytest.approx(RAW_B8_SHM / ORT_NOSPIN_B8)
    latency = _one(values, "ensemble p50")
    assert latency.value == pytest.approx(ENSEMBLE_P50_C1 - PIPELINE_MS)
    assert latency.met is (ENSEMBLE_P50_C1 - PIPELINE_MS <= 3.0)
    large = _one(values, "ensemble 12-MP")
    assert large.value == pytest.approx(LARGE / ENSEMBLE_C2) and large.met is False
    memory = _one(values, "peak RSS during ensemble 500x375")
    assert memory.value == pytest.approx(300.0 / PIPELINE_RSS) and memory.met is True
    raw_memory = _one(values, "peak RSS during raw shm")
    assert raw_memory.value == pytest.approx(RAW_SHM_STACK_RSS / ORT_B1_RSS)
    assert raw_memory.met is None
    assert _one(values, "ORT FP32 / PyTorch eager").value == pytest.approx(ORT_SPIN_B1 / EAGER)
    assert _one(values, "served ensemble / served raw").value == pytest.approx(ENSEMBLE_C2 / RAW)
    int8 = _one(values, "INT8 / FP32 (spinning off), batch 1")
    assert int8.value == pytest.approx(INT8_NOSPIN_B1 / ORT_NOSPIN_B1)


def test_served_int8_ensemble_is_held_to_three_quarters_of_the_int8_engine() -> None:
    int8_b8, int8_loop, served_int8 = 60.0, 40.0, 44.0
    base = _results()
    results = BenchResults(
        engines=(
            *base.engines,
            _engine(InProcessSpec("ort", 8, INT8, spinning=False), int8_b8),
            _engine(InProcessSpec("pipeline", variant=INT8, images="500x375"), int8_loop),
        ),
        served=(
            *base.served,
            _sweep(
                ServedSpec("ensemble", variant=INT8, images="500x375"), _row("", 2, served_int8)
            ),
        ),
    )
    values = bench.ratios(results)
    engine = _one(values, "served INT8 ensemble (500x375 JPEG) / in-process ORT INT8")
    assert engine.value == pytest.approx(served_int8 / max(INT8_NOSPIN_B1, int8_b8))
    assert engine.met is (served_int8 / max(INT8_NOSPIN_B1, int8_b8) >= 0.75)
    loop = _one(values, "served INT8 ensemble", "decode + preprocess + ORT loop")
    assert loop.value == pytest.approx(served_int8 / int8_loop)
    fp32_loop = _one(values, "served FP32 ensemble", "decode + preprocess + ORT loop")
    assert fp32_loop.value == pytest.approx(ENSEMBLE_C2 / 35.0)
    assert "served INT8 fused model" not in " ".join(_by_name(values))  # not measured


def test_the_fused_int8_model_is_held_to_the_same_bar_and_compared_with_the_ensemble() -> None:
    int8_b8, served_ensemble, served_fused = 60.0, 40.0, 46.0
    base = _results()
    results = BenchResults(
        engines=(*base.engines, _engine(InProcessSpec("ort", 8, INT8, spinning=False), int8_b8)),
        served=(
            *base.served,
            _sweep(
                ServedSpec("ensemble", variant=INT8, images="500x375"),
                _row("", 8, served_ensemble),
            ),
            _sweep(ServedSpec("ensemble", 1, INT8_FUSED, "500x375"), _row("", 8, served_fused)),
        ),
    )
    values = bench.ratios(results)
    fused = _one(values, "served INT8 fused model (500x375 JPEG) / in-process ORT INT8")
    assert fused.value == pytest.approx(served_fused / int8_b8)
    assert fused.met is (served_fused / int8_b8 >= 0.75)
    ensemble = _one(values, "served INT8 ensemble (500x375 JPEG) / in-process ORT INT8")
    assert ensemble.met is (served_ensemble / int8_b8 >= 0.75)
    versus = _one(values, "served INT8 fused model / served INT8 ensemble")
    assert versus.value == pytest.approx(served_fused / served_ensemble)
    int8 = (variants.INT8, variants.INT8_FUSED)
    specs = bench.served_specs(shared_memory=False, swept=int8)
    assert [spec.label for spec in specs][-2:] == ["int8 ensemble 500x375", "int8 fused 500x375"]
    ensemble_only = bench.served_specs(False, (variants.INT8,))
    assert "int8 fused 500x375" not in [spec.label for spec in ensemble_only]


def test_ratios_without_both_figures_are_left_out() -> None:
    names = " ".join(_by_name(bench.ratios(_results())))
    # No TorchScript run, no served INT8 ensemble, no 8-image INT8 run, no interleaving.
    assert "TorchScript" not in names
    assert "served INT8 ensemble" not in names
    assert "INT8 / FP32 (spinning off), batch 8" not in names
    assert "interleaved" not in names
    # The stack's RSS was sampled only during the 500x375 ensemble and the raw shm sweep.
    assert "during ensemble 12MP" not in names and "during raw b8" not in names
    assert "during raw /" not in names


def test_stack_memory_over_its_bound_is_not_met() -> None:
    memory = _one(bench.ratios(_results(stack_mb=400.0)), "peak RSS during ensemble 500x375")
    assert memory.value == pytest.approx(400.0 / PIPELINE_RSS) and memory.met is False


def test_interleaved_medians_carry_the_raw_target() -> None:
    in_process, served = (40.0, 42.0, 38.0), (41.0, 39.0, 36.0)
    pair = InterleavedPair(ServedSpec("raw", 8, shared_memory=True), 1.0, in_process, served)
    interleaved = _one(bench.ratios(_results(interleaved=(pair,))), "interleaved", "batch 8")
    assert interleaved.value == pytest.approx(
        statistics.median(served) / statistics.median(in_process)
    )
    assert str(interleaved.ratio.target) == ">= 0.98" and interleaved.met is False
    assert "raw b8 shm, c=1" in interleaved.detail and "41.0/39.0/36.0" in interleaved.detail


def test_evaluate_takes_any_declared_table() -> None:
    table = (
        ratios.Ratio(
            "eager / ort",
            ratios.EngineFigure(InProcessSpec("eager")),
            ratios.EngineFigure(InProcessSpec("ort")),
            ratios.Target(0.4, at_most=True),
        ),
    )
    (value,) = ratios.evaluate(table, _results())
    assert value.value == pytest.approx(EAGER / ORT_SPIN_B1) and value.met is (
        EAGER / ORT_SPIN_B1 <= 0.4
    )
    assert str(value.ratio.target) == "<= 0.4"


@pytest.mark.slow
def test_report_is_written(tmp_path: Path) -> None:
    plan = bench.BenchPlan(out=tmp_path)
    path = bench.write_report(plan, _results(), tmp_path / "repo")
    text = path.read_text()
    assert (
        "served ensemble 500x375" in text and "NOT met" in text and "in-process ort-nospin" in text
    )
    assert (tmp_path / "served.csv").is_file() and (tmp_path / "served.png").is_file()
    document = bench.results_json(_results())
    assert document["served"][2]["label"] == "raw b8 shm"
    assert document["engines"][3]["label"] == "ort-nospin"


def test_the_int8_ensemble_is_swept_until_a_full_batch_is_in_flight() -> None:
    settings = bench.pa.SweepSettings(concurrency="1:4:1")
    data = {TYPICAL: Path("input.json")}
    int8 = bench.sweep_for(
        ServedSpec("ensemble", variant=INT8, images=TYPICAL), "u", settings, data
    )
    fp32 = bench.sweep_for(ServedSpec("ensemble", images=TYPICAL), "u", settings, data)
    fused = bench.sweep_for(
        ServedSpec("ensemble", variant=INT8_FUSED, images=TYPICAL), "u", settings, data
    )
    assert int8.settings.concurrency == f"1:{bench.FAST_ENSEMBLE_MIN_CONCURRENCY}:1"
    assert fused.settings.concurrency == int8.settings.concurrency
    assert fp32.settings.concurrency == "1:4:1"
    assert bench.extend_range("2:16:2", 8) == "2:16:2"


def test_cpu_per_image_divides_each_process_kinds_time_by_the_images_served() -> None:
    from resnet18_triton.perf.stack import cpu_delta

    before = {1: ("tritonserver", 10.0), 2: ("stub:preprocess", 5.0), 3: ("stub:preprocess", 1.0)}
    after = {
        1: ("tritonserver", 10.5),
        2: ("stub:preprocess", 6.0),
        3: ("stub:preprocess", 2.5),
        4: ("stub:resnet18_int8", 9.0),  # started in between: counts from 0
    }
    spent = cpu_delta(before, after)
    assert spent == {"tritonserver": 0.5, "stub:preprocess": 2.5, "stub:resnet18_int8": 9.0}
    per_image = bench.cpu_per_image({**spent, "perf_analyzer": 0.2}, 1000, 2000)
    assert per_image == pytest.approx(
        {
            "tritonserver": 0.5,
            "stub:preprocess": 2.5,
            "stub:resnet18_int8": 9.0,
            "perf_analyzer": 0.2,
        }
    )
    assert bench.cpu_per_image(spent, None, 2000) == {}
    assert bench.cpu_per_image(spent, 2000, 2000) == {}


def test_the_cpu_table_totals_each_path_and_bounds_its_throughput() -> None:
    sweep = ServedSweep(
        ServedSpec("ensemble", variant=INT8, images=TYPICAL),
        (_row("x", 1, 100.0),),
        cpu_ms_per_image={"stub:preprocess": 3.0, "stub:resnet18_int8": 7.0},
    )
    unsampled = ServedSweep(ServedSpec("raw"), (_row("y", 1, 50.0),))
    table = bench.cpu_table([sweep, unsampled], cores=2)
    assert "| int8 ensemble 500x375 | 3.00 | 7.00 | 10.00 | 200 |" in table
    assert "img/s bound on 2 cores" in table
    assert "| raw |" not in table


def test_every_registered_variant_is_swept_and_compared_with_the_path_it_replaces() -> None:
    names = ClassifierNames.of()
    swept = bench.served_specs(False, variants.REGISTRY)[-len(variants.REGISTRY) :]
    assert [spec.variant for spec in swept] == [variant.key for variant in variants.REGISTRY]
    models = bench.BenchModels(names, variants.REGISTRY)
    assert [models.served(spec) for spec in swept] == [v.entry(names) for v in variants.REGISTRY]
    compared = {(ratio.numerator, ratio.denominator) for ratio in ratios.RATIOS}
    for variant in variants.REGISTRY:
        replaced = ratios.served_path(variant.fuses or FP32)
        pair = (ratios.ServedFigure(ratios.served_path(variant.key)), ratios.ServedFigure(replaced))
        assert pair in compared, variant.key


def _tiny_onnx(path: Path) -> Path:
    """A graph with the classifier's uint8 input that only averages it: fast to time."""
    import onnx
    from onnx import TensorProto, helper

    from resnet18_triton import contract

    pixels = helper.make_tensor_value_info(
        contract.ONNX_INPUT, TensorProto.UINT8, ["N", 3, 224, 224]
    )
    mean = helper.make_tensor_value_info(contract.ONNX_OUTPUT, TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Cast", [contract.ONNX_INPUT], ["floats"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["floats"], [contract.ONNX_OUTPUT]),
    ]
    graph = helper.make_graph(nodes, "tiny", [pixels], [mean])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_engines_timed_alternated_take_turns_and_each_get_their_own_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    from dataclasses import asdict

    from resnet18_triton.perf import inprocess

    model = str(_tiny_onnx(tmp_path / "tiny.onnx"))
    specs = [inprocess.EngineSpec("ort", batch, 1, 0.05, 3, 1, onnx_path=model) for batch in (1, 2)]
    results = inprocess.run_interleaved(specs)
    assert [(result.engine, result.batch) for result in results] == [("ort", 1), ("ort", 2)]
    # Call by call: every engine made as many timed calls as the others.
    assert results[0].iterations == results[1].iterations >= 3
    # The child's protocol: a JSON list of specs in, one JSON list of results out.
    inprocess.main([json.dumps([asdict(spec) for spec in specs])])
    printed = json.loads(capsys.readouterr().out)
    assert [entry["batch"] for entry in printed] == [1, 2]
