"""Render the nginx configuration that fronts N Triton replicas, and run nginx unprivileged.

One template (``nginx.conf.template`` beside this module) serves every deployment: the local
``resnet18-triton cluster`` (replicas on loopback ports, nginx writing only to a runtime
directory), docker-compose and Kubernetes (replicas by service name). Placeholders are
``@{name}``; nginx's own ``$variables`` pass through untouched.
"""

from __future__ import annotations

import shutil
import string
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from resnet18_triton import contract
from resnet18_triton.errors import ProxyError

TEMPLATE_PATH = Path(__file__).resolve().parent / "nginx.conf.template"
# Room for the JSON inference header (names, shapes, parameters) in front of the binary data.
HEADER_ALLOWANCE_BYTES = 64 * 1024
# Triton's binary tensor format puts a 4-byte length before each BYTES element.
LENGTH_PREFIX_BYTES = 4
# Defaults of the exported preprocess config (ServingSettings), when none can be read.
DEFAULT_MAX_BATCH_SIZE = contract.MAX_BATCH_SIZE
DEFAULT_MAX_IMAGE_BYTES = contract.MAX_IMAGE_BYTES
# A replica that refused or dropped a connection is left out this long before it is tried again.
FAIL_TIMEOUT_S = 5


class _Template(string.Template):
    delimiter = "@"


@dataclass(frozen=True)
class Upstream:
    """One Triton replica as the proxy reaches it: host (name or address) and its two ports."""

    host: str
    http_port: int = contract.DEFAULT_HTTP_PORT
    grpc_port: int = contract.DEFAULT_GRPC_PORT


@dataclass(frozen=True)
class ProxySettings:
    """Everything the rendered configuration depends on."""

    upstreams: tuple[Upstream, ...]
    listen_http: str = "127.0.0.1:8080"
    listen_grpc: str = "127.0.0.1:8081"
    max_body_bytes: int = 0  # 0: derived from the default batch size and image byte limit
    runtime_dir: str = "/tmp/nginx"
    error_log: str = "stderr"
    access_log: str = "off"
    worker_processes: str = "1"

    @property
    def body_limit(self) -> int:
        return self.max_body_bytes or body_limit(DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_IMAGE_BYTES)


def body_limit(max_batch_size: int, max_image_bytes: int) -> int:
    """Largest request body the ensemble can accept: a full batch of maximal images + header."""
    return max_batch_size * (max_image_bytes + LENGTH_PREFIX_BYTES) + HEADER_ALLOWANCE_BYTES


def repository_body_limit(repository: Path) -> int:
    """``body_limit`` from the repository's preprocess config (max_batch_size, max_image_bytes).

    Needs Triton's ModelConfig schema (``tritonclient[grpc]``); raises ``ProxyError`` when the
    config is missing.
    """
    from resnet18_triton.repository.configs import parse

    path = repository / contract.PREPROCESS_MODEL / "config.pbtxt"
    if not path.is_file():
        raise ProxyError(
            f"{path} is missing: run `resnet18-triton export` to fill the repository first"
        )
    config = parse(path.read_text())
    parameter = config.parameters.get("max_image_bytes")
    image_bytes = int(parameter.string_value) if parameter else DEFAULT_MAX_IMAGE_BYTES
    return body_limit(config.max_batch_size or 1, image_bytes)


def _server_lines(upstreams: Sequence[Upstream], grpc: bool) -> str:
    lines = []
    for upstream in upstreams:
        port = upstream.grpc_port if grpc else upstream.http_port
        lines.append(
            f"        server {upstream.host}:{port} max_fails=1 fail_timeout={FAIL_TIMEOUT_S}s;"
        )
    return "\n".join(lines)


def render(settings: ProxySettings) -> str:
    """The nginx.conf text for ``settings`` (raises ``ProxyError`` without upstreams)."""
    if not settings.upstreams:
        raise ProxyError("the proxy needs at least one upstream replica")
    return _Template(TEMPLATE_PATH.read_text()).substitute(
        http_servers=_server_lines(settings.upstreams, grpc=False),
        grpc_servers=_server_lines(settings.upstreams, grpc=True),
        listen_http=settings.listen_http,
        listen_grpc=settings.listen_grpc,
        max_body_bytes=settings.body_limit,
        runtime_dir=settings.runtime_dir,
        error_log=settings.error_log,
        access_log=settings.access_log,
        worker_processes=settings.worker_processes,
        # Every replica once: a request fails only when all of them failed it.
        next_upstream_tries=len(settings.upstreams),
    )


# docker-compose runs its replicas with host networking: replica N serves HTTP on N*100 + 8000 and
# gRPC on the next port, all on 127.0.0.1 (docker-compose.yml names the same ports).
COMPOSE_REPLICA_BASE_PORT = contract.DEFAULT_HTTP_PORT
COMPOSE_REPLICA_PORT_STEP = 100


def compose_replica_upstream(index: int) -> Upstream:
    """Replica ``index`` (1-based) of docker-compose's ``replicas`` profile."""
    http_port = COMPOSE_REPLICA_BASE_PORT + index * COMPOSE_REPLICA_PORT_STEP
    return Upstream("127.0.0.1", http_port=http_port, grpc_port=http_port + 1)


def compose_settings(replicas: int) -> ProxySettings:
    """The configuration docker-compose mounts: replicas ``triton-1`` .. ``triton-N`` on the
    host's loopback (host networking), the proxy on 127.0.0.1:8080 and :8081."""
    return ProxySettings(
        upstreams=tuple(compose_replica_upstream(index) for index in range(1, replicas + 1)),
        listen_http="127.0.0.1:8080",
        listen_grpc="127.0.0.1:8081",
        runtime_dir="/tmp",
        error_log="/dev/stderr",
        access_log="/dev/stdout",
    )


def kubernetes_settings(service: str = "triton") -> ProxySettings:
    """The configuration of the proxy Deployment in deploy/kubernetes.

    Upstream is the replicas' Service, listed twice: kube-proxy balances connections over the
    ready pods, and the second entry lets nginx resend a failed request on a new connection
    (which may land on another pod) instead of failing it.
    """
    return ProxySettings(
        upstreams=(Upstream(service), Upstream(service)),
        listen_http="8080",
        listen_grpc="8081",
        runtime_dir="/tmp",
        error_log="stderr",
        access_log="/dev/stdout",
    )


def nginx_binary() -> str:
    """Path of the distribution's nginx (``ProxyError`` with the install hint when absent)."""
    for candidate in ("nginx", "/usr/sbin/nginx"):
        found = shutil.which(candidate)
        if found:
            return found
    raise ProxyError("nginx is not installed: apt-get install nginx (Debian/Ubuntu)")


def prepare_runtime_dir(runtime_dir: Path) -> None:
    """Create the directories the rendered config writes to (nginx does not create parents)."""
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (runtime_dir / name).mkdir(parents=True, exist_ok=True)


def check_config(config_path: Path, runtime_dir: Path) -> None:
    """``nginx -t`` on a rendered file; ``ProxyError`` with nginx's own message when invalid."""
    result = subprocess.run(
        [
            nginx_binary(),
            "-t",
            "-q",
            "-e",
            "stderr",
            "-p",
            str(runtime_dir),
            "-c",
            str(config_path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        raise ProxyError(f"nginx rejected {config_path}: {result.stderr.strip()}")


def start_nginx(config_path: Path, runtime_dir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start nginx in the foreground (``daemon off`` is in the config) as the current user."""
    log = log_path.open("ab")
    try:
        return subprocess.Popen(
            [nginx_binary(), "-e", "stderr", "-p", str(runtime_dir), "-c", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()
