"""perf_analyzer helpers: the --input-data document, arguments, CSV parsing (no binary run)."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest

from resnet18_triton.perf import perf_analyzer as pa
from resnet18_triton.perf.bench import served_round

CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
    "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,"
    "p90 latency,p95 latency,p99 latency,Avg latency,request/response,response wait\n"
    "2,99.7541,249,940,6629,70,11781,264,0,18130,26677,28431,63433,19935,249,19672\n"
    "1,82.8201,164,564,91,46,10828,341,0,10025,16360,30265,35955,12036,164,11855\n"
)


def test_input_data_is_length_prefixed_base64_per_image() -> None:
    images = [b"\xff\xd8first", b"second image bytes"]
    document = pa.input_data_json(images, "IMAGE")
    assert len(document["data"]) == 2
    for entry, original in zip(document["data"], images, strict=True):
        assert entry["IMAGE"]["shape"] == [1]
        raw = base64.b64decode(entry["IMAGE"]["content"]["b64"])
        (length,) = struct.unpack("<I", raw[:4])
        assert length == len(original)
        assert raw[4:] == original


def test_input_data_refuses_no_images() -> None:
    with pytest.raises(pa.PerfAnalyzerError):
        pa.input_data_json([], "IMAGE")


def test_write_input_data_round_trips(tmp_path: Path) -> None:
    path = pa.write_input_data([b"abc"], "IMAGE", tmp_path / "sub" / "data.json")
    assert json.loads(path.read_text()) == pa.input_data_json([b"abc"], "IMAGE")


def test_parse_csv_converts_to_ms_and_sorts_by_load(tmp_path: Path) -> None:
    path = tmp_path / "perf.csv"
    path.write_text(CSV)
    rows = pa.parse_csv(path, "resnet18_onnx", "raw", "concurrency")
    assert [row.load for row in rows] == [1.0, 2.0]
    first = rows[0]
    assert first.throughput == pytest.approx(82.8201)
    assert first.p50_ms == pytest.approx(10.025)
    assert first.p99_ms == pytest.approx(35.955)
    assert first.avg_ms == pytest.approx(12.036)
    assert first.server_queue_ms == pytest.approx(0.091)
    assert first.server_compute_ms == pytest.approx((46 + 10828 + 341) / 1000)


def test_sweep_arguments_concurrency_and_request_rate(tmp_path: Path) -> None:
    sweep = pa.Sweep(model="resnet18", url="127.0.0.1:9", input_data=tmp_path / "d.json")
    args = sweep.arguments(tmp_path / "out.csv")
    assert args[args.index("--concurrency-range") + 1] == "1:4:1"
    assert args[args.index("--input-data") + 1] == str(tmp_path / "d.json")
    assert args[args.index("-f") + 1] == str(tmp_path / "out.csv")
    assert "--verbose-csv" in args
    settings = pa.SweepSettings(request_rate="10:40:10", protocol="grpc")
    assert settings.mode == "request_rate" and pa.SweepSettings().mode == "concurrency"
    args = pa.Sweep("resnet18_onnx", "u", settings).arguments(tmp_path / "out.csv")
    assert "--concurrency-range" not in args
    assert args[args.index("--request-rate-range") + 1] == "10:40:10"
    assert args[args.index("-i") + 1] == "grpc"


def test_sweep_arguments_shared_memory_batch_and_admin_header(tmp_path: Path) -> None:
    settings = pa.SweepSettings(batch_size=8, shared_memory="system", admin_key="s3cret")
    args = pa.Sweep("resnet18_onnx", "u", settings).arguments(tmp_path / "out.csv")
    assert args[args.index("-b") + 1] == "8"
    assert args[args.index("--shared-memory") + 1] == "system"
    assert args[args.index("-H") + 1] == "triton-admin-key:s3cret"
    assert "s3cret" not in repr(settings)


def test_admin_key_travels_only_with_shared_memory(tmp_path: Path) -> None:
    # Only registering shared memory is restricted: other sweeps keep the key off the command line.
    plain = pa.Sweep("resnet18_onnx", "u", pa.SweepSettings(admin_key="s3cret"))
    args = plain.arguments(tmp_path / "out.csv")
    assert "--shared-memory" not in args and "-H" not in args
    assert not any("s3cret" in arg for arg in args)


def test_loader_error_names_the_debian_package() -> None:
    with pytest.raises(pa.PerfAnalyzerError, match="libb64-0d"):
        pa._raise_for_loader_error(
            "perf_analyzer: error while loading shared libraries: libb64.so.0d: cannot open"
        )
    pa._raise_for_loader_error("perf_analyzer 2.50")  # no error


def test_locate_puts_cuda_runtime_on_library_path(monkeypatch, tmp_path: Path) -> None:
    binary = tmp_path / "perf_analyzer"
    binary.write_text("")
    monkeypatch.setattr(pa, "cuda_runtime_lib_dir", lambda: tmp_path / "cudart")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/already/there")
    analyzer = pa.locate(binary)
    assert analyzer.env["LD_LIBRARY_PATH"].split(":") == [
        str(tmp_path / "cudart"),
        "/already/there",
    ]


def test_locate_without_cuda_runtime_says_what_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(pa, "cuda_runtime_lib_dir", lambda: None)
    with pytest.raises(pa.PerfAnalyzerError, match="nvidia-cuda-runtime-cu12"):
        pa.locate(tmp_path / "perf_analyzer")


def _analyzer_printing(tmp_path: Path, output: str) -> pa.PerfAnalyzer:
    """A stand-in binary that prints ``output`` and exits 2, as perf_analyzer does on failure."""
    binary = tmp_path / "perf_analyzer"
    binary.write_text(f"#!/bin/sh\necho '{output}'\nexit 2\n")
    binary.chmod(0o755)
    return pa.PerfAnalyzer(binary, {"PATH": "/usr/bin:/bin"})


def test_a_bench_round_without_a_stable_window_is_dropped_not_fatal(tmp_path: Path) -> None:
    analyzer = _analyzer_printing(
        tmp_path, "Failed to obtain stable measurement within 10 measurement windows"
    )
    sweep = pa.Sweep("resnet18_onnx", "127.0.0.1:9")
    assert served_round(analyzer, sweep, tmp_path / "round.csv", "raw") is None


def test_a_bench_round_that_fails_for_another_reason_still_raises(tmp_path: Path) -> None:
    analyzer = _analyzer_printing(tmp_path, "Failed to retrieve server metadata")
    sweep = pa.Sweep("resnet18_onnx", "127.0.0.1:9")
    with pytest.raises(pa.PerfAnalyzerError, match="server metadata"):
        served_round(analyzer, sweep, tmp_path / "round.csv", "raw")
