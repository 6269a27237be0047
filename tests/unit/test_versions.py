"""The versions of a classifier in a repository, and the states publish and rollback move through.

Built on real repositories written by the repository writer (configs rendered and parsed back as
Triton ``ModelConfig`` protobufs); the model files are placeholders, since no server reads them
here (tests/integration/test_publish.py serves the real thing).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from resnet18_triton.contract import ClassifierNames
from resnet18_triton.errors import RepositoryError
from resnet18_triton.export import canary
from resnet18_triton.repository import versions
from resnet18_triton.repository.configs.parser import read_config
from resnet18_triton.repository.configs.settings import ServingSettings
from resnet18_triton.repository.layout import (
    classifiers,
    onnx_model_path,
    served_models,
    served_version,
    version_dir,
)
from resnet18_triton.repository.transaction import hold_served, install, is_served
from resnet18_triton.repository.writer import fill_repository

NAMES = ClassifierNames.of()


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """A classifier as export writes it: version 1, its ensemble taking the latest."""
    repo = tmp_path / "model_repository"
    fill_repository(repo, ServingSettings(), "{}", [f"class_{i}" for i in range(1000)])
    version_dir(repo, NAMES.onnx).mkdir(parents=True)
    onnx_model_path(repo).write_bytes(b"weights of version 1")
    return repo


def _move(repo: Path, serve: tuple[int, ...], answer_with: int, new: int | None = None) -> None:
    """Install one state as publish does (its own staging directory, one transaction)."""
    staging = repo.parent / f"staging-{answer_with}-{len(serve)}"
    added = None
    if new is not None:
        source = repo.parent / f"model-{new}.onnx"
        source.write_bytes(f"weights of version {new}".encode())
        added = versions.NewVersion(new, source)
    state = versions.read_state(repo, NAMES)
    keep = versions.retained(state.on_disk, serve, 3)
    models = versions.stage_state(repo, staging, NAMES, serve, answer_with, keep, added)
    install(staging, repo, models)


def test_an_exported_classifier_answers_with_its_only_version_and_is_not_yet_pinned(repo) -> None:
    state = versions.read_state(repo, NAMES)
    assert (state.served, state.loaded, state.on_disk) == (1, (1,), (1,))
    assert not state.pinned and not state.settled
    assert state.next_version() == 2 and state.previous() is None


def test_a_move_first_serves_both_versions_and_answers_with_the_new_one(repo) -> None:
    _move(repo, (1, 2), 2, new=2)
    state = versions.read_state(repo, NAMES)
    assert (state.served, state.loaded, state.on_disk) == (2, (1, 2), (1, 2))
    assert not state.settled
    ensemble = read_config(repo, NAMES.ensemble)
    step = next(s for s in ensemble.ensemble_scheduling.step if s.model_name == NAMES.onnx)
    assert step.model_version == 2
    # The ensemble serves the same version number, so answers name the weights' version.
    assert versions.serving_policy(ensemble) == (2,)
    assert (repo / NAMES.ensemble / "2").is_dir()
    assert onnx_model_path(repo).read_bytes() == b"weights of version 2"


def test_a_settled_move_serves_the_new_version_only_and_keeps_the_old_on_disk(repo) -> None:
    _move(repo, (1, 2), 2, new=2)
    _move(repo, (2,), 2)
    state = versions.read_state(repo, NAMES)
    assert state.settled and state.loaded == (2,) and state.on_disk == (1, 2)
    assert state.previous() == 1
    assert (version_dir(repo, NAMES.onnx, 1) / "model.onnx").read_bytes() == b"weights of version 1"


def test_retention_keeps_the_needed_versions_and_the_newest_others() -> None:
    assert versions.retained((1, 2, 3, 4), (4,), 3) == (2, 3, 4)
    assert versions.retained((1, 2, 3, 4), (1,), 2) == (1, 4)
    assert versions.retained((1, 2), (2, 3), 3) == (1, 2, 3)


def test_a_version_number_never_comes_back_after_retention_removed_it(repo) -> None:
    for new in (2, 3, 4):
        _move(repo, (new - 1, new), new, new=new)
        _move(repo, (new,), new)
    state = versions.read_state(repo, NAMES)
    assert state.on_disk == (2, 3, 4)
    assert not (repo / NAMES.ensemble / "1").exists()
    assert state.next_version() == 5


def test_the_version_files_are_shared_with_the_repository_not_copied(repo) -> None:
    before = onnx_model_path(repo).stat().st_ino
    _move(repo, (1, 2), 2, new=2)
    assert (version_dir(repo, NAMES.onnx, 1) / "model.onnx").stat().st_ino == before


def test_re_rendered_configs_keep_the_version_that_answers(repo) -> None:
    from resnet18_triton.repository.configs.builders import all_model_configs

    _move(repo, (1, 2), 2, new=2)
    _move(repo, (1,), 1)
    configs = all_model_configs(ServingSettings(), "{}", None)
    versions.carry_over(repo, NAMES, configs)
    by_name = {config.name: config for config in configs}
    assert versions.serving_policy(by_name[NAMES.onnx]) == (1,)
    assert versions.serving_policy(by_name[NAMES.ensemble]) == (1,)
    assert served_version(repo, NAMES) == 1


def test_a_running_server_marks_its_repository_as_served_until_it_stops(tmp_path) -> None:
    import os

    assert not is_served(tmp_path)
    marker = hold_served(tmp_path)
    assert marker is not None and is_served(tmp_path)
    os.close(marker)
    assert not is_served(tmp_path)


def test_the_versions_command_lists_what_answers_since_when_and_an_unfinished_move(repo) -> None:
    from click.testing import CliRunner

    from resnet18_triton.export.cli.versions import versions_command

    _move(repo, (1, 2), 2, new=2)
    unfinished = CliRunner().invoke(versions_command, ["--repo", str(repo)])
    assert unfinished.exit_code == 0, unfinished.output
    rows = [line.split() for line in unfinished.output.splitlines()[1:]]
    assert [row[0] for row in rows] == ["2", "1"]
    assert rows[0][3:5] == ["answers", "since"] and rows[1][3] == "loaded"
    _move(repo, (2,), 2)
    settled = CliRunner().invoke(versions_command, ["--repo", str(repo)])
    assert [line.split()[3] for line in settled.output.splitlines()[1:]] == ["answers", "kept"]


def _start_canary(repo: Path, percent: int) -> None:
    """The canary state as ``export.canary.start`` installs it: v1 answers, v2 its canary."""
    _move(repo, (1,), 1)  # pinned to v1, as the first publish settles it
    staging = repo.parent / "staging-canary"
    source = repo.parent / "model-2.onnx"
    source.write_bytes(b"weights of version 2")
    served_config = (repo / NAMES.onnx / "config.pbtxt").read_text()
    models = versions.stage_state(
        repo, staging, NAMES, (1,), 1, (1,), versions.NewVersion(2, source)
    )
    canary = versions.stage_canary(staging, staging, NAMES, 2, percent)
    install(staging, repo, (*models, *canary))
    assert (repo / NAMES.onnx / "config.pbtxt").read_text() == served_config


def test_a_canary_answers_with_the_new_version_through_models_of_its_own(repo) -> None:
    _start_canary(repo, 10)
    state = versions.read_state(repo, NAMES)
    assert state.served == 1 and state.loaded == (1,) and state.on_disk == (1, 2)
    assert state.settled, "a running canary is a state of its own, not an unfinished move"
    assert state.canary == versions.Canary(NAMES.canary, NAMES.ensemble, 2, 10)
    canary = read_config(repo, NAMES.canary)
    assert canary.name == NAMES.canary and versions.serving_policy(canary) == (2,)
    steps = {step.model_name: step.model_version for step in canary.ensemble_scheduling.step}
    assert steps == {NAMES.preprocess: -1, NAMES.canary_onnx: 2}
    onnx = read_config(repo, NAMES.canary_onnx)
    assert onnx.name == NAMES.canary_onnx and versions.serving_policy(onnx) == (2,)
    assert [p.name for p in (repo / NAMES.canary_onnx).iterdir() if p.name.isdigit()] == ["2"]
    new_file = version_dir(repo, NAMES.canary_onnx, 2) / "model.onnx"
    assert new_file.read_bytes() == b"weights of version 2"
    assert os.path.samefile(new_file, version_dir(repo, NAMES.onnx, 2) / "model.onnx")
    # A server started now loads it too: its ONNX model, then its ensemble, after the others.
    assert served_models(repo)[-2:] == NAMES.canary_models
    # It is not a classifier of its own.
    assert NAMES.canary not in {names.name for names in classifiers(repo)}


def test_changing_a_canarys_share_rewrites_its_ensemble_only(repo) -> None:
    _start_canary(repo, 0)
    before = {model: (repo / model / "config.pbtxt").read_text() for model in NAMES.served}
    staging = repo.parent / "staging-share"
    install(staging, repo, (versions.stage_canary_share(repo, staging, NAMES, 25),))
    state = versions.read_state(repo, NAMES)
    assert state.canary is not None and state.canary.percent == 25
    assert {model: (repo / model / "config.pbtxt").read_text() for model in NAMES.served} == before


def test_a_canary_at_share_zero_is_a_running_canary_whose_share_reads_zero(repo) -> None:
    # The proxy's handler (deploy/edge.js) sends such a canary nothing.
    _start_canary(repo, 0)
    state = versions.read_state(repo, NAMES)
    assert state.canary is not None and state.canary.percent == 0
    assert served_models(repo)[-2:] == NAMES.canary_models


def test_a_share_for_a_canary_that_does_not_run_is_refused_with_the_command_to_start_one(
    repo,
) -> None:
    with pytest.raises(RepositoryError, match="publish --canary"):
        canary.set_percent(repo, NAMES, 10)
    assert versions.read_state(repo, NAMES).canary is None


def test_a_classifier_without_a_canary_has_none(repo) -> None:
    assert versions.read_state(repo, NAMES).canary is None
    assert NAMES.canary not in served_models(repo)


def test_the_versions_command_shows_a_running_canary_and_its_share(repo) -> None:
    from click.testing import CliRunner

    from resnet18_triton.export.cli.versions import versions_command

    _start_canary(repo, 10)
    result = CliRunner().invoke(versions_command, ["--repo", str(repo)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert "canary, 10 % of the requests" in rows["2"] and "answers since" in rows["1"]
