"""Images, report and ratio logic of the perf package (no server, no perf_analyzer)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from resnet18_triton.perf import bench, images, report
from resnet18_triton.perf.perf_analyzer import Row


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


def test_rows_csv_and_plot(tmp_path: Path) -> None:
    rows = [_row("raw", 1, 50), _row("raw", 2, 60, 20), _row("ens", 1, 40)]
    path = report.write_rows_csv(rows, tmp_path / "rows.csv")
    assert path.read_text().count("\n") == 4
    assert report.best(rows).throughput == 60
    png = report.plot_throughput_latency(rows, tmp_path / "plot.png", "t")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"
    assert "| raw | 2 | 60.0 |" in report.sweep_table(rows)


def _results(stack_mb: float) -> bench.BenchResults:
    # stack_mb: the served stack's peak RSS during the 500x375 ensemble sweep
    results = bench.BenchResults()
    results.engines = [
        {
            "engine": "eager",
            "batch": 1,
            "images_per_s": 20.0,
            "ms_per_image": 50.0,
            "peak_rss_mb": 500,
        },
        {
            "engine": "ort",
            "batch": 1,
            "images_per_s": 40.0,
            "ms_per_image": 25.0,
            "peak_rss_mb": 200,
        },
        {
            "engine": "ort",
            "batch": 8,
            "images_per_s": 38.0,
            "ms_per_image": 26.0,
            "peak_rss_mb": 250,
        },
        {
            "engine": "ort-nospin",
            "batch": 1,
            "images_per_s": 36.0,
            "ms_per_image": 27.8,
            "peak_rss_mb": 200,
        },
        {
            "engine": "ort-nospin",
            "batch": 8,
            "images_per_s": 39.0,
            "ms_per_image": 25.6,
            "peak_rss_mb": 250,
        },
        {
            "engine": "pipeline 500x375",
            "batch": 1,
            "images_per_s": 35.0,
            "ms_per_image": 28.0,
            "peak_rss_mb": 220,
        },
    ]
    results.served = {
        "raw": [_row("raw", 1, 33.0).as_dict()],
        "raw shm": [_row("raw", 1, 35.0).as_dict(), _row("raw", 2, 34.0).as_dict()],
        "raw b8 shm": [_row("raw", 1, 39.5).as_dict()],
        "ensemble 500x375": [_row("e", 1, 30.0, p50=30.0).as_dict(), _row("e", 2, 38.5).as_dict()],
        "ensemble 12MP": [_row("l", 1, 20.0).as_dict()],
    }
    results.batch_sizes = {"raw": 1, "raw shm": 1, "raw b8 shm": 8}
    results.stack_rss_mb = {"ensemble 500x375": stack_mb}
    return results


def test_ratios_against_the_issue_targets() -> None:
    found = {
        name: (value, met) for name, value, _target, met, _detail in bench.ratios(_results(300))
    }
    ensemble = next(v for k, v in found.items() if k.startswith("served ensemble (500x375"))
    assert ensemble[0] == pytest.approx(38.5 / 40) and ensemble[1] is True
    # Best served path (8 images per request) against the best in-process variant (any batch).
    raw = next(v for k, v in found.items() if k.startswith("served raw model, best path"))
    assert raw[0] == pytest.approx(39.5 / 40) and raw[1] is True
    # Like for like: each batch size against in-process ORT with the served settings (no spinning).
    batch1 = next(
        v
        for k, v in found.items()
        if k.startswith("served raw") and k.endswith("batch 1, best img/s (sequential phases)")
    )
    assert batch1[0] == pytest.approx(35.0 / 36.0) and batch1[1] is None
    batch8 = next(
        v
        for k, v in found.items()
        if k.startswith("served raw") and k.endswith("batch 8, best img/s (sequential phases)")
    )
    assert batch8[0] == pytest.approx(39.5 / 39.0)
    latency = next(v for k, v in found.items() if k.startswith("ensemble p50"))
    assert latency[0] == pytest.approx(2.0) and latency[1] is True
    large = next(v for k, v in found.items() if k.startswith("ensemble 12-MP"))
    assert large[0] == pytest.approx(20 / 38.5) and large[1] is False
    memory = next(v for k, v in found.items() if k.startswith("served stack peak RSS"))
    assert memory[0] == pytest.approx(300 / 220) and memory[1] is True
    memory = next(
        v for name, v, *_ in bench.ratios(_results(400)) if name.startswith("served stack peak")
    )
    assert memory > 1.5


def test_interleaved_medians_carry_the_raw_target() -> None:
    results = _results(300)
    results.interleaved = {
        8: {
            "label": "raw b8 shm",
            "concurrency": 1.0,
            "in_process": [40.0, 42.0, 38.0],
            "served": [41.0, 39.0, 36.0],
        }
    }
    found = {name: (value, target, met) for name, value, target, met, _ in bench.ratios(results)}
    interleaved = next(v for k, v in found.items() if "interleaved" in k and "batch 8" in k)
    assert interleaved == (pytest.approx(39.0 / 40.0), ">= 0.98", False)
    # The sequential best-vs-best row stays in the report, without the target.
    sequential = next(v for k, v in found.items() if k.startswith("served raw model, best path"))
    assert sequential[1] == "-" and sequential[2] is None


def test_report_is_written(tmp_path: Path) -> None:
    plan = bench.BenchPlan(out=tmp_path)
    path = bench.write_report(plan, _results(300), tmp_path / "repo")
    text = path.read_text()
    assert "served ensemble 500x375" in text and "NOT met" in text and "in-process ort" in text
    assert (tmp_path / "served.csv").is_file() and (tmp_path / "served.png").is_file()
