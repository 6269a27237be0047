"""Errors raised by the export library; all are ResNet18TritonError, so the CLI prints them as
one-line messages instead of tracebacks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from resnet18_triton_client.errors import ResNet18TritonError

if TYPE_CHECKING:  # verify.py imports this module, so only import it for type checkers.
    from resnet18_triton_export.verify import VerificationReport


class ExportError(ResNet18TritonError):
    """Exporting the model failed; the message says why and what to try."""


class WeightsUnavailableError(ExportError):
    """The requested weights cannot be loaded: offline download, missing or incompatible file."""


class VerificationError(ExportError):
    """The exported ONNX model is invalid or does not reproduce the PyTorch model's outputs."""

    def __init__(self, message: str, report: VerificationReport | None = None) -> None:
        super().__init__(message)
        # Kept so callers (and tests) can look at the figures without parsing the message.
        self.report = report
