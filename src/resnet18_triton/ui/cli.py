"""``resnet18-triton ui``: serve the upload page and ``POST /v1/classify`` on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from resnet18_triton import contract
from resnet18_triton.extras import require
from resnet18_triton.keys import api_key_from
from resnet18_triton.options import (
    answer_timeout_option,
    api_key_file_option,
    ca_file_option,
    client_concurrency_option,
    host_option,
    port_option,
    url_option,
)
from resnet18_triton.ui.app import UiSettings, create_app
from resnet18_triton.ui.service import DEFAULT_MODELS
from resnet18_triton.ui.uploads import MEGABYTE, UploadLimits

F = TypeVar("F", bound=Callable[..., object])

# The limits' defaults are the app's own, stated once in UiSettings and UploadLimits.
_SETTINGS = UiSettings()
_LIMITS = _SETTINGS.limits


def _megabytes_option(flag: str, default_bytes: int, help: str) -> Callable[[F], F]:
    """``flag``: a size in MB, more than 0; by default ``default_bytes`` in MB."""
    return click.option(
        flag,
        type=click.FloatRange(min=0, min_open=True),
        default=default_bytes / MEGABYTE,
        show_default=True,
        help=help,
    )


def _limit_option(flag: str, default: int, help: str) -> Callable[[F], F]:
    """``flag``: how many of something the app takes at most, at least 1."""
    return click.option(
        flag, type=click.IntRange(min=1), default=default, show_default=True, help=help
    )


@click.command("ui")
@url_option("Triton HTTP endpoint, host:port: the server, or a proxy in front of it.")
@api_key_file_option(
    "File (mode 0600) holding the inference API key the app sends to Triton as "
    "'Authorization: Bearer' (for a --url that is a proxy asking for one); read once at start, "
    f"never sent to the browser. Or set ${contract.API_KEY_ENV_VAR} (or "
    f"${contract.API_KEY_FILE_ENV_VAR}). There is no option for the key itself: other users can "
    "read command lines."
)
@ca_file_option()
@host_option("127.0.0.1", "Address to listen on.")
@port_option("--port", 8080)
@click.option(
    "--model",
    "models",
    multiple=True,
    default=DEFAULT_MODELS,
    show_default=True,
    help="A classifier the page may pick (repeatable; the first is the default). "
    "Only those ready on the server are offered.",
)
@_megabytes_option("--max-image-mb", _LIMITS.max_file_bytes, "Largest image accepted, in MB.")
@_limit_option("--max-images", _LIMITS.max_files, "Most images in one request.")
@_megabytes_option("--max-request-mb", _LIMITS.max_request_bytes, "Largest request body, in MB.")
@_limit_option(
    "--max-in-flight", _SETTINGS.max_in_flight, "Requests handled at once; more get 503."
)
@client_concurrency_option(
    "--workers", _SETTINGS.workers, "Threads (each with its own connections) that talk to Triton."
)
@answer_timeout_option(_SETTINGS.timeout, "Seconds to wait for Triton's answer.")
def ui(
    url: str,
    host: str,
    port: int,
    models: tuple[str, ...],
    max_image_mb: float,
    max_images: int,
    max_request_mb: float,
    max_in_flight: int,
    workers: int,
    timeout: float,
    api_key_file: Path | None = None,
    ca_file: Path | None = None,
) -> None:
    """Serve a page to drop photos on, and POST /v1/classify for curl:

    curl -F image=@cat.jpg http://127.0.0.1:8080/v1/classify

    Every request to Triton carries the inference API key when one is set (--api-key-file or
    the environment); the page and its answers never contain it.
    """
    uvicorn = require("uvicorn", "ui")
    settings = UiSettings(
        url=url,
        api_key=api_key_from(api_key_file),
        ca_file=str(ca_file) if ca_file else None,
        models=models,
        limits=UploadLimits(
            max_file_bytes=int(max_image_mb * MEGABYTE),
            max_files=max_images,
            max_request_bytes=int(max_request_mb * MEGABYTE),
        ),
        max_in_flight=max_in_flight,
        workers=workers,
        timeout=timeout,
    )
    _check_port_free(host, port)
    app = create_app(settings)
    where = f"[{host}]" if ":" in host else host
    click.echo(f"resnet18-triton ui on http://{where}:{port}/ (Triton at {url})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False)


def _check_port_free(host: str, port: int) -> None:
    """Fail with a usage error naming the port, rather than uvicorn's log line and exit 1."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise click.UsageError(
                f"cannot listen on {host}:{port} ({error.strerror}): choose another --port"
            ) from None
