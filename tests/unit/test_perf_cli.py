"""The loadtest / bench / soak commands' argument handling, which models bench times, and the
soak verdict (nothing is run)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from resnet18_triton import contract
from resnet18_triton.cli import cli
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.errors import ExportError
from resnet18_triton.perf import bench as benching
from resnet18_triton.perf import perf_analyzer as pa
from resnet18_triton.perf import soak as soaking
from resnet18_triton.perf.cli import bench, loadtest
from resnet18_triton.perf.measurements import FP32, LARGE, TYPICAL, ServedSpec
from resnet18_triton.repository import layout, variants
from resnet18_triton.repository.classifier import Classifier, Preprocessing, default_labels
from resnet18_triton.repository.configs.settings import ServingSettings
from resnet18_triton.repository.transaction import staging_directory
from resnet18_triton.repository.writer import fill_repository, install_variant

SECOND = ClassifierNames.of("second")
INT8, INT8_FUSED = variants.INT8.key, variants.INT8_FUSED.key


def test_loadtest_rejects_a_malformed_range() -> None:
    result = CliRunner().invoke(loadtest, ["--concurrency", "1-4"])
    assert result.exit_code == 2
    assert "START[:END[:STEP]]" in result.output


def test_bench_with_url_needs_the_repository() -> None:
    result = CliRunner().invoke(bench, ["--url", "127.0.0.1:9"])
    assert result.exit_code == 2
    assert "--repo" in result.output


def test_help_mentions_the_container_url() -> None:
    result = CliRunner().invoke(loadtest, ["--help"])
    assert result.exit_code == 0
    assert "--url" in result.output and "--request-rate" in result.output


def test_loadtest_refuses_shared_memory_with_admin_key_over_grpc() -> None:
    # perf_analyzer sends headers over HTTP only: the registration would be refused mid-run.
    result = CliRunner().invoke(
        loadtest,
        ["--protocol", "grpc", "--shared-memory", "system"],
        env={contract.ADMIN_KEY_ENV_VAR: "k"},
    )
    assert result.exit_code == 2
    assert "--protocol http" in result.output


def test_soak_help_lists_its_options() -> None:
    result = CliRunner().invoke(cli, ["soak", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--duration", "--warmup", "--concurrency", "--url", "--server-pid"):
        assert option in result.output
    assert "--max-rss-growth" in result.output and "--json-out" in result.output


def test_soak_with_url_needs_the_server_pid() -> None:
    result = CliRunner().invoke(cli, ["soak", "--url", "127.0.0.1:9"])
    assert result.exit_code == 2
    assert "--server-pid" in result.output


def test_soak_refuses_a_zero_duration() -> None:
    result = CliRunner().invoke(cli, ["soak", "--duration", "0"])
    assert result.exit_code == 2
    assert "--duration" in result.output


def _summary(**changes: Any) -> soaking.SoakSummary:
    clean = soaking.SoakSummary(
        url="127.0.0.1:8000",
        concurrency=4,
        warmup_s=1.0,
        duration_s=3.0,
        distinct_images=8,
        requests_ok=100,
        requests_failed=0,
        answers_wrong=0,
        requests_per_s_after_warmup=30.0,
        errors=(),
        rss_mb_start={"tritonserver": 100.0},
        rss_mb_after_warmup={"tritonserver": 110.0},
        rss_mb_end={"tritonserver": 110.4},
        rss_growth_percent_after_warmup={"tritonserver": 0.4},
        max_rss_growth_percent=0.4,
        answers_after_soak_equal=True,
        max_difference_from_reference=None,
        processes_alive_at_end=True,
        pids_unchanged=True,
    )
    return replace(clean, **changes)


def test_soak_verdict_passes_a_clean_summary() -> None:
    assert soaking.verdict(_summary(), max_rss_growth_percent=10.0) == []


def test_soak_verdict_names_each_failure() -> None:
    failures = soaking.verdict(
        _summary(requests_failed=3, max_rss_growth_percent=12.5, pids_unchanged=False),
        max_rss_growth_percent=10.0,
    )
    assert len(failures) == 3
    assert "3 requests failed" in failures[0]
    assert "12.5 %" in failures[1] and "10 %" in failures[1]
    assert "replaced" in failures[2]
    far = soaking.verdict(_summary(max_difference_from_reference=1e-3), 10.0)
    assert len(far) == 1 and "reference" in far[0]


def test_soak_markdown_has_a_row_per_process() -> None:
    text = soaking.markdown(_summary())
    assert "concurrency 4, 8 distinct images" in text
    assert "| tritonserver | 100.0 | 110.0 | 110.4 | 0.4 % |" in text


# --- bench --name: which models of which classifier are timed ----------------------------------


@pytest.fixture()
def two_classifiers(tmp_path: Path) -> Path:
    """The default classifier and a second one as export writes them (stand-in model files: the
    writer never reads them), the second with its INT8 variant (and so its fused model)."""
    repo = tmp_path / "repo"
    settings = ServingSettings.from_core_budget(cores=2)
    for names in (ClassifierNames.of(), SECOND):
        labels = default_labels(10)
        fill_repository(
            repo,
            settings,
            json.dumps({"source": "random"}),
            labels,
            Classifier(names, tuple(labels)),
        )
        path = layout.onnx_model_path(repo, names.onnx)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"fp32 stand-in " + names.name.encode())
    with staging_directory(repo) as staging:
        target = variants.INT8.model_path(staging, SECOND)
        target.parent.mkdir(parents=True)
        target.write_bytes(b"int8 stand-in")
        install_variant(repo, staging, variants.INT8, SECOND, {"recipe": "test"})
    return repo


def test_bench_name_times_that_classifiers_ensemble_onnx_model_and_int8_variant(
    two_classifiers: Path, tmp_path: Path
) -> None:
    plan = benching.BenchPlan(out=tmp_path / "out", repo=two_classifiers, name="second")
    models = benching.bench_models(plan, two_classifiers)
    assert models.swept == (variants.INT8, variants.INT8_FUSED) and not models.openvino
    assert models.timed_files == (variants.INT8,)
    served = {spec.label: models.served(spec) for spec in benching.served_specs(True, models.swept)}
    assert served == {
        "ensemble 500x375": "second",
        "ensemble 12MP": "second",
        "raw": "second_onnx",
        "raw shm": "second_onnx",
        "raw b8 shm": "second_onnx",
        "int8 ensemble 500x375": "second_int8_ensemble",
        "int8 fused 500x375": "second_int8_fused",
    }
    assert models.listing() == [
        "second",
        "second_onnx",
        "second_int8_ensemble",
        "second_int8_fused",
    ]
    assert models.onnx_path(two_classifiers, FP32) == two_classifiers / "second_onnx/1/model.onnx"
    assert models.onnx_path(two_classifiers, INT8) == two_classifiers / "second_int8/1/model.onnx"
    assert models.onnx_path(two_classifiers, INT8).read_bytes() == b"int8 stand-in"
    assert models.preprocess_path(two_classifiers).is_file()
    assert models.preprocess_path(two_classifiers).parts[-3] == "second_preprocess"
    # Every in-process engine runs the second classifier's files, the INT8 one included.
    specs = benching.engine_specs(plan, models.timed_files)
    onnx_files = {
        benching._inprocess_spec(
            spec, plan, two_classifiers, {TYPICAL: [], LARGE: []}, 1.0, models
        ).onnx_path
        for spec in specs
    }
    assert onnx_files == {
        str(models.onnx_path(two_classifiers, FP32)),
        str(models.onnx_path(two_classifiers, INT8)),
    }


def test_bench_alternates_ort_with_openvino_at_its_precision_and_at_f32_batch_by_batch(
    tmp_path: Path,
) -> None:
    plan = benching.BenchPlan(out=tmp_path / "out")
    labels = [(spec.batch, spec.label) for spec in benching.side_by_side_specs(plan, "bf16")]
    assert labels == [
        (batch, label)
        for batch in (1, 8)
        for label in ("ort-nospin", "openvino-bf16", "openvino-f32")
    ]
    # A variant built at f32 is timed once, not twice.
    f32 = [spec.label for spec in benching.side_by_side_specs(plan, "f32") if spec.batch == 1]
    assert f32 == ["ort-nospin", "openvino-f32"]


def test_bench_of_the_default_classifier_skips_variants_only_another_classifier_has(
    two_classifiers: Path, tmp_path: Path
) -> None:
    plan = benching.BenchPlan(out=tmp_path / "out", repo=two_classifiers)
    models = benching.bench_models(plan, two_classifiers)
    assert models.present == () and models.swept == () and models.timed_files == ()
    assert models.listing() == ["resnet18", "resnet18_onnx"]
    sweep = benching.sweep_for(ServedSpec("raw"), "u", pa.SweepSettings(), {}, models)
    assert sweep.model == contract.ONNX_MODEL


def test_a_sweep_sends_its_requests_to_the_named_classifiers_model(two_classifiers: Path) -> None:
    models = benching.BenchModels(SECOND, variants.present(two_classifiers, SECOND))
    data = {TYPICAL: Path("input.json")}
    settings = pa.SweepSettings()
    fused = benching.sweep_for(
        ServedSpec("ensemble", variant=INT8_FUSED, images=TYPICAL), "u", settings, data, models
    )
    assert fused.model == "second_int8_fused" and fused.input_data == Path("input.json")
    assert benching.sweep_for(ServedSpec("raw"), "u", settings, data, models).model == "second_onnx"


def test_bench_refuses_a_classifier_the_repository_does_not_hold(
    two_classifiers: Path, tmp_path: Path
) -> None:
    plan = benching.BenchPlan(out=tmp_path / "out", repo=two_classifiers, name="third")
    with pytest.raises(
        ExportError, match=r"holds no classifier 'third' \(classifiers: resnet18, second\)"
    ):
        benching.run_bench(plan)
    assert not plan.out.exists()  # refused before anything was measured or written


def test_bench_refuses_a_classifier_whose_input_the_in_process_engines_cannot_feed(
    two_classifiers: Path, tmp_path: Path
) -> None:
    names = ClassifierNames.of("small")
    labels = default_labels(10)
    classifier = Classifier(names, tuple(labels), Preprocessing(resize_size=128, input_size=112))
    settings = ServingSettings.from_core_budget(cores=2)
    fill_repository(two_classifiers, settings, json.dumps({"source": "random"}), labels, classifier)
    plan = benching.BenchPlan(out=tmp_path / "out", repo=two_classifiers, name="small")
    with pytest.raises(ExportError, match="takes 112x112 images"):
        benching.check_plan(plan)


def test_bench_name_must_be_a_name_triton_can_serve(tmp_path: Path) -> None:
    result = CliRunner().invoke(bench, ["--repo", str(tmp_path), "--name", "../etc"])
    assert result.exit_code == 2
    assert "Invalid value for '--name'" in result.output and "not allowed" in result.output


def test_bench_openvino_is_refused_for_another_classifier(two_classifiers: Path) -> None:
    argv = ["--repo", str(two_classifiers), "--name", "second", "--openvino", "f32"]
    result = CliRunner().invoke(bench, argv)
    assert result.exit_code == 2
    assert "--openvino" in result.output and "'second'" in result.output


def test_bench_name_reaches_the_plan(
    two_classifiers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plans: list[benching.BenchPlan] = []
    monkeypatch.setattr(benching, "run_bench", lambda plan, echo: plans.append(plan))
    argv = ["--repo", str(two_classifiers), "--name", "second", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(bench, argv)
    assert result.exit_code == 0, result.output
    [plan] = plans
    assert (plan.name, plan.repo) == ("second", two_classifiers.resolve())
