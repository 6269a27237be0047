"""What ``import resnet18_triton`` gives a library user, and what it costs.

The package exports the client, its policies, result types and errors, and ``__version__``; it
imports the client only when one of those names is read, and never what the extras bring.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

import resnet18_triton

# What only the extras bring: the model stack (export, server) and the web stack (ui, tests).
HEAVY_MODULES = {
    *("torch", "torchvision", "PIL", "onnx", "onnxruntime", "onnxscript", "openvino"),
    *("starlette", "uvicorn", "fastapi", "gradio", "python_multipart", "multipart", "anyio"),
    *("h11", "httpx", "flask", "aiohttp", "playwright"),
}


def modules_loaded_by(statements: str) -> set[str]:
    """The top-level modules a fresh interpreter has loaded after running ``statements``."""
    report = "import json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    code = f"{statements}\n{report}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout))


def test_every_name_the_package_exports_resolves() -> None:
    namespace: dict[str, object] = {}
    exec("from resnet18_triton import *", namespace)
    exported = {name: value for name, value in namespace.items() if name != "__builtins__"}
    assert sorted(exported) == sorted(resnet18_triton.__all__)
    assert all(value is not None for value in exported.values())
    assert issubclass(resnet18_triton.ImageError, resnet18_triton.ResNet18TritonError)
    assert resnet18_triton.ImageClassifier.__module__ == "resnet18_triton.client.api"


def test_a_name_the_package_does_not_export_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchName'"):
        resnet18_triton.NoSuchName  # noqa: B018  # reading it is the test


def test_the_package_version_is_the_installed_distributions() -> None:
    assert resnet18_triton.__version__ == importlib.metadata.version("resnet18-triton")


def test_a_source_tree_that_was_never_installed_has_an_unknown_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def not_installed(distribution: str) -> str:
        raise importlib.metadata.PackageNotFoundError(distribution)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert resnet18_triton._installed_version() == "0+unknown"


def test_importing_the_package_loads_the_client_only_when_its_names_are_read() -> None:
    assert "tritonclient" not in modules_loaded_by("import resnet18_triton")
    loaded = modules_loaded_by(
        "import resnet18_triton as r\nfor name in r.__all__: getattr(r, name)"
    )
    assert "tritonclient" in loaded


def test_the_thin_client_and_the_command_line_import_no_model_or_web_stack() -> None:
    loaded = modules_loaded_by(
        "import resnet18_triton as r, resnet18_triton.cli, resnet18_triton.client.cli\n"
        "for name in r.__all__: getattr(r, name)"
    )
    assert "tritonclient" in loaded  # the client really was imported
    assert loaded & HEAVY_MODULES == set()
