"""``serve`` listens beyond loopback only when told that an authenticating proxy is in front."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from resnet18_triton.cli import cli
from resnet18_triton.errors import ExitCode, ServerStartError
from resnet18_triton.server.cli import check_exposure


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "triton.example"])
def test_serve_refuses_an_address_beyond_loopback_and_names_the_cluster_command(
    host: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(cli, ["serve", "--repo", str(tmp_path), "--host", host])
    error = result.exception
    assert isinstance(error, ServerStartError), result.output
    assert error.exit_code == ExitCode.USAGE_OR_UNREACHABLE
    assert f"resnet18-triton cluster --replicas 1 --host {host} --api-key-file" in str(error)
    assert "--behind-proxy" in str(error)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.3.4", "::1", "[::1]", "localhost"])
def test_a_loopback_address_needs_no_proxy(host: str) -> None:
    check_exposure(host, behind_proxy=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3"])
def test_behind_proxy_lets_serve_listen_on_any_address(host: str) -> None:
    check_exposure(host, behind_proxy=True)
