"""Where ``tune`` reads and writes model configs: scratch copies, ``--apply`` and ``--revert``.

Configs are always rendered by ``repository.configs`` (Triton's ``ModelConfig`` protobuf):
``settings_from_configs`` reads the ``ServingSettings`` a repository was exported with (limits,
warm-up, cache, ... included), a plan replaces only the knobs it tunes, and the FP32 configs are
rendered again; the INT8 and OpenVINO variants' are derived from them as ``quantize`` and
``openvino`` do, keeping their own parameters (the quantisation recipe, the precision and its
fidelity report). For OpenVINO the plan's intra-op threads become ``INFERENCE_NUM_THREADS`` per
instance.

``apply_plan`` is a transaction (``repository.transaction``): the served model directories are
copied into a staging directory (files hard-linked, configs rewritten), swapped in atomically, and
the replaced directories are moved, untouched, to ``backup_directory(repo)``. ``revert`` swaps them
back, byte for byte, and removes the backup. A second apply is refused while a backup exists, so
the backup always holds the files from before tuning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from resnet18_triton import contract
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.errors import TuneError
from resnet18_triton.files import fsync_directory, link_or_copy, write_text_atomically
from resnet18_triton.perf.tune_space import FP32, INT8, OPENVINO, Candidate
from resnet18_triton.repository.classifier import Classifier, Preprocessing
from resnet18_triton.repository.configs import (
    ServingSettings,
    all_model_configs,
    instance_count,
    openvino_parameters,
    parse,
    render,
)
from resnet18_triton.repository.layout import (
    CONFIG_FILENAME,
    has_int8,
    has_int8_fused,
    has_openvino,
    has_openvino_fused,
    openvino_fused_name,
    openvino_models,
)
from resnet18_triton.repository.transaction import install, install_lock, staging_directory
from resnet18_triton.repository.writer import (
    openvino_configs,
    write_fused_model,
    write_int8_configs,
    write_variant_configs,
    write_warmup_data,
)

BACKUP_MANIFEST = "tune-backup.json"
# ONNX Runtime session options that ServingSettings renders; a variant's other parameters (its
# quantisation recipe, its provenance) are kept as they are.
SERVING_PARAMETERS = (
    "intra_op_thread_count",
    "inter_op_thread_count",
    "execution_mode",
    "enable_mem_arena",
    "enable_mem_pattern",
    "session.intra_op.allow_spinning",
)


@dataclass(frozen=True)
class VariantModels:
    """The models one variant of a classifier is served by (steps first, ensemble last)."""

    preprocess: str
    classifier: str
    ensemble: str

    @property
    def load_order(self) -> tuple[str, ...]:
        return (self.preprocess, self.classifier, self.ensemble)


def _names(name: str) -> ClassifierNames:
    try:
        return ClassifierNames.of(name)
    except ValueError as error:
        raise TuneError(str(error)) from None


def variant_models(name: str, variant: str) -> VariantModels:
    """Model names of classifier ``name`` in ``variant``: the one place that maps names.

    A new variant adds its names here and its availability in ``available_variants``.
    """
    names = _names(name)
    if variant == FP32:
        return VariantModels(names.preprocess, names.onnx, names.ensemble)
    if variant == INT8:
        return VariantModels(names.preprocess, names.int8, names.int8_ensemble)
    if variant == OPENVINO:
        classifier, ensemble = openvino_models(names.name)
        return VariantModels(names.preprocess, classifier, ensemble)
    raise TuneError(f"unknown variant {variant!r}: expected one of {FP32}, {INT8}, {OPENVINO}")


def available_variants(repo: Path, name: str = contract.ENSEMBLE_MODEL) -> tuple[str, ...]:
    """Variants the repository can serve for classifier ``name``: FP32, plus INT8 once
    ``resnet18-triton quantize`` has written it, plus OpenVINO once ``resnet18-triton openvino``
    has."""
    names = _names(name)
    present = {INT8: has_int8(repo, names), OPENVINO: has_openvino(repo, names.name)}
    return (FP32, *(variant for variant, found in present.items() if found))


def tuned_models(repo: Path, name: str = contract.ENSEMBLE_MODEL) -> tuple[str, ...]:
    """Every model directory a plan rewrites (all variants present), in load order."""
    models: list[str] = []
    for variant in available_variants(repo, name):
        models += [m for m in variant_models(name, variant).load_order if m not in models]
    # The fused models' instances follow their classifier's core budget (fused_model_config).
    names = _names(name)
    variants = available_variants(repo, name)
    if INT8 in variants and has_int8_fused(repo, names):
        models.append(names.int8_fused)
    if OPENVINO in variants and has_openvino_fused(repo, names.name):
        models.append(openvino_fused_name(names.name))
    return tuple(models)


def _string(config: mc.ModelConfig, key: str, default: str = "") -> str:
    return config.parameters[key].string_value if key in config.parameters else default


def settings_from_configs(
    preprocess: mc.ModelConfig, classifier: mc.ModelConfig, ensemble: mc.ModelConfig, cores: int
) -> ServingSettings:
    """The ``ServingSettings`` that rendered these configs (``cores`` is not in a config)."""
    threads = int(_string(classifier, "intra_op_thread_count", "1") or 1)
    instances = instance_count(classifier)
    return ServingSettings(
        cores=max(cores, instances * threads),
        onnx_instances=instances,
        intra_op_threads=threads,
        inter_op_threads=int(_string(classifier, "inter_op_thread_count", "1") or 1),
        preprocess_instances=instance_count(preprocess),
        max_batch_size=classifier.max_batch_size,
        max_queue_delay_us=classifier.dynamic_batching.max_queue_delay_microseconds,
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


def read_config(repo: Path, model: str) -> mc.ModelConfig:
    path = repo / model / CONFIG_FILENAME
    if not path.is_file():
        raise TuneError(f"{path} is missing: run `resnet18-triton export` first")
    return parse(path.read_text())


def repository_settings(
    repo: Path, cores: int, name: str = contract.ENSEMBLE_MODEL
) -> ServingSettings:
    """The FP32 serving settings classifier ``name`` has in the repository now."""
    names = _names(name)
    return settings_from_configs(
        read_config(repo, names.preprocess),
        read_config(repo, names.onnx),
        read_config(repo, names.ensemble),
        cores,
    )


def repository_classifier(repo: Path, name: str = contract.ENSEMBLE_MODEL) -> Classifier:
    """Classifier ``name`` as exported into ``repo``: its labels (so its class count) and its
    preprocessing, read back from its files, so a plan re-renders exactly that classifier."""
    names = _names(name)
    preprocess = read_config(repo, names.preprocess)
    parameters = {key: value.string_value for key, value in preprocess.parameters.items()}
    labels = (repo / names.onnx / contract.LABELS_FILENAME).read_text().splitlines()
    return Classifier(names, tuple(labels), Preprocessing.from_parameters(parameters))


def plan_settings(base: ServingSettings, plan: Candidate, cores: int) -> ServingSettings:
    """``base`` with the plan's knobs; preferred batch sizes above its batch size are dropped."""
    settings = dataclasses.replace(
        base,
        cores=cores,
        onnx_instances=plan.onnx_instances,
        intra_op_threads=plan.intra_op_threads,
        preprocess_instances=plan.preprocess_instances,
        max_batch_size=plan.max_batch_size,
        max_queue_delay_us=plan.max_queue_delay_us,
        preferred_batch_sizes=tuple(
            size for size in base.preferred_batch_sizes if size <= plan.max_batch_size
        ),
    )
    try:
        settings.check()
    except Exception as error:
        raise TuneError(f"plan {plan.label} is not servable: {error}") from None
    return settings


def write_plan_configs(
    source: Path, target: Path, plan: Candidate, cores: int, name: str = contract.ENSEMBLE_MODEL
) -> list[Path]:
    """Render the plan's configs for every model of classifier ``name`` of ``source`` into
    ``target`` (which holds copies of its model directories); returns the configs written."""
    settings = plan_settings(repository_settings(source, cores, name), plan, cores)
    classifier = repository_classifier(source, name)
    names = classifier.names
    provenance = _string(read_config(source, names.onnx), contract.PROVENANCE_PARAMETER)
    written = []
    for config in all_model_configs(settings, provenance, classifier):
        written.append(
            write_text_atomically(target / config.name / CONFIG_FILENAME, render(config))
        )
    if settings.warmup:
        write_warmup_data(target, names.preprocess)
    if has_int8(source, names):
        int8 = read_config(source, names.int8)
        kept = {
            key: value.string_value
            for key, value in int8.parameters.items()
            if key not in SERVING_PARAMETERS
        }
        written += write_int8_configs(target, kept, names=names)
        if has_int8_fused(source, names):
            written.append(write_fused_model(target, names))
    if has_openvino(source, names.name):
        written += _write_openvino_configs(source, target, names)
    return written


def _write_openvino_configs(source: Path, target: Path, names: ClassifierNames) -> list[Path]:
    """The OpenVINO variant's configs derived from the plan's FP32 ones (already in ``target``),
    in the precision it was built with, keeping its other parameters (its fidelity report)."""
    config = read_config(source, openvino_models(names.name)[0])
    precision = _string(config, contract.PRECISION_PARAMETER)
    if not precision:
        raise TuneError(
            f"{source / config.name / CONFIG_FILENAME} has no '{contract.PRECISION_PARAMETER}' "
            "parameter: run `resnet18-triton openvino` again"
        )
    derived = openvino_parameters(1, precision)
    kept = {
        key: value.string_value for key, value in config.parameters.items() if key not in derived
    }
    written = write_variant_configs(
        target, openvino_configs(target, precision, kept, names), names=names
    )
    if has_openvino_fused(source, names.name):
        written.append(write_fused_model(target, names, openvino=True))
    return written


def copy_models(source: Path, target: Path, models: tuple[str, ...]) -> None:
    """Copies of ``source/<model>`` in ``target`` (files hard-linked where possible)."""
    for model in models:
        shutil.copytree(source / model, target / model, copy_function=link_or_copy)


def scratch_repository(source: Path, target: Path, name: str = contract.ENSEMBLE_MODEL) -> Path:
    """A copy of the served models of ``source`` at ``target`` for measuring plans."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    copy_models(source, target, tuned_models(source, name))
    return target


def backup_directory(repo: Path) -> Path:
    """Where ``--apply`` keeps the replaced model directories: a hidden sibling of the
    repository (same filesystem; outside it, so a server never sees it)."""
    repo = Path(repo).resolve()
    return repo.parent / f".{repo.name}.tune-backup"


def apply_plan(
    repo: Path, plan: Candidate, cores: int, name: str = contract.ENSEMBLE_MODEL
) -> Path:
    """Write the plan's configs into ``repo`` atomically; returns the backup directory."""
    repository = Path(repo).resolve()
    backup = backup_directory(repository)
    if backup.exists():
        raise TuneError(
            f"an earlier `tune --apply` left its backup at {backup}: run `resnet18-triton tune "
            "--revert` first (or delete that directory to keep the applied configs)"
        )
    models = tuned_models(repository, name)
    with staging_directory(repository) as staging:
        copy_models(repository, staging, models)
        write_plan_configs(repository, staging, plan, cores, name)
        with install_lock(repository):
            install(staging, repository, models)
            _keep_replaced(staging, backup, models, plan)
    return backup


def _keep_replaced(staging: Path, backup: Path, models: tuple[str, ...], plan: Candidate) -> None:
    """Move the replaced directories (now in ``staging``) to ``backup``, with a manifest."""
    partial = backup.with_name(backup.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    for model in models:
        os.rename(staging / model, partial / model)
    manifest = {"models": list(models), "applied": dataclasses.asdict(plan)}
    write_text_atomically(partial / BACKUP_MANIFEST, json.dumps(manifest, indent=2) + "\n")
    os.rename(partial, backup)
    fsync_directory(backup.parent)


def revert(repo: Path) -> list[str]:
    """Put back the model directories ``apply_plan`` replaced; returns the models restored."""
    repository = Path(repo).resolve()
    backup = backup_directory(repository)
    manifest_path = backup / BACKUP_MANIFEST
    if not manifest_path.is_file():
        raise TuneError(f"nothing to revert: no `tune --apply` backup at {backup}")
    models = tuple(json.loads(manifest_path.read_text())["models"])
    with install_lock(repository):
        install(backup, repository, models)
    shutil.rmtree(backup)
    return list(models)
