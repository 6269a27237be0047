"""Serve torchvision ResNet-18 image classifiers on CPUs with NVIDIA Triton Inference Server.

As a library, this package is the thin client: it classifies encoded images (JPEG, PNG, ...) on a
running server, and needs neither torch nor Pillow::

    from pathlib import Path

    import resnet18_triton as r

    image = Path("cat.jpg").read_bytes()
    with r.ImageClassifier("127.0.0.1:8000") as classifier:
        [top] = classifier.classify_bytes([image], top_k=3)  # [Prediction(label, index, p), ...]
        vectors = classifier.probabilities([image])  # float32, shape (1, classes)

Exported (``__all__``): ``ImageClassifier``; its policies ``RetryPolicy`` (faults the server
heals from) and ``OverloadPolicy`` (overload refusals); what it returns (``Prediction``,
``ClassificationResult``, ``HealthReport``, ``ModelHealth``, ``ClassifierHealth``); the errors it
raises, ``ResNet18TritonError`` and its subclasses ``ServerUnavailableError``, ``ApiKeyError``
and ``ImageError``; and ``__version__``. The errors of the repository, export, server and perf are
in ``errors``.

The client's names and ``__version__`` are looked up when first read, not with the package:
every ``resnet18_triton.*`` module imports this package first, and the server launcher,
``export`` and ``--help`` need neither tritonclient, gevent nor the installed metadata.

The root modules hold what every part shares: ``contract`` (model and tensor names, defaults,
limits), ``errors`` (each with its exit code), ``files``, ``keys``, ``cpu_flags``, ``options``,
``extras`` (the message for a missing optional dependency) and ``cli`` (the command group).
Subpackages by role: ``repository`` (the layout, configs and writer of a model repository),
``client`` (thin: no torch or Pillow), ``export``, ``server``, ``perf``, ``ui`` and ``deploy``.
See docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from resnet18_triton.errors import (
    ApiKeyError,
    ImageError,
    ResNet18TritonError,
    ServerUnavailableError,
)

if TYPE_CHECKING:
    from resnet18_triton.client.api import ImageClassifier
    from resnet18_triton.client.policies import OverloadPolicy, RetryPolicy
    from resnet18_triton.client.results import (
        ClassificationResult,
        ClassifierHealth,
        HealthReport,
        ModelHealth,
        Prediction,
    )

    __version__: str

# Name -> the module that defines it, imported by ``__getattr__`` when the name is first read.
_CLIENT_NAMES = {
    "ImageClassifier": "resnet18_triton.client.api",
    "RetryPolicy": "resnet18_triton.client.policies",
    "OverloadPolicy": "resnet18_triton.client.policies",
    "Prediction": "resnet18_triton.client.results",
    "ClassificationResult": "resnet18_triton.client.results",
    "HealthReport": "resnet18_triton.client.results",
    "ModelHealth": "resnet18_triton.client.results",
    "ClassifierHealth": "resnet18_triton.client.results",
}

__all__ = [
    "ApiKeyError",
    "ClassificationResult",
    "ClassifierHealth",
    "HealthReport",
    "ImageClassifier",
    "ImageError",
    "ModelHealth",
    "OverloadPolicy",
    "Prediction",
    "ResNet18TritonError",
    "RetryPolicy",
    "ServerUnavailableError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """``__version__`` and the client's exported names, each looked up on first read (PEP 562)."""
    if name == "__version__":
        value: Any = _installed_version()
    elif name in _CLIENT_NAMES:
        value = getattr(importlib.import_module(_CLIENT_NAMES[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later reads skip this function
    return value


def _installed_version() -> str:
    """The version of the installed distribution; ``0+unknown`` for a source tree on
    ``sys.path`` that was never installed."""
    # Imported here: importlib.metadata takes longer to import than the rest of this package.
    import importlib.metadata

    try:
        return importlib.metadata.version("resnet18-triton")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
