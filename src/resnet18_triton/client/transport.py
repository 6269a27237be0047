"""tritonclient's HTTP client, plus the two things this project needs from every request.

1. The inference API key, sent as ``Authorization: Bearer <key>`` on every request (inference,
   health, metadata, config), for a proxy that asks for one.
2. What a refusal says beyond its status: tritonclient turns a non-200 answer into an
   ``InferenceServerException`` that keeps the status and the message but drops the headers, so
   ``Retry-After`` would be lost; and its health calls read a 401 or 429 as "not ready". Here every
   non-200 inference answer, and a 401 or 429 to anything, raises ``HttpRefusal``: an
   ``InferenceServerException`` (so existing handling still applies) that also carries
   ``retry_after``.

This overrides tritonclient's ``_get`` and ``_post``, the two methods every call goes through,
because the public plugin hook sees requests only, never responses. The tests run it against real
HTTP servers, so a tritonclient release that renames them fails there.

How a URL names the server (``parse_url``: ``https://`` turns on TLS) and which CAs a TLS
connection trusts (``tls_context_factory``) are decided here too, and ``quiet_hub`` keeps gevent
from printing the failure of a request greenlet that the caller reports anyway.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
import re
import ssl
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import gevent
import gevent.ssl
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from resnet18_triton import contract
from resnet18_triton.errors import ResNet18TritonError

T = TypeVar("T")

# Statuses that mean "not live/ready" to nobody: health calls must raise them, not return False.
_REFUSED_EVERYWHERE = (401, 429)
# A proxy's error page can be long; a person needs its first words.
_MAX_REASON_CHARS = 200


class HttpRefusal(InferenceServerException):  # type: ignore[misc]  # tritonclient has no types
    """A non-200 answer: ``status()`` as a string (as tritonclient gives it), ``message()`` in
    the server's words, and ``retry_after``, the ``Retry-After`` header in seconds (None when
    absent or not a number of seconds)."""

    def __init__(self, message: str, status: int, retry_after: float | None) -> None:
        super().__init__(msg=message, status=str(status))
        self.retry_after = retry_after


class TritonHttpClient(triton_http.InferenceServerClient):  # type: ignore[misc]
    """``tritonclient.http.InferenceServerClient`` that sends ``api_key`` (when given) with
    every request and raises ``HttpRefusal`` as described in the module docstring."""

    def __init__(self, url: str, *, api_key: str | None = None, **options: Any) -> None:
        super().__init__(url, **options)
        self._authorization = f"Bearer {api_key}" if api_key else None

    def _with_key(self, headers: dict[str, Any] | None) -> dict[str, Any] | None:
        if self._authorization is None:
            return headers
        # A new dict: the caller's may be reused for other requests.
        return {**(headers or {}), contract.API_KEY_HEADER: self._authorization}

    def _get(self, request_uri: str, headers: dict[str, Any] | None, query_params: Any) -> Any:
        response = super()._get(request_uri, self._with_key(headers), query_params)
        if response.status_code in _REFUSED_EVERYWHERE:
            raise refusal_of(response)
        return response

    def _post(
        self,
        request_uri: str,
        request_body: Any,
        headers: dict[str, Any] | None,
        query_params: Any,
    ) -> Any:
        response = super()._post(request_uri, request_body, self._with_key(headers), query_params)
        if response.status_code != 200:
            raise refusal_of(response)
        return response


def refusal_of(response: Any) -> HttpRefusal:
    """The ``HttpRefusal`` for a geventhttpclient response whose status is not 200 (reads the
    body)."""
    status = int(response.status_code)
    try:
        body = response.read()
    except OSError:
        body = b""
    return HttpRefusal(
        reason_in(body, status), status, parse_retry_after(response.get("retry-after"))
    )


def reason_in(body: bytes, status: int) -> str:
    """The refusal's reason: Triton's JSON ``error``, else an HTML page's title (nginx), else the
    body's first line, shortened; ``HTTP <status>`` when the body says nothing."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    if title:
        text = html.unescape(title.group(1))
    first_line = " ".join(text.splitlines()[0].split()) if text else ""
    if not first_line:
        return f"HTTP {status}"
    if len(first_line) > _MAX_REASON_CHARS:
        return first_line[: _MAX_REASON_CHARS - 3] + "..."
    return first_line


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds, or None when absent or not a number of seconds.

    RFC 9110 also allows an HTTP date; that is ignored (the client then backs off on its own
    schedule), as are negative and non-finite values.
    """
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def tls_context_factory(
    ca_file: str | Path | None, environ: Mapping[str, str] = os.environ
) -> Callable[[], ssl.SSLContext]:
    """What makes the TLS context of each connection: the system's trusted CAs plus ``ca_file``
    (None: ``$RESNET18_TRITON_CA_FILE``, if set). Raises ResNet18TritonError for a CA file that
    cannot be read as PEM certificates."""
    chosen = ca_file or environ.get(contract.CA_FILE_ENV_VAR) or None
    # gevent's context: its sockets yield to the other requests' greenlets while they wait.
    context = gevent.ssl.create_default_context()
    if chosen is not None:
        try:
            context.load_verify_locations(cafile=str(chosen))
        except (OSError, ssl.SSLError) as error:
            raise ResNet18TritonError(
                f"cannot use the CA file {chosen}: {getattr(error, 'strerror', None) or error} — "
                "give a PEM file of CA certificates (--ca-file or "
                f"${contract.CA_FILE_ENV_VAR})"
            ) from None
    return lambda: context


def parse_url(url: str) -> tuple[str, bool]:
    """``host:port[/path]`` for tritonclient, which wants no scheme; ``https://`` turns on TLS.

    Checked here because tritonclient fails on a bad port with a bare ``int()`` error.
    """
    scheme, _, address = url.rpartition("://")
    if scheme.lower() not in ("", "http", "https"):
        raise ResNet18TritonError(f"invalid Triton URL '{url}': only http and https are spoken")
    try:
        parsed = urlsplit(f"http://{address}")
        valid = bool(parsed.hostname) and parsed.port is not None
    except ValueError:
        valid = False
    if not valid:
        raise ResNet18TritonError(
            f"invalid Triton URL '{url}': expected host:port, e.g. {contract.DEFAULT_URL}"
        )
    return address, scheme.lower() == "https"


@contextlib.contextmanager
def quiet_hub() -> Iterator[None]:
    """Stop gevent from printing a traceback when a request greenlet fails.

    The failure is re-raised by ``get_result`` and reported properly; gevent's hub would also
    print it to stderr. Scoped, so that the caller's own greenlets still report errors.
    """
    hub = gevent.get_hub()
    had_own_stream = "exception_stream" in vars(hub)
    previous = vars(hub).get("exception_stream")
    hub.exception_stream = None
    try:
        yield
    finally:
        if had_own_stream:
            hub.exception_stream = previous
        else:
            del hub.exception_stream


def quietly(results: Iterator[T]) -> Iterator[T]:
    """Run each step of ``results`` with a quiet hub, but not the caller's code between steps."""
    while True:
        with quiet_hub():
            try:
                result = next(results)
            except StopIteration:
                return
        yield result
