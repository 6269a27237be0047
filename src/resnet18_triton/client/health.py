"""Health: what the server, its models and its classifiers say about themselves.

``HealthCheck`` asks one server through the calls of an ``ImageClassifier`` (so the API key, the
timeouts and the error table apply to it as to inference): readiness, the health report
(``health``'s content: liveness, readiness, each model's state, versions, precision and serving
settings, each classifier's classes, input size, preprocessing and weights provenance), and the
provenance of the served weights. ``served_classifiers``, ``served_names`` and
``classifier_health`` are the pure parts: which classifiers and models a repository index lists,
and what three model configs say about a classifier.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from resnet18_triton import contract
from resnet18_triton.client.results import (
    ClassifierHealth,
    HealthReport,
    ModelHealth,
    ensemble_classifier,
    precision_of,
    serving_summary,
)
from resnet18_triton.client.transport import TritonHttpClient
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.errors import ApiKeyError, ResNet18TritonError, ServerUnavailableError
from resnet18_triton.repository.variants import REGISTRY, classifier_of, variant_model_names

T = TypeVar("T")
# A repository index: model name -> its entries (one a version) from the repository-index API.
Index = dict[str, list[dict[str, Any]]]

_HINT = "see `resnet18-triton health`"
# Errors that say the whole run cannot go on: no point asking the server anything else.
_FATAL = (ServerUnavailableError, ApiKeyError)


class Call(Protocol):
    """Runs one client call and raises what ``error_map.FAILURES`` says when it fails."""

    def __call__(self, method: Callable[..., T], *args: Any) -> T: ...


def served_classifiers(index: Index | None, named: Sequence[str] = ()) -> list[ClassifierNames]:
    """``named`` classifiers, then those whose ensemble, preprocess and ONNX models the
    repository ``index`` lists (the default classifier when there is no index)."""
    # A variant's model (``--model resnet18_int8_fused``) stands for its classifier.
    found = []
    for name in named:
        owner = classifier_of(name)
        names = owner[0] if owner else ClassifierNames.of(name)
        if names not in found:
            found.append(names)
    candidates = sorted(index) if index is not None else [contract.DEFAULT_CLASSIFIER]
    for name in candidates:
        try:
            names = ClassifierNames.of(name)
        except ValueError:
            continue
        listed = index is None or all(model in index for model in names.served)
        if listed and names not in found:
            found.append(names)
    return found


def served_names(names: ClassifierNames, index: Index | None) -> list[str]:
    """The models of ``names`` to check: FP32 always, each variant's where the index lists it."""
    models = [model for variant in REGISTRY for model in variant.models(names)]
    listed = [model for model in models if index is not None and model in index]
    return [*names.served, *listed]


def classifier_health(
    name: str, ensemble: dict[str, Any], preprocess: dict[str, Any], onnx: dict[str, Any]
) -> ClassifierHealth:
    """``ClassifierHealth`` from the three model configs (JSON form of the model-config API)."""

    def parameters(config: dict[str, Any]) -> dict[str, str]:
        items = config.get("parameters", {}).items()
        return {key: value.get("string_value", "") for key, value in items}

    output_dims = ensemble.get("output", [{}])[0].get("dims", [0])
    input_dims = onnx.get("input", [{}])[0].get("dims", [0, 0, 0])
    settings = parameters(preprocess)
    keys = ("resize_size", "input_size", "mean", "std", "interpolation")
    text = parameters(onnx).get(contract.PROVENANCE_PARAMETER, "")
    try:
        provenance = json.loads(text) if text else None
    except json.JSONDecodeError:
        provenance = None
    return ClassifierHealth(
        name=name,
        classes=int(output_dims[-1]),
        input_size=int(input_dims[-1]),
        preprocessing={key: settings[key] for key in keys if key in settings},
        provenance=provenance if isinstance(provenance, dict) else None,
    )


@dataclass(frozen=True)
class HealthCheck:
    """The health questions asked of the server at ``url`` about ``model``, each through
    ``call`` on ``client``."""

    call: Call
    client: TritonHttpClient
    url: str
    model: str

    def ensure_ready(self) -> None:
        """``ImageClassifier.ensure_ready``: raises ServerUnavailableError saying what to check.

        Only this client's model must be ready. The server's own readiness is strict: it says no
        while any model loads or unloads, such as a version that ``publish`` or ``rollback``
        moves away from, while this model answers."""
        if not self.call(self.client.is_model_ready, self.model):
            raise ServerUnavailableError(
                f"model '{self.model}' is not ready on Triton at {self.url} "
                f"(not loaded, still loading or unknown) — {_HINT}"
            )

    def weights_provenance(self, model: str | None = None) -> dict[str, Any]:
        """``ImageClassifier.weights_provenance`` of ``model`` (default: ``self.model``)."""
        config = self.call(self.client.get_model_config, model or self.model)
        steps = config.get("ensemble_scheduling", {}).get("step", [])
        if steps:
            config = self.call(self.client.get_model_config, steps[-1]["model_name"])
        parameter = config.get("parameters", {}).get(contract.PROVENANCE_PARAMETER, {})
        text = parameter.get("string_value", "")
        if not text:
            raise ResNet18TritonError(
                f"model '{config.get('name', model or self.model)}' has no "
                f"'{contract.PROVENANCE_PARAMETER}' parameter"
            )
        try:
            provenance = json.loads(text)
        except json.JSONDecodeError:
            provenance = None
        if not isinstance(provenance, dict):
            raise ResNet18TritonError(
                f"'{contract.PROVENANCE_PARAMETER}' is not a JSON object: {text!r}"
            )
        return provenance

    def report(
        self,
        models: Sequence[str] | None = None,
        admin_key: str | None = None,
        classifiers: Sequence[str] = (),
    ) -> HealthReport:
        """``ImageClassifier.health``'s report; raises only when the server cannot be reached."""
        live = self.call(self.client.is_server_live)
        ready = self.call(self.client.is_server_ready)
        index = self._repository_index(admin_key)
        names = served_classifiers(index, classifiers)
        if models is None:
            models = [model for item in names for model in served_names(item, index)]
            # Variants (INT8, OpenVINO) of each classifier that the server has ready.
            variants = [
                model
                for item in names
                for model in variant_model_names(item)
                if model not in models
            ]
            models += [model for model in variants if self.call(self.client.is_model_ready, model)]
        try:
            provenance, provenance_error = self.weights_provenance(), None
        except _FATAL:
            raise
        except ResNet18TritonError as error:
            provenance, provenance_error = None, str(error)
        return HealthReport(
            url=self.url,
            live=live,
            ready=ready,
            models=tuple(self._model_health(name, index) for name in models),
            provenance=provenance,
            provenance_error=provenance_error,
            classifiers=tuple(
                info for info in (self._classifier_health(item) for item in names) if info
            ),
        )

    def _classifier_health(self, names: ClassifierNames) -> ClassifierHealth | None:
        """A classifier as its configs describe it (model-config API); None when not loaded."""
        try:
            ensemble = self.call(self.client.get_model_config, names.ensemble)
            preprocess = self.call(self.client.get_model_config, names.preprocess)
            onnx = self.call(self.client.get_model_config, names.onnx)
        except _FATAL:
            raise
        except ResNet18TritonError:
            return None
        return classifier_health(names.name, ensemble, preprocess, onnx)

    def _model_health(self, name: str, index: Index | None) -> ModelHealth:
        if self.call(self.client.is_model_ready, name):
            metadata = self.call(self.client.get_model_metadata, name)
            versions = tuple(metadata.get("versions", ()))
            config = self.call(self.client.get_model_config, name)
            return ModelHealth(
                name,
                True,
                versions,
                precision=self._precision(name),
                serving=serving_summary(config),
            )
        return ModelHealth(name, False, detail=_not_ready_detail(name, index))

    def _precision(self, name: str) -> str:
        """The model's precision; an ensemble's is that of its classifier step; "" when a config
        cannot be read (e.g. the classifier step is not loaded: its own row says so)."""
        try:
            config = self.call(self.client.get_model_config, name)
            classifier = ensemble_classifier(config)
            if classifier is not None:
                config = self.call(self.client.get_model_config, classifier)
        except _FATAL:
            raise
        except ResNet18TritonError:
            return ""
        return precision_of(config)

    def _repository_index(self, admin_key: str | None = None) -> Index | None:
        """Model states and load-failure reasons; None if the server restricts that API (and
        ``admin_key`` does not open it)."""
        headers = {contract.ADMIN_KEY_HEADER: admin_key} if admin_key else None
        try:
            entries = self.call(self.client.get_model_repository_index, headers)
        except _FATAL:
            raise
        except ResNet18TritonError:
            return None
        index: Index = {}
        for entry in entries:
            index.setdefault(entry.get("name", ""), []).append(entry)
        return index


def _not_ready_detail(name: str, index: Index | None) -> str:
    """Why a model is not ready, as far as the repository index (an admin API) tells."""
    if index is None:
        return "not ready"
    entries = index.get(name)
    if not entries:
        return "unknown to the server"
    return "; ".join(
        f"version {entry.get('version', '?')} {entry.get('state') or 'not loaded'}"
        + (f": {entry['reason']}" if entry.get("reason") else "")
        for entry in entries
    )
