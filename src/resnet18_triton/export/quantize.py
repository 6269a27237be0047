"""Static INT8 quantisation of the exported ResNet-18 with ONNX Runtime (QDQ format).

Recipe (ONNX Runtime's recommended CPU path):

1. ``quant_pre_process``: symbolic shape inference and graph optimisation of the FP32 model, so
   the quantiser sees fused Conv+ReLU patterns and every tensor's shape.
2. ``quantize_static`` in QDQ format: unsigned 8-bit activations, signed 8-bit weights (U8S8),
   ranges calibrated on real images.
3. The calibration images go through the *very same* preprocessing as the server: the function
   ``preprocess_bytes`` of ``<repo>/preprocess/1/model.py``, loaded by file path (that file is
   self-contained), so the calibrated activation ranges are those the served model will see.

Choices exposed (see ``QuantizationRecipe``):

* per-channel weight scales (default on: per-tensor scales lose accuracy on depthwise-like
  filters with very different ranges);
* ``reduce_range`` (7-bit weights): ONNX Runtime recommends it on AVX2/AVX-512 CPUs *without*
  VNNI, where the U8S8 ``vpmaddubsw`` instruction can saturate its 16-bit intermediate sums.
  ``None`` (the default) decides from this CPU's flags: off when it has VNNI or AMX, on otherwise;
* the calibration method: MinMax (default, fast), Entropy or Percentile (both build histograms of
  every activation: slower and more memory);
* the classifier head (the final ``Gemm``, 512 x 1000, 2 MB of the 47 MB) stays FP32 by default.
  Measured on a fitted model (tests/unit/test_quantize.py): quantising it too dropped top-1
  agreement from 99% to 90% (MinMax; Entropy 90%, Percentile 91%), because the 8-bit input of the
  head cannot resolve the small feature differences the classes are told apart by. Keeping it
  costs 1.5 MB (13.3 MB instead of 11.8 MB) and nearly no time.

The ``Softmax`` that turns logits into the ``probabilities`` output is never quantised, with or
without the head: it is always in ``nodes_to_exclude``, so the INT8 model keeps both outputs and its
probabilities are a float softmax of its logits (an 8-bit softmax output could not even represent
probabilities below 1/255).

The normalisation prefix the graph starts with (Cast -> Div(255) -> Sub(mean) -> Div(std), every
node before the first ``Conv``) stays float too: its input is already exact 8-bit pixels, and
quantising its float output before the first convolution is the quantiser's job at that
convolution's input, as before the prefix existed.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from resnet18_triton import contract
from resnet18_triton.cpu_flags import INT8_FLAGS, cpu_flags, present
from resnet18_triton.errors import ExportError
from resnet18_triton.export.onnx_export import set_metadata
from resnet18_triton.files import image_files as images_in
from resnet18_triton.files import image_suffixes_text, install_file_atomically
from resnet18_triton.repository.layout import (
    CONFIG_FILENAME,
    VERSION,
    load_model_module,
    python_model_source,
)

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
# CPU flags (Linux /proc/cpuinfo) of instructions that make INT8 matrix products fast and exact.
INT8_CPU_FLAGS = INT8_FLAGS
# Calibration keeps every batch's intermediate outputs and computes the ranges once: ONNX
# Runtime's CalibMaxIntermediateOutputs drops the collected batches without folding them into the
# ranges (only the last partial group calibrated; a multiple of the limit failed with "No data is
# collected"). Memory therefore grows with the calibration set: ~24 MB per 224x224 image (64
# images: 1.57 GB peak), hence the CLI's default of 64 calibration images.
_MAX_INTERMEDIATE_BATCHES = None
QUANTIZATION_PARAMETER = "quantization"
_PREPROCESS_MODULE_NAME = "resnet18_triton_served_preprocess"
# Op types kept in float: the softmax always, the classifier head unless --quantize-head.
SOFTMAX_OPS = ("Softmax",)
HEAD_OPS = ("Gemm", "MatMul")


def cpu_int8_flags() -> tuple[str, ...]:
    """Which of ``INT8_CPU_FLAGS`` this CPU has (empty when unknown, e.g. not Linux)."""
    return present(INT8_CPU_FLAGS, cpu_flags())


@dataclass(frozen=True)
class QuantizationRecipe:
    """How to quantise; recorded in the INT8 model's metadata and config."""

    per_channel: bool = True
    reduce_range: bool | None = None  # None: on unless the CPU has VNNI/AMX (see module doc)
    method: str = "minmax"
    calibration_batch_size: int = 8
    quantize_head: bool = False  # also quantise the final Gemm (see module doc)

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ExportError(
                f"unknown calibration method {self.method!r}; choose one of "
                f"{', '.join(CALIBRATION_METHODS)}"
            )
        if self.calibration_batch_size < 1:
            raise ExportError("the calibration batch size must be at least 1")

    def resolved(self) -> QuantizationRecipe:
        """The recipe with ``reduce_range`` decided for this CPU."""
        if self.reduce_range is not None:
            return self
        return QuantizationRecipe(
            per_channel=self.per_channel,
            reduce_range=not cpu_int8_flags(),
            method=self.method,
            calibration_batch_size=self.calibration_batch_size,
            quantize_head=self.quantize_head,
        )

    def to_json(self) -> str:
        data = asdict(self.resolved())
        data.update(format="QDQ", activations="uint8", weights="int8")
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


def load_preprocess_module(
    repo: Path | None = None, model: str = contract.PREPROCESS_MODEL
) -> ModuleType:
    """The served preprocessing: ``<repo>/<model>/1/model.py``, else the shipped copy."""
    candidates = [repo / model / VERSION / "model.py"] if repo else []
    candidates.append(python_model_source(contract.PREPROCESS_MODEL))
    path = next((path for path in candidates if path.is_file()), None)
    if path is None:
        raise ExportError(f"the preprocessing model is missing: looked for {candidates[0]}")
    return load_model_module(path, _PREPROCESS_MODULE_NAME)


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (``resnet18_triton.files.image_files``), sorted by name
    for reproducibility. Raises ExportError for a missing folder or one without images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"image folder {folder} does not exist")
    found = images_in(folder)
    if not found:
        raise ExportError(f"no images in {folder} (looked for {image_suffixes_text()})")
    return found


def split_holdout(files: Sequence[Path], every: int = 5) -> tuple[list[Path], list[Path]]:
    """Deterministic split: every ``every``-th file is held out for the fidelity report."""
    if len(files) < 2:
        raise ExportError("need at least 2 images to hold some out; pass --eval-images")
    held_out = [f for i, f in enumerate(files) if i % every == every - 1] or [files[-1]]
    calibration = [f for f in files if f not in held_out]
    return calibration, held_out


def served_transform(preprocess: ModuleType, config_path: Path | None) -> Any:
    """The ``Transform`` a preprocess model's config sets (ImageNet's without a config)."""
    from resnet18_triton.repository.configs.parser import as_json, read_config_file

    config = None if config_path is None else read_config_file(config_path)
    if config is None:
        return preprocess.Transform()
    return preprocess.transform_from_config(as_json(config))


def served_preprocessing(repository: Path, preprocess_model: str) -> tuple[ModuleType, Any]:
    """The preprocessing module and ``Transform`` a classifier's preprocess model serves with."""
    preprocess = load_preprocess_module(repository, preprocess_model)
    return preprocess, served_transform(preprocess, repository / preprocess_model / CONFIG_FILENAME)


def preprocess_files(
    files: Sequence[Path], preprocess: ModuleType, transform: Any = None
) -> NDArray[np.uint8]:
    """Encoded image files -> uint8 [N, 3, S, S] via the served preprocessing and the
    classifier's ``transform`` (default: ImageNet's, S = 224)."""
    transform = transform or preprocess.Transform()
    size = transform.input_size
    batch = np.empty((len(files), contract.CHANNELS, size, size), dtype=np.uint8)
    for index, path in enumerate(files):
        try:
            batch[index] = preprocess.preprocess_bytes(Path(path).read_bytes(), transform=transform)
        except preprocess.ImageRejected as error:
            raise ExportError(f"calibration image {path}: {error}") from None
    return batch


class PreprocessedImageReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds preprocessed images to the calibrator in batches of ``batch_size``."""

    def __init__(self, images: NDArray[np.uint8], batch_size: int = 8) -> None:
        if images.ndim != 4 or len(images) == 0:
            raise ExportError("calibration needs a non-empty [N, 3, 224, 224] batch of images")
        self.images = images
        self.batch_size = batch_size
        self._batches: Iterator[NDArray[np.uint8]] = iter(())
        self.rewind()

    @classmethod
    def from_files(
        cls,
        files: Sequence[Path],
        preprocess: ModuleType,
        batch_size: int = 8,
        transform: Any = None,
    ) -> PreprocessedImageReader:
        return cls(preprocess_files(files, preprocess, transform), batch_size)

    def get_next(self) -> dict[str, NDArray[np.uint8]] | None:
        batch = next(self._batches, None)
        return None if batch is None else {contract.ONNX_INPUT: batch}

    def rewind(self) -> None:
        self._batches = iter(
            [
                self.images[i : i + self.batch_size]
                for i in range(0, len(self.images), self.batch_size)
            ]
        )

    def __len__(self) -> int:
        return len(self.images)


def quantize_model(
    fp32_path: Path,
    int8_path: Path,
    reader: PreprocessedImageReader,
    recipe: QuantizationRecipe = QuantizationRecipe(),
) -> Path:
    """Quantise ``fp32_path`` into ``int8_path`` (atomically); returns ``int8_path``.

    The FP32 model's metadata (weights provenance) is carried over, plus the recipe under
    ``quantization``.
    """
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    recipe = recipe.resolved()
    if not fp32_path.is_file():
        raise ExportError(f"{fp32_path} does not exist: run `resnet18-triton export` first")
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="resnet18-quantize-") as work:
        prepared = Path(work) / "prepared.onnx"
        quantized = Path(work) / "int8.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_optimization=False)
            quantize_static(
                str(prepared),
                str(quantized),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=recipe.per_channel,
                reduce_range=bool(recipe.reduce_range),
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CALIBRATION_METHODS[recipe.method],
                nodes_to_exclude=_float_nodes(prepared, recipe.quantize_head),
                extra_options={"CalibMaxIntermediateOutputs": _MAX_INTERMEDIATE_BATCHES},
            )
        except ExportError:
            raise
        except Exception as error:  # ORT's quantiser raises many types; the CLI needs one
            raise ExportError(f"ONNX Runtime quantisation failed: {error}") from error
        _copy_metadata(fp32_path, quantized, {QUANTIZATION_PARAMETER: recipe.to_json()})
        install_file_atomically(quantized, int8_path)
    return int8_path


def _float_nodes(path: Path, quantize_head: bool) -> list[str]:
    """Names of the nodes to keep in float: the normalisation prefix, every Softmax, and unless
    ``quantize_head`` the classifier head (Gemm/MatMul: ResNet-18 has exactly one, the fc)."""
    op_types = SOFTMAX_OPS if quantize_head else SOFTMAX_OPS + HEAD_OPS
    graph = onnx.load(str(path), load_external_data=False).graph
    nodes = prefix_nodes(graph) + [node for node in graph.node if node.op_type in op_types]
    if not all(node.name for node in nodes):  # nodes_to_exclude can only name named nodes
        raise ExportError(f"{path}: a node to keep float has no name; cannot exclude it")
    return [node.name for node in nodes]


def prefix_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes before the first ``Conv`` in the (topologically sorted) graph: the
    normalisation prefix. Empty when the graph has no Conv."""
    nodes = list(graph.node)
    first_conv = next((i for i, node in enumerate(nodes) if node.op_type == "Conv"), 0)
    return nodes[:first_conv]


def _copy_metadata(source: Path, target: Path, extra: dict[str, str]) -> None:
    metadata = {
        prop.key: prop.value
        for prop in onnx.load(str(source), load_external_data=False).metadata_props
    }
    metadata.update(extra)
    model = onnx.load(str(target))
    set_metadata(model, metadata)
    onnx.save(model, str(target))
