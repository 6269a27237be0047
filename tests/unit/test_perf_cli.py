"""The loadtest / bench commands' argument handling (nothing is run)."""

from __future__ import annotations

from click.testing import CliRunner

from resnet18_triton import contract
from resnet18_triton.perf.cli import bench, loadtest


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
