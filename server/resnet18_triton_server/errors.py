"""Errors of the embedded server launcher, with messages that say what to do."""

from __future__ import annotations

from resnet18_triton_client.errors import ResNet18TritonError


class ServerStartError(ResNet18TritonError):
    """The server could not be started or did not become ready."""
