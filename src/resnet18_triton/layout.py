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
from resnet18_triton.contract import INT8_MODEL, INT8_MODELS

CONFIG_FILENAME = "config.pbtxt"
VERSION = "1"
# Python-backend models whose model.py ships in this package and is copied in by `export`.
PYTHON_MODELS = (contract.PREPROCESS_MODEL,)
# The repository used when none is named: ./model_repository, or this variable's value.
REPOSITORY_ENV_VAR = "RESNET18_TRITON_REPO"
DEFAULT_REPOSITORY_DIRNAME = "model_repository"
# Code that runs inside tritonserver, shipped as package data beside the server launcher.
_TRITON_CODE = Path(__file__).resolve().parent / "server"

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

    Only the files of ``contract.SERVED_MODELS`` count: other directories are ignored, as the
    server never loads them.
    """
    required = [onnx_model_path(repo)]
    required += [repo / name / CONFIG_FILENAME for name in contract.SERVED_MODELS]
    required += [repo / name / VERSION / "model.py" for name in PYTHON_MODELS]
    required += [
        repo / name / contract.LABELS_FILENAME
        for name in (contract.ONNX_MODEL, contract.ENSEMBLE_MODEL)
    ]
    return [path for path in required if not path.is_file()]


def int8_files(repo: Path) -> list[Path]:
    """What serving the INT8 variant needs (written by ``resnet18-triton quantize``)."""
    return [
        onnx_model_path(repo, INT8_MODEL),
        *[repo / name / CONFIG_FILENAME for name in INT8_MODELS],
        *[repo / name / contract.LABELS_FILENAME for name in INT8_MODELS],
    ]


def has_int8(repo: Path) -> bool:
    """True when ``repo`` holds a complete INT8 variant."""
    return all(path.is_file() for path in int8_files(repo))


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
    """Models to load, in load order: the FP32 set, plus each variant (INT8, OpenVINO) when
    asked for (``True``) or, with ``None``, when the repository holds it."""
    with_int8 = has_int8(repo) if int8 is None else int8
    with_openvino = has_openvino(repo) if openvino is None else openvino
    return (
        contract.SERVED_MODELS
        + (INT8_MODELS if with_int8 else ())
        + (openvino_models() if with_openvino else ())
    )


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
