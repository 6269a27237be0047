"""Where things live in a model repository, and where the code that runs inside Triton ships.

Standard library only, so that checking a repository needs neither torch nor the server binary.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from resnet18_triton import contract
from resnet18_triton.contract import CONFIG_FILENAME as CONFIG_FILENAME
from resnet18_triton.contract import VERSION as VERSION
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.repository import variants

# Python-backend models whose model.py ships in this package and is copied in by `export`.
PYTHON_MODELS = (contract.PREPROCESS_MODEL,)
# The repository used when none is named: ./model_repository, or this variable's value.
REPOSITORY_ENV_VAR = "RESNET18_TRITON_REPO"
DEFAULT_REPOSITORY_DIRNAME = "model_repository"
# Code that runs inside tritonserver, shipped as package data beside the server launcher.
_TRITON_CODE = Path(__file__).resolve().parent.parent / "server"

DEFAULT_CLASSIFIER = contract.ENSEMBLE_MODEL
# The model file in each version directory of a classifier's ONNX model.
ONNX_FILENAME = "model.onnx"


# Triton runs each Python-backend model instance as this child process of the server.
STUB_BINARY = "triton_python_backend_stub"


def default_repository() -> Path:
    """``$RESNET18_TRITON_REPO`` when set, else ``./model_repository`` of the working directory."""
    return Path(os.environ.get(REPOSITORY_ENV_VAR) or DEFAULT_REPOSITORY_DIRNAME)


def python_model_source(model: str) -> Path:
    """The shipped ``model.py`` of a Python-backend model in ``PYTHON_MODELS``."""
    return _TRITON_CODE / "models" / model / "model.py"


def backend_source(backend: str) -> Path:
    """The shipped ``model.py`` of a Python-based backend (e.g. ``onnxruntime``)."""
    return _TRITON_CODE / "backends" / backend / "model.py"


def shipped_backends() -> tuple[str, ...]:
    """Names of the Python-based backends this package ships (``onnxruntime``, ``openvino``)."""
    root = _TRITON_CODE / "backends"
    return tuple(sorted(path.parent.name for path in root.glob("*/model.py")))


def version_dir(repo: Path, model: str, version: int | str = VERSION) -> Path:
    """``<repo>/<model>/<version>``: where Triton looks for the files of one version of ``model``.

    Export writes version ``VERSION`` only. Raises ValueError for a name Triton would ignore:
    one that is not a number, or that starts with 0.
    """
    text = str(version)
    if not (text.isascii() and text.isdigit() and not text.startswith("0")):
        raise ValueError(
            f"model version {version!r} is not a version Triton loads: use 1, 2, 3, ..."
        )
    return repo / model / text


def onnx_model_path(repo: Path, model: str = contract.ONNX_MODEL) -> Path:
    """The model file of ONNX model ``model``: for a classifier's own (``NAME_onnx``), the version
    its classifier serves (``served_version``); for any other model (a variant's), version
    ``VERSION``, the only one variants have."""
    if not model.endswith("_onnx"):
        return version_dir(repo, model) / ONNX_FILENAME
    names = ClassifierNames.of(model.removesuffix("_onnx"))
    return version_dir(repo, model, served_version(repo, names)) / ONNX_FILENAME


def onnx_versions(repo: Path, model: str) -> tuple[int, ...]:
    """The versions of ONNX model ``model`` on disk (a version directory with a model file),
    oldest first."""
    root = repo / model
    if not root.is_dir():
        return ()
    found = [
        int(entry.name)
        for entry in root.iterdir()
        if entry.name.isascii()
        and entry.name.isdigit()
        and not entry.name.startswith("0")
        and (entry / ONNX_FILENAME).is_file()
    ]
    return tuple(sorted(found))


def served_version(repo: Path, names: ClassifierNames) -> int:
    """The version of the classifier's ONNX model its ensemble answers with: the version its
    ensemble step is pinned to (``repository.versions``); for an ensemble taking the latest
    (``-1``, as repositories exported before versions were published have it) the newest version
    on disk; ``VERSION`` when there is neither."""
    from resnet18_triton.repository.configs.parser import read_config_file

    config = read_config_file(repo / names.ensemble / CONFIG_FILENAME)
    if config is not None:
        for step in config.ensemble_scheduling.step:
            if step.model_name == names.onnx and step.model_version > 0:
                return int(step.model_version)
    on_disk = onnx_versions(repo, names.onnx)
    return on_disk[-1] if on_disk else int(VERSION)


def missing_files(repo: Path) -> list[Path]:
    """What a servable repository still lacks; empty once ``resnet18-triton export`` has run.

    Only the files of the classifiers found in ``repo`` count (the default classifier's when
    there is none): other directories are ignored, as the server never loads them.
    """
    found = classifiers(repo) or [ClassifierNames.of()]
    return [path for names in found for path in classifier_files(repo, names)]


def classifier_files(repo: Path, names: ClassifierNames) -> list[Path]:
    """The files missing from ``repo`` for serving classifier ``names`` (FP32)."""
    required = [onnx_model_path(repo, names.onnx)]
    required += [repo / name / CONFIG_FILENAME for name in names.served]
    required.append(version_dir(repo, names.preprocess) / "model.py")
    required += [repo / name / contract.LABELS_FILENAME for name in (names.onnx, names.ensemble)]
    return [path for path in required if not path.is_file()]


def ensemble_steps(config_path: Path) -> tuple[str, ...] | None:
    """The models an ensemble's config.pbtxt runs, in order; None when it is no ensemble (or no
    readable config)."""
    # Imported here: the protobuf schema is not needed for the paths and names above.
    from resnet18_triton.repository.configs.parser import read_config_file

    config = read_config_file(config_path)
    if config is None or config.platform != "ensemble":
        return None
    return tuple(step.model_name for step in config.ensemble_scheduling.step)


def classifiers(repo: Path) -> list[ClassifierNames]:
    """The classifiers in ``repo``, sorted by name (the default first): each ensemble whose
    steps are exactly the preprocess and ONNX models its name derives."""
    found: list[ClassifierNames] = []
    if not repo.is_dir():
        return found
    for entry in sorted(repo.iterdir()):
        try:
            names = ClassifierNames.of(entry.name)
        except ValueError:
            continue
        if ensemble_steps(entry / CONFIG_FILENAME) == (names.preprocess, names.onnx):
            found.append(names)
    found.sort(key=lambda names: (names.name != contract.DEFAULT_CLASSIFIER, names.name))
    return found


def served_models(
    repo: Path, int8: bool | None = None, openvino: bool | None = None
) -> tuple[str, ...]:
    """Models to load, in load order: every classifier's steps, then their ensembles, then the
    models of each variant (``variants.REGISTRY`` order) the repository holds completely. ``int8``
    and ``openvino`` force the variants of that engine family in (``True``, their fused models
    only where written) or out (``False``). A repository without classifiers yields the default
    classifier's names."""
    found = classifiers(repo) or [ClassifierNames.of()]
    forced = {"int8": int8, "openvino": openvino}
    models = [model for names in found for model in (names.preprocess, names.onnx)]
    models += [names.ensemble for names in found]
    # A running canary (repository.versions) is served too: a server (re)started while it runs
    # answers its share as well.
    running = [names for names in found if (repo / names.canary / CONFIG_FILENAME).is_file()]
    models += [model for names in running for model in names.canary_models]
    # What each classifier holds, read once: present() checks every variant's files.
    held_by = {names: variants.present(repo, names) for names in found}
    for variant in variants.REGISTRY:
        family = variant.fuses or variant.key
        for names in found:
            held = variant in held_by[names]
            wanted = forced.get(family)
            if wanted is False or not (held or (wanted and not variant.fused)):
                continue
            models += variant.models(names)
    return tuple(models)


def all_models(names: ClassifierNames) -> tuple[str, ...]:
    """Every model name classifier ``names`` may own in a repository, its variants' included."""
    return (*names.served, *variants.variant_model_names(names))


def owned_models(repo: Path, excluding: str | None = None) -> dict[str, str]:
    """Every model name a classifier of ``repo`` (other than ``excluding``) owns, its variants
    included -> its classifier."""
    return {
        model: names.name
        for names in classifiers(repo)
        if names.name != excluding
        for model in all_models(names)
    }


def stub_model(argv: Sequence[str]) -> str | None:
    """The model a backend stub serves, from its command line; None for any other process.

    A stub's argv[1] is ``<repo>/<model>/<version>/model.(py|onnx)``.
    """
    if len(argv) > 1 and Path(argv[0]).name == STUB_BINARY:
        parts = Path(argv[1]).parts
        if len(parts) >= 3:
            return parts[-3]
    return None


def load_model_module(path: Path, name: str) -> ModuleType:
    """Import a Triton ``model.py`` by file path (it is not part of any package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: dataclasses look their module up in sys.modules.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
