"""An ONNX classifier given as ``--weights model.onnx``: checked by running it, then adapted.

The file must take one float image input ``[N, 3, S, S]`` and return ``[N, classes]`` logits as
its first output. ``inspect_onnx`` reads the declared shapes and refuses anything else by name;
``adapt_onnx`` writes the repository's form of it (input ``input``: uint8 pixels, normalised by a
Cast -> Div(255) -> Sub(mean) -> Div(std) prefix in float32 as the exported graphs do; outputs
``logits`` and ``probabilities`` = Softmax of the logits; a dynamic batch axis);
``OnnxReference`` runs the original with ONNX Runtime, so the adapted file is verified against
what the user gave (the class count, too, comes from running it, not from the declared shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper

from resnet18_triton.contract import CHANNELS, ONNX_INPUT, ONNX_OUTPUT, ONNX_PROBABILITIES
from resnet18_triton.errors import WeightsUnavailableError
from resnet18_triton.export.onnx_export import (
    BATCH_AXIS_NAME,
    IMAGENET_MEAN,
    IMAGENET_STD,
    set_metadata,
)
from resnet18_triton.files import write_bytes_atomically

ONNX_SUFFIX = ".onnx"


def is_onnx_file(path: Path) -> bool:
    """``.onnx`` files are taken as ONNX models (anything else as a PyTorch checkpoint)."""
    return Path(path).suffix.lower() == ONNX_SUFFIX


@dataclass(frozen=True)
class OnnxClassifier:
    """What running the file found: its tensor names, input side and class count."""

    path: Path
    input_name: str
    output_name: str
    input_size: int
    num_classes: int


def inspect_onnx(path: Path) -> OnnxClassifier:
    """Check that ``path`` is an image classifier the repository can serve; raise
    WeightsUnavailableError naming the input or output that does not fit."""
    model = _load(path)
    inputs = _graph_inputs(model)
    if len(inputs) != 1:
        raise WeightsUnavailableError(
            f"ONNX file {path} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
            "a classifier takes exactly one image tensor [N, 3, H, W]"
        )
    source = inputs[0]
    dims = _dims(source)
    if source.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise WeightsUnavailableError(f"ONNX file {path}: input '{source.name}' must be float32")
    if len(dims) != 4 or dims[1] != CHANNELS or not _square(dims):
        raise WeightsUnavailableError(
            f"ONNX file {path}: input '{source.name}' has shape {_shown(dims)}; expected "
            "[N, 3, S, S] (batch, RGB channels, a square image side)"
        )
    size = int(dims[2])
    num_classes = _run_classes(path, source.name, size)
    return OnnxClassifier(path, source.name, model.graph.output[0].name, size, num_classes)


def adapt_onnx(
    found: OnnxClassifier,
    target: Path,
    metadata: dict[str, str],
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> Path:
    """Write ``found`` as the repository's classifier file at ``target`` (see module docstring);
    ``mean`` and ``std`` are the statistics the file's float input expects."""
    model = _load(found.path)
    graph = model.graph
    image = next(item for item in graph.input if item.name == found.input_name)
    image.name = ONNX_INPUT
    image.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    _set_batch_axis(image)
    graph.initializer.extend(_prefix_constants(mean, std))
    nodes = [
        *_normalisation_prefix(found.input_name),
        *graph.node,
        helper.make_node("Identity", [found.output_name], [ONNX_OUTPUT], name="logits_alias"),
        helper.make_node(
            "Softmax", [found.output_name], [ONNX_PROBABILITIES], axis=1, name="probabilities"
        ),
    ]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.output[:]
    for name in (ONNX_OUTPUT, ONNX_PROBABILITIES):
        graph.output.append(
            helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, [BATCH_AXIS_NAME, found.num_classes]
            )
        )
    set_metadata(model, metadata)
    write_bytes_atomically(target, model.SerializeToString())
    return target


_PREFIX = "input_normalise"


def _prefix_constants(mean: tuple[float, ...], std: tuple[float, ...]) -> list[onnx.TensorProto]:
    def constant(name: str, values: tuple[float, ...], dims: list[int]) -> onnx.TensorProto:
        array = np.asarray(values, dtype=np.float32).reshape(dims)
        return numpy_helper.from_array(array, f"{_PREFIX}_{name}")

    return [
        constant("scale", (255.0,), []),
        constant("mean", tuple(mean), [1, CHANNELS, 1, 1]),
        constant("std", tuple(std), [1, CHANNELS, 1, 1]),
    ]


def _normalisation_prefix(output: str) -> list[onnx.NodeProto]:
    """uint8 ``input`` -> ``(x / 255 - mean) / std`` in float32 named ``output``: torchvision's
    ToTensor + Normalize arithmetic, in its order."""
    cast, scaled, centred = (f"{_PREFIX}_{step}" for step in ("cast", "scaled", "centred"))
    return [
        helper.make_node("Cast", [ONNX_INPUT], [cast], to=onnx.TensorProto.FLOAT, name=cast),
        helper.make_node("Div", [cast, f"{_PREFIX}_scale"], [scaled], name=scaled),
        helper.make_node("Sub", [scaled, f"{_PREFIX}_mean"], [centred], name=centred),
        helper.make_node("Div", [centred, f"{_PREFIX}_std"], [output], name=f"{_PREFIX}_std_div"),
    ]


class OnnxReference(torch.nn.Module):
    """The user's ONNX file run by ONNX Runtime, as a module mapping images to logits (the
    reference ``verify_onnx`` compares the adapted file with)."""

    def __init__(self, found: OnnxClassifier) -> None:
        super().__init__()
        self.found = found
        self.session = _session(found.path)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        outputs = self.session.run(
            [self.found.output_name], {self.found.input_name: images.numpy()}
        )
        return torch.from_numpy(np.asarray(outputs[0]))


def _load(path: Path) -> onnx.ModelProto:
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as error:  # onnx raises DecodeError, ValidationError, OSError, ...
        raise WeightsUnavailableError(f"{path} is not a valid ONNX model: {error}") from error
    return model


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    # Older exporters list the weights among the inputs too; those have initializers.
    initialized = {tensor.name for tensor in model.graph.initializer}
    return [item for item in model.graph.input if item.name not in initialized]


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    shape = value.type.tensor_type.shape
    return [
        dim.dim_value if dim.HasField("dim_value") else dim.dim_param or "?" for dim in shape.dim
    ]


def _square(dims: list[int | str]) -> bool:
    return isinstance(dims[2], int) and dims[2] > 0 and dims[2] == dims[3]


def _shown(dims: list[int | str]) -> str:
    return "[" + ", ".join(str(dim) for dim in dims) + "]"


def _set_batch_axis(value: onnx.ValueInfoProto) -> None:
    batch = value.type.tensor_type.shape.dim[0]
    batch.Clear()
    batch.dim_param = BATCH_AXIS_NAME


def _session(path: Path) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's pybind errors share no useful base class
        raise WeightsUnavailableError(f"ONNX Runtime cannot load {path}: {error}") from error


def _run_classes(path: Path, input_name: str, size: int) -> int:
    """Run one random image through the file; the class count is its output's width."""
    image = np.random.default_rng(0).standard_normal((1, CHANNELS, size, size), dtype=np.float32)
    try:
        output = _session(path).run(None, {input_name: image})[0]
    except WeightsUnavailableError:
        raise
    except Exception as error:
        raise WeightsUnavailableError(
            f"ONNX file {path} fails on a [1, 3, {size}, {size}] image: {error}"
        ) from error
    output = np.asarray(output)
    if output.ndim != 2 or output.shape[0] != 1 or output.shape[1] < 2:
        raise WeightsUnavailableError(
            f"ONNX file {path}: first output has shape {list(output.shape)} for one image; "
            "expected [N, classes] logits"
        )
    return int(output.shape[1])
