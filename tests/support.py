"""Helpers shared by unit and integration tests: test images, module loading, the reference."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import numpy as np
import pytest

from resnet18_triton.perf.images import encode, gradient_image
from resnet18_triton.repository.layout import load_model_module, python_model_source

__all__ = ["encode", "gradient_image"]  # re-exported: tests import them from here

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = PROJECT_ROOT / "tests" / "data" / "samples"
SAMPLE_FILES = sorted(p for p in SAMPLES_DIR.iterdir() if p.suffix in (".png", ".jpg"))

# Served probabilities vs PyTorch (same weights, torchvision transforms, softmax). Preprocessing is
# bit-identical (same Pillow), so what remains is ONNX Runtime vs PyTorch float rounding: logits
# differ by ~3e-6, probabilities by ~1e-8. 1e-6 leaves room and still catches any real change
# (random-weight probability vectors of different images are ~1e-3 apart).
PROBABILITY_ATOL = 1e-6
LOGIT_ATOL = 1e-3


def tree_snapshot(root: Path, directories: bool = True) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root``, and "dir" for every directory
    (unless ``directories`` is False): equal snapshots mean a byte-identical tree."""
    return {
        str(path.relative_to(root)): (
            "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        )
        for path in sorted(root.rglob("*"))
        if directories or path.is_file()
    }


def tree_digest(repo: Path, models: tuple[str, ...]) -> dict[str, str]:
    """Relative path -> SHA-256 of every file of ``models`` in ``repo``."""
    return {
        f"{model}/{path}": digest
        for model in models
        for path, digest in tree_snapshot(repo / model, directories=False).items()
    }


@dataclass(frozen=True)
class DigitsClassifier:
    """The custom classifier of the integration session's repository and what it was exported
    from."""

    name: str
    checkpoint: Path
    labels: Path
    model: Any
    splits: dict[str, Any]
    accuracy: float
    # sha256 of every file of the default classifier's models, before and after its export.
    default_before: dict[str, str]
    default_after: dict[str, str]


def classify_ensemble(url: str, model: str, images: list[bytes]) -> np.ndarray:
    """PROBABILITIES [N, classes] of one request carrying ``images`` to ensemble-like ``model``."""
    import tritonclient.http as httpclient

    from resnet18_triton import contract

    client = httpclient.InferenceServerClient(url, network_timeout=120.0)
    try:
        tensor = httpclient.InferInput(contract.ENSEMBLE_INPUT, [len(images), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(images, dtype=object).reshape(-1, 1))
        return client.infer(model, [tensor]).as_numpy(contract.ENSEMBLE_OUTPUT)
    finally:
        client.close()


def load_module(path: Path, name: str) -> ModuleType:
    """Import a file that is not part of a package (the Triton models' model.py)."""
    return load_model_module(path, name)


def preprocess_module() -> ModuleType:
    return load_module(python_model_source("preprocess"), "preprocess_model")


def normalised(
    pixels: np.ndarray,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> np.ndarray:
    """uint8 pixels [..., 3, H, W] -> the float32 tensor the exported graph's prefix computes
    (torchvision's ToTensor + Normalize arithmetic; ImageNet statistics unless given)."""
    import torch

    from resnet18_triton.export.onnx_export import IMAGENET_MEAN, IMAGENET_STD, Normalized

    batch = torch.from_numpy(np.ascontiguousarray(pixels))
    prefix = Normalized(torch.nn.Identity(), mean or IMAGENET_MEAN, std or IMAGENET_STD)
    with torch.inference_mode():
        return prefix(batch.reshape(-1, *batch.shape[-3:])).reshape(batch.shape).numpy()


def varied_images() -> dict[str, bytes]:
    """Encoded images of every kind the preprocessing must turn into RGB, named by what they are."""
    from PIL import Image

    base = gradient_image(500, 375, seed=1)
    images = {path.name: path.read_bytes() for path in SAMPLE_FILES}
    images.update(
        {
            "gradient_500x375.jpg": encode(base, "JPEG", quality=90),
            "gradient_500x375.png": encode(base, "PNG"),
            "grayscale_L.jpg": encode(base.convert("L"), "JPEG"),
            "rgba.png": encode(_with_alpha(base), "PNG"),
            "palette_P.png": encode(base.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
            "cmyk.jpg": encode(base.convert("CMYK"), "JPEG"),
            "tall_300x900.jpg": encode(gradient_image(300, 900, seed=2), "JPEG"),
            "tiny_1x1.png": encode(gradient_image(1, 1, seed=3), "PNG"),
            "small_31x17.png": encode(gradient_image(31, 17, seed=4), "PNG"),
            "exact_256x256.png": encode(gradient_image(256, 256, seed=5), "PNG"),
            "large_3000x2000.jpg": encode(gradient_image(3000, 2000, seed=6), "JPEG", quality=85),
            "bitmap.bmp": encode(gradient_image(120, 90, seed=7), "BMP"),
        }
    )
    return images


def _with_alpha(image):
    rgba = image.convert("RGBA")
    rgba.putalpha(128)
    return rgba


def reference_rgb(data: bytes):
    """The reference's decoding, with the two decisions the served preprocessing makes too
    (docs/reliability.md): EXIF orientation honoured, 16-bit grayscale scaled to 8 bits (Pillow's
    ``convert("RGB")`` would clip it to white). Everything else is plain ``convert("RGB")``."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if image.mode.startswith("I;16") or image.mode == "I":
        image = Image.fromarray(
            (np.asarray(image, dtype=np.int64) // 256).clip(0, 255).astype(np.uint8)
        )
    return image.convert("RGB")


def torchvision_transform(preprocessing):
    """torchvision's transform for export ``Preprocessing`` settings, built from torchvision's own
    classes (not the server's code): Resize(+CenterCrop) or Resize((S, S)), ToTensor, Normalize."""
    from torchvision import transforms

    mode = {
        "bilinear": transforms.InterpolationMode.BILINEAR,
        "bicubic": transforms.InterpolationMode.BICUBIC,
    }[preprocessing.interpolation]
    side = preprocessing.input_size
    if preprocessing.straight:
        resize = [transforms.Resize((side, side), interpolation=mode, antialias=True)]
    else:
        resize = [
            transforms.Resize(preprocessing.resize_size, interpolation=mode, antialias=True),
            transforms.CenterCrop(side),
        ]
    normalize = transforms.Normalize(preprocessing.mean, preprocessing.std)
    return transforms.Compose([*resize, transforms.ToTensor(), normalize])


class TorchReference:
    """The pure PyTorch answer: torchvision transforms + the same ResNet-18 weights + softmax.

    Default: seeded random ImageNet-shaped weights with torchvision's ImageNet transform;
    ``model`` and ``preprocessing`` give any other classifier and its configured transform.
    """

    def __init__(self, seed: int = 0, model=None, preprocessing=None) -> None:
        import torch
        from torchvision.models import ResNet18_Weights

        from resnet18_triton.export.weights import load_resnet18

        self.torch = torch
        if model is None:
            self.model, self.provenance = load_resnet18("random", seed=seed)
        else:
            self.model, self.provenance = model.eval(), None
        self.transform = (
            ResNet18_Weights.IMAGENET1K_V1.transforms()
            if preprocessing is None
            else torchvision_transform(preprocessing)
        )

    def tensor(self, data: bytes):
        return self.transform(reference_rgb(data))

    def pixels(self, data: bytes) -> np.ndarray:
        """uint8 [3, 224, 224]: torchvision's resize and centre crop, before ToTensor/Normalize
        (what the raw model takes)."""
        from torchvision import transforms

        crop = transforms.CenterCrop(224)(transforms.Resize(256)(reference_rgb(data)))
        return np.ascontiguousarray(np.asarray(crop, dtype=np.uint8).transpose(2, 0, 1))

    def logits(self, batch) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(batch).numpy()

    def probabilities(self, images: list[bytes]) -> np.ndarray:
        batch = self.torch.stack([self.tensor(data) for data in images])
        with self.torch.inference_mode():
            return self.torch.softmax(self.model(batch), dim=1).numpy()


@contextlib.contextmanager
def serve_process(repository: Path, log: Path, *extra: str) -> Iterator[str]:
    """``resnet18-triton serve`` with its default options (allocator, models, watchdog) on free
    loopback ports, its output in ``log``; yields its URL once ready, SIGTERM on exit.

    Fails with the log's tail when it exits, or is not ready within ``SERVE_READY_TIMEOUT_S``.
    """
    from resnet18_triton.perf.harness import serve_port_arguments
    from resnet18_triton.server.embedded import free_port

    port = free_port()
    command = [*CLI, "serve", "--repo", str(repository), *serve_port_arguments(port), *extra]
    url = f"127.0.0.1:{port}"
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVE_READY_TIMEOUT_S
        while not _is_ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-6000:]
                raise AssertionError(f"serve is not ready (exit {process.poll()}):\n{tail}")
            time.sleep(0.3)
        yield url
    finally:
        stop_process(process)


SERVE_READY_TIMEOUT_S = 300
CLI = [sys.executable, "-m", "resnet18_triton.cli"]


def run_cli(
    *args: str, timeout_s: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``resnet18-triton ARGS`` as a user runs it (a subprocess of this interpreter, ``env``
    or this process's environment), its output captured as text."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout_s, env=env)


@dataclass(frozen=True)
class Ran:
    """How a command run in this process ended, in ``subprocess.CompletedProcess``'s terms."""

    returncode: int
    stdout: str
    stderr: str


def invoke_cli(*args: str) -> Ran:
    """``resnet18-triton ARGS`` through its real entry point (``cli.main``, which maps errors to
    messages and exit codes) in this process, with click's ``CliRunner`` holding its output.
    Saves the seconds a subprocess spends importing torch; a command a test must kill needs
    ``run_cli``."""
    from click.testing import CliRunner

    from resnet18_triton.cli import main

    code: int | str | None = 0
    with CliRunner().isolation() as (stdout, stderr, _):
        try:
            main(list(args))
        except SystemExit as exited:
            code = exited.code
    return Ran(int(code or 0), stdout.getvalue().decode(), stderr.getvalue().decode())


def missing(message: str) -> NoReturn:
    """What a test needs is not installed (``message`` says how to install it): fail in CI (``$CI``
    set), where everything must be, and skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def stop_process(
    process: subprocess.Popen[Any], signum: int = signal.SIGTERM, timeout_s: float = 60
) -> None:
    """Send ``signum`` and wait up to ``timeout_s`` for ``process`` to exit; kill it if it has
    not, so that no test leaves a process behind."""
    process.send_signal(signum)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


def _is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False
