"""Every error the library raises on purpose, each with its own message and exit code.

Messages are meant for people: they say what went wrong and what to do next. The command line
prints ``str(error)`` on one line and exits with ``error.exit_code`` (as click's ``UsageError``
does); library callers catch ``ResNet18TritonError`` or one of its subclasses.
"""

from __future__ import annotations

from enum import IntEnum


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
