"""Check an exported ONNX file: valid ONNX, and ONNX Runtime reproduces PyTorch's outputs.

The file must have outputs ``[logits, probabilities]``; both are compared with PyTorch. Its input
is uint8 pixels normalised inside the graph (``export.onnx_export``); PyTorch gets the same pixels
normalised by torchvision's arithmetic with the same mean and std, so the prefix is checked too.

Logits: by default the largest absolute logit difference may be 1e-3 (``DEFAULT_ATOL``). Float32
ONNX Runtime vs PyTorch on CPU typically differs by ~1e-6 for ResNet-18, because the two sum
convolutions in different orders; 1e-3 leaves room for other CPUs and kernels while still catching
real export mistakes (wrong weights, a missing layer, training-mode BatchNorm), which move logits
by far more. Any top-1 disagreement fails regardless of the tolerance.

Probabilities: ONNX Runtime's ``probabilities`` output is compared with ``torch.softmax`` of
PyTorch's logits. Part of their difference is inherited from the logits: to first order
``dp_i = p_i (dl_i - sum_j p_j dl_j)``, so ``|dp_i| <= 2 p_i (1 - p_i) max|dl| <= max|dl| / 2``.
The tolerance is therefore 1e-6 (``DEFAULT_PROBABILITY_ATOL``, the softmax's own float32
rounding, and the tolerance the served answers are held to against the PyTorch reference) plus
half the measured max |logit difference|: larger logits, as with trained weights, move the
probabilities by more than a flat 1e-6 allows (the figures: docs/performance.md, "Figures behind
the code's contracts"). Every real softmax mistake (wrong axis, missing, applied to the wrong
tensor) is off by orders of magnitude more. Every row must also sum to 1
within 1e-5 (``SUM_ATOL``: float32 rounding over 1000 classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import torch

from resnet18_triton.contract import CHANNELS, IMAGE_SIZE, ONNX_INPUT, ONNX_OUTPUTS
from resnet18_triton.errors import VerificationError
from resnet18_triton.export.onnx_export import IMAGENET_MEAN, IMAGENET_STD, normalize

DEFAULT_ATOL = 1e-3
DEFAULT_PROBABILITY_ATOL = 1e-6
SUM_ATOL = 1e-5
TOP_K = 5

# [images, classes] logits or probabilities, from PyTorch or ONNX Runtime.
Scores = npt.NDArray[np.floating[Any]]


@dataclass(frozen=True)
class VerificationReport:
    """What ``verify_onnx`` measured; ``summary()`` is the text shown to people."""

    onnx_path: Path
    batch_sizes: tuple[int, ...]  # one entry per input, in the order they were run
    atol: float
    num_images: int
    max_abs_diff: float
    mean_abs_diff: float
    max_abs_logit: float  # scale of the logits, to judge the differences against
    top1_agree: int
    top5_agree: int  # images whose top-5 class sets are identical (order may differ on near-ties)
    # ONNX Runtime's probabilities output vs torch.softmax of PyTorch's logits.
    probability_atol: float
    max_abs_probability_diff: float
    max_row_sum_error: float  # largest |sum of a row of ONNX probabilities - 1|

    @property
    def probability_tolerance(self) -> float:
        """``probability_atol`` plus what the measured logit differences explain (module doc)."""
        return self.probability_atol + self.max_abs_diff / 2

    @property
    def passed(self) -> bool:
        """True when every top-1 class agrees, no logit differs by more than ``atol``, no
        probability by more than ``probability_tolerance``, and every row sums to 1 within
        ``SUM_ATOL``."""
        return (
            self.top1_agree == self.num_images
            and self.max_abs_diff <= self.atol
            and self.max_abs_probability_diff <= self.probability_tolerance
            and self.max_row_sum_error <= SUM_ATOL
        )

    def summary(self) -> str:
        """One paragraph with the figures, saying whether it passed."""
        verdict = "matches" if self.passed else "does NOT match"
        sizes = ", ".join(str(size) for size in self.batch_sizes)
        return (
            f"ONNX Runtime (CPUExecutionProvider) {verdict} PyTorch on {len(self.batch_sizes)} "
            f"seeded random inputs ({self.num_images} images, batch sizes {sizes}) for "
            f"{self.onnx_path}: max |logit difference| {self.max_abs_diff:.3g} (tolerance "
            f"{self.atol:.3g}; logits up to {self.max_abs_logit:.3g}), mean "
            f"{self.mean_abs_diff:.3g}; top-1 agreement {self.top1_agree}/{self.num_images}, "
            f"top-5 agreement {self.top5_agree}/{self.num_images}; max |probability difference| "
            f"vs torch.softmax {self.max_abs_probability_diff:.3g} (tolerance "
            f"{self.probability_tolerance:.3g} = {self.probability_atol:.3g} + half the max "
            f"|logit difference|), rows sum to 1 within {self.max_row_sum_error:.3g} "
            f"(tolerance {SUM_ATOL:.3g})."
        )


def verify_onnx(
    model: torch.nn.Module,
    onnx_path: Path,
    *,
    num_inputs: int = 4,
    batch_sizes: Sequence[int] = (1, 3),
    atol: float = DEFAULT_ATOL,
    probability_atol: float = DEFAULT_PROBABILITY_ATOL,
    seed: int = 0,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    input_size: int = IMAGE_SIZE,
) -> VerificationReport:
    """Compare ``onnx_path`` with ``model`` (put in eval mode) on ``num_inputs`` random batches
    of uint8 pixels, ``input_size`` x ``input_size``.

    ``model`` maps normalised images to logits; it gets the pixels normalised with ``mean`` and
    ``std`` (those the file was exported with), the file gets the pixels. Input ``i`` has batch size
    ``batch_sizes[i % len(batch_sizes)]``, so several sizes exercise the dynamic batch axis.
    Raises VerificationError (carrying the report) on an invalid model, any top-1 disagreement, a
    logit difference above ``atol``, a probability difference (vs ``torch.softmax`` of the
    PyTorch logits) above ``probability_atol`` plus half the max logit difference, or a
    probability row not summing to 1.
    """
    if num_inputs < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError("verify_onnx needs num_inputs >= 1 and positive batch sizes")
    onnx_path = Path(onnx_path)
    _check_model(onnx_path)
    session = _session(onnx_path)
    sizes = tuple(batch_sizes[i % len(batch_sizes)] for i in range(num_inputs))
    model.eval()
    mean_tensor, std_tensor = (torch.tensor(v).reshape(1, -1, 1, 1) for v in (mean, std))
    expected, actual = [], []
    for batch in _random_batches(sizes, seed, input_size):
        with torch.inference_mode():
            logits = model(normalize(batch, mean_tensor, std_tensor))
            expected.append([logits.numpy(), torch.softmax(logits, dim=1).numpy()])
        actual.append(session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: batch.numpy()}))
    report = _compare(onnx_path, sizes, atol, probability_atol, _joined(expected), _joined(actual))
    if not report.passed:
        raise VerificationError(report.summary(), report)
    return report


def _check_model(path: Path) -> None:
    try:
        # The path form (not a loaded proto) also works for models over protobuf's 2 GB limit.
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, OSError) as error:
        raise VerificationError(f"{path} is not a valid ONNX model: {error}") from error


def _session(path: Path) -> ort.InferenceSession:
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's pybind errors share no useful base class
        raise VerificationError(f"ONNX Runtime cannot load {path}: {error}") from error
    inputs = [node.name for node in session.get_inputs()]
    outputs = [node.name for node in session.get_outputs()]
    if inputs != [ONNX_INPUT] or outputs != list(ONNX_OUTPUTS):
        raise VerificationError(
            f"{path} has inputs {inputs} and outputs {outputs}; the model repository expects "
            f"{[ONNX_INPUT]} and {list(ONNX_OUTPUTS)}"
        )
    return session


def _random_batches(
    sizes: Sequence[int], seed: int, input_size: int = IMAGE_SIZE
) -> list[torch.Tensor]:
    # Uniform pixels normalise to values of about -2..2.6, the range of real normalised images.
    generator = torch.Generator().manual_seed(seed)
    shape = (CHANNELS, input_size, input_size)
    return [
        torch.randint(0, 256, (size, *shape), dtype=torch.uint8, generator=generator)
        for size in sizes
    ]


def _joined(batches: list[list[Scores]]) -> list[Scores]:
    """[logits, probabilities] of each batch -> [all logits, all probabilities]."""
    return [np.concatenate(parts) for parts in zip(*batches, strict=True)]


def _abs_diff(a: Scores, b: Scores) -> npt.NDArray[np.float64]:
    difference: npt.NDArray[np.float64] = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return difference


def _compare(
    onnx_path: Path,
    sizes: tuple[int, ...],
    atol: float,
    probability_atol: float,
    expected: list[Scores],
    actual: list[Scores],
) -> VerificationReport:
    """Figures for PyTorch (``expected``) vs ONNX Runtime (``actual``): each is
    [logits, probabilities], both [images, classes]."""
    (expected_logits, expected_probabilities), (logits, probabilities) = expected, actual
    diff = _abs_diff(expected_logits, logits)
    row_sums = probabilities.astype(np.float64).sum(axis=1)
    top5_pairs = zip(_top_k(expected_logits), _top_k(logits), strict=True)
    return VerificationReport(
        onnx_path=onnx_path,
        batch_sizes=sizes,
        atol=atol,
        num_images=expected_logits.shape[0],
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        max_abs_logit=float(np.abs(expected_logits).max()),
        top1_agree=int((expected_logits.argmax(1) == logits.argmax(1)).sum()),
        top5_agree=sum(set(e) == set(a) for e, a in top5_pairs),
        probability_atol=probability_atol,
        max_abs_probability_diff=float(_abs_diff(expected_probabilities, probabilities).max()),
        max_row_sum_error=float(np.abs(row_sums - 1.0).max()),
    )


def _top_k(logits: Scores) -> npt.NDArray[np.intp]:
    return np.argsort(-logits, axis=1)[:, :TOP_K]
