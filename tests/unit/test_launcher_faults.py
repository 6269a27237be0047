"""The launcher on a bad day: restarts next to TIME_WAIT sockets, IPv6 hosts, a failing log
stream, and admin keys that never go on a command line."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import click
import pytest

from resnet18_triton.cli import cli as cli_main
from resnet18_triton.contract import ADMIN_KEY_ENV_VAR, ADMIN_KEY_FILE_ENV_VAR
from resnet18_triton.errors import AdminKeyError, ServerStartError
from resnet18_triton.keys import admin_key_from
from resnet18_triton.server.embedded import (
    EmbeddedServer,
    ServerOptions,
    check_port_free,
    connect_address,
    grpc_host,
    http_host,
)


def _time_wait_port() -> int:
    """A loopback port whose only socket is in TIME_WAIT (the server side closed first)."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the closing side keeps the port in TIME_WAIT for about 60 s
        client.close()
    return port


def test_a_port_in_time_wait_counts_as_free() -> None:
    """Restarting `serve` right after a shutdown with connected clients must not fail."""
    check_port_free("127.0.0.1", _time_wait_port(), "http")


def test_a_port_someone_listens_on_is_still_refused_by_name() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServerStartError, match=f"127.0.0.1:{port}.*--http-port"):
            check_port_free("127.0.0.1", port, "http")


@pytest.mark.parametrize(
    "host, expected",
    [
        ("127.0.0.1", "127.0.0.1:8000"),
        ("0.0.0.0", "127.0.0.1:8000"),
        ("::", "[::1]:8000"),
        ("::1", "[::1]:8000"),
        ("[::1]", "[::1]:8000"),
        ("localhost", "localhost:8000"),
    ],
)
def test_clients_reach_the_server_through_a_valid_address(host: str, expected: str) -> None:
    assert connect_address(host, 8000) == expected
    assert ServerOptions(repository=Path("/r"), host=host).http_url == expected


def test_ipv6_ports_are_checked_on_ipv6() -> None:
    with socket.socket(socket.AF_INET6) as busy:
        busy.bind(("::1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServerStartError, match=f"::1:{port}"):
            check_port_free("::1", port, "http")


class _BrokenStream:
    """A log stream whose disk is full."""

    def write(self, _text: str) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        pass


def test_the_log_pump_keeps_draining_when_the_log_stream_fails() -> None:
    """A child writing 1 MiB through a failing stream still finishes: the pipe never fills."""
    server = EmbeddedServer(ServerOptions(repository=Path("/r")), log_stream=_BrokenStream())
    server.process = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfor i in range(256): print('x' * 4095)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pump = threading.Thread(target=server._pump_log, daemon=True)
    pump.start()
    try:
        assert server.process.wait(timeout=120) == 0
    finally:
        server.process.kill()
    pump.join(timeout=120)
    assert not pump.is_alive()
    assert "log stream failed (OSError" in server.log_tail
    assert server.log_stream is None


def test_the_admin_key_comes_from_the_environment() -> None:
    assert admin_key_from(None, {ADMIN_KEY_ENV_VAR: "from-env"}) == "from-env"
    assert admin_key_from(None, {}) is None


def test_an_admin_key_file_must_be_private(tmp_path: Path) -> None:
    key_file = tmp_path / "admin.key"
    key_file.write_text("s3cret\n")
    key_file.chmod(0o644)
    with pytest.raises(AdminKeyError, match=f"chmod 600 {key_file}"):
        admin_key_from(key_file, {})
    key_file.chmod(0o600)
    assert admin_key_from(key_file, {}) == "s3cret"
    assert admin_key_from(None, {ADMIN_KEY_FILE_ENV_VAR: str(key_file)}) == "s3cret"


def test_an_empty_or_missing_key_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(AdminKeyError, match="is empty"):
        admin_key_from(empty, {})
    with pytest.raises(AdminKeyError, match="cannot read"):
        admin_key_from(tmp_path / "absent.key", {})


@pytest.mark.parametrize("command", ["serve", "loadtest", "bench", "cluster"])
def test_no_command_takes_the_admin_key_on_its_command_line(command: str) -> None:
    ctx = click.Context(cli_main)
    options = {opt for param in cli_main.get_command(ctx, command).params for opt in param.opts}
    assert "--admin-key" not in options
    assert "--admin-key-file" in options


def test_ipv6_addresses_are_spelled_for_each_of_tritons_servers() -> None:
    """libevhtp (HTTP, metrics) needs an ``ipv6:`` prefix, gRPC needs brackets."""
    assert http_host("::1") == "ipv6:::1" and http_host("127.0.0.1") == "127.0.0.1"
    assert grpc_host("::") == "[::]" and grpc_host("0.0.0.0") == "0.0.0.0"
