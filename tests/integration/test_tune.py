"""``tune`` against real servers: a tiny search, ``--apply``, a server and ``health`` showing the
winner, then ``tune revert`` restoring every byte."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

from resnet18_triton.perf import harness
from tests import support
from tests.support import tree_snapshot

CLI = [sys.executable, "-m", "resnet18_triton.cli"]
TUNED_BATCH = 4  # differs from the export's 8, so health shows that the plan was applied


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return support.run_cli(*args, timeout_s=600)


def test_a_tiny_tune_applies_its_winner_which_serves_and_reverts_byte_for_byte(
    exported_repository: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "model_repository"
    shutil.copytree(exported_repository, repo)
    before = tree_snapshot(repo, directories=False)
    out = tmp_path / "report"
    # Quick search over the two full thread splits of 2 cores only: 2-3 plans, 1 s windows.
    tuned = run_cli(
        "tune",
        "--repo", str(repo),
        "--out", str(out),
        "--cores", "2",
        "--variants", "fp32",
        "--preprocess-instances", "1",
        "--batch-sizes", str(TUNED_BATCH),
        "--queue-delays-us", "0",
        "--concurrency", "2",
        "--measurement-interval", "1000",
        "--max-trials", "4",
        "--max-images", "2",
        "--rounds", "0",  # no side-by-side re-measure of the finalists: keep it tiny
        "--apply",
    )  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    winner = re.search(r"winner: fp32 i(\d)xt(\d) p1 b4 q0 \(([\d.]+) img/s\)", tuned.stdout)
    assert winner, tuned.stdout
    instances, threads = winner.group(1), winner.group(2)

    with (out / "tune.csv").open() as stream:
        plans = {record["plan"] for record in csv.DictReader(stream)}
    assert {"fp32 i1xt2 p1 b4 q0", "fp32 i2xt1 p1 b4 q0"} <= plans
    assert (out / "tune.png").stat().st_size > 0
    assert f"**Winner: fp32 i{instances}xt{threads} p1 b4 q0**" in (out / "tune.md").read_text()
    assert not (out / "scratch_repository").exists()
    assert tree_snapshot(repo, directories=False) != before

    options = harness.local_options(repo, exit_timeout_s=5)
    with harness.local_server(options):
        health = run_cli("health", "--url", options.http_url)
    assert health.returncode == 0, health.stdout + health.stderr
    onnx_line = next(line for line in health.stdout.splitlines() if "resnet18_onnx" in line)
    assert (
        f"instances: {instances}, intra-op threads: {threads}, max batch: {TUNED_BATCH}"
        in onnx_line
    )
    preprocess_line = next(line for line in health.stdout.splitlines() if "preprocess" in line)
    assert f"instances: 1, max batch: {TUNED_BATCH}" in preprocess_line

    reverted = run_cli("tune", "revert", "--repo", str(repo))
    assert reverted.returncode == 0, reverted.stderr
    assert tree_snapshot(repo, directories=False) == before
