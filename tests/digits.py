"""A ResNet-18 whose answers mean something, for INT8 fidelity tests (unit and integration).

A seeded random ResNet-18 has nearly flat logits, so INT8 "agreement" with it measures noise. Here
the frozen random backbone's 512 features feed a logistic regression fitted on scikit-learn's
bundled handwritten digits (8x8, upscaled, passed through the served preprocessing), which becomes
the ``fc`` layer: rows 0-9 are the digits, the other 990 classes get a bias far below. Its FP32
accuracy on held-out digits is ~92% (chance 10%), so its top-1 answers are real decisions.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
from pathlib import Path

import numpy as np
import pytest

sklearn_datasets = pytest.importorskip("sklearn.datasets")

from click.testing import CliRunner  # noqa: E402

from resnet18_triton.export import quantize as q  # noqa: E402
from tests.support import normalised  # noqa: E402

DIGITS_SEED = 0
TRAIN, CALIBRATION, HELD_OUT = 200, 48, 100
OTHER_CLASS_BIAS = -50.0


def _digit_png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    gray = (pixels * (255 / 16)).astype(np.uint8)
    image = Image.fromarray(gray, "L").resize((64, 64), Image.Resampling.BILINEAR).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@functools.lru_cache(maxsize=1)
def digits_model():
    """(model, splits, held-out accuracy): a seeded random ResNet-18 whose fc is fitted on digits.

    ``splits`` maps "calibration" and "held_out" to (list of PNG bytes, labels); the training
    digits are used for nothing else.
    """
    import torch
    from sklearn.linear_model import LogisticRegression

    from resnet18_triton.export.weights import load_resnet18

    digits = sklearn_datasets.load_digits()
    order = np.random.default_rng(DIGITS_SEED).permutation(len(digits.images))
    ids = {
        "train": order[:TRAIN],
        "calibration": order[TRAIN : TRAIN + CALIBRATION],
        "held_out": order[TRAIN + CALIBRATION : TRAIN + CALIBRATION + HELD_OUT],
    }
    pngs = {name: [_digit_png(digits.images[i]) for i in idx] for name, idx in ids.items()}
    preprocess = q.load_preprocess_module()
    model, _ = load_resnet18("random", seed=DIGITS_SEED)
    fc, model.fc = model.fc, torch.nn.Identity()

    def features(name: str) -> np.ndarray:
        batch = normalised(np.stack([preprocess.preprocess_bytes(data) for data in pngs[name]]))
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).numpy().astype(np.float64)

    train = features("train")
    mean, std = train.mean(0), train.std(0) + 1e-6
    head = LogisticRegression(C=1.0, max_iter=3000).fit(
        (train - mean) / std, digits.target[ids["train"]]
    )
    weight = head.coef_ / std  # fold the standardisation into the linear layer
    bias = head.intercept_ - weight @ mean
    with torch.no_grad():
        fc.weight.zero_()
        fc.bias.fill_(OTHER_CLASS_BIAS)
        fc.weight[:10] = torch.from_numpy(weight).float()
        fc.bias[:10] = torch.from_numpy(bias).float()
    model.fc = fc
    model.eval()
    held_out = features("held_out")  # logits of the whole model now that fc is back
    accuracy = float((held_out.argmax(1) == digits.target[ids["held_out"]]).mean())
    splits = {name: (pngs[name], digits.target[ids[name]]) for name in ("calibration", "held_out")}
    return model, splits, accuracy


def write_images(folder: Path, images: list[bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, data in enumerate(images):
        (folder / f"digit_{index:03d}.png").write_bytes(data)
    return folder


def export_repository(
    model, repo: Path, name: str | None = None, fused: bool = False, **settings: object
) -> Path:
    """The digits model through the export pipeline (verified like any export) into ``repo``, as
    classifier ``name`` (default: the default classifier); with ``fused`` as ``export --fused``."""
    from resnet18_triton.export import pipeline
    from resnet18_triton.export.weights import Provenance
    from resnet18_triton.repository.configs.settings import ServingSettings

    request = pipeline.ExportRequest(
        repository=repo, settings=ServingSettings(**settings), fused=fused
    )
    if name is not None:
        request = dataclasses.replace(request, name=name)
    loaded = pipeline.LoadedModel(model, Provenance("file", path="digits-fitted"))
    return pipeline.export_repository(request, loaded).repository


def digits_int8_repository(tmp_path: Path, **settings: object) -> tuple[Path, dict]:
    """Export the digits model and run the real ``quantize`` command on it."""
    from resnet18_triton.export.cli.quantize import quantize

    model, splits, _ = digits_model()
    repo = export_repository(model, tmp_path / "repo", **settings)
    calibration = write_images(tmp_path / "calibration", splits["calibration"][0])
    # 99% (the default) is what this machine measures; 97% leaves room for CPUs whose INT8
    # kernels differ (without VNNI, reduce_range turns on and weights get 7 bits).
    options = ["--calibration-images", str(calibration), "--min-agreement", "0.97"]
    return repo, _write_variant(quantize, repo, splits, tmp_path / "report.json", options)


def _write_variant(command, repo: Path, splits: dict, report: Path, options: list[str]) -> dict:
    """Run a variant's writer command on ``repo``, its fidelity judged on the held-out digits
    (written beside ``report``); its JSON report."""
    held_out = write_images(report.parent / "held_out", splits["held_out"][0])
    arguments = ["--repo", str(repo), *options, "--eval-images", str(held_out)]
    result = CliRunner().invoke(
        command, [*arguments, "--report", str(report)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return json.loads(report.read_text())


# The custom classifier: a 10-class head, its own preprocessing (resize straight to 96x96, mean and
# std 0.5), saved as a Lightning checkpoint (``model.`` prefixes under ``state_dict``).
CUSTOM_INPUT_SIZE = 96
DIGIT_LABELS = tuple(f"digit {digit}" for digit in range(10))
# Divides the fitted head's logits (spread ~7 -> ~0.35), see custom_digits_model.
CUSTOM_HEAD_TEMPERATURE = 20.0


def custom_preprocessing():
    from resnet18_triton.repository.classifier import RESIZE_STRAIGHT, Preprocessing

    return Preprocessing(
        resize_size=RESIZE_STRAIGHT,
        input_size=CUSTOM_INPUT_SIZE,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )


def custom_export_options() -> list[str]:
    """The ``export`` options that give a classifier ``custom_preprocessing()``."""
    preprocessing = custom_preprocessing()
    return [
        "--resize-straight",
        "--input-size", str(preprocessing.input_size),
        "--mean", ",".join(str(value) for value in preprocessing.mean),
        "--std", ",".join(str(value) for value in preprocessing.std),
    ]  # fmt: skip


@functools.lru_cache(maxsize=1)
def custom_digits_model():
    """(model, splits, held-out accuracy) of a 10-class ResNet-18 fitted on digits through the
    torchvision transform of ``custom_preprocessing`` (the tests' reference, not the server's
    code). ``splits`` as in ``digits_model``."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from torchvision.models import resnet18

    from tests.support import reference_rgb, torchvision_transform

    digits = sklearn_datasets.load_digits()
    order = np.random.default_rng(DIGITS_SEED + 1).permutation(len(digits.images))
    ids = {
        "train": order[:TRAIN],
        "calibration": order[TRAIN : TRAIN + CALIBRATION],
        "held_out": order[TRAIN + CALIBRATION : TRAIN + CALIBRATION + HELD_OUT],
    }
    pngs = {name: [_digit_png(digits.images[i]) for i in idx] for name, idx in ids.items()}
    transform = torchvision_transform(custom_preprocessing())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DIGITS_SEED)
        model = resnet18(weights=None, num_classes=10).eval()
    fc, model.fc = model.fc, torch.nn.Identity()

    def run(name: str) -> np.ndarray:
        batch = torch.stack([transform(reference_rgb(data)) for data in pngs[name]])
        with torch.inference_mode():
            return model(batch).numpy().astype(np.float64)

    train = run("train")
    # A floor under the per-feature std keeps the folded weights small (near-constant features
    # would otherwise get weights of ~175).
    mean = train.mean(0)
    std = train.std(0) + train.std(0).mean()
    head = LogisticRegression(C=0.1, max_iter=3000).fit(
        (train - mean) / std, digits.target[ids["train"]]
    )
    # Fold the standardisation into the linear layer, and temper it (argmax, hence accuracy, is
    # unchanged): ONNX Runtime's and PyTorch's features agree to ~1e-6 (a few float32 ulps), but
    # 512 of them summed by the untempered head move logits by ~3e-5, probabilities by up to 6e-6.
    weight = head.coef_ / std / CUSTOM_HEAD_TEMPERATURE
    bias = (head.intercept_ - head.coef_ / std @ mean) / CUSTOM_HEAD_TEMPERATURE
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(weight).float())
        fc.bias.copy_(torch.from_numpy(bias).float())
    model.fc = fc
    held_out = run("held_out")
    accuracy = float((held_out.argmax(1) == digits.target[ids["held_out"]]).mean())
    splits = {name: (pngs[name], digits.target[ids[name]]) for name in ("calibration", "held_out")}
    return model, splits, accuracy


def save_lightning_checkpoint(model, path: Path) -> Path:
    """``{"state_dict": {"model.conv1.weight": ...}, ...}`` as a LightningModule with a ``model``
    attribute saves it."""
    import torch

    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    torch.save({"epoch": 3, "global_step": 120, "state_dict": state}, path)
    return path


def write_digit_labels(path: Path) -> Path:
    path.write_text("".join(f"{label}\n" for label in DIGIT_LABELS))
    return path
