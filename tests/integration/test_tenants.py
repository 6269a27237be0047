"""Tenants through the real proxy: each API key's requests in flight stay within its share.

A real nginx (TLS, API keys with weights) in front of one real ``serve`` replica. Every caller has
its own loopback source address (127.0.x.y), as on a real edge, so the per-address limits do not
decide anything here: the per-key ones do. The tests assert invariants, never timings: how many of
a tenant's simultaneous requests got through, that the rest got an explicit 429 (or, within the
share again, waited for a slot and were answered), and that the other tenant's requests were
all answered, correctly.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from resnet18_triton import contract
from resnet18_triton.deploy import proxy
from resnet18_triton.deploy.cluster import Cluster
from resnet18_triton.perf import harness
from resnet18_triton.perf.images import encode, gradient_image, noisy_png
from tests.dashboard_support import (
    expressions,
    missing_labels,
    samples_of,
    unexposed_names,
)
from tests.edge_support import NEEDS_NGINX_WITH_NJS, SecuredOptions
from tests.support import PROBABILITY_ATOL, TorchReference

pytestmark = NEEDS_NGINX_WITH_NJS

POLITE = "polite-" + "a1" * 16
BUSY = "busy-" + "b2" * 16
BUSY_WEIGHT = 2
# Loose per-address limits (each caller has its own address anyway), a tight per-key share.
LIMITS = proxy.Limits(
    rate_per_s=100,
    burst=200,
    client_connections=4,
    key_in_flight=2,
    key_large_in_flight=1,
    max_in_flight=16,
)
BUSY_CALLERS = 10
# The module's secured cluster (conftest's ``secured``).
REPLICAS = 1
KEYS = (f"polite:{POLITE}", f"busy:{BUSY}:{BUSY_WEIGHT}")
PROXY_METRICS = "resnet18_proxy_"


@dataclass
class Edge:
    port: int
    certificate: Path
    metrics_url: str

    def connect(self, source: str) -> http.client.HTTPConnection:
        context = ssl.create_default_context(cafile=str(self.certificate))
        connection = harness.connect("127.0.0.1", self.port, source=source, tls=context)
        connection.connect()  # the handshake before the start signal, not in the race
        return connection


@pytest.fixture(scope="module")
def edge(secured: tuple[Cluster, SecuredOptions]) -> Edge:
    running, options = secured
    assert running.metrics_url is not None, "nginx has no Lua module: no tenant metrics"
    return Edge(options.options.http_port, options.certificate, running.metrics_url)


def _infer_request(image: bytes, key: str) -> tuple[bytes, dict[str, str]]:
    body, headers = harness.infer_request(image)
    return body, {**headers, "Authorization": f"Bearer {key}"}


@dataclass
class Answer:
    caller: str
    status: int
    retry_after: str | None
    body: bytes
    header_length: str | None

    def probabilities(self) -> np.ndarray:
        return harness.binary_probabilities(self.body, self.header_length)


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


def _outcomes(
    before: harness.MetricSamples,
    after: harness.MetricSamples,
) -> Counter[tuple[str, str]]:
    """(tenant, outcome) -> requests counted between the two scrapes."""
    counted: Counter[tuple[str, str]] = Counter()
    for (name, labels), value in after.items():
        if name == "resnet18_proxy_requests_total":
            label = dict(labels)
            grown = value - before.get((name, labels), 0.0)
            if grown:
                counted[label["tenant"], label["outcome"]] = int(grown)
    return counted


def test_a_tenant_gets_its_weighted_share_in_flight_and_the_other_tenant_is_still_served(
    edge: Edge, reference: TorchReference
) -> None:
    """The busy tenant (weight 2, so 2 x 2 in flight, of which 2 x 1 with a large body) sends 10
    large PNGs at once from 5 addresses, the polite one 2 photos from 2 others, all at the same
    moment: the busy tenant gets at most its 2 large ones through, the rest an explicit 429 with
    Retry-After; the polite tenant, within its own share, gets both answered, equal to
    PyTorch."""
    # About 6.8 MB of noise: its decode keeps each busy request in flight long enough that all
    # the simultaneous ones arrive while the first ones are still being served.
    large = noisy_png()
    photos = [encode(gradient_image(500, 375, seed=seed), "JPEG") for seed in (1, 2)]
    requests = [
        ("busy", harness.loopback_address(caller // 2, "127.0.1.10"), large, BUSY)
        for caller in range(BUSY_CALLERS)
    ]
    requests += [
        ("polite", harness.loopback_address(n, "127.0.2.10"), photo, POLITE)
        for n, photo in enumerate(photos)
    ]
    answers = _all_at_once(edge, requests)

    busy = [answer for answer in answers if answer.caller == "busy"]
    accepted = [answer for answer in busy if answer.status == 200]
    refused = [answer for answer in busy if answer.status == 429]
    share = LIMITS.tenant_large_in_flight(BUSY_WEIGHT)
    assert share < LIMITS.tenant_in_flight(BUSY_WEIGHT)
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


def test_a_burst_over_a_keys_share_waits_for_its_slots_and_every_request_is_answered(
    edge: Edge, reference: TorchReference
) -> None:
    """The polite tenant (share 2) sends 4 photos at once from 4 addresses: the 2 over its share
    wait for a slot (at most Retry-After) instead of getting a 429, so all 4 are answered, equal
    to PyTorch, and the proxy counts no refusal for the tenant."""
    photos = [encode(gradient_image(320, 240, seed=seed), "JPEG") for seed in range(10, 14)]
    assert len(photos) == 2 * LIMITS.tenant_in_flight(1)
    before = harness.metric_samples(edge.metrics_url)
    requests = [
        ("polite", harness.loopback_address(n, "127.0.5.10"), photo, POLITE)
        for n, photo in enumerate(photos)
    ]
    answers = _all_at_once(edge, requests)
    after = harness.metric_samples(edge.metrics_url)
    assert [answer.status for answer in answers] == [200] * len(photos)
    for answer, expected in zip(answers, reference.probabilities(photos), strict=True):
        np.testing.assert_allclose(answer.probabilities(), expected, atol=PROBABILITY_ATOL)
    assert _outcomes(before, after) == {("polite", "answered"): len(photos)}


def test_a_request_that_waits_past_retry_after_gets_the_429_and_abandoned_requests_free_their_slots(
    edge: Edge,
) -> None:
    """Two uploads of the polite tenant (share 2) stall halfway through their bodies, holding
    both its slots (the proxy admits a request on its headers). A third request waits for a slot
    for Retry-After, then gets the explicit 429 naming the API key. When the stalled callers
    hang up, their slots are freed: the next request is answered at once."""
    photo = encode(gradient_image(320, 240, seed=20), "JPEG")
    body, headers = _infer_request(photo, POLITE)
    path = f"/v2/models/{contract.ENSEMBLE_MODEL}/infer"
    stalled = []
    for n in range(LIMITS.tenant_in_flight(1)):
        connection = edge.connect(harness.loopback_address(n, "127.0.6.10"))
        connection.putrequest("POST", path)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            connection.putheader(name, value)
        connection.endheaders(body[: len(body) // 2])
        stalled.append(connection)
    time.sleep(1.0)  # the stalled uploads' headers reach nginx, which admits them
    waiting = edge.connect("127.0.6.20")
    waiting.request("POST", path, body, headers)
    refused = waiting.getresponse()
    assert refused.status == 429
    assert refused.getheader("Retry-After") == str(LIMITS.retry_after_s)
    assert "API key" in json.loads(refused.read())["error"]
    waiting.close()
    for connection in stalled:
        connection.close()
    time.sleep(1.0)  # nginx notices the hang-ups and ends those requests
    after = edge.connect("127.0.6.21")
    after.request("POST", path, body, headers)
    assert after.getresponse().status == 200
    after.close()


def test_the_proxy_counts_each_tenants_answers_refusals_and_answer_times_as_its_callers_saw_them(
    edge: Edge,
) -> None:
    """What the callers saw (answers, 429s of the busy tenant's share, a 401 for an unknown key)
    is what the proxy's metrics count, per key name and outcome; answered requests fill each
    tenant's answer-time histogram and its replica time; health probes are not counted."""
    large = noisy_png()
    photo = encode(gradient_image(500, 375, seed=3), "JPEG")
    before = harness.metric_samples(edge.metrics_url)
    requests = [
        ("busy", harness.loopback_address(caller // 2, "127.0.3.10"), large, BUSY)
        for caller in range(BUSY_CALLERS)
    ]
    requests += [("polite", "127.0.4.10", photo, POLITE), ("stranger", "127.0.4.11", photo, "x")]
    answers = _all_at_once(edge, requests)
    probe = edge.connect("127.0.4.12")
    probe.request("GET", "/v2/health/ready")
    assert probe.getresponse().status == 200
    probe.close()
    after = harness.metric_samples(edge.metrics_url)

    seen: Counter[tuple[str, str]] = Counter()
    outcome_names = {200: "answered", 401: "unauthorized", 429: "too_many"}
    for answer in answers:
        tenant = {"stranger": "-"}.get(answer.caller, answer.caller)
        seen[tenant, outcome_names[answer.status]] += 1
    assert seen["-", "unauthorized"] == 1 and seen["busy", "too_many"] >= 1, seen
    assert _outcomes(before, after) == seen

    for tenant in ("busy", "polite"):
        labels = (("tenant", tenant),)
        count = after[("resnet18_proxy_request_duration_seconds_count", labels)] - before.get(
            ("resnet18_proxy_request_duration_seconds_count", labels), 0.0
        )
        assert count == seen[tenant, "answered"]
        infinite = (("le", "+Inf"), ("tenant", tenant))
        assert (
            after[("resnet18_proxy_request_duration_seconds_bucket", infinite)]
            == after[("resnet18_proxy_request_duration_seconds_count", labels)]
        )
        assert after[("resnet18_proxy_upstream_seconds_total", labels)] > before.get(
            ("resnet18_proxy_upstream_seconds_total", labels), 0.0
        )
    # The refused busy requests were still received (some of their bytes at least): counted.
    busy_bytes = (("tenant", "busy"),)
    assert after[("resnet18_proxy_received_bytes_total", busy_bytes)] - before.get(
        ("resnet18_proxy_received_bytes_total", busy_bytes), 0.0
    ) >= seen["busy", "answered"] * len(large)


def test_the_dashboards_tenant_panels_query_only_what_the_proxy_exposes(edge: Edge) -> None:
    """Run after the traffic above, so every series the panels use has samples."""
    with urllib.request.urlopen(edge.metrics_url, timeout=10) as reply:
        samples = samples_of(reply.read().decode())
    queries = expressions(PROXY_METRICS)
    assert len(queries) >= 4, queries
    assert not unexposed_names(samples, queries, PROXY_METRICS)
    for query in queries:
        assert not missing_labels(samples, query, PROXY_METRICS), query
