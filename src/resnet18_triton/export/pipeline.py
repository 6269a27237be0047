"""The export pipeline: weights -> ONNX -> verification -> a filled Triton model repository.

``export_repository(ExportRequest(...))`` is the one way to produce a servable repository. Its
steps are separate functions:

1. ``load_model``: the weights named by the request (or a model the caller already holds);
2. ``export_onnx`` into a staging directory;
3. ``verify_onnx`` of the staged file against PyTorch;
4. ``fill_repository`` of the staging directory: configs, labels, the Python model, warm-up data;
5. ``install`` (``export.transaction``): each served model directory is swapped into the
   repository with an atomic rename, steps first and the ensemble last.

It is a transaction (``export.transaction``): steps 2-4 write into a hidden sibling of the
repository, so a failed verification, any other error, or a process killed before step 5
(SIGKILL included) leaves the repository byte-identical, and a failed swap is undone. Entries of
the repository other than the served models (e.g. the INT8 variant) are neither read nor
touched. Concurrent exports into one repository install one after the other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from resnet18_triton import contract
from resnet18_triton.export.model_configs import ServingSettings
from resnet18_triton.export.onnx_export import DEFAULT_OPSET, DYNAMO_MIN_OPSET, export_onnx
from resnet18_triton.export.repository import fill_repository
from resnet18_triton.export.transaction import (
    install,
    install_lock,
    remove_stale_staging,
    staging_directory,
)
from resnet18_triton.export.verify import DEFAULT_ATOL, VerificationReport, verify_onnx
from resnet18_triton.export.weights import Provenance, imagenet_categories, load_resnet18
from resnet18_triton.layout import default_repository, onnx_model_path


@dataclass(frozen=True)
class ExportRequest:
    """What to export and where; every default of the ``export`` command is defined here or in
    ``ServingSettings``.

    ``weights`` is ``"imagenet"``, ``"random"`` (seeded by ``seed``) or the path of a state dict.
    ``atol`` is the largest absolute logit difference ONNX Runtime may show against PyTorch.
    The TorchScript exporter is used for opsets below the torch.export-based one's minimum.
    """

    repository: Path = field(default_factory=default_repository)
    weights: str = "imagenet"
    seed: int = 0
    opset: int = DEFAULT_OPSET
    atol: float = DEFAULT_ATOL
    settings: ServingSettings = field(default_factory=ServingSettings.from_core_budget)

    @property
    def dynamo(self) -> bool:
        """Whether the torch.export-based exporter runs (it emits ``DYNAMO_MIN_OPSET`` or newer)."""
        return self.opset >= DYNAMO_MIN_OPSET


@dataclass(frozen=True)
class LoadedModel:
    """A ResNet-18 (images -> logits, eval mode) and where its weights came from."""

    module: torch.nn.Module
    provenance: Provenance


@dataclass(frozen=True)
class ExportResult:
    """What ``export_repository`` installed and measured."""

    repository: Path
    onnx_path: Path
    provenance: Provenance
    verification: VerificationReport
    settings: ServingSettings


def default_of(cls: type[Any], name: str) -> Any:
    """The declared default of dataclass field ``name`` (so option defaults have one source)."""
    for item in dataclasses.fields(cls):
        if item.name == name:
            if item.default is not dataclasses.MISSING:
                return item.default
            if item.default_factory is not dataclasses.MISSING:
                return item.default_factory()
    raise KeyError(f"{cls.__name__} has no field {name!r} with a default")


def load_model(request: ExportRequest) -> LoadedModel:
    """Step 1: the weights the request names. Raises WeightsUnavailableError."""
    module, provenance = load_resnet18(request.weights, seed=request.seed)
    return LoadedModel(module, provenance)


def export_repository(request: ExportRequest, model: LoadedModel | None = None) -> ExportResult:
    """Run the pipeline (module docstring) for ``request``; ``model`` replaces step 1.

    Raises ExportError (VerificationError, WeightsUnavailableError, ...) with the repository
    unchanged.
    """
    request.settings.check()
    loaded = model or load_model(request)
    # The real path: a symlinked repository's model directories live where it points.
    repository = Path(request.repository).resolve()
    remove_stale_staging(repository)
    with staging_directory(repository) as staging:
        report = stage(request, loaded, staging)
        with install_lock(repository):
            install(staging, repository, contract.SERVED_MODELS)
    installed = onnx_model_path(repository)
    return ExportResult(
        repository=repository,
        onnx_path=installed,
        provenance=loaded.provenance,
        verification=dataclasses.replace(report, onnx_path=installed),
        settings=request.settings,
    )


def stage(request: ExportRequest, loaded: LoadedModel, staging: Path) -> VerificationReport:
    """Steps 2-4: export, verify and fill ``staging`` as if it were the repository."""
    onnx_path = export_onnx(
        loaded.module,
        onnx_model_path(staging),
        opset=request.opset,
        dynamo=request.dynamo,
        provenance=loaded.provenance,
    )
    report = verify_onnx(loaded.module, onnx_path, atol=request.atol)
    fill_repository(staging, request.settings, loaded.provenance.to_json(), imagenet_categories())
    return report
