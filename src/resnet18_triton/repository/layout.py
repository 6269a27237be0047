"""Where things live in a model repository, and where the code that runs inside Triton ships.

Standard library only, so that checking a repository needs neither torch nor the server binary.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from resnet18_triton import contract
from resnet18_triton.contract import ClassifierNames

CONFIG_FILENAME = "config.pbtxt"
VERSION = "1"
# Python-backend models whose model.py ships in this package and is copied in by `export`.
PYTHON_MODELS = (contract.PREPROCESS_MODEL,)
# A fused model (``NAME_int8_fused``, ``NAME_openvino_fused``: the ensemble's two steps in one
# Python-backend stub) holds these in its version directory, plus the copy of the Python-based
# backend of its engine (the classifier's backend), named after it.
FUSED_MODEL_FILES = ("model.py", "preprocessing.py", "model.onnx")


def fused_engine_filename(engine: str) -> str:
    """The engine's copy in a fused model's version directory, e.g. ``onnxruntime_engine.py``."""
    return f"{engine}_engine.py"


# The repository used when none is named: ./model_repository, or this variable's value.
REPOSITORY_ENV_VAR = "RESNET18_TRITON_REPO"
DEFAULT_REPOSITORY_DIRNAME = "model_repository"
# Code that runs inside tritonserver, shipped as package data beside the server launcher.
_TRITON_CODE = Path(__file__).resolve().parent.parent / "server"

# The OpenVINO variant written by `resnet18-triton openvino`, named after its classifier. Its
# classifier directory holds the same ONNX file name the native OpenVINO backend is told to read
# (``default_model_filename``), so the directory also serves in the official container.
DEFAULT_CLASSIFIER = contract.ENSEMBLE_MODEL
OPENVINO_MODEL_FILENAME = "model.onnx"


def openvino_model_name(classifier: str = DEFAULT_CLASSIFIER) -> str:
    """The OpenVINO classifier of ``classifier``, e.g. ``resnet18_openvino``."""
    return f"{classifier}_openvino"


def openvino_ensemble_name(classifier: str = DEFAULT_CLASSIFIER) -> str:
    """The ensemble running the OpenVINO classifier, e.g. ``resnet18_openvino_ensemble``."""
    return f"{classifier}_openvino_ensemble"


def openvino_models(classifier: str = DEFAULT_CLASSIFIER) -> tuple[str, str]:
    """The OpenVINO variant's models in load order: classifier, then ensemble."""
    return openvino_model_name(classifier), openvino_ensemble_name(classifier)


def openvino_fused_name(classifier: str = DEFAULT_CLASSIFIER) -> str:
    """The OpenVINO variant's fused model (both ensemble steps in one stub), e.g.
    ``resnet18_openvino_fused``."""
    return f"{classifier}_openvino_fused"


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


def onnx_model_path(repo: Path, model: str = contract.ONNX_MODEL) -> Path:
    return repo / model / VERSION / "model.onnx"


def openvino_model_path(repo: Path, classifier: str = DEFAULT_CLASSIFIER) -> Path:
    return repo / openvino_model_name(classifier) / VERSION / OPENVINO_MODEL_FILENAME


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
    required.append(repo / names.preprocess / VERSION / "model.py")
    required += [repo / name / contract.LABELS_FILENAME for name in (names.onnx, names.ensemble)]
    return [path for path in required if not path.is_file()]


# The steps an ensemble config names, in order (export renders ``model_name: "..."`` lines).
_ENSEMBLE_PLATFORM = re.compile(r'^platform:\s*"ensemble"', re.MULTILINE)
_STEP_MODEL = re.compile(r'^\s*model_name:\s*"([^"]+)"', re.MULTILINE)


def ensemble_steps(config_path: Path) -> tuple[str, ...] | None:
    """The models an ensemble's config.pbtxt runs, in order; None when it is no ensemble."""
    try:
        text = config_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not _ENSEMBLE_PLATFORM.search(text):
        return None
    return tuple(_STEP_MODEL.findall(text))


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


def int8_files(repo: Path, names: ClassifierNames | None = None) -> list[Path]:
    """What serving a classifier's INT8 variant needs (written by ``resnet18-triton quantize``)."""
    names = names or ClassifierNames.of()
    return [
        onnx_model_path(repo, names.int8),
        *[repo / name / CONFIG_FILENAME for name in names.int8_models],
        *[repo / name / contract.LABELS_FILENAME for name in names.int8_models],
    ]


def has_int8(repo: Path, names: ClassifierNames | None = None) -> bool:
    """True when ``repo`` holds a complete INT8 variant of the classifier (default: default)."""
    return all(path.is_file() for path in int8_files(repo, names))


def variant_model_names(names: ClassifierNames) -> tuple[str, ...]:
    """Every variant model classifier ``names`` may have beside its FP32 ones: INT8, OpenVINO,
    and each one's fused model."""
    openvino = (*openvino_models(names.name), openvino_fused_name(names.name))
    return (*names.int8_models, names.int8_fused, *openvino)


def has_fused(repo: Path, model: str, engine: str) -> bool:
    """True when ``repo/model`` is a complete fused model running ``engine``."""
    directory = repo / model
    files = [directory / CONFIG_FILENAME, directory / contract.LABELS_FILENAME]
    filenames = (*FUSED_MODEL_FILES, fused_engine_filename(engine))
    files += [directory / VERSION / filename for filename in filenames]
    return all(path.is_file() for path in files)


def has_int8_fused(repo: Path, names: ClassifierNames | None = None) -> bool:
    """True when ``repo`` holds the classifier's complete fused INT8 model (``NAME_int8_fused``;
    repositories quantised before it existed have the INT8 ensemble only)."""
    return has_fused(repo, (names or ClassifierNames.of()).int8_fused, "onnxruntime")


def has_openvino_fused(repo: Path, classifier: str = DEFAULT_CLASSIFIER) -> bool:
    """True when ``repo`` holds the OpenVINO variant's complete fused model."""
    return has_fused(repo, openvino_fused_name(classifier), "openvino")


def openvino_files(repo: Path, classifier: str = DEFAULT_CLASSIFIER) -> list[Path]:
    """What serving the OpenVINO variant needs (written by ``resnet18-triton openvino``)."""
    models = openvino_models(classifier)
    return [
        openvino_model_path(repo, classifier),
        *[repo / name / CONFIG_FILENAME for name in models],
        *[repo / name / contract.LABELS_FILENAME for name in models],
    ]


def has_openvino(repo: Path, classifier: str = DEFAULT_CLASSIFIER) -> bool:
    """True when ``repo`` holds a complete OpenVINO variant of ``classifier``."""
    return all(path.is_file() for path in openvino_files(repo, classifier))


def served_models(
    repo: Path, int8: bool | None = None, openvino: bool | None = None
) -> tuple[str, ...]:
    """Models to load, in load order: every classifier's steps, then their ensembles, then each
    variant (INT8, then OpenVINO; classifier, ensemble, then its fused model where it was
    written) the repository holds, or all of them with ``True``, none with ``False``. A repository
    without classifiers yields the default classifier's names."""
    found = classifiers(repo) or [ClassifierNames.of()]
    with_int8 = [names for names in found if int8 or (int8 is None and has_int8(repo, names))]
    with_openvino = [
        names.name
        for names in found
        if openvino or (openvino is None and has_openvino(repo, names.name))
    ]
    return (
        *[model for names in found for model in (names.preprocess, names.onnx)],
        *[names.ensemble for names in found],
        *[names.int8 for names in with_int8],
        *[names.int8_ensemble for names in with_int8],
        *[names.int8_fused for names in with_int8 if has_int8_fused(repo, names)],
        *[openvino_model_name(name) for name in with_openvino],
        *[openvino_ensemble_name(name) for name in with_openvino],
        *[openvino_fused_name(name) for name in with_openvino if has_openvino_fused(repo, name)],
    )


def owned_models(repo: Path, excluding: str | None = None) -> dict[str, str]:
    """Every model name a classifier of ``repo`` (other than ``excluding``) owns, its variants
    included -> its classifier."""
    return {
        model: names.name
        for names in classifiers(repo)
        if names.name != excluding
        for model in (*names.served, *variant_model_names(names))
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
