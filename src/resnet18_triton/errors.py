"""Every error the library raises on purpose, each with its own message and exit code.

Messages are meant for people: they say what went wrong and what to do next. The command line
prints ``str(error)`` on one line and exits with ``error.exit_code`` (as click's ``UsageError``
does); library callers catch ``ResNet18TritonError`` or one of its subclasses. The tree:

    ResNet18TritonError                 exit 2 unless said otherwise
    ├── MissingExtraError               an optional dependency group is not installed
    ├── ServerUnavailableError          unreachable, not ready, or the model is not loaded
    ├── ImageError (exit 1)             one image could not be read or was rejected
    ├── NoImagesError                   the inputs named no image at all
    ├── AdminKeyError                   the admin key file is missing, unsafe or empty
    ├── ApiKeyError                     the inference API key is missing, refused or unsafe
    ├── PrecisionUnavailableError       the CPU lacks what a precision needs
    ├── RepositoryError                 the model repository cannot be read or written as asked
    ├── ExportError                     a model could not be exported, converted or published
    │   ├── WeightsUnavailableError     weights cannot be loaded (offline, missing, incompatible)
    │   ├── VerificationError           the ONNX model does not reproduce PyTorch
    │   ├── FidelityRefused             a variant agrees too little with FP32
    │   │   ├── QuantizationRefused     the INT8 model
    │   │   └── VariantRefused          the OpenVINO variant
    │   └── PublishRefused              a new version failed its gate or cannot be published
    ├── ServerStartError                the server could not start or become ready
    │   └── StartAborted (exit 130)     a signal arrived while it was starting
    ├── ProxyError                      nginx is missing, rejects its config, or did not start
    ├── PerfError                       a load test or benchmark could not run
    │   ├── PerfAnalyzerError           perf_analyzer is missing, cannot start, or failed
    │   ├── TuneError                   the tuning search cannot run or found no plan
    │   └── SoakFailedError (exit 1)    the soak lost requests or gave wrong answers
    ├── UploadError                     a web upload is not acceptable (carries its HTTP status)
    └── Busy                            the web page has more requests in flight than it admits
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """Exit statuses of the ``resnet18-triton`` command."""

    OK = 0
    SOME_FAILED = 1  # some images failed, or some model is not ready
    USAGE_OR_UNREACHABLE = 2  # bad arguments, server unreachable, export refused, ...
    INTERRUPTED = 130


class ResNet18TritonError(Exception):
    """Base class: the message says what went wrong and, where possible, what to do."""

    exit_code: int = ExitCode.USAGE_OR_UNREACHABLE


class MissingExtraError(ResNet18TritonError):
    """A subcommand needs an optional dependency group that is not installed."""

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(
            f"this needs the '{extra}' extra (missing module '{module}'): "
            f"pip install 'resnet18-triton[{extra}]'"
        )
        self.extra = extra
        self.module = module


class ServerUnavailableError(ResNet18TritonError):
    """The server cannot be reached, is not ready, or the model is not loaded."""


class ImageError(ResNet18TritonError):
    """One image could not be read or was rejected by the server."""

    exit_code = ExitCode.SOME_FAILED


class NoImagesError(ResNet18TritonError):
    """The inputs named no image file at all."""


class RepositoryError(ResNet18TritonError):
    """The model repository cannot be read or written as asked: a config or file is missing or
    unreadable, a classifier is not there, settings cannot be served, an install failed. Raised
    by ``repository`` for every command that reads or writes one; the message says what to run
    or change."""


class ExportError(ResNet18TritonError):
    """Exporting the model failed; the message says why and what to try."""


class WeightsUnavailableError(ExportError):
    """The requested weights cannot be loaded: offline download, missing or incompatible file."""


class ServerStartError(ResNet18TritonError):
    """The server could not be started or did not become ready."""


class PerfError(ResNet18TritonError):
    """A load test or benchmark could not run; the message says what is missing."""


class StartAborted(ServerStartError):
    """A signal (Ctrl-C, SIGTERM) arrived while the server was starting; it was stopped."""

    exit_code = ExitCode.INTERRUPTED


class AdminKeyError(ResNet18TritonError):
    """The admin key file is missing, unsafe or empty; the message says how to fix it."""


class ApiKeyError(ResNet18TritonError):
    """The inference API key is missing or refused (HTTP 401), or its file is unsafe or empty;
    the message says where to put it."""


class PrecisionUnavailableError(ResNet18TritonError):
    """The CPU lacks the instructions a requested precision needs."""


class VerificationError(ExportError):
    """The exported ONNX model is invalid or does not reproduce the PyTorch model's outputs.

    ``report`` carries the figures (an ``export.verify.VerificationReport``, when the model ran
    at all), so callers need not parse the message.
    """

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class FidelityRefused(ExportError):
    """A variant agrees too little with the FP32 model, so it was not written (``report``: an
    ``export.fidelity.FidelityReport``, whose table says by how much)."""

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report


class QuantizationRefused(FidelityRefused):
    """The quantised model agrees too little with the FP32 model."""


class PublishRefused(ExportError):
    """A new version of a classifier failed its gate against the served one, or cannot be a
    version of it (other classes, other labels, variants it would leave stale). Exit 1, like a
    check that ran and failed."""

    exit_code = ExitCode.SOME_FAILED


class VariantRefused(FidelityRefused):
    """The OpenVINO variant agrees too little with FP32."""


class ProxyError(ResNet18TritonError):
    """nginx is missing, its configuration is invalid, or it did not start."""


class PerfAnalyzerError(PerfError):
    """perf_analyzer is missing, cannot start, or failed a run."""


class TuneError(PerfError):
    """The tuning search cannot run or found no plan that meets its constraints."""


class SoakFailedError(PerfError):
    """The soak lost requests, gave wrong answers, grew or replaced a server process."""

    exit_code = ExitCode.SOME_FAILED


class UploadError(ResNet18TritonError):
    """The request body is not an acceptable upload; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Busy(ResNet18TritonError):
    """More requests in flight than the app admits."""
