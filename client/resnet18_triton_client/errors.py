"""A small exception hierarchy whose messages are meant for people, not for tracebacks."""

from __future__ import annotations


class ResNet18TritonError(Exception):
    """Base class: the message says what went wrong and, where possible, what to do."""


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
