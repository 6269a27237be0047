"""Tenants through the real proxy: each API key's requests in flight stay within its share.

A real nginx (TLS, API keys with weights) in front of one real ``serve`` replica. Every caller has
its own loopback source address (127.0.x.y), as on a real edge, so the per-address limits do not
decide anything here: the per-key ones do. The tests assert invariants, never timings: how many of
a tenant's simultaneous requests got through, that the rest got an explicit 429, and that the
other tenant's requests were all answered, correctly.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from resnet18_triton import contract
from resnet18_triton.deploy import proxy
from resnet18_triton.deploy.cluster import Cluster, ClusterOptions
from resnet18_triton.perf.images import encode, gradient_image
from resnet18_triton.server.embedded import free_port
from tests.edge_support import self_signed_certificate, write_key_file
from tests.support import PROBABILITY_ATOL, TorchReference

pytestmark = pytest.mark.skipif(
    (shutil.which("nginx") is None or not Path(proxy.NJS_MODULE_PATH).exists())
    and not os.environ.get("CI"),
    reason="nginx and its njs module are not installed (apt-get install nginx "
    "libnginx-mod-http-js; scripts/setup.sh does it)",
)

POLITE = "polite-" + "a1" * 16
BUSY = "busy-" + "b2" * 16
BUSY_WEIGHT = 2
# Loose per-address limits (each caller has its own address anyway), a tight per-key share.
LIMITS = proxy.Limits(
    rate_per_s=100, burst=200, client_connections=4, key_in_flight=2, max_in_flight=16
)
BUSY_CALLERS = 10
# A noisy 1600 x 1420 PNG (about 6.8 MB): its decode keeps each busy request in flight long
# enough that all the simultaneous ones arrive while the first ones are still being served.
LARGE_PNG_SIZE = (1600, 1420)


@dataclass
class Edge:
    port: int
    certificate: Path

    def connect(self, source: str) -> http.client.HTTPSConnection:
        context = ssl.create_default_context(cafile=str(self.certificate))
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=120, source_address=(source, 0), context=context
        )
        connection.connect()  # the handshake before the start signal, not in the race
        return connection


@pytest.fixture(scope="module")
def edge(
    exported_repository: Path, admin_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Edge]:
    secrets = tmp_path_factory.mktemp("tenant-secrets")
    key_file = write_key_file(
        secrets / "keys.txt", [f"polite:{POLITE}", f"busy:{BUSY}:{BUSY_WEIGHT}"]
    )
    certificate, tls_key = self_signed_certificate(secrets)
    options = ClusterOptions(
        repository=exported_repository,
        replicas=1,
        http_port=free_port(),
        grpc_port=free_port(),
        admin_key=admin_key,
        workdir=tmp_path_factory.mktemp("tenant-cluster"),
        api_key_file=key_file,
        tls_certificate=certificate,
        tls_key=tls_key,
        limits=LIMITS,
    )
    with Cluster(options):
        yield Edge(options.http_port, certificate)


def _infer_request(image: bytes, key: str) -> tuple[bytes, dict[str, str]]:
    tensor = httpclient.InferInput(contract.ENSEMBLE_INPUT, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[image]], dtype=object))
    output = httpclient.InferRequestedOutput(contract.ENSEMBLE_OUTPUT, binary_data=True)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        [tensor], outputs=[output]
    )
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/octet-stream"}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    return body, headers


@dataclass
class Answer:
    caller: str
    status: int
    retry_after: str | None
    body: bytes
    header_length: str | None

    def probabilities(self) -> np.ndarray:
        result = httpclient.InferenceServerClient.parse_response_body(
            self.body, header_length=int(self.header_length) if self.header_length else None
        )
        return np.asarray(result.as_numpy(contract.ENSEMBLE_OUTPUT)[0])


def _all_at_once(edge: Edge, requests: list[tuple[str, str, bytes, str]]) -> list[Answer]:
    """Send ``(caller, source address, image, key)`` requests at the same moment, each on its
    own connection opened beforehand; every answer, in the order given."""
    connections = [edge.connect(source) for _, source, _, _ in requests]
    start = threading.Barrier(len(requests))
    answers: list[Answer | None] = [None] * len(requests)

    def send(index: int) -> None:
        caller, _, image, key = requests[index]
        body, headers = _infer_request(image, key)
        start.wait(timeout=60)
        connection = connections[index]
        connection.request("POST", f"/v2/models/{contract.ENSEMBLE_MODEL}/infer", body, headers)
        reply = connection.getresponse()
        answers[index] = Answer(
            caller,
            reply.status,
            reply.getheader("Retry-After"),
            reply.read(),
            reply.getheader("Inference-Header-Content-Length"),
        )

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for connection in connections:
        connection.close()
    assert all(answer is not None for answer in answers), "a request got no answer"
    return [answer for answer in answers if answer is not None]


def test_a_tenant_gets_its_weighted_share_in_flight_and_the_other_tenant_is_still_served(
    edge: Edge, reference: TorchReference
) -> None:
    """The busy tenant (weight 2, so 2 x 2 in flight) sends 10 large PNGs at once from 5
    addresses, the polite one 2 photos from 2 others, all at the same moment: the busy tenant
    gets at most its 4 through, the rest an explicit 429 with Retry-After; the polite tenant,
    within its own share, gets both answered, equal to PyTorch."""
    import io

    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (*LARGE_PNG_SIZE[::-1], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    large = buffer.getvalue()
    photos = [encode(gradient_image(500, 375, seed=seed), "JPEG") for seed in (1, 2)]
    requests = [
        ("busy", f"127.0.1.{10 + caller // 2}", large, BUSY) for caller in range(BUSY_CALLERS)
    ]
    requests += [("polite", f"127.0.2.{10 + n}", photo, POLITE) for n, photo in enumerate(photos)]
    answers = _all_at_once(edge, requests)

    busy = [answer for answer in answers if answer.caller == "busy"]
    accepted = [answer for answer in busy if answer.status == 200]
    refused = [answer for answer in busy if answer.status == 429]
    share = LIMITS.tenant_in_flight(BUSY_WEIGHT)
    assert 1 <= len(accepted) <= share, [answer.status for answer in busy]
    assert len(accepted) + len(refused) == BUSY_CALLERS, [answer.status for answer in busy]
    for answer in refused:
        assert answer.retry_after == str(LIMITS.retry_after_s)
        assert "API key" in json.loads(answer.body)["error"]
    expected_large = reference.probabilities([large])[0]
    for answer in accepted:
        np.testing.assert_allclose(answer.probabilities(), expected_large, atol=PROBABILITY_ATOL)

    polite = [answer for answer in answers if answer.caller == "polite"]
    assert [answer.status for answer in polite] == [200, 200]
    expected = reference.probabilities(photos)
    for answer, probabilities in zip(polite, expected, strict=True):
        np.testing.assert_allclose(answer.probabilities(), probabilities, atol=PROBABILITY_ATOL)
