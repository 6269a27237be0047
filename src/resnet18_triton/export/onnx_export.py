"""Export a ResNet-18 to one self-contained ONNX file with a dynamic batch axis.

The result is what Triton's onnxruntime backend loads: input ``input`` [batch, 3, S, S] uint8
(RGB pixels, CHW, 0..255; S = 224 by default), two outputs, both [batch, classes] float32 with the
same dynamic batch axis: ``logits`` (first), and ``probabilities`` = softmax(logits) over the
classes, computed by an ordinary ONNX ``Softmax`` node in the graph (``WithProbabilities`` wraps
the classifier before export). Weights are embedded (no ``.onnx.data`` side file): a Triton model
version directory holds one file.

The normalisation is part of the graph (``Normalized`` wraps the classifier before export): the
graph starts with Cast(float) -> Div(255) -> Sub(mean) -> Div(std), exactly torchvision's
``ToTensor`` + ``Normalize`` arithmetic in float32, so a uint8 image gives the same logits, bit for
bit, as the float tensor torchvision would have computed. ``mean`` and ``std`` are parameters of
``export_onnx`` (ImageNet's by default), so a classifier trained with other statistics carries
them in its own graph. Callers therefore send 1 byte per pixel value instead of 4, and never need
to know the statistics.

Exporters: ``dynamo=True`` (the torch.export-based exporter) is the default, because the
TorchScript exporter is deprecated upstream. It emits opset 18 or newer, so ``dynamo=True`` with
an older opset is refused with a clear error; ``dynamo=False`` (TorchScript) exports opset 17 for
runtimes that need it. Both agree with PyTorch within the tolerances of ``verify``.

A finished export is installed at its path atomically (``resnet18_triton.files``): a failed
export leaves no file behind and never replaces an existing one.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
import torchvision

from resnet18_triton.contract import (
    CHANNELS,
    IMAGE_SIZE,
    ONNX_INPUT,
    ONNX_OUTPUTS,
    PROVENANCE_PARAMETER,
)
from resnet18_triton.errors import ExportError
from resnet18_triton.export.weights import Provenance
from resnet18_triton.files import install_file_atomically

DEFAULT_OPSET = 18
MIN_OPSET = 17
DYNAMO_MIN_OPSET = 18
BATCH_AXIS_NAME = "batch"
# metadata_props key holding the class labels as a JSON list.
LABELS_METADATA_KEY = "labels"
# Batch 2, not 1: torch.export specialises dimensions of size 0 and 1 to constants.
_EXAMPLE_BATCH = 2


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalized(torch.nn.Module):
    """``model`` behind a uint8 -> normalised float32 prefix: ``model((x / 255 - mean) / std)``.

    Division by 255 first, then the float mean and std, in that order: the same float32 operations
    as torchvision's ``ToTensor`` + ``Normalize``, so the results are identical, not merely close.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        model: torch.nn.Module,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs: tuple[torch.Tensor, torch.Tensor] = self.model(
            normalize(pixels, self.mean, self.std)
        )
        return outputs


def normalize(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> ``(pixels / 255 - mean) / std`` in float32 (torchvision's arithmetic)."""
    return (pixels.to(torch.float32) / 255.0 - mean) / std


class WithProbabilities(torch.nn.Module):
    """``classifier`` with a second output: ``(logits, softmax(logits, dim=1))``.

    Exported instead of the bare classifier, so the ONNX graph itself computes the probabilities.
    """

    def __init__(self, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(images)
        return logits, torch.softmax(logits, dim=1)


def export_onnx(
    model: torch.nn.Module,
    path: Path,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = True,
    *,
    provenance: Provenance | str | None = None,
    input_size: int = IMAGE_SIZE,
    labels: Sequence[str] | None = None,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> Path:
    """Export ``model`` (put in eval mode) to ``path`` atomically and return ``path``.

    ``model`` maps normalised float images to logits; the file takes uint8 pixels, normalises them
    with ``mean`` and ``std`` (one value per channel, on the 0..1 scale) inside the graph, and
    gets both ``logits`` and ``probabilities`` (see the module docstring).

    ``provenance`` (a Provenance or its JSON) is stored in the ONNX ``metadata_props`` under
    ``weights_provenance``, next to producer information. A failed export leaves no file behind
    and never replaces an existing good one. ``input_size`` is the side of the square input
    images; ``labels`` (one per class) go into the metadata as a JSON list under ``labels``.
    """
    path = Path(path)
    _check_opset(opset, dynamo)
    _check_statistics(mean, std)
    metadata = _metadata(opset, dynamo, provenance)
    metadata.update(normalize_mean=json.dumps(list(mean)), normalize_std=json.dumps(list(std)))
    if labels is not None:
        metadata[LABELS_METADATA_KEY] = json.dumps(list(labels))
    # The exporter writes wherever it is told, in several passes: it writes into a private
    # directory, and only the finished file is installed at ``path``.
    with tempfile.TemporaryDirectory(prefix="resnet18-onnx-export-") as work:
        exported = Path(work) / path.name
        wrapped = Normalized(WithProbabilities(model), mean, std).eval()  # eval() recurses
        _torch_export(wrapped, exported, opset, dynamo, input_size)
        _add_metadata(exported, metadata)
        install_file_atomically(exported, path)
    return path


def _check_opset(opset: int, dynamo: bool) -> None:
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old; use {MIN_OPSET} or newer")
    if dynamo and opset < DYNAMO_MIN_OPSET:
        raise ExportError(
            f"the torch.export-based exporter (dynamo=True) emits opset {DYNAMO_MIN_OPSET} or "
            f"newer; use opset {DYNAMO_MIN_OPSET}, or dynamo=False for opset {opset}"
        )


def _check_statistics(mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    if len(mean) != CHANNELS or len(std) != CHANNELS:
        raise ExportError(
            f"mean and std need one value per channel ({CHANNELS}); got {len(mean)} and {len(std)}"
        )
    if any(not value > 0 for value in std):
        raise ExportError(f"every std value must be positive; got {tuple(std)}")


def _torch_export(
    model: torch.nn.Module, path: Path, opset: int, dynamo: bool, input_size: int = IMAGE_SIZE
) -> None:
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(
        0,
        256,
        (_EXAMPLE_BATCH, CHANNELS, input_size, input_size),
        dtype=torch.uint8,
        generator=generator,
    )
    try:
        if dynamo:
            _export_dynamo(model, example, path, opset)
        else:
            _export_torchscript(model, example, path, opset)
    except Exception as error:  # the exporters raise many types; the CLI needs an ExportError
        raise ExportError(f"torch.onnx.export failed: {error}") from error


def _export_dynamo(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        external_data=False,  # one self-contained file (the dynamo default writes a .data file)
        dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS_NAME)},),
        input_names=[ONNX_INPUT],
        output_names=list(ONNX_OUTPUTS),
        opset_version=opset,
        verbose=False,  # silences the per-stage progress lines
    )


def _export_torchscript(
    model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int
) -> None:
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        dynamic_axes={name: {0: BATCH_AXIS_NAME} for name in (ONNX_INPUT, *ONNX_OUTPUTS)},
        input_names=[ONNX_INPUT],
        output_names=list(ONNX_OUTPUTS),
        opset_version=opset,
    )


def _metadata(opset: int, dynamo: bool, provenance: Provenance | str | None) -> dict[str, str]:
    metadata = {
        "producer": "resnet18_triton.export",
        "input_pixels": "uint8 RGB CHW 0..255, normalised in the graph",
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "exporter": "torch.onnx dynamo" if dynamo else "torch.onnx torchscript",
        "opset": str(opset),
    }
    if provenance is not None:
        # Parsing a JSON string validates it before it is written into the model.
        if isinstance(provenance, str):
            provenance = Provenance.from_json(provenance)
        metadata[PROVENANCE_PARAMETER] = provenance.to_json()
    return metadata


def _add_metadata(path: Path, metadata: dict[str, str]) -> None:
    model = onnx.load(str(path))
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise ExportError("the exporter wrote external weight data; expected one .onnx file")
    set_metadata(model, metadata)
    onnx.save(model, str(path))


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Set ``metadata_props`` keys, replacing (not duplicating) keys already present."""
    kept = [prop for prop in model.metadata_props if prop.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
