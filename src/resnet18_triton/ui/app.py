"""The web app: one static page for people, ``POST /v1/classify`` for curl, an OpenAPI schema.

Every answer is JSON with a message a person can act on: an upload the app refuses is 400, 408
or 413; an image Triton rejects is 400 with Triton's own message beside that image; Triton being
unreachable, not ready or answering nonsense is 503; more requests in flight than allowed is
503 with Retry-After. A failure inside the app is a 500 whose body says so in one line; the
traceback goes to the app's log, never to the client.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from resnet18_triton import contract
from resnet18_triton.client.results import result_to_json
from resnet18_triton.errors import Busy, ResNet18TritonError, UploadError
from resnet18_triton.ui.openapi import openapi_schema
from resnet18_triton.ui.service import DEFAULT_MODELS, Answer, TritonService
from resnet18_triton.ui.uploads import (
    UploadLimits,
    check_declared_length,
    read_uploads,
    with_idle_timeout,
)

log = logging.getLogger("resnet18_triton.ui")


@dataclass(frozen=True)
class UiSettings:
    """How the app reaches Triton and what it accepts.

    ``api_key`` goes to Triton (or the proxy in front of it) as ``Authorization: Bearer`` with
    every request; None takes it from the environment, as ``ImageClassifier`` does. It is never
    part of an answer, and is left out of the settings' repr so that no log shows it.
    ``ca_file``: CA certificates trusted for an https:// URL (None: from the environment).
    """

    url: str = contract.DEFAULT_URL
    api_key: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    models: tuple[str, ...] = DEFAULT_MODELS
    limits: UploadLimits = field(default_factory=UploadLimits)
    max_in_flight: int = 16
    workers: int = 4
    timeout: float = 60.0
    upload_idle_timeout: float = 30.0


class _Admission:
    """Counts requests in flight; all access happens on the event loop, so no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self.in_flight >= self.limit:
            raise Busy(
                f"busy: {self.in_flight} requests in flight, the limit is {self.limit}; "
                "retry in a moment"
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


def create_app(settings: UiSettings) -> Starlette:
    """The app for ``settings``; it starts its Triton worker threads on startup."""
    page = _page()
    admission = _Admission(settings.max_in_flight)
    service: TritonService | None = None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal service
        service = TritonService(
            settings.url,
            settings.workers,
            settings.timeout,
            api_key=settings.api_key,
            ca_file=settings.ca_file,
        )
        try:
            yield
        finally:
            service.close()

    async def run(function: Any, *args: Any) -> Any:
        assert service is not None, "the app is used outside its lifespan"
        return await asyncio.get_running_loop().run_in_executor(service.executor, function, *args)

    async def index(request: Request) -> Response:
        return HTMLResponse(page.html, headers=page.headers)

    async def models(request: Request) -> Response:
        assert service is not None
        report = await run(service.health, settings.models)
        ready = [
            {"name": model.name, "versions": list(model.versions)}
            for model in report.models
            if model.ready
        ]
        return JSONResponse(
            {
                "models": ready,
                "random_weights": report.random_weights,
                "top_k": contract.DEFAULT_TOP_K,
                "max_top_k": contract.NUM_CLASSES,
                "limits": {
                    "max_file_bytes": settings.limits.max_file_bytes,
                    "max_files": settings.limits.max_files,
                    "max_request_bytes": settings.limits.max_request_bytes,
                },
            }
        )

    async def classify(request: Request) -> Response:
        assert service is not None
        top_k = parse_top_k(request.query_params.get("top_k"))
        model = choose_model(request.query_params.get("model"), settings.models)
        with admission.slot():
            check_declared_length(request.headers.get("content-length"), settings.limits)
            stream = with_idle_timeout(request.stream(), settings.upload_idle_timeout)
            uploads = await read_uploads(
                stream, request.headers.get("content-type"), settings.limits
            )
            answer = await run(service.classify, model, uploads, top_k)
        status, body = classify_response(model, answer)
        return JSONResponse(body, status_code=status)

    async def schema(request: Request) -> Response:
        return JSONResponse(openapi_schema(settings.models, settings.limits))

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)  # browsers ask for it; an empty answer is not an error

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/classify", classify, methods=["POST"]),
            Route("/openapi.json", schema, methods=["GET"]),
            Route("/favicon.ico", no_icon, methods=["GET"]),
        ],
        # ResNet18TritonError is answered by the routing layer; Exception (a bug) by the outer
        # layer, which also logs the traceback.
        exception_handlers={
            HTTPException: _error_response,
            ResNet18TritonError: _error_response,
            ClientDisconnect: _error_response,
            Exception: _error_response,
        },
        lifespan=lifespan,
    )


def parse_top_k(value: str | None) -> int:
    """``?top_k=`` as an int in 1..NUM_CLASSES (default ``DEFAULT_TOP_K``); UploadError names
    what is wrong."""
    if value is None or value == "":
        return contract.DEFAULT_TOP_K
    try:
        top_k = int(value)
    except ValueError:
        top_k = 0
    if not 1 <= top_k <= contract.NUM_CLASSES:
        raise UploadError(f"top_k must be a whole number from 1 to {contract.NUM_CLASSES}")
    return top_k


def choose_model(value: str | None, allowed: tuple[str, ...]) -> str:
    """``?model=``, one of the models the app was started with (default: the first)."""
    if not value:
        return allowed[0]
    if value not in allowed:
        raise UploadError(f"unknown model '{value}': choose one of {', '.join(allowed)}")
    return value


def classify_response(model: str, answer: Answer) -> tuple[int, dict[str, Any]]:
    """Status and body: 200 when every image was classified, else 400 with the first reason.

    ``results`` holds exactly the objects ``classify --json`` prints, in upload order.
    """
    body: dict[str, Any] = {
        "model": model,
        "model_version": answer.model_version,
        "latency_ms": round(answer.seconds * 1000, 1),
        "results": [result_to_json(result) for result in answer.results],
    }
    failed = answer.failed
    if not failed:
        return 200, body
    first = failed[0]
    body["error"] = (
        f"{len(failed)} of {len(answer.results)} images not classified; {first.path}: {first.error}"
    )
    return 400, body


async def _error_response(request: Request, error: Exception) -> Response:
    if isinstance(error, HTTPException):  # unknown path, wrong method
        return JSONResponse(
            {"error": f"{error.detail}: {request.method} {request.url.path}"},
            status_code=error.status_code,
            headers=error.headers,
        )
    if isinstance(error, UploadError):
        return JSONResponse({"error": str(error)}, status_code=error.status)
    if isinstance(error, ClientDisconnect):  # nobody is left to read an answer
        return Response(status_code=400)
    if isinstance(error, Busy):
        return JSONResponse({"error": str(error)}, status_code=503, headers={"Retry-After": "1"})
    if isinstance(error, ResNet18TritonError):
        # Triton unreachable, not ready, or answering nonsense: the image is not to blame.
        return JSONResponse({"error": str(error)}, status_code=503)
    log.exception("unexpected error while answering %s %s", request.method, request.url.path)
    return JSONResponse(
        {"error": "internal error in the resnet18-triton ui app; its log has the details"},
        status_code=500,
    )


@dataclass(frozen=True)
class _Page:
    html: str
    headers: dict[str, str]


def _page() -> _Page:
    """The static page with a Content-Security-Policy that admits only its own inline code."""
    html = resources.files("resnet18_triton.ui").joinpath("static/index.html").read_text("utf-8")
    script = _inline_hash(html, "script")
    style = _inline_hash(html, "style")
    policy = (
        "default-src 'none'; "
        f"script-src '{script}'; style-src '{style}'; "
        "img-src 'self' blob:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return _Page(
        html,
        {
            "Content-Security-Policy": policy,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )


def _inline_hash(html: str, tag: str) -> str:
    match = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
    if match is None:
        raise RuntimeError(f"the ui page has no inline <{tag}>")
    digest = hashlib.sha256(match.group(1).encode("utf-8")).digest()
    return "sha256-" + base64.b64encode(digest).decode("ascii")
