"""A real server on a prepared backend directory made read-only, as a container image holds it:
it serves from that directory, copies nothing privately and writes nothing into it (the checks of
the directory that need no server are in tests/unit/test_embedded_launcher.py)."""

from __future__ import annotations

import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("pytriton")
from resnet18_triton.client.probe import ProbeResult
from resnet18_triton.perf import harness
from resnet18_triton.server.embedded import (
    EmbeddedServer,
    TritonInstall,
    check_backend_directory,
    prepare_backend_directory,
)
from tests.support import tree_snapshot


@dataclass(frozen=True)
class ReadOnlyRun:
    """What one real server on a read-only prepared backend directory did and left behind."""

    directory: Path
    argv: list[str]
    probe: ProbeResult
    log_tail: str
    private_copies: list[Path]
    before: dict[str, str]
    after: dict[str, str]


@pytest.fixture(scope="module")
def read_only_run(
    exported_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> ReadOnlyRun:
    """The session's export, served by a real server from a prepared backend directory made a-w.

    One start for the tests below; every mode is restored before the fixture returns.
    """
    from resnet18_triton.client.probe import probe

    root = tmp_path_factory.mktemp("read_only_run")
    prepared = prepare_backend_directory(root / "backends")
    before = tree_snapshot(prepared)
    scratch = root / "tmp"
    scratch.mkdir()
    paths = [*sorted(prepared.rglob("*"), reverse=True), prepared]  # contents before parents
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in paths}
    write = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    try:
        for path, mode in modes.items():
            path.chmod(mode & ~write)
        with pytest.MonkeyPatch.context() as patch:
            # A private copy would land here: tempfile.mkdtemp reads this first.
            patch.setattr(tempfile, "tempdir", str(scratch))
            options = harness.local_options(
                exported_repository, exit_timeout_s=2, backend_dir=prepared
            )
            with EmbeddedServer(options) as server:
                argv = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode().split("\0")
                # One real classification through the ensemble: the Python backend's stub and
                # the onnxruntime backend both run from the prepared directory.
                result = probe(server.url, timeout_s=30)
                log_tail = server.log_tail
                private_copies = list(scratch.iterdir())
        after = tree_snapshot(prepared)
    finally:
        for path in reversed(paths):  # parents first, so that their contents can be reached
            path.chmod(modes[path])
    return ReadOnlyRun(prepared, argv, result, log_tail, private_copies, before, after)


def test_a_real_server_serves_from_a_read_only_prepared_directory_without_a_private_copy(
    read_only_run: ReadOnlyRun,
) -> None:
    run = read_only_run
    assert run.probe.ok, f"{run.probe.detail}\n{run.log_tail}"
    assert f"--backend-directory={run.directory}" in run.argv
    assert run.private_copies == []
    # Every prepared file has its bytes still, so the next start passes the same check.
    assert {path: run.after.get(path) for path in run.before} == run.before
    check_backend_directory(TritonInstall.locate(), run.directory)


def test_a_real_server_adds_nothing_to_its_prepared_directory(read_only_run: ReadOnlyRun) -> None:
    # As root the a-w modes stop nothing, so comparing the trees is what proves no write.
    assert read_only_run.after == read_only_run.before
