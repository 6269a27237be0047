"""The export pipeline as a transaction: the repository changes completely or not at all.

Real exports (random weights, the real exporter and ONNX Runtime), a real failing verification and
a real SIGKILL of an export running in another process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from resnet18_triton import contract
from resnet18_triton.errors import RepositoryError, VerificationError
from resnet18_triton.export import pipeline
from resnet18_triton.options import default_of
from resnet18_triton.repository import transaction
from resnet18_triton.repository.configs.settings import ServingSettings
from resnet18_triton.repository.layout import missing_files, onnx_model_path
from tests.support import tree_snapshot

KILL_DEADLINE_S = 300


def _request(repo: Path, seed: int = 0, **fields: object) -> pipeline.ExportRequest:
    return pipeline.ExportRequest(
        repository=repo, weights="random", seed=seed, settings=ServingSettings(), **fields
    )


def _staging_dirs(repo: Path) -> list[Path]:
    return sorted(repo.parent.glob(f".{repo.name}.export-*"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished export (seed 0) with an unrelated entry beside the served models."""
    repo = tmp_path_factory.mktemp("exported") / "model_repository"
    pipeline.export_repository(_request(repo))
    (repo / "notes.txt").write_text("kept\n")
    return repo


@pytest.fixture()
def repo(exported: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model_repository"
    shutil.copytree(exported, copy)
    return copy


@pytest.mark.slow
def test_an_export_installs_a_complete_repository_and_keeps_unrelated_entries(
    exported: Path,
) -> None:
    assert missing_files(exported) == []
    assert (exported / "notes.txt").read_text() == "kept\n"
    assert _staging_dirs(exported) == []
    for path in exported.rglob("*"):
        mode = path.stat().st_mode & 0o777
        assert mode == (0o755 if path.is_dir() else 0o644), path


@pytest.mark.slow
def test_the_export_result_names_the_installed_model_and_its_verification(
    tmp_path: Path,
) -> None:
    result = pipeline.export_repository(_request(tmp_path / "fresh", seed=2))
    assert result.onnx_path == onnx_model_path(tmp_path / "fresh")
    assert result.verification.passed
    assert result.verification.onnx_path == result.onnx_path
    assert str(result.onnx_path) in result.verification.summary()
    assert result.provenance.seed == 2


@pytest.mark.slow
def test_a_failed_verification_leaves_the_repository_byte_identical(repo: Path) -> None:
    before = tree_snapshot(repo)
    # No float32 ONNX Runtime run reproduces PyTorch's logits exactly: a zero tolerance fails.
    with pytest.raises(VerificationError, match="does NOT match"):
        pipeline.export_repository(_request(repo, seed=1, atol=0.0))
    assert tree_snapshot(repo) == before
    assert _staging_dirs(repo) == []


@pytest.mark.slow
def test_a_refused_plan_fails_before_anything_is_written(repo: Path) -> None:
    before = tree_snapshot(repo)
    oversubscribed = ServingSettings(cores=1, onnx_instances=2, intra_op_threads=1)
    request = pipeline.ExportRequest(repository=repo, weights="random", settings=oversubscribed)
    with pytest.raises(RepositoryError, match="oversubscribe"):
        pipeline.export_repository(request)
    assert tree_snapshot(repo) == before


@pytest.mark.slow
def test_an_export_killed_mid_way_leaves_the_repository_byte_identical_and_the_next_succeeds(
    repo: Path, tmp_path: Path
) -> None:
    before = tree_snapshot(repo)
    command = [
        sys.executable,
        "-m",
        "resnet18_triton.cli",
        "export",
        "--weights",
        "random",
        "--seed",
        "1",
        "--repo",
        str(repo),
    ]
    # A killed process cannot remove its temporary files: they go to pytest's folder.
    environment = {**os.environ, "TMPDIR": str(tmp_path)}
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment
    )
    # The staged ONNX appears once exported; verification and configs follow, then the install.
    staged = _wait_for_staged_onnx(repo, process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL, f"export ended before the kill ({staged})"
    assert tree_snapshot(repo) == before
    assert _staging_dirs(repo)  # the killed export's staging directory is left behind...

    result = pipeline.export_repository(_request(repo, seed=1))

    assert _staging_dirs(repo) == []  # ...and removed by the next export
    after = tree_snapshot(repo)
    assert after != before
    assert after["notes.txt"] == before["notes.txt"]
    assert result.provenance.seed == 1
    assert missing_files(repo) == []


def _wait_for_staged_onnx(repo: Path, process: subprocess.Popen) -> Path:
    deadline = time.monotonic() + KILL_DEADLINE_S
    relative = onnx_model_path(Path()).as_posix()
    while time.monotonic() < deadline:
        for staging in _staging_dirs(repo):
            if (staging / relative).is_file():
                return staging / relative
        if process.poll() is not None:
            pytest.fail(f"export exited before staging its ONNX: {process.stderr.read()!r}")
        time.sleep(0.01)
    process.kill()
    pytest.fail("no staged ONNX appeared in time")


def test_a_failed_swap_undoes_the_swaps_already_made(tmp_path: Path) -> None:
    repo, staging = tmp_path / "repo", tmp_path / "staging"
    for root, text in ((repo, "old"), (staging, "new")):
        for name in contract.SERVED_MODELS:
            (root / name).mkdir(parents=True)
            (root / name / "file").write_text(f"{text} {name}")
    shutil.rmtree(staging / contract.ENSEMBLE_MODEL)  # the last swap finds nothing to swap in
    before = tree_snapshot(repo)
    with pytest.raises(RepositoryError, match="the repository is unchanged"):
        transaction.install(staging, repo, contract.SERVED_MODELS)
    assert tree_snapshot(repo) == before
    assert (staging / contract.PREPROCESS_MODEL / "file").read_text() == "new preprocess"


def test_install_swaps_in_new_model_directories_and_moves_the_old_ones_to_staging(
    tmp_path: Path,
) -> None:
    repo, staging = tmp_path / "repo", tmp_path / "staging"
    (repo / contract.PREPROCESS_MODEL).mkdir(parents=True)
    (repo / contract.PREPROCESS_MODEL / "file").write_text("old")
    for name in contract.SERVED_MODELS:
        (staging / name).mkdir(parents=True)
        (staging / name / "file").write_text(f"new {name}")
    transaction.install(staging, repo, contract.SERVED_MODELS)
    for name in contract.SERVED_MODELS:
        assert (repo / name / "file").read_text() == f"new {name}"
    assert (staging / contract.PREPROCESS_MODEL / "file").read_text() == "old"
    assert not (staging / contract.ONNX_MODEL).exists()


@pytest.mark.slow
def test_an_install_waits_while_another_export_installs_into_the_same_repository(
    tmp_path: Path,
) -> None:
    repo, staging = tmp_path / "repo", tmp_path / "staging"
    for name in contract.SERVED_MODELS:
        (staging / name).mkdir(parents=True)
    installed = threading.Event()

    def install() -> None:
        with transaction.install_lock(repo):
            transaction.install(staging, repo, contract.SERVED_MODELS)
        installed.set()

    with transaction.install_lock(repo):  # another export holds the lock
        worker = threading.Thread(target=install)
        worker.start()
        assert not installed.wait(1.0)
        assert not repo.exists()
    worker.join(timeout=60)
    assert installed.is_set()
    assert sorted(p.name for p in repo.iterdir()) == sorted(contract.SERVED_MODELS)


def test_stale_staging_of_a_dead_export_is_removed_and_a_live_one_kept(tmp_path: Path) -> None:
    repo = tmp_path / "model_repository"
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead = tmp_path / f".model_repository.export-{int(finished.stdout)}-abc"
    live = tmp_path / f".model_repository.export-{os.getpid()}-def"
    other = tmp_path / f".other_repository.export-{int(finished.stdout)}-ghi"
    for path in (dead, live, other):
        path.mkdir()
    assert transaction.remove_stale_staging(repo) == [dead]
    assert live.is_dir() and other.is_dir() and not dead.exists()


def test_export_command_defaults_are_the_request_defaults() -> None:
    # The settings options' defaults: tests/unit/test_serving_options.py.
    from resnet18_triton.export.cli.export import export

    defaults = {param.name: param.default for param in export.params}
    for name in ("weights", "seed", "opset", "atol"):
        assert defaults[name] == default_of(pipeline.ExportRequest, name), name
    assert ServingSettings().max_batch_size == contract.MAX_BATCH_SIZE
    assert ServingSettings().max_image_pixels == contract.MAX_IMAGE_PIXELS
