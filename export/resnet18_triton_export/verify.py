"""Check an exported ONNX file: valid ONNX, and ONNX Runtime reproduces PyTorch's logits.

Tolerance: by default the largest absolute logit difference may be 1e-3 (``DEFAULT_ATOL``).
Float32 ONNX Runtime vs PyTorch on CPU typically differs by ~1e-6 for ResNet-18, because the two
sum convolutions in different orders; 1e-3 leaves room for other CPUs and kernels while still
catching real export mistakes (wrong weights, a missing layer, training-mode BatchNorm), which
move logits by far more. Any top-1 disagreement fails regardless of the tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from resnet18_triton_client.contract import CHANNELS, IMAGE_SIZE, ONNX_INPUT, ONNX_OUTPUT
from resnet18_triton_export.errors import VerificationError

DEFAULT_ATOL = 1e-3
TOP_K = 5


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

    @property
    def passed(self) -> bool:
        """True when every top-1 class agrees and no logit differs by more than ``atol``."""
        return self.top1_agree == self.num_images and self.max_abs_diff <= self.atol

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
            f"top-5 agreement {self.top5_agree}/{self.num_images}."
        )


def verify_onnx(
    model: torch.nn.Module,
    onnx_path: Path,
    *,
    num_inputs: int = 4,
    batch_sizes: Sequence[int] = (1, 3),
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
) -> VerificationReport:
    """Compare ``onnx_path`` with ``model`` (put in eval mode) on ``num_inputs`` random batches.

    Input ``i`` has batch size ``batch_sizes[i % len(batch_sizes)]``, so several sizes exercise
    the dynamic batch axis. Raises VerificationError (carrying the report) on an invalid model,
    any top-1 disagreement or a logit difference above ``atol``.
    """
    if num_inputs < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError("verify_onnx needs num_inputs >= 1 and positive batch sizes")
    onnx_path = Path(onnx_path)
    _check_model(onnx_path)
    session = _session(onnx_path)
    sizes = tuple(batch_sizes[i % len(batch_sizes)] for i in range(num_inputs))
    model.eval()
    expected, actual = [], []
    for batch in _random_batches(sizes, seed):
        with torch.inference_mode():
            expected.append(model(batch).numpy())
        actual.append(session.run([ONNX_OUTPUT], {ONNX_INPUT: batch.numpy()})[0])
    report = _compare(onnx_path, sizes, atol, np.concatenate(expected), np.concatenate(actual))
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
    if inputs != [ONNX_INPUT] or outputs != [ONNX_OUTPUT]:
        raise VerificationError(
            f"{path} has inputs {inputs} and outputs {outputs}; the model repository expects "
            f"[{ONNX_INPUT!r}] and [{ONNX_OUTPUT!r}]"
        )
    return session


def _random_batches(sizes: Sequence[int], seed: int) -> list[torch.Tensor]:
    # Standard normal values look like normalised images (per-channel mean 0, std 1) to the model.
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(size, CHANNELS, IMAGE_SIZE, IMAGE_SIZE, generator=generator) for size in sizes
    ]


def _compare(
    onnx_path: Path,
    sizes: tuple[int, ...],
    atol: float,
    expected: np.ndarray,
    actual: np.ndarray,
) -> VerificationReport:
    """Figures for PyTorch (``expected``) vs ONNX Runtime (``actual``) logits, [images, classes]."""
    diff = np.abs(expected.astype(np.float64) - actual.astype(np.float64))
    top5_pairs = zip(_top_k(expected), _top_k(actual), strict=True)
    return VerificationReport(
        onnx_path=onnx_path,
        batch_sizes=sizes,
        atol=atol,
        num_images=expected.shape[0],
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        max_abs_logit=float(np.abs(expected).max()),
        top1_agree=int((expected.argmax(1) == actual.argmax(1)).sum()),
        top5_agree=sum(set(e) == set(a) for e, a in top5_pairs),
    )


def _top_k(logits: np.ndarray) -> np.ndarray:
    return np.argsort(-logits, axis=1)[:, :TOP_K]
