"""``tune``: the search space, the quick search, the choice of a winner, apply and revert."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from google.protobuf.json_format import MessageToDict

from resnet18_triton import contract
from resnet18_triton.cli import cli
from resnet18_triton.client.results import serving_summary
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.errors import RepositoryError, TuneError
from resnet18_triton.perf.perf_analyzer import Row
from resnet18_triton.perf.tune.repository import (
    apply_plan,
    available_variants,
    backup_directory,
    plan_settings,
    revert,
    tuned_models,
    variant_models,
)
from resnet18_triton.perf.tune.search import csv_records, summary_table
from resnet18_triton.perf.tune.space import (
    FP32,
    Candidate,
    Measurement,
    SearchSpace,
    best_by_median,
    coordinate_descent,
    interleaved,
    median_scores,
    parse_label,
    select_winner,
    thread_splits,
    top_plans,
)
from resnet18_triton.repository import variants
from resnet18_triton.repository.configs.builders import all_model_configs, fused_model_config
from resnet18_triton.repository.configs.parser import (
    parse,
    repository_settings,
    settings_from_configs,
)
from resnet18_triton.repository.configs.settings import (
    ServingSettings,
    queue_bound,
    queue_timeout_us,
)
from resnet18_triton.repository.layout import onnx_model_path
from resnet18_triton.repository.writer import (
    fill_repository,
    variant_model_configs,
    write_variant,
    write_variant_configs,
)

INT8, OPENVINO = variants.INT8.key, variants.OPENVINO.key

DEFAULT = ClassifierNames.of()


def row(throughput: float, p99_ms: float, load: float = 2) -> Row:
    nan = float("nan")
    return Row(
        "resnet18",
        "x",
        load,
        "concurrency",
        throughput,
        p99_ms / 2,
        nan,
        nan,
        p99_ms,
        nan,
        nan,
        nan,
    )


def measured(candidate: Candidate, *rows: Row, failed: int = 0) -> Measurement:
    return Measurement(candidate, tuple(rows), failed)


# --- the space -------------------------------------------------------------------------------


def test_thread_splits_never_exceed_the_cores() -> None:
    for cores in (1, 2, 3, 8):
        splits = thread_splits(cores)
        assert all(instances * threads <= cores for instances, threads in splits)
        assert (1, cores) in splits and (cores, 1) in splits
    assert thread_splits(2) == [(1, 1), (1, 2), (2, 1)]


def test_the_pruned_splits_use_every_core_they_can() -> None:
    assert thread_splits(8, full_only=True) == [
        (1, 8), (2, 4), (3, 2), (4, 2), (5, 1), (6, 1), (7, 1), (8, 1)
    ]  # fmt: skip


def test_the_grid_is_every_combination_within_the_cores() -> None:
    space = SearchSpace(cores=2, variants=(FP32, INT8))
    grid = space.grid()
    assert len(grid) == 2 * 3 * 2 * 3 * 2
    assert len(set(grid)) == len(grid)
    assert all(plan.threads <= 2 for plan in grid)


def test_the_quick_search_starts_from_the_rule_of_thumb() -> None:
    space = SearchSpace(cores=4, preprocess_instances=(2, 1), max_batch_sizes=(4, 16, 1))
    assert space.seed() == Candidate(FP32, 1, 4, 1, 16, 0)


def test_an_empty_or_negative_knob_is_refused() -> None:
    with pytest.raises(TuneError, match="max batch sizes"):
        SearchSpace(cores=2, max_batch_sizes=())
    with pytest.raises(TuneError, match="negative"):
        SearchSpace(cores=2, queue_delays_us=(-1,))
    with pytest.raises(TuneError, match="cores"):
        SearchSpace(cores=0)


# --- the quick search ------------------------------------------------------------------------


def synthetic_throughput(plan: Candidate) -> float:
    """A separable objective whose best plan is int8, 2x1, 2 preprocess, batch 4, delay 2000."""
    return (
        (100 if plan.variant == INT8 else 40)
        + {(1, 2): 5, (2, 1): 9, (1, 1): 0}[(plan.onnx_instances, plan.intra_op_threads)]
        + 3 * plan.preprocess_instances
        + {1: 0, 4: 6, 8: 4}[plan.max_batch_size]
        + plan.max_queue_delay_us / 1000
    )


def test_coordinate_descent_finds_the_best_plan_of_a_separable_objective_in_few_runs() -> None:
    space = SearchSpace(cores=2, variants=(FP32, INT8))
    calls: list[Candidate] = []

    def measure(plan: Candidate) -> Measurement:
        calls.append(plan)
        return measured(plan, row(synthetic_throughput(plan), 50))

    results = coordinate_descent(space, measure)
    best = max(space.grid(), key=synthetic_throughput)
    assert select_winner(results).candidate == best
    assert len(calls) == len(set(calls)), "a plan was measured twice"
    assert len(calls) < len(space.grid()) / 4


def test_coordinate_descent_moves_the_thread_split_and_preprocessing_together() -> None:
    """Two single-thread instances pay only with a second preprocessing instance to feed them
    (as measured on 2 cores): moving either knob alone loses, so they must move as one."""
    space = SearchSpace(cores=2, variants=(INT8,), max_batch_sizes=(8,), queue_delays_us=(0,))

    def throughput(plan: Candidate) -> float:
        split = (plan.onnx_instances, plan.intra_op_threads)
        if split == (2, 1) and plan.preprocess_instances == 2:
            return 130
        return 128 if split == (1, 2) and plan.preprocess_instances == 1 else 120

    results = coordinate_descent(space, lambda plan: measured(plan, row(throughput(plan), 50)))
    assert select_winner(results).candidate == Candidate(INT8, 2, 1, 2, 8, 0)


def test_coordinate_descent_respects_the_latency_limit() -> None:
    space = SearchSpace(cores=2, max_batch_sizes=(1, 8), queue_delays_us=(0,))

    def measure(plan: Candidate) -> Measurement:
        # Bigger batches are faster but break a 100 ms p99 limit.
        p99 = 150 if plan.max_batch_size == 8 else 60
        return measured(plan, row(synthetic_throughput(plan), p99))

    winner = select_winner(coordinate_descent(space, measure, max_p99_ms=100), max_p99_ms=100)
    assert winner.candidate.max_batch_size == 1


def test_a_plan_label_reads_back_as_the_plan() -> None:
    plan = Candidate(INT8, 2, 1, 2, 4, 2000)
    assert parse_label(plan.label) == plan
    assert parse_label("  fp32  i1xt2 p1 b8 q0 ") == Candidate()
    with pytest.raises(TuneError, match=r"expected e\.g\. 'fp32 i1xt2 p1 b8 q0'"):
        parse_label("fp32 1x2")


def test_interleaved_runs_alternate_the_plans_and_rank_them_by_median() -> None:
    a, b = Candidate(max_batch_size=1), Candidate(max_batch_size=8)
    throughputs = iter([10, 30, 50, 31, 12, 29])  # a's second run hit a fast spell
    order: list[Candidate] = []

    def measure(plan: Candidate) -> Measurement:
        order.append(plan)
        return measured(plan, row(next(throughputs), 50))

    runs = interleaved([a, b], measure, rounds=3)
    assert order == [a, b, a, b, a, b]
    assert median_scores(runs) == {a: 12, b: 30}


def test_the_finalists_are_the_best_distinct_qualified_plans() -> None:
    a, b, c = (Candidate(max_batch_size=n) for n in (1, 4, 8))
    runs = [
        measured(a, row(50, 40)),
        measured(b, row(60, 40)),
        measured(a, row(55, 40)),
        measured(c, row(99, 40), failed=1),
    ]
    assert top_plans(runs, 3) == [b, a]
    assert top_plans(runs, 1) == [b]


def test_the_best_median_beats_one_lucky_measurement() -> None:
    lucky, steady = Candidate(max_batch_size=1), Candidate(max_batch_size=8)
    runs = [
        measured(lucky, row(80, 40)),
        measured(steady, row(60, 40)),
        measured(lucky, row(50, 40)),
        measured(steady, row(62, 40)),
        measured(lucky, row(52, 40)),
        measured(steady, row(61, 40)),
    ]
    winner, median = best_by_median(runs)
    assert winner.candidate == steady and median == 61
    with pytest.raises(TuneError, match="within 10 ms"):
        best_by_median(runs, max_p99_ms=10)


# --- the winner ------------------------------------------------------------------------------


def test_the_winner_is_the_highest_throughput() -> None:
    slow = measured(Candidate(onnx_instances=2, intra_op_threads=1), row(40, 90))
    fast = measured(Candidate(), row(30, 50), row(45, 120))
    assert select_winner([slow, fast]).candidate == Candidate()


def test_under_a_latency_limit_only_load_levels_within_it_count() -> None:
    slow = measured(Candidate(onnx_instances=2, intra_op_threads=1), row(40, 90))
    fast = measured(Candidate(), row(30, 50), row(45, 120))
    winner = select_winner([slow, fast], max_p99_ms=100)
    assert winner is slow and winner.score(100) == 40
    assert fast.score(100) == 30


def test_a_plan_with_failed_requests_never_wins() -> None:
    broken = measured(Candidate(max_batch_size=4), row(99, 10), failed=3)
    fine = measured(Candidate(), row(20, 50))
    assert select_winner([broken, fine]) is fine


def test_a_tie_goes_to_the_plan_with_fewer_threads() -> None:
    full = measured(Candidate(intra_op_threads=2), row(40, 50))
    half = measured(Candidate(intra_op_threads=1), row(40, 50))
    assert select_winner([full, half]) is half


def test_no_plan_within_the_limit_says_the_lowest_p99_seen() -> None:
    plans = [
        measured(Candidate(), row(40, 180)),
        measured(Candidate(max_batch_size=1), row(30, 150)),
    ]
    with pytest.raises(TuneError, match=r"within 50 ms \(the lowest measured was 150.0 ms\)"):
        select_winner(plans, max_p99_ms=50)


def test_the_report_lists_every_load_level_and_ranks_plans_best_first() -> None:
    plans = [
        measured(Candidate(max_batch_size=1), row(30, 60, load=2), row(35, 90, load=8)),
        measured(Candidate(), row(44, 70, load=2)),
        Measurement(Candidate(max_batch_size=4), (), error="the server failed to start"),
    ]
    records = csv_records(plans)
    assert [r.get("throughput") for r in records] == [30, 35, 44, None]
    table = summary_table(plans, None).splitlines()
    assert table[2].startswith("| fp32 i1xt2 p1 b8 q0 | 44.0 ")
    assert "the server failed to start" in table[-1]


# --- configs, apply and revert ---------------------------------------------------------------

CATEGORIES = [f"class {index}" for index in range(contract.NUM_CLASSES)]


def test_the_settings_read_back_from_rendered_configs_are_the_ones_rendered() -> None:
    settings = ServingSettings(
        cores=4,
        onnx_instances=2,
        intra_op_threads=2,
        preprocess_instances=3,
        max_batch_size=16,
        max_queue_delay_us=500,
        preferred_batch_sizes=(4, 16),
        max_image_pixels=1234,
        max_aspect_ratio=8.5,
        allowed_formats=("JPEG", "PNG"),
        response_cache=True,
        warmup=False,
        jpeg_draft_min_size=256,
    )
    preprocess, classifier, ensemble = all_model_configs(settings, "{}")
    assert settings_from_configs(preprocess, classifier, ensemble, cores=4) == settings


def test_a_plan_drops_preferred_batch_sizes_above_its_batch_size() -> None:
    base = ServingSettings(preferred_batch_sizes=(2, 8))
    settings = plan_settings(base, Candidate(max_batch_size=4), cores=2)
    assert settings.preferred_batch_sizes == (2,) and settings.max_batch_size == 4


def test_an_oversubscribed_plan_is_refused() -> None:
    with pytest.raises(TuneError, match="oversubscribe"):
        plan_settings(ServingSettings(), Candidate(onnx_instances=2, intra_op_threads=2), cores=2)


def test_health_shows_instances_threads_and_batching_from_a_config() -> None:
    settings = ServingSettings(onnx_instances=2, intra_op_threads=1, max_queue_delay_us=2000)
    _, classifier, ensemble = all_model_configs(settings, "{}")
    as_served = MessageToDict(classifier, preserving_proto_field_name=True)
    assert serving_summary(as_served) == (
        ("instances", "2"),
        ("intra-op threads", "1"),
        ("max batch", "8"),
        ("queue delay us", "2000"),
        ("queue limit", "unbounded"),
    )
    assert serving_summary(MessageToDict(ensemble, preserving_proto_field_name=True)) == (
        ("max batch", "8"),
    )


def test_health_shows_the_queue_policy_that_export_derives_from_the_core_budget() -> None:
    settings = ServingSettings.from_core_budget(cores=4)
    preprocess, classifier, _ = all_model_configs(settings, "{}")
    fused = fused_model_config(classifier, preprocess, name="resnet18_int8_fused")
    for config in (preprocess, classifier, fused):
        summary = dict(serving_summary(MessageToDict(config, preserving_proto_field_name=True)))
        assert summary["queue limit"] == str(queue_bound(4, settings.max_batch_size))
        # The timeout is at the entry models only: a request the classifier queues is decoded.
        entry = config is not classifier
        assert summary.get("queue timeout ms") == (
            str(queue_timeout_us() // 1000) if entry else None
        )


def test_the_queue_holds_more_work_for_more_cores_and_never_less_than_a_batch() -> None:
    assert queue_bound(1, 8) < queue_bound(2, 8) < queue_bound(8, 8)
    assert queue_bound(1, 64) == 64
    assert ServingSettings.from_core_budget(cores=2, max_queue_size=0).max_queue_size == 0


def test_a_plan_keeps_the_queue_policy_read_back_from_the_configs() -> None:
    settings = ServingSettings.from_core_budget(cores=2)
    preprocess, classifier, ensemble = all_model_configs(settings, "{}")
    read = settings_from_configs(preprocess, classifier, ensemble, cores=2)
    assert (read.max_queue_size, read.queue_timeout_us) == (
        settings.max_queue_size,
        settings.queue_timeout_us,
    )


@pytest.fixture()
def repository(tmp_path: Path) -> Path:
    """A repository as export and quantize fill it, with stand-in ONNX files (never read)."""
    repo = tmp_path / "model_repository"
    fill_repository(repo, ServingSettings(), json.dumps({"source": "random"}), CATEGORIES)
    for model, content in ((contract.ONNX_MODEL, b"fp32"), (contract.INT8_MODEL, b"int8")):
        onnx_model_path(repo, model).parent.mkdir(parents=True, exist_ok=True)
        onnx_model_path(repo, model).write_bytes(content + b" stand-in")
        if model == contract.ONNX_MODEL:
            write_variant(repo, variants.INT8, {"quantization": "static"})
    return repo


def digest(repo: Path) -> dict[str, str]:
    return {
        str(path.relative_to(repo)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(repo.rglob("*"))
        if path.is_file()
    }


def test_the_repository_offers_int8_once_quantize_wrote_it(repository: Path) -> None:
    assert available_variants(repository) == (FP32, INT8)
    assert tuned_models(repository) == (
        "preprocess",
        "resnet18_onnx",
        "resnet18",
        "resnet18_int8",
        "resnet18_int8_ensemble",
    )
    assert variant_models("resnet18", INT8).ensemble == "resnet18_int8_ensemble"
    digits = variant_models("digits", INT8)
    assert (digits.preprocess, digits.classifier, digits.ensemble) == (
        "digits_preprocess",
        "digits_int8",
        "digits_int8_ensemble",
    )
    with pytest.raises(TuneError, match="not allowed"):
        variant_models("../etc", FP32)


def test_apply_writes_the_plan_and_revert_restores_every_byte(repository: Path) -> None:
    before = digest(repository)
    plan = Candidate(INT8, 2, 1, 2, 4, 2000)
    backup = apply_plan(repository, plan, cores=2)
    assert backup == backup_directory(repository) and backup.is_dir()
    settings = repository_settings(repository, cores=2)
    assert (settings.onnx_instances, settings.intra_op_threads) == (2, 1)
    assert (settings.preprocess_instances, settings.max_batch_size) == (2, 4)
    assert settings.max_queue_delay_us == 2000
    int8 = parse((repository / "resnet18_int8" / "config.pbtxt").read_text())
    assert int8.parameters["quantization"].string_value == "static"
    assert int8.instance_group[0].count == 2 and int8.max_batch_size == 4
    assert int8.parameters["intra_op_thread_count"].string_value == "1"
    assert digest(repository) != before
    assert revert(repository) == list(tuned_models(repository))
    assert digest(repository) == before
    assert not backup.exists()


def test_a_plan_re_derives_the_fused_model_from_the_int8_classifier(repository: Path) -> None:
    from resnet18_triton.repository.writer import write_fused_model

    write_fused_model(repository, variants.INT8_FUSED, DEFAULT)
    before = digest(repository)
    assert tuned_models(repository)[-1] == contract.INT8_FUSED_MODEL
    # The fused model is a plan of its own: served alone, it is what clients call.
    assert available_variants(repository) == (FP32, INT8, variants.INT8_FUSED.key)
    fused_models = variant_models("resnet18", variants.INT8_FUSED.key)
    assert fused_models.load_order == (contract.INT8_FUSED_MODEL,)
    assert fused_models.ensemble == contract.INT8_FUSED_MODEL
    apply_plan(repository, Candidate(INT8, 1, 1, 1, 4, 0), cores=2)
    fused = parse((repository / contract.INT8_FUSED_MODEL / "config.pbtxt").read_text())
    assert fused.instance_group[0].count == 1 and fused.max_batch_size == 4
    assert fused.parameters["quantization"].string_value == "static"
    model = repository / contract.INT8_FUSED_MODEL / "1" / "model.onnx"
    assert model.read_bytes() == b"int8 stand-in"
    assert revert(repository)[-1] == contract.INT8_FUSED_MODEL
    assert digest(repository) == before


def test_a_second_apply_is_refused_while_the_backup_exists(repository: Path) -> None:
    apply_plan(repository, Candidate(max_batch_size=4), cores=2)
    applied = digest(repository)
    with pytest.raises(TuneError, match="tune revert"):
        apply_plan(repository, Candidate(max_batch_size=1), cores=2)
    assert digest(repository) == applied


def test_a_plan_over_an_unreadable_config_is_refused_as_the_repository_refuses_it(
    repository: Path,
) -> None:
    (repository / contract.INT8_MODEL / "config.pbtxt").write_text("not a model config {")
    before = digest(repository)
    with pytest.raises(RepositoryError, match="not a readable model config: run `resnet18-triton"):
        apply_plan(repository, Candidate(INT8, max_batch_size=4), cores=2)
    assert digest(repository) == before
    assert not backup_directory(repository).exists()


def test_revert_without_an_apply_says_there_is_nothing_to_revert(repository: Path) -> None:
    with pytest.raises(TuneError, match="nothing to revert"):
        revert(repository)


def _tune_cli(*args: str) -> Result:
    return CliRunner().invoke(cli, ["tune", *args])


@pytest.mark.parametrize(
    "args",
    [("revert", "--repo", "{repo}"), ("--repo", "{repo}", "revert")],
    ids=["repo-after-revert", "repo-before-revert"],
)
def test_tune_revert_restores_every_byte_an_apply_changed(
    repository: Path, args: tuple[str, ...]
) -> None:
    before = digest(repository)
    apply_plan(repository, Candidate(max_batch_size=4), cores=2)
    result = _tune_cli(*(arg.format(repo=repository) for arg in args))
    assert result.exit_code == 0, result.output
    assert f"in {repository} (restart the server)" in result.stdout
    assert result.stderr == ""
    assert digest(repository) == before


def test_tune_dash_dash_revert_still_reverts_and_warns_naming_tune_revert(
    repository: Path,
) -> None:
    before = digest(repository)
    apply_plan(repository, Candidate(max_batch_size=4), cores=2)
    result = _tune_cli("--revert", "--repo", str(repository))
    assert result.exit_code == 0, result.output
    assert "--revert is deprecated" in result.stderr
    assert "use `resnet18-triton tune revert`" in result.stderr
    assert digest(repository) == before


def test_tune_on_a_repository_nothing_was_exported_into_says_to_export_first(
    tmp_path: Path,
) -> None:
    result = _tune_cli("--repo", str(tmp_path))
    assert isinstance(result.exception, TuneError)
    assert "run `resnet18-triton export` first" in str(result.exception)


@pytest.fixture()
def tritonserver_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tune`` gets past its check for tritonserver, whether or not this machine has it."""
    from resnet18_triton.server.embedded import TritonInstall

    monkeypatch.setattr(TritonInstall, "locate", classmethod(lambda cls: None))


@pytest.mark.usefixtures("tritonserver_found")
def test_tune_refuses_a_variant_the_repository_lacks_naming_the_command_that_writes_it(
    repository: Path,
) -> None:
    result = _tune_cli("--repo", str(repository), "--variants", f"{FP32},{OPENVINO}")
    assert result.exit_code == 2, result.output
    assert f"{OPENVINO} not in {repository} (it has {FP32}, {INT8})" in result.output
    assert f"`resnet18-triton openvino` writes {OPENVINO}" in result.output


@pytest.mark.usefixtures("tritonserver_found")
def test_tune_refuses_an_image_folder_without_images(repository: Path, tmp_path: Path) -> None:
    empty = tmp_path / "no-images"
    empty.mkdir()
    result = _tune_cli("--repo", str(repository), "--images", str(empty))
    assert result.exit_code == 2, result.output
    assert "no images in" in result.output


def test_tune_help_lists_revert_as_a_subcommand_and_hides_the_old_flag() -> None:
    result = _tune_cli("--help")
    assert result.exit_code == 0
    assert "revert  Restore the configs" in result.output
    assert "--revert" not in result.output


def test_a_plan_keeps_a_named_classifiers_classes_and_preprocessing(tmp_path: Path) -> None:
    """Applying a plan to a 10-class classifier with its own preprocessing re-renders that
    classifier (its class count, input size, mean and std), not the ImageNet default."""
    from resnet18_triton.contract import ClassifierNames
    from resnet18_triton.repository.classifier import Classifier, Preprocessing

    names = ClassifierNames.of("digits")
    preprocessing = Preprocessing(resize_size=0, input_size=96, mean=(0.5,) * 3, std=(0.5,) * 3)
    labels = tuple(f"digit {index}" for index in range(10))
    classifier = Classifier(names, labels, preprocessing)
    repo = tmp_path / "repo"
    fill_repository(repo, ServingSettings(warmup=False), "{}", list(labels), classifier)
    before = {
        model: (repo / model / "config.pbtxt").read_text()
        for model in (names.preprocess, names.onnx, names.ensemble)
    }
    apply_plan(repo, Candidate(max_batch_size=4), cores=2, name="digits")
    after = {model: parse((repo / model / "config.pbtxt").read_text()) for model in before}
    preprocess, onnx = after[names.preprocess], after[names.onnx]
    assert onnx.max_batch_size == 4 and list(onnx.output[0].dims) == [10]
    assert list(onnx.input[0].dims)[-2:] == [96, 96]
    assert (
        preprocess.parameters["mean"].string_value
        == before[names.preprocess]
        .split('key: "mean"')[1]
        .split('string_value: "')[1]
        .split('"')[0]
    )
    assert revert(repo) == list(tuned_models(repo, "digits"))
    assert {m: (repo / m / "config.pbtxt").read_text() for m in before} == before


def add_openvino_variant(repo: Path, precision: str = "bf16") -> None:
    """What `resnet18-triton openvino` leaves: its configs and a stand-in model file."""
    configs = variant_model_configs(
        repo, variants.OPENVINO, {"fidelity": '{"top1_agreement": 1.0}'}, precision=precision
    )
    write_variant_configs(repo, configs)
    variants.OPENVINO.model_path(repo, DEFAULT).parent.mkdir(parents=True, exist_ok=True)
    variants.OPENVINO.model_path(repo, DEFAULT).write_bytes(b"openvino stand-in")


def test_the_openvino_variant_is_searched_once_it_was_built(repository: Path) -> None:
    add_openvino_variant(repository)
    assert available_variants(repository) == (FP32, INT8, OPENVINO)
    models = variant_models("resnet18", OPENVINO)
    assert models.load_order == ("preprocess", "resnet18_openvino", "resnet18_openvino_ensemble")
    assert tuned_models(repository)[-2:] == ("resnet18_openvino", "resnet18_openvino_ensemble")
    assert parse_label("openvino i2xt1 p1 b4 q0") == Candidate(OPENVINO, 2, 1, 1, 4, 0)


def test_an_openvino_plan_sets_threads_per_instance_and_keeps_precision_and_fidelity(
    repository: Path,
) -> None:
    add_openvino_variant(repository)
    before = digest(repository)
    apply_plan(repository, Candidate(OPENVINO, 2, 1, 1, 4, 2000), cores=2)
    config = parse((repository / "resnet18_openvino" / "config.pbtxt").read_text())
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert config.backend == "openvino" and config.instance_group[0].count == 2
    assert config.max_batch_size == 4
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert parameters["INFERENCE_NUM_THREADS"] == "1"
    assert parameters["precision"] == "bf16" and parameters["HINT_BF16"] == "YES"
    assert parameters["fidelity"] == '{"top1_agreement": 1.0}'
    assert "intra_op_thread_count" not in parameters
    as_served = MessageToDict(config, preserving_proto_field_name=True)
    assert ("threads", "1") in serving_summary(as_served)
    revert(repository)
    assert digest(repository) == before


def test_an_openvino_plan_re_derives_the_openvino_fused_model(repository: Path) -> None:
    from resnet18_triton.repository.writer import write_fused_model

    add_openvino_variant(repository)
    write_fused_model(repository, variants.OPENVINO_FUSED, DEFAULT)
    before = digest(repository)
    assert tuned_models(repository)[-1] == "resnet18_openvino_fused"
    apply_plan(repository, Candidate(OPENVINO, 1, 1, 1, 4, 0), cores=2)
    fused = parse((repository / "resnet18_openvino_fused" / "config.pbtxt").read_text())
    assert fused.instance_group[0].count == 1 and fused.max_batch_size == 4
    assert fused.parameters["engine"].string_value == "openvino"
    assert fused.parameters["precision"].string_value == "bf16"
    revert(repository)
    assert digest(repository) == before
