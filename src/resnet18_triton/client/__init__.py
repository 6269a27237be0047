"""Thin client for the ResNet-18 Triton service: sends encoded image bytes, reads top-k labels."""

from resnet18_triton.client.api import ImageClassifier
from resnet18_triton.errors import (
    ImageError,
    ResNet18TritonError,
    ServerUnavailableError,
)

__all__ = ["ImageClassifier", "ImageError", "ResNet18TritonError", "ServerUnavailableError"]
