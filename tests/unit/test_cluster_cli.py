"""``resnet18-triton cluster`` refuses what it cannot run, before starting any process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from resnet18_triton.deploy.cluster import Cluster, ClusterOptions
from resnet18_triton.errors import ServerStartError


def _cluster(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resnet18_triton.cli", "cluster", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cluster_refuses_zero_replicas_as_a_usage_error() -> None:
    result = _cluster("--replicas", "0")
    assert result.returncode == 2
    assert "--replicas" in result.stderr and "Traceback" not in result.stderr


def test_cluster_on_an_empty_repository_says_to_export_first(tmp_path: Path) -> None:
    result = _cluster("--repo", str(tmp_path), "--workdir", str(tmp_path / "work"))
    assert result.returncode == 2
    assert "resnet18-triton export" in result.stderr
    assert "Traceback" not in result.stderr


def test_cluster_library_refuses_no_replicas(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="at least one replica"):
        Cluster(ClusterOptions(repository=tmp_path, replicas=0))
