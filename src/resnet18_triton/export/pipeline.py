"""The export pipeline: weights -> ONNX -> verification -> a filled Triton model repository.

``export_repository(ExportRequest(...))`` is the one way to produce a servable repository (the
``export`` command, the tests and the benchmarks all call it). Its steps are separate functions:

1. ``load_model``: the weights named by the request (or a model the caller already holds);
2. ``export_onnx`` into a staging directory;
3. ``verify_onnx`` of the staged file against PyTorch;
4. ``fill_repository`` of the staging directory: configs, labels, the Python model, warm-up data;
5. ``install``: each served model directory is swapped into the repository with an atomic
   ``renameat2(RENAME_EXCHANGE)``, steps first and the ensemble last.

It is a transaction. The staging directory is a hidden sibling of the repository
(``.<repo>.export-<pid>-*``, same filesystem, so the swaps are renames, not copies) and nothing
touches the repository before step 5: a failed verification, any other error, or a process killed
before step 5 (SIGKILL included) leaves the repository byte-identical. If a swap fails, the swaps
already made are undone. Only a kill during step 5 itself (three renames, microseconds) can leave
some served model directories new and others old; running the export again repairs that. Entries
of the repository other than the served models (e.g. the INT8 variant) are neither read nor
touched. Concurrent exports into one repository install one after the other (``install_lock``).
A staging directory left behind by a killed export is removed by the next export once its process
is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from resnet18_triton import contract
from resnet18_triton.errors import ExportError
from resnet18_triton.export.model_configs import ServingSettings
from resnet18_triton.export.onnx_export import DEFAULT_OPSET, DYNAMO_MIN_OPSET, export_onnx
from resnet18_triton.export.repository import fill_repository
from resnet18_triton.export.verify import DEFAULT_ATOL, VerificationReport, verify_onnx
from resnet18_triton.export.weights import Provenance, imagenet_categories, load_resnet18
from resnet18_triton.files import fsync_directory
from resnet18_triton.layout import default_repository, onnx_model_path

# Installed directories must be readable by a server running as another user (a container uid).
DIRECTORY_MODE = 0o755
_STAGING_INFIX = ".export-"
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


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
            install(staging, repository)
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


@contextlib.contextmanager
def staging_directory(repository: Path) -> Iterator[Path]:
    """A private directory beside ``repository`` (same filesystem), removed on exit."""
    repository.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{repository.name}{_STAGING_INFIX}{os.getpid()}-"
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=repository.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_stale_staging(repository: Path) -> list[Path]:
    """Remove staging directories of exports into ``repository`` whose process is gone (killed
    mid-way); returns them. Those of running exports are kept."""
    if not repository.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(repository.name)}{_STAGING_INFIX}(\d+)-")
    removed = []
    for entry in repository.parent.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not _process_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def install_lock(repository: Path) -> Iterator[None]:
    """Serialise installs into ``repository`` between processes (``flock`` on a hidden sibling
    file), so that two concurrent exports cannot interleave their model directories: the last
    one to install wins whole."""
    lock = repository.parent / f".{repository.name}.export.lock"
    with open(lock, "a") as handle:  # the lock goes with the open file; closing releases it
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def install(staging: Path, repository: Path) -> None:
    """Step 5: swap ``staging/<model>`` into ``repository/<model>`` for every served model,
    ensemble last. Afterwards ``staging/<model>`` holds the replaced directory, if there was one.
    A failed swap undoes the earlier ones and raises ExportError."""
    repository.mkdir(parents=True, exist_ok=True)
    _make_readable(staging)
    done: list[tuple[Path, Path, bool]] = []
    try:
        for name in contract.SERVED_MODELS:
            new, target = staging / name, repository / name
            done.append((new, target, swap_in(new, target)))
    except OSError as error:
        for new, target, replaced in reversed(done):
            swap_back(new, target, replaced)
        raise ExportError(
            f"cannot install the exported models into {repository}: {error}; the repository "
            "is unchanged"
        ) from error
    fsync_directory(repository)


def swap_in(new: Path, target: Path) -> bool:
    """Put directory ``new`` at ``target``; a previous ``target`` ends up at ``new``. Returns
    whether there was one.

    Atomic (one ``renameat2(RENAME_EXCHANGE)``) where the kernel and filesystem support it; else
    three renames with a moment in which ``target`` is absent.
    """
    if not target.exists():
        os.rename(new, target)
        return False
    if not _exchange(new, target):
        aside = new.with_name(f"{new.name}.replaced")
        os.rename(target, aside)
        os.rename(new, target)
        os.rename(aside, new)
    return True


def swap_back(new: Path, target: Path, replaced: bool) -> None:
    """Undo ``swap_in(new, target)``, which returned ``replaced``."""
    if replaced:
        swap_in(new, target)
    else:
        os.rename(target, new)


def _exchange(first: Path, second: Path) -> bool:
    """Atomically exchange two paths; False when this system cannot (then nothing happened)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _make_readable(root: Path) -> None:
    for directory, _, _ in os.walk(root):
        os.chmod(directory, DIRECTORY_MODE)
