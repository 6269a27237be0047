"""How faithfully an INT8 model reproduces the FP32 model, and how fast each runs in-process.

Figures, on held-out images (never the calibration images):

* top-1 agreement: the share of images whose most probable class is the same;
* top-5 overlap: the mean share of the FP32 top-5 classes that are also in the INT8 top-5;
* probability difference: for each image the largest |p_fp32 - p_int8| over the classes (a float64
  softmax of each model's logits: what its own ``probabilities`` output computes, up to float32
  rounding, since quantisation never touches the Softmax node); the report gives the maximum and
  the mean of that over the images;
* model size in bytes of both files.

Top-1 agreement only means something when the FP32 model is confident: with random weights the
logits are nearly flat and any perturbation flips the top class, so measure on a trained model.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from resnet18_triton import contract

DEFAULT_MIN_AGREEMENT = 0.99
TOP_K = 5

# [N, classes] scores of N images; [N, 3, 224, 224] model inputs (the graphs take uint8 pixels).
Logits = npt.NDArray[np.floating[Any]]
Images = npt.NDArray[np.generic]


@dataclass(frozen=True)
class FidelityReport:
    num_images: int
    top1_agreement: float
    top5_overlap: float
    max_prob_diff: float
    mean_prob_diff: float
    fp32_bytes: int
    int8_bytes: int

    def passes(self, min_agreement: float = DEFAULT_MIN_AGREEMENT) -> bool:
        return self.top1_agreement >= min_agreement

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def forced_warning(self, min_agreement: float) -> str | None:
        """What to tell a person when the variant was written below the bar (``--force``)."""
        if self.passes(min_agreement):
            return None
        return (
            f"WARNING: written despite top-1 agreement {self.top1_agreement:.2%} < "
            f"{min_agreement:.2%} (--force)"
        )

    def table(self) -> str:
        """A Markdown table for people (the CLI prints it; docs/variants.md quotes one)."""
        rows = [
            ("held-out images", f"{self.num_images}"),
            ("top-1 agreement", f"{self.top1_agreement:.2%}"),
            ("top-5 overlap", f"{self.top5_overlap:.2%}"),
            ("max |probability difference|", f"{self.max_prob_diff:.4f}"),
            ("mean per-image max |probability difference|", f"{self.mean_prob_diff:.4f}"),
            (
                "model size FP32 / INT8",
                f"{self.fp32_bytes / 1e6:.1f} MB / {self.int8_bytes / 1e6:.1f} MB "
                f"({self.int8_bytes / self.fp32_bytes:.2f}x)",
            ),
        ]
        return figure_table(rows)


def figure_table(rows: list[tuple[str, str]]) -> str:
    """``(figure, value)`` rows as a two-column Markdown table, the figure column padded."""
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'figure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


def softmax(logits: Logits) -> npt.NDArray[np.float64]:
    """Row-wise softmax of [N, classes] logits, in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: npt.NDArray[np.float64] = exp / exp.sum(axis=1, keepdims=True)
    return probabilities


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def run_logits(model: ort.InferenceSession, images: Images, batch_size: int = 8) -> Logits:
    """Logits for preprocessed images [N, 3, 224, 224], run in batches."""
    outputs = [
        model.run([contract.ONNX_OUTPUT], {contract.ONNX_INPUT: images[i : i + batch_size]})[0]
        for i in range(0, len(images), batch_size)
    ]
    logits: Logits = np.concatenate(outputs)
    return logits


def compare_logits(
    fp32_logits: Logits, int8_logits: Logits, fp32_bytes: int = 0, int8_bytes: int = 0
) -> FidelityReport:
    """The fidelity figures for two [N, classes] logit arrays of the same images."""
    if fp32_logits.shape != int8_logits.shape or fp32_logits.ndim != 2 or not len(fp32_logits):
        raise ValueError(
            f"logit shapes differ or are empty: {fp32_logits.shape}, {int8_logits.shape}"
        )
    top1 = fp32_logits.argmax(1) == int8_logits.argmax(1)
    top5_a = np.argsort(-fp32_logits, axis=1)[:, :TOP_K]
    top5_b = np.argsort(-int8_logits, axis=1)[:, :TOP_K]
    overlap = [len(set(a) & set(b)) / TOP_K for a, b in zip(top5_a, top5_b, strict=True)]
    per_image = np.abs(softmax(fp32_logits) - softmax(int8_logits)).max(axis=1)
    return FidelityReport(
        num_images=len(fp32_logits),
        top1_agreement=float(top1.mean()),
        top5_overlap=float(np.mean(overlap)),
        max_prob_diff=float(per_image.max()),
        mean_prob_diff=float(per_image.mean()),
        fp32_bytes=fp32_bytes,
        int8_bytes=int8_bytes,
    )


def measure_fidelity(fp32_path: Path, int8_path: Path, images: Images) -> FidelityReport:
    """Run both models on the same preprocessed held-out images and compare."""
    fp32 = run_logits(session(fp32_path), images)
    int8 = run_logits(session(int8_path), images)
    return compare_logits(
        fp32, int8, Path(fp32_path).stat().st_size, Path(int8_path).stat().st_size
    )


@dataclass(frozen=True)
class SpeedFigure:
    model: str
    batch_size: int
    ms_per_image: float  # median over the timed runs


def measure_speed(
    paths: dict[str, Path],
    batch_sizes: tuple[int, ...] = (1, 8),
    threads: int = 0,
    seconds_per_case: float = 3.0,
    seed: int = 0,
    input_size: int = contract.IMAGE_SIZE,
) -> list[SpeedFigure]:
    """In-process ONNX Runtime ms/img (median) per model and batch size, measured interleaved
    (model A, model B, A, B, ...) so that noise from other processes hits both alike."""
    sessions = {name: session(path, threads) for name, path in paths.items()}
    rng = np.random.default_rng(seed)
    figures = []
    for batch_size in batch_sizes:
        batch = rng.integers(
            0, 256, (batch_size, contract.CHANNELS, input_size, input_size), dtype=np.uint8
        )
        times: dict[str, list[float]] = {name: [] for name in sessions}
        feeds = {contract.ONNX_INPUT: batch}
        for model in sessions.values():  # warm-up run, not timed
            model.run([contract.ONNX_OUTPUT], feeds)
        deadline = time.perf_counter() + seconds_per_case * len(sessions)
        while time.perf_counter() < deadline or min(len(t) for t in times.values()) < 3:
            for name, model in sessions.items():
                start = time.perf_counter()
                model.run([contract.ONNX_OUTPUT], feeds)
                times[name].append(time.perf_counter() - start)
        figures += [
            SpeedFigure(name, batch_size, 1000 * statistics.median(t) / batch_size)
            for name, t in times.items()
        ]
    return figures
