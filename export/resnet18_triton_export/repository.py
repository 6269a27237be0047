"""Fill a Triton model repository: configs, labels, the Python models and the ONNX file's place.

Layout written (``<repo>`` defaults to this checkout's ``model_repository/``)::

    <repo>/preprocess/config.pbtxt       <repo>/preprocess/1/model.py     (Python backend)
    <repo>/resnet18_onnx/config.pbtxt    <repo>/resnet18_onnx/1/model.onnx
    <repo>/resnet18_onnx/labels.txt
    <repo>/postprocess/config.pbtxt      <repo>/postprocess/1/model.py    (Python backend)
    <repo>/resnet18/config.pbtxt         <repo>/resnet18/1/               (ensemble)
    <repo>/resnet18/labels.txt

The Python models are committed in this checkout's ``model_repository/``; another ``<repo>`` gets
copies of them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from resnet18_triton_client import contract
from resnet18_triton_export.errors import ExportError
from resnet18_triton_export.model_configs import ServingSettings, all_model_configs, render
from resnet18_triton_server.layout import (
    CONFIG_FILENAME,
    PYTHON_MODELS,
    VERSION,
    default_repository,
)


def write_text_atomically(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a running server never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)


def install_python_models(repo: Path, template: Path | None = None) -> None:
    """Copy the committed Python-backend models into ``repo`` unless it is the template itself."""
    template = template or default_repository()
    for name in PYTHON_MODELS:
        source = template / name / VERSION / "model.py"
        target = repo / name / VERSION / "model.py"
        if not source.is_file():
            raise ExportError(f"the Python model template {source} is missing from this checkout")
        if target.resolve() != source.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


def write_labels(repo: Path, categories: list[str]) -> None:
    if len(categories) != contract.NUM_CLASSES:
        raise ExportError(f"expected {contract.NUM_CLASSES} class names, got {len(categories)}")
    text = "".join(f"{name}\n" for name in categories)
    for model in (contract.ONNX_MODEL, contract.ENSEMBLE_MODEL):
        write_text_atomically(repo / model / contract.LABELS_FILENAME, text)


def write_configs(repo: Path, settings: ServingSettings, provenance_json: str) -> list[Path]:
    """Render every model's config.pbtxt; returns the paths written."""
    settings.check()
    written = []
    for config in all_model_configs(settings, provenance_json):
        path = repo / config.name / CONFIG_FILENAME
        write_text_atomically(path, render(config))
        written.append(path)
    # The ensemble has no files of its own, but Triton needs its version directory.
    (repo / contract.ENSEMBLE_MODEL / VERSION).mkdir(parents=True, exist_ok=True)
    return written


def fill_repository(
    repo: Path, settings: ServingSettings, provenance_json: str, categories: list[str]
) -> None:
    """Everything but model.onnx itself (the exporter writes that to ``onnx_model_path``)."""
    install_python_models(repo)
    write_labels(repo, categories)
    write_configs(repo, settings, provenance_json)

