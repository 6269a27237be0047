"""Measure JPEG decoders against Pillow: pixel identity first, then speed.

A candidate may replace Pillow in the preprocessing only if its RGB pixels equal Pillow's on every
case, because the served tensor must stay bit-identical to the torchvision reference (which
decodes with Pillow). Cases: the JPEG samples, and generated 500x375 JPEGs with 4:2:0 and 4:4:4
chroma subsampling, progressive, grayscale, CMYK and an EXIF orientation. Speed: median decode
time per image, candidates interleaved with Pillow (A/B/A/B) so machine noise hits both.

    python -m benchmarks.decode_candidates [--samples tests/data/samples] [--repeats 200]

Candidates that are not installed are reported as such (simplejpeg: ``pip install simplejpeg``).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, features

from resnet18_triton.perf.images import gradient_image

SAMPLES = Path("tests") / "data" / "samples"  # the project's sample photos, from its root
Decoder = Callable[[bytes], np.ndarray]


def jpeg(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def cases(samples: Path) -> dict[str, bytes]:
    """Name -> JPEG bytes: the JPEGs in ``samples`` (if any) and the generated ones."""
    base = gradient_image(500, 375, seed=1)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the decoder's pixels are the stored, unrotated ones
    found = {path.name: path.read_bytes() for path in sorted(samples.glob("*.jpg"))}
    found.update(
        {
            "4:2:0": jpeg(base, subsampling=2),
            "4:4:4": jpeg(base, subsampling=0),
            "4:2:2": jpeg(base, subsampling=1),
            "progressive": jpeg(base, progressive=True),
            "grayscale": jpeg(base.convert("L")),
            "cmyk": jpeg(base.convert("CMYK")),
            "exif-rotated": jpeg(base, exif=exif.tobytes()),
            "2000x1500 4:2:0": jpeg(gradient_image(2000, 1500, seed=2)),
        }
    )
    return found


def pillow(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def candidates() -> dict[str, Decoder | str]:
    """Name -> decoder, or why it is unavailable."""
    found: dict[str, Decoder | str] = {}
    try:
        import simplejpeg

        found[f"simplejpeg {simplejpeg.__version__}"] = lambda data: simplejpeg.decode_jpeg(
            data, colorspace="RGB"
        )
    except ImportError:
        found["simplejpeg"] = "not installed (pip install simplejpeg)"
    return found


def identity(decoder: Decoder, data: bytes) -> str:
    expected = pillow(data)
    try:
        actual = decoder(data)
    except Exception as error:  # a refusal is a result: the candidate cannot serve this case
        return f"refused ({type(error).__name__}: {str(error)[:60]})"
    if actual.shape != expected.shape:
        return f"shape {actual.shape} vs {expected.shape}"
    differing = int((actual != expected).any(axis=-1).sum())
    if differing == 0:
        return "identical"
    largest = int(np.abs(actual.astype(int) - expected.astype(int)).max())
    return f"{differing} pixels differ (max {largest})"


def interleaved_ms(decoders: dict[str, Decoder], data: bytes, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in decoders}
    for _ in range(repeats):
        for name, decoder in decoders.items():
            start = time.perf_counter()
            decoder(data)
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--samples", type=Path, default=SAMPLES)
    options = parser.parse_args()
    repeats = options.repeats
    print(f"Pillow {Image.__version__}, libjpeg-turbo {features.version('libjpeg_turbo')}")
    for name, decoder in candidates().items():
        if isinstance(decoder, str):
            print(f"{name}: {decoder}")
            continue
        print(f"\n| case | {name} vs Pillow pixels | Pillow ms | {name} ms |\n|---|---|---|---|")
        for case, data in cases(options.samples).items():
            verdict = identity(decoder, data)
            speed = (
                interleaved_ms({"pillow": pillow, name: decoder}, data, repeats)
                if not verdict.startswith("refused")
                else {"pillow": float("nan"), name: float("nan")}
            )
            print(f"| {case} | {verdict} | {speed['pillow']:.2f} | {speed[name]:.2f} |")


if __name__ == "__main__":
    main()
