"""A short real perf_analyzer run against the session's server (no timing assertions)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from resnet18_triton.errors import PerfAnalyzerError
from resnet18_triton.perf import images
from resnet18_triton.perf import perf_analyzer as pa
from resnet18_triton.perf.loadtest import LoadTestPlan, run_loadtest


@pytest.fixture(scope="module")
def analyzer() -> pa.PerfAnalyzer:
    try:
        found = pa.locate()
        found.version()
    except PerfAnalyzerError as error:
        pytest.skip(f"perf_analyzer cannot run here: {error}")
    return found


def test_loadtest_ensemble_and_raw(analyzer: pa.PerfAnalyzer, url: str, tmp_path: Path) -> None:
    files = images.jpeg_set(tmp_path / "images", (500, 375), 2)
    plan = LoadTestPlan(
        url=url,
        out=tmp_path / "out",
        settings=pa.SweepSettings(
            concurrency="1", measurement_interval_ms=1000, stability_percentage=100, max_trials=10
        ),
        images=tuple(files),
        image_label="500x375",
    )
    results = run_loadtest(plan, analyzer, echo=lambda _text: None)

    assert [result.sweep.model for result in results] == ["resnet18", "resnet18_onnx"]
    for result in results:
        assert result.rows, f"{result.label}: no rows"
        assert result.failed_requests == 0
        assert result.successful_requests and result.successful_requests > 0
        with result.csv_path.open() as stream:
            assert len(list(csv.DictReader(stream))) >= 1
    with (plan.out / "loadtest.csv").open() as stream:
        assert len(list(csv.DictReader(stream))) == 2
    assert (plan.out / "loadtest.md").is_file()
    assert (plan.out / "loadtest.png").read_bytes()[:4] == b"\x89PNG"


def raw_in_shared_memory(url: str, tmp_path: Path, **settings: Any) -> LoadTestPlan:
    """A plan for the raw model alone at concurrency 1, its inputs in system shared memory;
    ``settings``: the sweep's other settings."""
    sweep = {"measurement_interval_ms": 1000, **settings}
    return LoadTestPlan(
        url=url,
        out=tmp_path / "out",
        targets=("raw",),
        settings=pa.SweepSettings(
            concurrency="1",
            stability_percentage=100,
            max_trials=10,
            shared_memory="system",
            **sweep,
        ),
    )


def test_loadtest_raw_model_in_shared_memory_with_full_batches(
    analyzer: pa.PerfAnalyzer, url: str, admin_key: str, tmp_path: Path
) -> None:
    # Registering shared memory is a restricted API: the admin key header must reach the server.
    plan = raw_in_shared_memory(url, tmp_path, batch_size=8, admin_key=admin_key)
    (result,) = run_loadtest(plan, analyzer, echo=lambda _text: None)
    assert result.failed_requests == 0
    assert result.successful_requests and result.successful_requests > 0
    assert "system shared memory" in (plan.out / "loadtest.md").read_text()


def test_loadtest_shared_memory_without_the_admin_key_fails_clearly(
    analyzer: pa.PerfAnalyzer, url: str, tmp_path: Path
) -> None:
    plan = raw_in_shared_memory(url, tmp_path, measurement_interval_ms=500)
    with pytest.raises(PerfAnalyzerError, match=r"(?s)restricted.*--admin-key") as error:
        run_loadtest(plan, analyzer, echo=lambda _text: None)
    assert "resnet18_onnx" in str(error.value)
