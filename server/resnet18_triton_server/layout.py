"""Where things live in a model repository; shared by the exporter and the server launcher.

Standard library only, so that checking a repository needs neither torch nor the server binary.
"""

from __future__ import annotations

from pathlib import Path

from resnet18_triton_client import contract

CONFIG_FILENAME = "config.pbtxt"
VERSION = "1"
PYTHON_MODELS = (contract.PREPROCESS_MODEL, contract.POSTPROCESS_MODEL)


def default_repository() -> Path:
    """This checkout's ``model_repository/`` (the project installs editable from its checkout)."""
    return Path(__file__).resolve().parents[2] / "model_repository"


def onnx_model_path(repo: Path, model: str = contract.ONNX_MODEL) -> Path:
    return repo / model / VERSION / "model.onnx"


def missing_files(repo: Path) -> list[Path]:
    """What a servable repository still lacks; empty once ``resnet18-triton export`` has run."""
    required = [onnx_model_path(repo)]
    required += [repo / name / CONFIG_FILENAME for name in contract.SERVED_MODELS]
    required += [repo / name / VERSION / "model.py" for name in PYTHON_MODELS]
    required += [
        repo / name / contract.LABELS_FILENAME
        for name in (contract.ONNX_MODEL, contract.ENSEMBLE_MODEL)
    ]
    return [path for path in required if not path.is_file()]
