"""``resnet18-triton cluster``: N embedded Triton replicas behind nginx, in the foreground."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from resnet18_triton.contract import ADMIN_KEY_ENV_VAR
from resnet18_triton.deploy.cluster import Cluster, ClusterOptions
from resnet18_triton.options import repository_option


@click.command("cluster")
@click.option("--replicas", default=2, show_default=True, type=click.IntRange(1, 16))
@repository_option("Model repository filled by `resnet18-triton export` (shared by every replica).")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address of the proxy and the replicas. Keep loopback unless a firewall guards it.",
)
@click.option("--http-port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--grpc-port", default=8081, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--admin-key",
    envvar=ADMIN_KEY_ENV_VAR,
    default=None,
    help="Key for the replicas' restricted APIs (never reachable through the proxy). "
    f"Unset: each replica makes a random one. [env: {ADMIN_KEY_ENV_VAR}]",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the nginx config, runtime files and replica logs go (default: a temp dir).",
)
def cluster(
    replicas: int,
    repository: Path,
    host: str,
    http_port: int,
    grpc_port: int,
    admin_key: str | None,
    workdir: Path | None,
) -> None:
    """Run N `serve` replicas behind nginx until Ctrl-C; a replica that exits is restarted."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    options = ClusterOptions(
        repository=repository.resolve(),
        replicas=replicas,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        admin_key=admin_key,
        workdir=workdir.resolve() if workdir else None,
    )
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    running = Cluster(options)
    click.echo(f"starting {replicas} replica(s); logs in {running.workdir}", err=True)
    running.start()
    try:
        for replica in running.replicas:
            click.echo(f"replica {replica.index}: http://{replica.url}", err=True)
        click.echo(
            f"ready: http://{running.url} (gRPC {running.grpc_url}) through nginx; Ctrl-C to stop",
            err=True,
        )
        stop_requested.wait()
        click.echo("stopping: waiting for in-flight requests...", err=True)
    finally:
        running.stop()
    click.echo("stopped", err=True)
