"""config.pbtxt text and ``ModelConfig`` messages both ways, and what a repository's configs say.

``render`` and ``parse`` use Triton's own schema (``tritonclient.grpc.model_config_pb2``), so an
unknown field fails here, not at server start. The readers go further back: the
``ServingSettings`` a classifier's configs were rendered from (``settings_from_configs``, the
inverse of ``builders.all_model_configs``) and the ``Classifier`` its files describe, so a plan
re-renders exactly what was exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from resnet18_triton import contract
from resnet18_triton.contract import CONFIG_FILENAME
from resnet18_triton.errors import RepositoryError
from resnet18_triton.repository.classifier import Classifier, Preprocessing, classifier_names
from resnet18_triton.repository.configs.builders import instance_count
from resnet18_triton.repository.configs.settings import ServingSettings
from resnet18_triton.repository.variants import INTER_OP_THREADS, INTRA_OP_THREADS


def render(config: mc.ModelConfig) -> str:
    """The config.pbtxt text Triton reads."""
    text: str = text_format.MessageToString(config)
    return text


def parse(text: str) -> mc.ModelConfig:
    """Parse config.pbtxt text with Triton's schema (raises on unknown fields)."""
    return text_format.Parse(text, mc.ModelConfig())


def as_json(config: mc.ModelConfig) -> dict[str, Any]:
    """A config as the JSON dict Triton hands a Python model (``args["model_config"]``) and its
    model-config API returns."""
    result: dict[str, Any] = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return result


def read_config_file(path: Path) -> mc.ModelConfig | None:
    """The config at ``path``; None when it is missing, unreadable or not a model config."""
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, text_format.ParseError):
        return None


def read_config(repo: Path, model: str) -> mc.ModelConfig:
    """Model ``model``'s config in ``repo``; raises RepositoryError saying how to write it."""
    path = repo / model / CONFIG_FILENAME
    config = read_config_file(path)
    if config is None:
        state = "is not a readable model config" if path.exists() else "is missing"
        raise RepositoryError(f"{path} {state}: run `resnet18-triton export` first")
    return config


def _string(config: mc.ModelConfig, key: str, default: str = "") -> str:
    return config.parameters[key].string_value if key in config.parameters else default


def settings_from_configs(
    preprocess: mc.ModelConfig, classifier: mc.ModelConfig, ensemble: mc.ModelConfig, cores: int
) -> ServingSettings:
    """The ``ServingSettings`` that rendered these configs (``cores`` is not in a config)."""
    threads = int(_string(classifier, INTRA_OP_THREADS, "1") or 1)
    instances = instance_count(classifier)
    return ServingSettings(
        cores=max(cores, instances * threads),
        onnx_instances=instances,
        intra_op_threads=threads,
        inter_op_threads=int(_string(classifier, INTER_OP_THREADS, "1") or 1),
        preprocess_instances=instance_count(preprocess),
        max_batch_size=classifier.max_batch_size,
        max_queue_delay_us=classifier.dynamic_batching.max_queue_delay_microseconds,
        max_queue_size=classifier.dynamic_batching.default_queue_policy.max_queue_size,
        queue_timeout_us=preprocess.dynamic_batching.default_queue_policy.default_timeout_microseconds,
        preferred_batch_sizes=tuple(classifier.dynamic_batching.preferred_batch_size),
        max_image_pixels=int(_string(preprocess, "max_image_pixels", "0")),
        max_image_bytes=int(_string(preprocess, "max_image_bytes", "0")),
        max_aspect_ratio=float(_string(preprocess, "max_aspect_ratio", "0")),
        allowed_formats=tuple(filter(None, _string(preprocess, "allowed_formats").split(","))),
        response_cache=ensemble.response_cache.enable,
        warmup=len(classifier.model_warmup) > 0,
        openvino=len(classifier.optimization.execution_accelerators.cpu_execution_accelerator) > 0,
        intra_op_spinning=_string(classifier, "session.intra_op.allow_spinning") == "1",
        ort_memory_arena=_string(classifier, "enable_mem_arena") == "1",
        jpeg_draft_min_size=int(_string(preprocess, "jpeg_draft_min_size", "0") or 0),
    )


def repository_settings(
    repo: Path, cores: int, name: str = contract.ENSEMBLE_MODEL
) -> ServingSettings:
    """The FP32 serving settings classifier ``name`` has in the repository now; RepositoryError
    when its configs are missing or unreadable, or ``name`` is not a classifier name."""
    names = classifier_names(name)
    return settings_from_configs(
        read_config(repo, names.preprocess),
        read_config(repo, names.onnx),
        read_config(repo, names.ensemble),
        cores,
    )


def repository_classifier(repo: Path, name: str = contract.ENSEMBLE_MODEL) -> Classifier:
    """Classifier ``name`` as exported into ``repo``: its labels (so its class count) and its
    preprocessing, read back from its files, so a plan re-renders exactly that classifier."""
    names = classifier_names(name)
    preprocess = read_config(repo, names.preprocess)
    parameters = {key: value.string_value for key, value in preprocess.parameters.items()}
    labels = (repo / names.onnx / contract.LABELS_FILENAME).read_text().splitlines()
    return Classifier(names, tuple(labels), Preprocessing.from_parameters(parameters))
