"""deploy/grafana's dashboard queries only metrics, labels and quantiles a real Triton exposes.

The names are scraped from the session server's metrics port after real inferences, parsed with
prometheus_client, and compared with every PromQL expression in the dashboard.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from resnet18_triton import contract
from resnet18_triton.client.probe import probe
from resnet18_triton.server.embedded import EmbeddedServer

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "triton-dashboard.json"
# Labels Prometheus adds when it scrapes (not in Triton's exposition).
TARGET_LABELS = {"instance", "job", "pod", "namespace"}
METRIC_NAME = re.compile(r"\b(nv_[a-z_]+)\b")
BY_LABELS = re.compile(r"\bby \(([^)]*)\)")
QUANTILE = re.compile(r'quantile="([0-9.]+)"')


@pytest.fixture(scope="module")
def samples(server: EmbeddedServer) -> list[tuple[str, dict[str, str]]]:
    for _ in range(3):
        assert probe(server.url).ok
    url = f"http://127.0.0.1:{server.options.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return [
        (_stored_name(family, sample.name), dict(sample.labels))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def _stored_name(family: Metric, sample_name: str) -> str:
    """The series name Prometheus stores. The parser follows OpenMetrics and adds ``_total`` to
    counter samples; Prometheus scraping Triton's text format keeps the name as exposed, which
    is the family name (Triton's counters have no ``_total``)."""
    return family.name if family.type == "counter" else sample_name


@pytest.fixture(scope="module")
def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert found, "the dashboard has no queries"
    return found


def test_dashboard_queries_name_only_metrics_triton_exposes(
    samples: list[tuple[str, dict[str, str]]], expressions: list[str]
) -> None:
    exposed = {name for name, _ in samples}
    named = {name for expression in expressions for name in METRIC_NAME.findall(expression)}
    assert named, "no Triton metric in the dashboard"
    assert named <= exposed, f"not exposed by Triton 2.51: {sorted(named - exposed)}"


def test_dashboard_groups_and_quantiles_exist_on_those_metrics(
    samples: list[tuple[str, dict[str, str]]], expressions: list[str]
) -> None:
    for expression in expressions:
        labels = {
            label
            for name, labels in samples
            if name in METRIC_NAME.findall(expression)
            for label in labels
        }
        for group in BY_LABELS.findall(expression):
            wanted = {label.strip() for label in group.split(",")} - TARGET_LABELS
            assert wanted <= labels, f"{expression}: no label {sorted(wanted - labels)}"
        for quantile in QUANTILE.findall(expression):
            assert any(
                labels.get("quantile") == quantile
                for name, labels in samples
                if name in METRIC_NAME.findall(expression)
            ), f"{expression}: quantile {quantile} not exposed"


def test_every_served_model_has_request_and_latency_series(
    samples: list[tuple[str, dict[str, str]]],
) -> None:
    for metric in ("nv_inference_request_success", "nv_inference_queue_summary_us"):
        models = {labels.get("model") for name, labels in samples if name == metric}
        assert set(contract.SERVED_MODELS) <= models, f"{metric}: {models}"
