"""A stand-in for Triton's HTTP/KServe v2 API in this process, for tests of the client, the CLI,
the web page and the stub watchdog that need an HTTP peer but not a real server (the integration
tests talk to the real one).

It speaks just enough of the API for ``ImageClassifier`` and ``StubWatchdog``: health, model
readiness, metadata and config of the default classifier's models, the repository index, model
load and unload, and binary classification requests. A test chooses what it answers (refusals with
any status, headers and body, an API key it asks for, models that are not ready) and reads back
what it was asked.
"""

from __future__ import annotations

import contextlib
import json
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from resnet18_triton import contract

# (HTTP status, extra headers, body) of one answer.
Answer = tuple[int, dict[str, str], bytes]

RANDOM_PROVENANCE = '{"source": "random", "seed": 0}'
IMAGENET_PROVENANCE = '{"source": "imagenet"}'


def error_answer(status: int, error: str, headers: dict[str, str] | None = None) -> Answer:
    """An answer with Triton's JSON error body ``{"error": error}``."""
    return status, dict(headers or {}), json.dumps({"error": error}).encode()


@dataclass
class FakeTriton:
    """What the stand-in answers, and what it was asked.

    Inference requests get the answers of ``script`` in order, then a normal answer: for each
    image, ``top_k`` predictions ``0.9:0 label 0``, ``0.8:1 label 1``, ... (labels from
    ``label``), or a 400 naming the image when its bytes start with ``bad``. Model load and
    unload requests get the statuses of ``repository_statuses`` in order, then 200.
    """

    url: str = ""  # host:port, set by ``serving``
    max_batch_size: int = contract.MAX_BATCH_SIZE
    provenance: str = IMAGENET_PROVENANCE  # the classifier's weights_provenance parameter
    label: str = "label {rank}"  # format of the label of class ``rank``
    not_ready: set[str] = field(default_factory=set)
    # False: the server's own readiness says no (Triton's is strict: any model loading).
    server_ready: bool = True
    # True: the repository index answers 403, as `resnet18-triton serve` without the admin key.
    index_restricted: bool = False
    # When set, any request without ``Authorization: Bearer <api_key>`` gets nginx's 401 page.
    api_key: str | None = None
    # When set, the answer to every GET (health, readiness, metadata, config).
    health_answer: Answer | None = None
    # The answers to the first GETs, in order (then as usual).
    get_script: list[Answer] = field(default_factory=list)
    script: list[Answer] = field(default_factory=list)
    repository_statuses: list[int] = field(default_factory=list)
    # What was asked: every request's Authorization header (None when absent), the number of
    # inference requests, the batch size of each one answered normally, each load/unload path.
    authorizations: list[str | None] = field(default_factory=list)
    infer_requests: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    repository_calls: list[str] = field(default_factory=list)
    # Set when an inference request arrived; its answer waits until ``release`` is set (it is,
    # unless a test clears it inside ``serving``).
    infer_arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


def _bytes_elements(body: bytes, size: int) -> list[bytes]:
    """Decode a BYTES tensor in Triton's binary format: 4-byte little-endian length, then data."""
    elements, offset = [], 0
    while offset < size:
        (length,) = struct.unpack_from("<I", body, offset)
        elements.append(body[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return elements


def _config(fake: FakeTriton, name: str) -> dict[str, Any]:
    """A model's config as the real server describes the default classifier's models."""
    config: dict[str, Any] = {"name": name, "max_batch_size": fake.max_batch_size}
    if name == contract.ONNX_MODEL:
        config["parameters"] = {contract.PROVENANCE_PARAMETER: {"string_value": fake.provenance}}
    if name == contract.ENSEMBLE_MODEL:
        config["ensemble_scheduling"] = {
            "step": [
                {"model_name": contract.PREPROCESS_MODEL, "model_version": -1},
                {"model_name": contract.ONNX_MODEL, "model_version": -1},
            ]
        }
    return config


def _classification(fake: FakeTriton, header: dict[str, Any], images: list[bytes]) -> Answer:
    """The answer to a classification of ``images`` (see ``FakeTriton``)."""
    for position, image in enumerate(images, start=1):
        if image.startswith(b"bad"):
            prefix = f"image {position} of {len(images)}: " if len(images) > 1 else ""
            return error_answer(400, f"in ensemble 'resnet18', {prefix}cannot identify an image")
    top_k = header["outputs"][0]["parameters"]["classification"]
    data = [
        f"0.{9 - rank}:{rank}:{fake.label.format(rank=rank)}"
        for _ in images
        for rank in range(top_k)
    ]
    output = {"name": "PROBABILITIES", "datatype": "BYTES", "shape": [len(images), top_k]}
    answer = {"model_name": contract.ENSEMBLE_MODEL, "outputs": [{**output, "data": data}]}
    return 200, {}, json.dumps(answer).encode()


def _handler(fake: FakeTriton) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out as two writes: with Nagle's algorithm the body would wait for
        # the client's delayed ACK of the headers, about 40 ms on every answer.
        disable_nagle_algorithm = True

        def log_message(self, *args: object) -> None:
            pass

        def _send(
            self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: object) -> None:
            self._send(status, json.dumps(payload).encode())

        def _reply(self, answer: Answer) -> None:
            status, headers, body = answer
            self._send(status, body, headers)

        def _authorized(self) -> bool:
            authorization = self.headers.get("Authorization")
            fake.authorizations.append(authorization)
            if fake.api_key is None or authorization == f"Bearer {fake.api_key}":
                return True
            page = b"<html><head><title>401 Authorization Required</title></head></html>"
            self._send(401, page, {"WWW-Authenticate": "Bearer"})
            return False

        def do_GET(self) -> None:
            if not self._authorized():
                return
            answer = fake.get_script.pop(0) if fake.get_script else fake.health_answer
            if answer is not None:
                self._reply(answer)
                return
            parts = self.path.strip("/").split("/")
            if parts == ["v2", "health", "ready"]:
                self._send(200 if fake.server_ready else 503)
            elif parts[:2] == ["v2", "health"]:
                self._send(200)
            elif parts[:2] == ["v2", "models"] and len(parts) >= 3:
                self._model_get(parts[2], parts[3:])
            else:
                self._json(404, {"error": "not found"})

        def _model_get(self, name: str, rest: list[str]) -> None:
            ready = name in contract.SERVED_MODELS and name not in fake.not_ready
            if rest == ["ready"]:
                self._send(200 if ready else 400)
            elif not ready:
                self._json(400, {"error": f"Request for unknown model: '{name}' is not found"})
            elif rest == ["config"]:
                self._json(200, _config(fake, name))
            else:
                self._json(200, {"name": name, "versions": ["1"]})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not self._authorized():
                return
            if self.path.endswith("/repository/index"):
                self._index()
            elif self.path.startswith("/v2/repository/models/"):
                fake.repository_calls.append(self.path)
                statuses = fake.repository_statuses
                self._send(statuses.pop(0) if statuses else 200)
            else:
                self._infer(body)

        def _index(self) -> None:
            if fake.index_restricted:
                error = "This API is restricted, expecting header 'triton-admin-key'"
                self._json(403, {"error": error})
                return
            entries = [
                {"name": name, "version": "1", "state": "READY"} for name in contract.SERVED_MODELS
            ]
            for entry in entries:
                if entry["name"] in fake.not_ready:
                    entry.update(state="UNAVAILABLE", reason="load failed: no model.onnx")
            self._json(200, entries)

        def _infer(self, body: bytes) -> None:
            fake.infer_requests += 1
            fake.infer_arrived.set()
            fake.release.wait()
            if fake.script:
                self._reply(fake.script.pop(0))
                return
            header_size = int(self.headers["Inference-Header-Content-Length"])
            header = json.loads(body[:header_size])
            size = header["inputs"][0]["parameters"]["binary_data_size"]
            images = _bytes_elements(body[header_size:], size)
            fake.batch_sizes.append(len(images))
            self._reply(_classification(fake, header, images))

    return Handler


@contextlib.contextmanager
def serving(fake: FakeTriton) -> Iterator[FakeTriton]:
    """``fake`` answered by a real HTTP server on a free loopback port (``fake.url``) until the
    block ends; its threads are daemons, so a client left waiting never holds up the exit."""
    fake.release.set()
    http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    http.daemon_threads = True
    fake.url = f"127.0.0.1:{http.server_address[1]}"
    thread = threading.Thread(target=http.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.release.set()
        http.shutdown()
        http.server_close()
