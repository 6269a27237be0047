"""The export pipeline: weights -> ONNX -> verification -> a filled Triton model repository.

``export_repository(ExportRequest(...))`` is the one way to produce a servable repository. Its
steps are separate functions:

0. ``check_name_free``: the classifier's model names are its own in the repository;
1. ``load_model``: the weights named by the request (or a model the caller already holds), then
   ``resolve_classifier``: its labels (count checked) and preprocessing (checked against the
   model's input);
2. ``export_onnx`` into a staging directory;
3. ``verify_onnx`` of the staged file against PyTorch;
4. ``fill_repository`` of the staging directory: configs, labels, the Python model, warm-up data;
   with ``fused``, also the fused FP32 model (``variants.FP32_FUSED``: the ensemble's two steps in
   one Python-backend model, linked to the staged model file);
5. ``install`` (``repository.transaction``): each model directory of this classifier is swapped into
   the repository with an atomic rename, steps first and the ensemble last. Other classifiers'
   directories are not touched.

It is a transaction (``repository.transaction``): steps 2-4 write into a hidden sibling of the
repository, so a failed verification, any other error, or a process killed before step 5
(SIGKILL included) leaves the repository byte-identical, and a failed swap is undone. Entries of
the repository other than the served models (e.g. the INT8 variant) are neither read nor
touched. Concurrent exports into one repository install one after the other.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from resnet18_triton import contract
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.errors import ExportError, WeightsUnavailableError
from resnet18_triton.export.onnx_export import (
    DEFAULT_OPSET,
    DYNAMO_MIN_OPSET,
    LABELS_METADATA_KEY,
    export_onnx,
)
from resnet18_triton.export.onnx_input import (
    OnnxClassifier,
    OnnxReference,
    adapt_onnx,
    inspect_onnx,
    is_onnx_file,
)
from resnet18_triton.export.verify import DEFAULT_ATOL, VerificationReport, verify_onnx
from resnet18_triton.export.weights import (
    Provenance,
    file_sha256,
    imagenet_categories,
    load_resnet18,
)
from resnet18_triton.repository import variants
from resnet18_triton.repository.classifier import (
    Classifier,
    Preprocessing,
    check_label_count,
    classifier_names,
    default_labels,
    load_labels,
)
from resnet18_triton.repository.configs.settings import ServingSettings
from resnet18_triton.repository.layout import (
    all_models,
    classifiers,
    default_repository,
    onnx_model_path,
    owned_models,
)
from resnet18_triton.repository.transaction import (
    install,
    install_lock,
    is_served,
    remove_stale_staging,
    staging_directory,
)
from resnet18_triton.repository.writer import fill_repository, write_fused_model


@dataclass(frozen=True)
class ExportRequest:
    """What to export and where; every default of the ``export`` command is defined here or in
    ``ServingSettings``.

    ``weights`` is ``"imagenet"``, ``"random"`` (seeded by ``seed``), or the path of a ResNet-18
    checkpoint (``export.weights``) or of an ONNX classifier (``export.onnx_input``).
    ``atol`` is the largest absolute logit difference ONNX Runtime may show against PyTorch.
    The TorchScript exporter is used for opsets below the torch.export-based one's minimum.
    """

    repository: Path = field(default_factory=default_repository)
    weights: str = "imagenet"
    seed: int = 0
    opset: int = DEFAULT_OPSET
    atol: float = DEFAULT_ATOL
    settings: ServingSettings = field(default_factory=ServingSettings.from_core_budget)
    # The classifier's name (its ensemble's; ClassifierNames derives the others), its labels
    # file (None: ImageNet's for 1000 classes, else class_0..class_N-1) and its preprocessing.
    name: str = contract.DEFAULT_CLASSIFIER
    labels: Path | None = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    # Also write the fused FP32 variant (``variants.FP32_FUSED``); off, the export writes the
    # classifier's own models only.
    fused: bool = False

    @property
    def dynamo(self) -> bool:
        """Whether the torch.export-based exporter runs (it emits ``DYNAMO_MIN_OPSET`` or newer)."""
        return self.opset >= DYNAMO_MIN_OPSET


@dataclass(frozen=True)
class LoadedModel:
    """A classifier (images -> logits, eval mode) and where its weights came from.

    ``onnx`` is set when the weights are an ONNX file: ``module`` then runs that file (the
    reference the adapted copy is verified against) and nothing is re-exported.
    """

    module: torch.nn.Module
    provenance: Provenance
    onnx: OnnxClassifier | None = None

    @property
    def num_classes(self) -> int:
        if self.onnx is not None:
            return self.onnx.num_classes
        return int(self.module.fc.out_features)  # type: ignore[union-attr,arg-type]

    @property
    def input_size(self) -> int | None:
        """The image side the model requires (ONNX files fix it), or None when any fits."""
        return self.onnx.input_size if self.onnx is not None else None


@dataclass(frozen=True)
class ExportResult:
    """What ``export_repository`` installed and measured."""

    repository: Path
    onnx_path: Path
    provenance: Provenance
    verification: VerificationReport
    settings: ServingSettings
    classifier: Classifier
    # True when the labels were made up (class_0...): the caller should warn.
    default_labels: bool = False


def load_model(request: ExportRequest) -> LoadedModel:
    """Step 1: the weights the request names. Raises WeightsUnavailableError."""
    if request.weights not in ("imagenet", "random") and is_onnx_file(Path(request.weights)):
        return _load_onnx(Path(request.weights))
    module, provenance = load_resnet18(request.weights, seed=request.seed)
    return LoadedModel(module, provenance)


def _load_onnx(path: Path) -> LoadedModel:
    if not path.is_file():
        raise WeightsUnavailableError(f"ONNX file {path} does not exist (or is not a file)")
    found = inspect_onnx(path)
    provenance = Provenance("file", path=path.name, sha256=file_sha256(path))
    return LoadedModel(OnnxReference(found), provenance, found)


def resolve_classifier(request: ExportRequest, loaded: LoadedModel) -> tuple[Classifier, bool]:
    """The classifier to export and whether its labels are made up; raises RepositoryError for a
    label count or a preprocessing that does not fit the model."""
    names = classifier_names(request.name)
    count = loaded.num_classes
    request.preprocessing.check(loaded.input_size)
    if request.labels is not None:
        labels = load_labels(request.labels)
        check_label_count(labels, count, f"labels file {request.labels}")
        made_up = False
    elif count == contract.NUM_CLASSES:
        labels, made_up = imagenet_categories(), False
    else:
        labels, made_up = default_labels(count), True
    return Classifier(names, tuple(labels), request.preprocessing), made_up


def check_name_free(repository: Path, names: ClassifierNames) -> None:
    """Refuse a classifier whose models would replace another's, or a directory of ``repository``
    that belongs to no classifier of that name (e.g. ``--name resnet18_onnx``)."""
    taken = owned_models(repository, excluding=names.name)
    ours = {item.name for item in classifiers(repository)}
    for model in all_models(names):
        owner = taken.get(model)
        if owner is not None:
            raise ExportError(
                f"classifier name {names.name!r} collides with model {model!r} of classifier "
                f"{owner!r} in {repository}; choose another --name"
            )
        if names.name not in ours and model in names.served and (repository / model).exists():
            raise ExportError(
                f"classifier name {names.name!r} needs model directory {model!r}, which already "
                f"exists in {repository} and is not that classifier's; choose another --name"
            )


def check_not_served(repository: Path, names: ClassifierNames) -> None:
    """Refuse to replace a classifier while a server serves its repository: its models' files
    would change under the running server (a model reloaded by the watchdog would load them).
    A new version goes in through ``publish``."""
    if is_served(repository) and names.name in {found.name for found in classifiers(repository)}:
        named = "" if names.name == contract.ENSEMBLE_MODEL else f" --name {names.name}"
        raise ExportError(
            f"classifier {names.name!r} of {repository} is served by a running server, and "
            "export would replace its files in place: publish a new version instead "
            f"(`resnet18-triton publish{named} --weights ...`), or stop the server first"
        )


def export_repository(request: ExportRequest, model: LoadedModel | None = None) -> ExportResult:
    """Run the pipeline (module docstring) for ``request``; ``model`` replaces step 1.

    Raises ExportError (VerificationError, WeightsUnavailableError, ...), or RepositoryError
    (settings that cannot be served, a name or labels that do not fit), with the repository
    unchanged.
    """
    request.settings.check()
    # The real path: a symlinked repository's model directories live where it points.
    repository = Path(request.repository).resolve()
    check_name_free(repository, classifier_names(request.name))
    check_not_served(repository, classifier_names(request.name))
    loaded = model or load_model(request)
    classifier, made_up = resolve_classifier(request, loaded)
    remove_stale_staging(repository)
    with staging_directory(repository) as staging:
        report = stage(request, loaded, staging, classifier)
        with install_lock(repository):
            check_name_free(repository, classifier.names)  # another export may have won
            install(staging, repository, installed_models(request, classifier.names))
    installed = onnx_model_path(repository, classifier.names.onnx)
    return ExportResult(
        repository=repository,
        onnx_path=installed,
        provenance=loaded.provenance,
        verification=dataclasses.replace(report, onnx_path=installed),
        settings=request.settings,
        classifier=classifier,
        default_labels=made_up,
    )


def installed_models(request: ExportRequest, names: ClassifierNames) -> tuple[str, ...]:
    """The model directories ``request`` installs, in order: the classifier's steps, the fused
    FP32 model when asked for, the ensemble last."""
    *steps, ensemble = names.served
    fused = variants.FP32_FUSED.models(names) if request.fused else ()
    return (*steps, *fused, ensemble)


def stage(
    request: ExportRequest,
    loaded: LoadedModel,
    staging: Path,
    classifier: Classifier | None = None,
) -> VerificationReport:
    """Steps 2-4: export, verify and fill ``staging`` as if it were the repository."""
    classifier = classifier or resolve_classifier(request, loaded)[0]
    size = classifier.preprocessing.input_size
    mean, std = classifier.preprocessing.mean, classifier.preprocessing.std
    target = onnx_model_path(staging, classifier.names.onnx)
    if loaded.onnx is not None:
        metadata = {
            contract.PROVENANCE_PARAMETER: loaded.provenance.to_json(),
            LABELS_METADATA_KEY: json.dumps(list(classifier.labels)),
        }
        metadata.update(normalize_mean=json.dumps(list(mean)), normalize_std=json.dumps(list(std)))
        onnx_path = adapt_onnx(loaded.onnx, target, metadata, mean, std)
    else:
        onnx_path = export_onnx(
            loaded.module,
            target,
            opset=request.opset,
            dynamo=request.dynamo,
            provenance=loaded.provenance,
            input_size=size,
            labels=classifier.labels,
            mean=mean,
            std=std,
        )
    report = verify_onnx(
        loaded.module, onnx_path, atol=request.atol, mean=mean, std=std, input_size=size
    )
    fill_repository(
        staging,
        request.settings,
        loaded.provenance.to_json(),
        list(classifier.labels),
        classifier,
    )
    if request.fused:
        write_fused_model(staging, variants.FP32_FUSED, classifier.names)
    return report
