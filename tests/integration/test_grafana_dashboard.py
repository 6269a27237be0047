"""deploy/grafana's dashboard queries only metrics, labels and quantiles a real Triton exposes.

The names are scraped from the session server's metrics port after real inferences, parsed with
prometheus_client, and compared with every PromQL expression of the dashboard that queries
Triton's metrics (the proxy's are checked by the tenant test, against the real proxy).
"""

from __future__ import annotations

import urllib.request

import pytest

from resnet18_triton import contract
from resnet18_triton.client.probe import probe
from resnet18_triton.server.embedded import EmbeddedServer
from tests.dashboard_support import (
    Sample,
    expressions,
    missing_labels,
    samples_of,
    unexposed_names,
    unexposed_quantiles,
)

TRITON = "nv_"


@pytest.fixture(scope="module")
def samples(server: EmbeddedServer) -> list[Sample]:
    for _ in range(3):
        assert probe(server.url).ok
    url = f"http://127.0.0.1:{server.options.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        return samples_of(reply.read().decode())


@pytest.fixture(scope="module")
def queries() -> list[str]:
    found = expressions(TRITON)
    assert found, "the dashboard has no query of Triton's metrics"
    return found


def test_dashboard_queries_name_only_metrics_triton_exposes(
    samples: list[Sample], queries: list[str]
) -> None:
    unexposed = unexposed_names(samples, queries, TRITON)
    assert not unexposed, f"not exposed by Triton 2.51: {sorted(unexposed)}"


def test_dashboard_groups_and_quantiles_exist_on_those_metrics(
    samples: list[Sample], queries: list[str]
) -> None:
    for query in queries:
        assert not missing_labels(samples, query, TRITON), query
        assert not unexposed_quantiles(samples, query, TRITON), query


def test_every_served_model_has_request_and_latency_series(samples: list[Sample]) -> None:
    for metric in ("nv_inference_request_success", "nv_inference_queue_summary_us"):
        models = {labels.get("model") for name, labels in samples if name == metric}
        assert set(contract.SERVED_MODELS) <= models, f"{metric}: {models}"
