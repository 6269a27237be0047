"""What the client hands back: predictions per image and the server's health, as plain data.

Also the parser of Triton's classification-extension answers (``"probability:index:label"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from resnet18_triton import contract
from resnet18_triton.repository.variants import INTRA_OP_THREADS, OPENVINO_THREADS


@dataclass(frozen=True)
class Prediction:
    """One of the top-k classes for an image, as ranked by the server."""

    label: str
    index: int
    probability: float


@dataclass(frozen=True)
class ClassificationResult:
    """The outcome for one image: its predictions, or why there are none.

    ``retries`` counts the times its request was sent again after a refusal the server may get
    over (overload, a backend process being replaced, a dropped connection). ``model_version``
    is the version of the classifier that answered, as the server named it (``publish`` makes it
    the version of the weights that computed the answer).
    """

    path: str
    predictions: list[Prediction] = field(default_factory=list)
    error: str | None = None
    retries: int = 0
    model_version: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def result_to_json(result: ClassificationResult) -> dict[str, Any]:
    """The result as plain JSON types: the one form that ``classify --json`` prints and the web
    API returns. ``{"image", "top": [{"label", "index", "probability"}, ...]}``, or
    ``{"image", "error"}`` when the image was not classified; either with ``"retries": N`` when
    its request had to be sent again (absent means none, so an answer at the first attempt reads
    the same as before retries were counted); an answer has ``"model_version"``, the version of
    the classifier that computed it.
    """
    record: dict[str, Any] = {"image": result.path}
    if result.ok:
        record["top"] = [
            {"label": p.label, "index": p.index, "probability": p.probability}
            for p in result.predictions
        ]
        if result.model_version is not None:
            record["model_version"] = result.model_version
    else:
        record["error"] = result.error
    if result.retries:
        record["retries"] = result.retries
    return record


@dataclass(frozen=True)
class ModelHealth:
    """Readiness of one model; ``detail`` carries the server's reason when it is not ready."""

    name: str
    ready: bool
    versions: tuple[str, ...] = ()
    detail: str = ""
    precision: str = ""  # bf16, f32, fp32, int8; empty for steps that compute no logits
    # (setting, value) pairs from the model's config, in display order; see serving_summary.
    serving: tuple[tuple[str, str], ...] = ()


def precision_of(config: dict[str, Any]) -> str:
    """A classifier's numeric precision from its model config (JSON), empty when not one.

    The ``precision`` parameter when present (OpenVINO variants), ``int8`` for a model carrying
    a quantisation recipe, ``fp32`` for any other ONNX Runtime model, a fused model running
    ONNX Runtime included.
    """
    parameters = config.get("parameters", {})
    named = str(parameters.get(contract.PRECISION_PARAMETER, {}).get("string_value", ""))
    if named:
        return named
    if "quantization" in parameters:
        return "int8"
    fused = parameters.get(contract.FUSED_ENGINE_PARAMETER, {}).get("string_value")
    return "fp32" if (fused or config.get("backend")) == "onnxruntime" else ""


def ensemble_classifier(config: dict[str, Any]) -> str | None:
    """The step of an ensemble config that is not the preprocessing, if any."""
    steps = config.get("ensemble_scheduling", {}).get("step", [])
    names = [step.get("model_name") for step in steps]
    return next((name for name in names if name and not _is_preprocess(name)), None)


def _is_preprocess(model: str) -> bool:
    """Whether ``model`` is a classifier's preprocessing step (``ClassifierNames.preprocess``)."""
    return model == contract.PREPROCESS_MODEL or model.endswith("_preprocess")


@dataclass(frozen=True)
class ClassifierHealth:
    """One served classifier as its model configs describe it: classes, the input side, the
    preprocessing parameters (``resize_size`` 0 = straight to the input size) and provenance."""

    name: str
    classes: int
    input_size: int
    preprocessing: dict[str, str]
    provenance: dict[str, Any] | None


@dataclass(frozen=True)
class HealthReport:
    """What ``resnet18-triton health`` shows; ``provenance`` is None when it cannot be read."""

    url: str
    live: bool
    ready: bool
    models: tuple[ModelHealth, ...]
    provenance: dict[str, Any] | None
    provenance_error: str | None = None
    classifiers: tuple[ClassifierHealth, ...] = ()

    @property
    def all_ready(self) -> bool:
        return self.live and self.ready and all(model.ready for model in self.models)

    @property
    def random_weights(self) -> bool:
        """True when the served weights are random, i.e. every label is meaningless."""
        return self.provenance is not None and self.provenance.get("source") == "random"


# Config parameters that decide how a model uses the CPU: ONNX Runtime's intra-op pool and
# OpenVINO's threads per instance (the same core budget, see `resnet18-triton tune`).
_THREAD_PARAMETERS = (
    (INTRA_OP_THREADS, "intra-op threads"),
    (OPENVINO_THREADS, "threads"),
)


def serving_summary(config: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """How a model is served, from its config as the server reports it (JSON): instance count,
    threads (ONNX Runtime's intra-op, OpenVINO's per instance), max batch size, and the dynamic
    batcher's queue delay and queue policy (the most requests it queues before refusing more, and
    how long one may wait queued; "unbounded" when the config sets none).

    Settings the config does not carry are left out, so an ensemble shows only its batch size.
    """
    summary: list[tuple[str, str]] = []
    groups = config.get("instance_group") or []
    if groups:
        summary.append(("instances", str(sum(int(group.get("count", 1)) for group in groups))))
    parameters = config.get("parameters") or {}
    for key, label in _THREAD_PARAMETERS:
        value = (parameters.get(key) or {}).get("string_value")
        if value:
            summary.append((label, value))
    if "max_batch_size" in config:
        summary.append(("max batch", str(config["max_batch_size"])))
    batching = config.get("dynamic_batching")
    if isinstance(batching, dict):
        delay = batching.get("max_queue_delay_microseconds", 0)
        summary.append(("queue delay us", str(delay)))
        policy = batching.get("default_queue_policy") or {}
        size = int(policy.get("max_queue_size", 0) or 0)
        summary.append(("queue limit", str(size) if size else "unbounded"))
        timeout_us = int(policy.get("default_timeout_microseconds", 0) or 0)
        if timeout_us:
            summary.append(("queue timeout ms", str(timeout_us // 1000)))
    return tuple(summary)


def parse_classification(entry: bytes | str) -> Prediction:
    """Parse one classification-extension entry ``"probability:index:label"``.

    Labels may contain ':' and ',' (ImageNet has both), hence ``maxsplit=2``. Without a label
    file the server sends ``"probability:index"``; the label is then empty.
    """
    text = entry.decode("utf-8") if isinstance(entry, bytes) else str(entry)
    parts = text.split(":", 2)
    try:
        return Prediction(
            label=parts[2] if len(parts) == 3 else "",
            index=int(parts[1]),
            probability=float(parts[0]),
        )
    except (IndexError, ValueError):
        raise ValueError(
            f"not a 'probability:index:label' classification entry: {text!r}"
        ) from None


def parse_classifications(rows: npt.NDArray[Any]) -> list[list[Prediction]]:
    """Parse the ``[N, k]`` array of entries the server returns for N images."""
    return [[parse_classification(entry) for entry in row] for row in np.atleast_2d(rows)]
