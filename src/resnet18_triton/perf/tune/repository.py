"""Where ``tune`` reads and writes model configs: scratch copies, ``--apply`` and ``tune revert``.

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

from resnet18_triton import contract
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.errors import RepositoryError, TuneError
from resnet18_triton.files import fsync_directory, link_or_copy, write_text_atomically
from resnet18_triton.perf.tune.space import FP32, Candidate
from resnet18_triton.repository import variants
from resnet18_triton.repository.configs.builders import all_model_configs, own_parameters
from resnet18_triton.repository.configs.parser import (
    read_config,
    render,
    repository_classifier,
    repository_settings,
)
from resnet18_triton.repository.configs.settings import ServingSettings
from resnet18_triton.repository.layout import CONFIG_FILENAME
from resnet18_triton.repository.transaction import install, install_lock, staging_directory
from resnet18_triton.repository.variants import Variant
from resnet18_triton.repository.versions import carry_over
from resnet18_triton.repository.writer import write_fused_model, write_variant, write_warmup_data

BACKUP_MANIFEST = "tune-backup.json"


@dataclass(frozen=True)
class VariantModels:
    """The models one variant of a classifier is served by: its preprocess step (None for a
    fused variant, whose one model decodes too), the model running its model file, and
    ``ensemble``, the model clients call (the fused model itself when fused)."""

    preprocess: str | None
    classifier: str
    ensemble: str

    @property
    def load_order(self) -> tuple[str, ...]:
        """Steps first, the model clients call last, each once."""
        steps = (self.preprocess, self.classifier, self.ensemble)
        return tuple(dict.fromkeys(model for model in steps if model))


def _names(name: str) -> ClassifierNames:
    try:
        return ClassifierNames.of(name)
    except ValueError as error:
        raise TuneError(str(error)) from None


def _variant(family: str) -> Variant:
    try:
        return variants.by_key(family)
    except KeyError as error:
        raise TuneError(f"{error.args[0]}; or {FP32}") from None


def variant_models(name: str, variant: str) -> VariantModels:
    """Model names of classifier ``name`` served as ``variant`` (FP32 or a registered variant,
    ``repository.variants``)."""
    names = _names(name)
    if variant == FP32:
        return VariantModels(names.preprocess, names.onnx, names.ensemble)
    served = _variant(variant)
    if served.fused:
        return VariantModels(None, served.classifier(names), served.entry(names))
    classifier, ensemble = served.models(names)
    return VariantModels(names.preprocess, classifier, ensemble)


def available_variants(repo: Path, name: str = contract.ENSEMBLE_MODEL) -> tuple[str, ...]:
    """Variants the repository can serve for classifier ``name``: FP32, plus each registered
    variant (``variants.present``, fused ones included) once the command that writes it has."""
    held = variants.present(repo, _names(name))
    return (FP32, *(variant.key for variant in held))


def tuned_models(repo: Path, name: str = contract.ENSEMBLE_MODEL) -> tuple[str, ...]:
    """Every model directory a plan rewrites (all variants present), in load order; the fused
    models' instances follow their classifier's core budget (``fused_model_config``)."""
    names = _names(name)
    models = list(names.served)
    for variant in variants.present(repo, names):
        models += [model for model in variant.models(names) if model not in models]
    return tuple(models)


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
    except RepositoryError as error:
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
    provenance = own_parameters(read_config(source, names.onnx)).get(
        contract.PROVENANCE_PARAMETER, ""
    )
    configs = all_model_configs(settings, provenance, classifier)
    # A plan changes how the classifier runs, never which of its versions answers.
    carry_over(source, names, configs)
    written = []
    for config in configs:
        written.append(
            write_text_atomically(target / config.name / CONFIG_FILENAME, render(config))
        )
    if settings.warmup:
        write_warmup_data(target, names.preprocess)
    for variant in variants.present(source, names):
        if variant.fused:
            written.append(write_fused_model(target, variant, names))
            continue
        config = read_config(source, variant.classifier(names))
        precision = config.parameters[contract.PRECISION_PARAMETER].string_value or None
        if variant.precisions and precision is None:
            raise TuneError(
                f"{source / config.name / CONFIG_FILENAME} has no "
                f"'{contract.PRECISION_PARAMETER}' parameter: run "
                f"`resnet18-triton {variant.write_command}` again"
            )
        kept = own_parameters(config)
        written += write_variant(target, variant, kept, target, names, precision)
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
            "revert` first (or delete that directory to keep the applied configs)"
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
