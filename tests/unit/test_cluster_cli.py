"""``resnet18-triton cluster`` refuses what it cannot run, before starting any process."""

from __future__ import annotations

import dataclasses
import subprocess
import tempfile
from pathlib import Path

import click
import pytest

from resnet18_triton.contract import is_loopback
from resnet18_triton.deploy import proxy
from resnet18_triton.deploy.cli import _ready_lines, cluster
from resnet18_triton.deploy.cluster import Cluster, ClusterOptions
from resnet18_triton.errors import ProxyError, ServerStartError
from tests.support import run_cli


def _cluster(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("cluster", *args, timeout_s=60)


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


def test_cluster_on_all_interfaces_without_a_key_file_refuses_and_says_what_to_do(
    tmp_path: Path,
) -> None:
    result = _cluster("--host", "0.0.0.0", "--repo", str(tmp_path))
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "refusing to serve on 0.0.0.0 without API keys" in message
    assert "--api-key-file" in message and "cluster keys add NAME" in message
    assert "--insecure-no-auth" in message
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "work").exists()


def test_cluster_on_loopback_needs_no_key_file(tmp_path: Path) -> None:
    # It gets past the edge check and stops at the empty repository instead.
    result = _cluster("--host", "127.0.0.1", "--repo", str(tmp_path))
    assert result.returncode == 2 and "resnet18-triton export" in result.stderr


def test_insecure_no_auth_lets_an_exposed_cluster_start_without_keys(tmp_path: Path) -> None:
    result = _cluster("--host", "0.0.0.0", "--insecure-no-auth", "--repo", str(tmp_path))
    assert result.returncode == 2 and "resnet18-triton export" in result.stderr


def test_a_cluster_that_cannot_start_leaves_no_folder_of_its_own_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    running = Cluster(ClusterOptions(repository=tmp_path / "empty"))
    assert running.workdir.parent == scratch
    with pytest.raises(ServerStartError, match="resnet18-triton export"):
        running.start()
    assert list(scratch.iterdir()) == []
    # A folder the caller named stays.
    named = tmp_path / "named"
    named.mkdir()
    with pytest.raises(ServerStartError):
        Cluster(ClusterOptions(repository=tmp_path / "empty", workdir=named)).start()
    assert named.is_dir()


def test_a_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    certificate = tmp_path / "tls.crt"
    certificate.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ProxyError, match="both --tls-cert and --tls-key"):
        Cluster(ClusterOptions(repository=tmp_path, tls_certificate=certificate))


def test_a_bad_key_file_is_refused_before_any_process_starts(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text("tooshort\n")
    key_file.chmod(0o600)
    with pytest.raises(ProxyError, match="line 1"):
        Cluster(ClusterOptions(repository=tmp_path, api_key_file=key_file))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True),
     ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("example.org", False)],
)  # fmt: skip
def test_only_loopback_hosts_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_every_proxy_limit_is_a_cluster_option_with_the_limits_default() -> None:
    options = {param.name: param for param in cluster.params if isinstance(param, click.Option)}
    for field in dataclasses.fields(proxy.Limits):
        if field.name == "body_budget_bytes":  # given in MiB: --body-budget-mib
            assert options["body_budget_mib"].default == field.default // proxy.MIB
            continue
        assert options[field.name].default == field.default, field.name


def test_a_ready_cluster_names_each_replica_then_the_proxy_and_its_edge(tmp_path: Path) -> None:
    running = Cluster(ClusterOptions(repository=tmp_path, workdir=tmp_path, metrics_port=0))
    *replicas, ready = _ready_lines(running)
    assert [line.split(":")[0] for line in replicas] == ["replica 1", "replica 2"]
    assert ready.startswith("ready: http://127.0.0.1:8080 (gRPC 127.0.0.1:8081) through nginx")
    assert "no API keys" in ready  # and no metrics line: port 0 asks for none
