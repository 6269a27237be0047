"""The Grafana dashboard's PromQL, checked against metrics a real process exposed.

Shared by the Triton metrics test (``nv_`` series of a real tritonserver) and the tenant test
(``resnet18_proxy_`` series of the real proxy): each scrapes its own exposition, parses it with
prometheus_client, and asks whether the dashboard's queries name only what is there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "triton-dashboard.json"
# Labels Prometheus adds when it scrapes (not in any exposition).
TARGET_LABELS = {"instance", "job", "pod", "namespace"}
BY_LABELS = re.compile(r"\bby \(([^)]*)\)")
QUANTILE = re.compile(r'quantile="([0-9.]+)"')

Sample = tuple[str, dict[str, str]]


def samples_of(text: str) -> list[Sample]:
    """(stored series name, labels) of every sample in a Prometheus text exposition."""
    exposed = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    return [
        (_stored_name(family, sample.name, exposed), dict(sample.labels))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def _stored_name(family: Metric, sample_name: str, exposed: set[str]) -> str:
    """The series name Prometheus stores: the name as exposed. The parser follows OpenMetrics,
    so a counter's samples are named ``<family>_total`` whether or not the text says
    ``_total`` (Triton's counters have none, the proxy's have it)."""
    if family.type == "counter" and sample_name not in exposed:
        return family.name
    return sample_name


def expressions(metric_prefix: str) -> list[str]:
    """Every dashboard query that names a metric starting with ``metric_prefix``."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return [expression for expression in found if metric_names(expression, metric_prefix)]


def metric_names(expression: str, metric_prefix: str) -> list[str]:
    return re.findall(rf"\b({re.escape(metric_prefix)}[a-z_]+)\b", expression)


def unexposed_names(samples: list[Sample], queries: list[str], metric_prefix: str) -> set[str]:
    """Metric names the queries use that the exposition does not have."""
    exposed = {name for name, _ in samples}
    named = {name for query in queries for name in metric_names(query, metric_prefix)}
    return named - exposed


def missing_labels(samples: list[Sample], query: str, metric_prefix: str) -> set[str]:
    """Labels the query groups by (``by (...)``) that none of its metrics' samples carry."""
    names = metric_names(query, metric_prefix)
    labels = {label for name, sample_labels in samples if name in names for label in sample_labels}
    wanted = {
        label.strip() for group in BY_LABELS.findall(query) for label in group.split(",")
    } - TARGET_LABELS
    return wanted - labels


def unexposed_quantiles(samples: list[Sample], query: str, metric_prefix: str) -> set[str]:
    """Summary quantiles the query selects that its metrics do not expose."""
    names = metric_names(query, metric_prefix)
    exposed = {labels.get("quantile") for name, labels in samples if name in names}
    return set(QUANTILE.findall(query)) - exposed
