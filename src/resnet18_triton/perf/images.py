"""Deterministic test images: JPEG sets for the benchmarks (typical 500x375 photos and
12-megapixel ones), distinct small images for load and soak runs, and a large noisy PNG for
floods.

The pixels are smooth gradients plus noise (seeded), so the files compress like photographs
(their sizes: docs/performance.md, "Figures behind the code's contracts") and decoding costs what
a real photo costs.
Generated sets are cached by name in the target folder, so repeated runs reuse them.
Pillow (the ``export``/``server`` extras) is imported only when an image is made.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

from resnet18_triton.files import image_files, write_bytes_atomically

TYPICAL_SIZE = (500, 375)
LARGE_SIZE = (4000, 3000)  # 12 megapixels


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """A textured RGB PIL image, distinct per seed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = 500.0 / max(width, height)  # same structure at every resolution
    channels = []
    for _ in range(3):
        fx, fy = rng.uniform(0.005, 0.05, size=2) * scale
        phase = rng.uniform(0, 6.28)
        channels.append(127 + 110 * np.sin(fx * x + fy * y + phase))
    pixels = np.stack(channels, axis=-1)
    pixels += rng.normal(0, 10, size=(height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def gradient_image(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic, textured RGB PIL image (distinct per seed) that compresses like a photo."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6.28, size=3)
    freq = rng.uniform(0.005, 0.05, size=3)
    channels = [127 + 120 * np.sin(freq[c] * (x + 0.7 * y) + phase[c]) for c in range(3)]
    noise = rng.normal(0, 12, size=(height, width, 3))
    pixels = np.clip(np.stack(channels, axis=-1) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def encode(image: Image.Image, fmt: str, **save_args: object) -> bytes:
    """``image`` saved in format ``fmt`` ("JPEG", "PNG", ...), as bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def noisy_png(width: int = 1600, height: int = 1420, seed: int = 0) -> bytes:
    """A large PNG that does not compress (uniform noise): about 6.8 MB at the default size, the
    "large photo" of a flood."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "PNG", compress_level=1)


def distinct_jpegs(count: int, seed: int = 1000) -> list[bytes]:
    """``count`` small JPEGs of varied sizes (160-244 x 120-170), each a different picture, so
    every image of a run has its own answer."""
    return [
        encode(gradient_image(160 + 7 * (i % 13), 120 + 5 * (i % 11), seed=seed + i), "JPEG")
        for i in range(count)
    ]


def jpeg_bytes(width: int, height: int, seed: int, quality: int = 90) -> bytes:
    """A ``photo_like`` picture as JPEG bytes."""
    return encode(photo_like(width, height, seed), "JPEG", quality=quality)


def jpeg_set(folder: Path, size: tuple[int, int], count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs of ``size`` in ``folder`` (created once, then reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    paths = []
    for index in range(count):
        path = folder / f"photo_{width}x{height}_{seed + index:03d}.jpg"
        if not path.is_file():
            write_bytes_atomically(path, jpeg_bytes(width, height, seed + index))
        paths.append(path)
    return paths


def read_folder(folder: Path, limit: int | None = None) -> list[Path]:
    """Image files of a folder (``resnet18_triton.files.image_files``: sorted, non-recursive),
    the first ``limit`` of them when given."""
    paths = image_files(Path(folder))
    return paths[:limit] if limit else paths
