"""``resnet18-triton cluster``: N embedded Triton replicas behind nginx, in the foreground.

Also the key-file helpers of the proxy's edge, as subcommands that start nothing: ``cluster
keys add NAME`` appends a random key to ``--api-key-file`` and ``cluster keys hash`` prints the
hash -> name map that the compose and Kubernetes proxies take as a secret. ``cluster`` is a click
group that runs the cluster when no subcommand follows (``invoke_without_command``), so
``resnet18-triton cluster [OPTIONS]`` works as it always did. ``--add-api-key`` and
``--hash-api-keys``, the helpers' old spellings, still work for one release and warn.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from resnet18_triton.deploy import keys, proxy
from resnet18_triton.deploy.cluster import Cluster, ClusterOptions
from resnet18_triton.errors import ProxyError
from resnet18_triton.keys import admin_key_from
from resnet18_triton.options import (
    admin_key_file_option,
    deprecated_option,
    given_here_or_above,
    host_option,
    output_folder_option,
    port_option,
    repository_option,
)
from resnet18_triton.signals import ForegroundSignals

ADD_KEY_COMMAND = "resnet18-triton cluster keys add NAME --api-key-file FILE"
HASH_KEYS_COMMAND = "resnet18-triton cluster keys hash --api-key-file FILE"


F = TypeVar("F", bound=Callable[..., object])

# The proxy's limits, one option each: (flag, ``proxy.Limits`` field, help). Each takes a whole
# number of at least 1 and defaults to the field's default.
LIMIT_OPTIONS = (
    (
        "--rate-limit",
        "rate_per_s",
        "Requests per second per client address; beyond --burst: 429 with Retry-After.",
    ),
    ("--burst", "burst", "Requests a client address may send at once above --rate-limit."),
    (
        "--client-connections",
        "client_connections",
        "Requests in flight per client address (429 beyond).",
    ),
    (
        "--key-in-flight",
        "key_in_flight",
        "Requests in flight per API key (tenant) from all its addresses, times the key's weight "
        "(name:key:weight in --api-key-file; 429 beyond). A tenant alone gets no more than that.",
    ),
    (
        "--key-large-in-flight",
        "key_large_in_flight",
        f"Of those, requests with a body of {proxy.LARGE_BODY_BYTES:,} bytes or more, times the "
        "key's weight (429 beyond): a large image costs many photos' time.",
    ),
    (
        "--max-in-flight",
        "max_in_flight",
        "Requests in flight through the proxy in total (429 beyond).",
    ),
    (
        "--max-large-in-flight",
        "max_large_in_flight",
        "Requests with a large body through the proxy in total, keys or not (429 beyond).",
    ),
)


def _key_file_option(help: str) -> Callable[[F], F]:
    """``--api-key-file`` as the ``api_key_file`` parameter: the proxy's file of API keys (a
    path, read when the command runs), which ``cluster`` and its ``keys`` subcommands take."""
    return click.option(
        "--api-key-file", type=click.Path(dir_okay=False, path_type=Path), default=None, help=help
    )


def limit_options(command: F) -> F:
    """The options of ``LIMIT_OPTIONS``, in that order; each reaches the command under its field's
    name."""
    for flag, field, help_text in reversed(LIMIT_OPTIONS):
        command = click.option(
            flag,
            field,
            default=getattr(proxy.Limits, field),
            show_default=True,
            type=click.IntRange(1),
            help=help_text,
        )(command)
    return command


@click.group("cluster", invoke_without_command=True, subcommand_metavar="[keys ...]")
@click.option("--replicas", default=2, show_default=True, type=click.IntRange(1, 16))
@repository_option("Model repository filled by `resnet18-triton export` (shared by every replica).")
@host_option(
    "127.0.0.1",
    "Address of the proxy (the replicas stay on 127.0.0.1). Beyond loopback it needs "
    "--api-key-file, or --insecure-no-auth.",
)
@port_option("--http-port", 8080)
@port_option("--grpc-port", 8081)
@port_option(
    "--metrics-port",
    proxy.METRICS_PORT,
    "Port of the proxy's per-tenant metrics for Prometheus (GET /metrics, always on "
    "127.0.0.1; needs nginx's Lua module). 0: none.",
    lowest=0,
)
@admin_key_file_option(
    "File (mode 0600) of the key for the replicas' restricted APIs (never reachable through the "
    "proxy); no option takes the key itself, so it never stands on a command line you type.",
    "Unset: each replica makes a random one.",
)
@_key_file_option(
    "File of API keys (mode 0600; one key a line, or name:key). Clients must send "
    "`Authorization: Bearer <key>`; nginx stores only the keys' SHA-256. Send SIGHUP to this "
    "process after editing the file (revoking a key is deleting its line)."
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Serve a non-loopback --host without API keys (a firewall or another proxy "
    "authenticates callers).",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="PEM certificate (chain): the proxy serves HTTPS and gRPC over TLS. Needs --tls-key.",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="PEM private key of --tls-cert.",
)
@limit_options
@click.option(
    "--body-budget-mib",
    default=proxy.Limits.body_budget_bytes // proxy.MIB,
    show_default=True,
    type=click.IntRange(1),
    help="Request bodies the proxy holds at once; each request may send "
    "budget / --max-in-flight (413 beyond).",
)
@deprecated_option("--add-api-key", "cluster keys add", ADD_KEY_COMMAND, metavar="NAME")
@deprecated_option("--hash-api-keys", "cluster keys hash", HASH_KEYS_COMMAND)
@output_folder_option(
    "--workdir", "Where the nginx config, runtime files and replica logs go (default: a temp dir)."
)
def cluster(
    replicas: int,
    repository: Path,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    admin_key_file: Path | None,
    api_key_file: Path | None,
    insecure_no_auth: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    body_budget_mib: int,
    add_api_key: str | None,
    hash_api_keys: bool,
    workdir: Path | None,
    **limit_values: int,
) -> None:
    """Run N `serve` replicas behind nginx until Ctrl-C; a replica that exits is restarted.

    SIGHUP reloads --api-key-file. `cluster keys` adds keys to that file and hashes them.
    """
    if click.get_current_context().invoked_subcommand is not None:
        return  # `cluster keys ...`: nothing to start
    if add_api_key is not None or hash_api_keys:
        key_file = _key_file(api_key_file, "--add-api-key and --hash-api-keys need")
        if add_api_key is not None:
            _add_key(key_file, add_api_key)
        if hash_api_keys:
            _print_hashes(key_file)
        return
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    limits = proxy.Limits(**limit_values, body_budget_bytes=body_budget_mib * proxy.MIB)
    options = ClusterOptions(
        repository=repository.resolve(),
        replicas=replicas,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        admin_key=admin_key_from(admin_key_file),
        workdir=workdir.resolve() if workdir else None,
        api_key_file=api_key_file.resolve() if api_key_file else None,
        insecure_no_auth=insecure_no_auth,
        tls_certificate=tls_cert.resolve() if tls_cert else None,
        tls_key=tls_key.resolve() if tls_key else None,
        limits=limits,
        metrics_port=metrics_port,
    )
    running = Cluster(options)  # refuses an exposed host without keys before anything starts
    with ForegroundSignals.install(reload=True) as signals:
        click.echo(f"starting {replicas} replica(s); logs in {running.workdir}", err=True)
        running.start()
        try:
            for line in _ready_lines(running):
                click.echo(line, err=True)

            def reload_keys() -> None:
                if not signals.take_reload():
                    return
                try:
                    count = running.reload_api_keys()
                except ProxyError as error:
                    click.echo(
                        f"keys not reloaded, the previous ones stay in force: {error}", err=True
                    )
                else:
                    click.echo(f"reloaded {count} API key(s) from {api_key_file}", err=True)

            signals.wait_for_stop(reload_keys)
            click.echo("stopping: waiting for in-flight requests...", err=True)
        finally:
            running.stop()
    click.echo("stopped", err=True)


def _ready_lines(running: Cluster) -> list[str]:
    """What a started cluster tells its operator: each replica, the proxy's address and edge,
    and where its tenant metrics are (or why there are none although a port was asked for), and
    why canaries are not routed when they are not."""
    lines = [f"replica {replica.index}: http://{replica.url}" for replica in running.replicas]
    edge = "API keys required" if running.options.api_key_file else "no API keys"
    body_limit = running.settings.body_limit if running.settings else 0
    lines.append(
        f"ready: {running.scheme}://{running.url} (gRPC {running.grpc_url}) through nginx; "
        f"{edge}; bodies up to {body_limit} bytes; Ctrl-C to stop"
    )
    if running.metrics_url:
        lines.append(f"tenant metrics: {running.metrics_url}")
    elif running.options.metrics_port:
        lines.append(
            "no tenant metrics: this nginx has no Lua module (apt-get install "
            "libnginx-mod-http-lua)"
        )
    if not running.canary_routing:
        lines.append(
            "no canary routing (publish --canary): this nginx has no njs module (apt-get install "
            "libnginx-mod-http-js)"
        )
    return lines


@cluster.group("keys")
def keys_group() -> None:
    """Make and hash the API keys of the proxy's edge (starts nothing)."""


_KEYS_FILE_HELP = (
    "The file of API keys (mode 0600; one key a line, or name:key[:weight]); may also be "
    "given to `cluster` before `keys`."
)


@keys_group.command("add")
@click.argument("name")
@_key_file_option(_KEYS_FILE_HELP)
def add_key_command(name: str, api_key_file: Path | None) -> None:
    """Add a random key named NAME to the key file and print it once.

    The key is appended to --api-key-file (created mode 0600 if missing) and is all that goes to
    stdout; send SIGHUP to a running `cluster` to load it.
    """
    _add_key(_key_file_given(), name)


@keys_group.command("hash")
@_key_file_option(_KEYS_FILE_HELP)
def hash_keys_command(api_key_file: Path | None) -> None:
    """Print the key file's SHA-256 -> name map, the proxies' secret.

    The map of --api-key-file that the compose and Kubernetes proxies take as a secret; it holds
    no key.
    """
    _print_hashes(_key_file_given())


def _key_file_given() -> Path:
    """The subcommand's --api-key-file, else the one given to `cluster` before `keys`."""
    ctx = click.get_current_context()
    given = given_here_or_above(ctx, "api_key_file")
    assert given is None or isinstance(given, Path)
    return _key_file(given, f"`cluster keys {ctx.info_name}` needs")


def _key_file(api_key_file: Path | None, needs: str) -> Path:
    if api_key_file is None:
        raise click.UsageError(f"{needs} --api-key-file FILE")
    return api_key_file


def _add_key(api_key_file: Path, name: str) -> None:
    key = keys.add_api_key(api_key_file, name)
    click.echo(f"added key {name!r} to {api_key_file}; give the client:", err=True)
    click.echo(key)


def _print_hashes(api_key_file: Path) -> None:
    click.echo(keys.hash_map(keys.read_api_keys(api_key_file)), nl=False)
