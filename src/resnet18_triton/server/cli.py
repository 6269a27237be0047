"""``resnet18-triton serve``: the embedded Triton server in the foreground."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from resnet18_triton import contract
from resnet18_triton.contract import BACKEND_DIR_ENV_VAR
from resnet18_triton.errors import ServerStartError, StartAborted
from resnet18_triton.keys import admin_key_from
from resnet18_triton.options import (
    admin_key_file_option,
    field_option,
    host_option,
    port_option,
    repository_option,
)
from resnet18_triton.repository import variants
from resnet18_triton.repository.layout import served_models
from resnet18_triton.server.embedded import ALLOCATORS, EmbeddedServer, ServerOptions
from resnet18_triton.signals import ForegroundSignals

# Triton 2.51 reads the restricted-API key only from its command line (no variable, no file).
KEY_ON_ARGV_NOTE = (
    "note: tritonserver 2.51 takes the admin key only on its command line, where local users "
    "can read it (ps, /proc); on shared hosts mount /proc with hidepid=2 or run the server as a "
    "dedicated user (docs/reliability.md)"
)

F = TypeVar("F", bound=Callable[..., object])


def check_exposure(host: str, behind_proxy: bool) -> None:
    """``ServerStartError`` for a ``host`` beyond loopback, unless ``behind_proxy`` says an
    authenticating, bounding proxy is the only way in."""
    if behind_proxy or contract.is_loopback(host):
        return
    raise ServerStartError(
        f"refusing to listen on {host}: Triton's own front end checks no API key and holds every "
        "request body it is sent (a flood of large images grows it by gigabytes). For callers on "
        f"other machines run `resnet18-triton cluster --replicas 1 --host {host} --api-key-file "
        "keys.txt --tls-cert cert.pem --tls-key key.pem` (nginx in front: API keys, TLS, limits "
        "and a body budget); pass --behind-proxy only when such a proxy is the only way to this "
        "address (docs/deployment.md)"
    )


def _server_option(
    flag: str, field: str, type: click.ParamType[Any], help: str | None = None
) -> Callable[[F], F]:
    """``flag`` as the parameter ``field``: sets that ``ServerOptions`` field, by default the
    field's own default. ``serve`` passes every such option to ``ServerOptions`` as it is."""
    return field_option(ServerOptions, flag, field, type, help)


@click.command("serve")
@repository_option("Model repository filled by `resnet18-triton export`.")
@host_option(
    contract.DEFAULT_HOST, "Address to listen on. Beyond loopback it needs --behind-proxy."
)
@click.option(
    "--behind-proxy",
    is_flag=True,
    help="Allow a --host beyond loopback: an authenticating proxy that bounds requests in flight "
    "is the only way in (Kubernetes' triton-proxy and its NetworkPolicy, an ingress). For "
    "callers on other machines run `resnet18-triton cluster` instead.",
)
@port_option("--http-port", contract.DEFAULT_HTTP_PORT)
@port_option("--grpc-port", contract.DEFAULT_GRPC_PORT)
@port_option("--metrics-port", contract.DEFAULT_METRICS_PORT)
@admin_key_file_option(
    "File (mode 0600) holding the key for the restricted APIs (model repository, shared memory, "
    f"logging, trace), sent as header '{contract.ADMIN_KEY_HEADER}'.",
    unset="Unset: a random key, so they stay closed.",
)
@_server_option(
    "--response-cache-bytes",
    "response_cache_bytes",
    click.IntRange(0),
    "Size of Triton's local response cache; 0 disables it.",
)
@_server_option(
    "--exit-timeout",
    "exit_timeout_s",
    click.IntRange(0),
    "Seconds in-flight requests get to finish on shutdown.",
)
@_server_option(
    "--ready-timeout",
    "ready_timeout_s",
    click.FloatRange(1),
    "Seconds to wait for the models to load.",
)
@click.option(
    "--backend-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    envvar=BACKEND_DIR_ENV_VAR,
    default=None,
    help="A backend directory prepared with `python -m resnet18_triton.server.embedded DIR`, "
    "used read-only (the container image sets it). Unset: a fresh copy under $TMPDIR per start.",
)
@_server_option("--log-verbose", "log_verbose", click.IntRange(0))
@click.option("--quiet", is_flag=True, help="Do not echo the server log.")
@click.option(
    "--int8/--no-int8",
    "int8",
    default=None,
    help="Also serve each classifier's INT8 variant (NAME_int8, NAME_int8_ensemble and "
    "NAME_int8_fused, e.g. resnet18_int8_fused; written by `resnet18-triton quantize`). "
    "Default: those the repository holds.",
)
@_server_option(
    "--allocator",
    "allocator",
    click.Choice(ALLOCATORS),
    "malloc for tritonserver and its stubs: tcmalloc (preloaded when installed; Triton's "
    "advice for memory glibc keeps after large request bodies) or the system's.",
)
def serve(
    repository: Path,
    host: str,
    behind_proxy: bool,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    admin_key_file: Path | None,
    backend_dir: Path | None,
    quiet: bool,
    int8: bool | None = None,
    **server_fields: Any,
) -> None:
    """Run the real Triton server on this machine (no Docker) until Ctrl-C or SIGTERM.

    Loads every classifier of the repository (each ensemble whose steps are its NAME_preprocess
    and NAME_onnx models, the default one's preprocess and resnet18_onnx): steps first, ensembles
    last.
    """
    check_exposure(host, behind_proxy)
    if int8 and not variants.holds(repository.resolve(), variants.INT8):
        raise click.ClickException(
            f"--int8: {repository} holds no complete INT8 variant; run `resnet18-triton quantize`"
        )
    options = ServerOptions(
        repository=repository.resolve(),
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        admin_key=admin_key_from(admin_key_file),
        backend_dir=backend_dir.resolve() if backend_dir else None,
        models=served_models(repository.resolve(), int8),
        **server_fields,
    )
    server = EmbeddedServer(options, log_stream=None if quiet else sys.stderr)
    # A signal during start-up stops the launcher at once.
    with ForegroundSignals.install(on_stop=server.abort_start) as signals:
        click.echo(KEY_ON_ARGV_NOTE, err=True)
        try:
            server.start()
        except StartAborted as error:
            click.echo(f"stopped: {error}", err=True)
            sys.exit(error.exit_code)
        try:
            click.echo(
                f"ready: http://{server.url} (models: {', '.join(options.load_order)}); "
                "Ctrl-C to stop",
                err=True,
            )

            def check_alive() -> None:
                if server.process is None or server.process.poll() is not None:
                    raise click.ClickException(
                        "tritonserver exited unexpectedly:\n" + server.log_tail[-2000:]
                    )

            signals.wait_for_stop(check_alive, every_s=0.5)
            click.echo("stopping: waiting for in-flight requests...", err=True)
        finally:
            code = server.stop()
    click.echo(f"stopped (tritonserver exit code {code})", err=True)
