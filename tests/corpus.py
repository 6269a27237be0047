"""The bad-input corpus, generated (deterministically) rather than committed.

Each entry is one input of one *class* (empty bytes, random bytes, truncated JPEG, ...) with what
the server must do with it:

- ``expect=GOOD``: classified, and the answer equals the PyTorch reference (``tests/support.py``),
- ``expect=<regex>``: refused with HTTP 400 whose message matches the regex (names the problem).

Used by ``tests/integration/test_reliability_corpus.py`` (which also writes it to disk for the
command-line client) and counted per class in ``docs/reliability.md``. Run this file to write the
corpus to a directory: ``python -m tests.corpus OUT_DIR``.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.support import encode, gradient_image

GOOD = "good"

# What the preprocessing says (model_repository/preprocess/1/model.py); one regex per failure kind.
NOT_AN_IMAGE = r"cannot identify an image"
TRUNCATED = r"(corrupt or truncated|truncated|cannot identify an image)"
TOO_MANY_PIXELS = r"image too large: .*pixels"
TOO_MANY_BYTES = r"image too large: \d+ bytes exceeds the limit"
EMPTY = r"empty image"
TOO_ELONGATED = r"image too elongated: \d+x\d+ has an aspect ratio of \d+:1, over the limit"


def format_refused(name: str) -> str:
    """The refusal of a format outside the allow-list, naming it."""
    return rf"image format {name} is not accepted"


@dataclass(frozen=True)
class Case:
    name: str  # a file name, with an extension that fits the content
    kind: str  # the class of bad input it belongs to (docs/reliability.md)
    data: bytes
    expect: str  # GOOD, or a regex the 400 message must match

    @property
    def good(self) -> bool:
        return self.expect == GOOD


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height RGB pixels, followed by a few bytes of IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def jpeg_bomb(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 frame header is rewritten to claim width x height pixels."""
    data = bytearray(encode(gradient_image(64, 64, seed=40), "JPEG", quality=80))
    sof = data.find(b"\xff\xc0")
    assert sof > 0, "baseline JPEG without SOF0"
    # FFC0, length (2), precision (1), height (2), width (2)
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def sixteen_bit_png(width: int = 96, height: int = 80) -> bytes:
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    pixels = ((x * 677 + y * 131) % 65536).astype(np.uint16)
    return encode(Image.fromarray(pixels), "PNG")


def exif_rotated_jpeg(orientation: int, seed: int) -> bytes:
    """A landscape JPEG carrying an EXIF Orientation tag (6 = the camera was turned 90 degrees)."""
    image = gradient_image(320, 200, seed=seed)
    exif = image.getexif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=90, exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [gradient_image(120, 90, seed=50 + i).convert("P") for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0
    )
    return buffer.getvalue()


def animated_webp() -> bytes:
    frames = [gradient_image(120, 90, seed=60 + i) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def strip_png(width: int, height: int) -> bytes:
    """A real, fully decodable PNG of one flat colour: tiny on disk, huge once resized."""
    from PIL import Image

    return encode(Image.new("RGB", (width, height), (90, 140, 200)), "PNG")


def psd_header() -> bytes:
    """A Photoshop file's header (Pillow reads PSD but cannot write it)."""
    return b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 64, 64, 8, 3) + b"\x00" * 64


def foreign_formats() -> list[Case]:
    """Formats Pillow reads or knows that are not on the allow-list: refused by name, undecoded."""
    base = gradient_image(64, 48, seed=80)
    encoded = {
        fmt: encode(base, fmt)
        for fmt in ("EPS", "PDF", "ICO", "PPM", "PCX", "SGI", "DDS", "JPEG2000", "QOI")
    }
    cases = [
        Case(f"format.{fmt.lower()}.jpg", "format outside the allow-list", data, pattern)
        for fmt, data in encoded.items()
        for pattern in [format_refused(fmt)]
    ]
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>'
    cases += [
        Case(
            "format.psd.png", "format outside the allow-list", psd_header(), format_refused("PSD")
        ),
        Case("format.svg.png", "format outside the allow-list", svg, format_refused("SVG")),
        # Header only: Pillow's ICNS writer emits every icon size (over 1 MB).
        Case(
            "format.icns.png",
            "format outside the allow-list",
            b"icns" + struct.pack(">I", 8),
            format_refused("ICNS"),
        ),
        Case(
            "format.xbm.png",
            "format outside the allow-list",
            encode(base.convert("1"), "XBM"),
            format_refused("XBM"),
        ),
    ]
    return cases


def extreme_shapes() -> list[Case]:
    """Aspect ratios far beyond any photo, all under the pixel limit: refused before decoding."""
    return [
        Case(f"strip_{w}x{h}.png", "extreme aspect ratio", strip_png(w, h), TOO_ELONGATED)
        for w, h in ((100_000, 100), (100, 100_000), (400_000, 60), (3_000_000, 10))
    ]


def build_corpus() -> list[Case]:
    """Every case, in a fixed order: about 70 inputs, about 1 MB in total."""
    from PIL import Image

    base = gradient_image(300, 220, seed=21)
    jpeg = encode(base, "JPEG", quality=90)
    png = encode(base, "PNG")
    rng = np.random.default_rng(4)
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    la = base.convert("LA")
    cases = [
        Case("empty.jpg", "empty bytes", b"", EMPTY),
        *[
            Case(f"random_{size}.jpg", "random bytes", rng.bytes(size), NOT_AN_IMAGE)
            for size in (1, 100, 10_000)
        ],
        Case("text.txt.jpg", "text and HTML", b"just some text, not an image\n", NOT_AN_IMAGE),
        Case(
            "page.html.png",
            "text and HTML",
            b"<!doctype html><html><body>hi</body></html>",
            NOT_AN_IMAGE,
        ),
        Case("json.jpg", "text and HTML", b'{"image": "cat.jpg"}', NOT_AN_IMAGE),
        Case(
            "drawing.svg.png",
            "text and HTML",
            b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
            format_refused("SVG"),
        ),
        *[
            Case(f"truncated_{cut}.jpg", "truncated JPEG", jpeg[:cut], TRUNCATED)
            for cut in (2, 20, 300, len(jpeg) // 2)
        ],
        *[
            Case(f"truncated_{cut}.png", "truncated PNG", png[:cut], TRUNCATED)
            for cut in (8, 40, 200, len(png) // 2)
        ],
        Case("pixel_1x1.png", "1x1 image", encode(gradient_image(1, 1, seed=22), "PNG"), GOOD),
        Case("pixel_1x1.jpg", "1x1 image", encode(gradient_image(1, 1, seed=23), "JPEG"), GOOD),
        Case("gray16.png", "16-bit PNG", sixteen_bit_png(), GOOD),
        Case("rgba.png", "RGBA, LA, palette, CMYK", encode(rgba, "PNG"), GOOD),
        Case("la.png", "RGBA, LA, palette, CMYK", encode(la, "PNG"), GOOD),
        Case(
            "palette.png",
            "RGBA, LA, palette, CMYK",
            encode(base.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
            GOOD,
        ),
        Case(
            "palette_transparent.gif",
            "RGBA, LA, palette, CMYK",
            encode(base.convert("P"), "GIF", transparency=0),
            GOOD,
        ),
        Case("cmyk.jpg", "RGBA, LA, palette, CMYK", encode(base.convert("CMYK"), "JPEG"), GOOD),
        Case("animated.gif", "animated GIF", animated_gif(), GOOD),
        Case("lossy.webp", "WebP", encode(base, "WEBP", quality=80), GOOD),
        Case("bitmap.bmp", "BMP and TIFF", encode(base, "BMP"), GOOD),
        Case(
            "deflate.tiff",
            "BMP and TIFF",
            encode(base, "TIFF", compression="tiff_adobe_deflate"),
            GOOD,
        ),
        Case(
            "panorama_32x1.jpg",
            "wide panorama",
            encode(gradient_image(1280, 40, seed=81), "JPEG"),
            GOOD,
        ),
        Case("lossless_rgba.webp", "WebP", encode(rgba, "WEBP", lossless=True), GOOD),
        Case("animated.webp", "WebP", animated_webp(), GOOD),
        *[
            Case(
                f"exif_orientation_{o}.jpg", "EXIF-rotated JPEG", exif_rotated_jpeg(o, 30 + o), GOOD
            )
            for o in (3, 6, 8)
        ],
        Case(
            "bomb_50000x50000.png", "decompression bomb", png_bomb(50_000, 50_000), TOO_MANY_PIXELS
        ),
        Case(
            "bomb_60000x60000.jpg", "decompression bomb", jpeg_bomb(60_000, 60_000), TOO_MANY_PIXELS
        ),
        # Over the explicit 40-Mpixel limit but under Pillow's own bomb threshold (2x its limit).
        Case(
            "over_limit_8000x6000.png",
            "decompression bomb",
            png_bomb(8_000, 6_000),
            TOO_MANY_PIXELS,
        ),
        *extreme_shapes(),
        *foreign_formats(),
    ]
    return cases


def oversized_image(limit_bytes: int) -> bytes:
    """A PNG (valid header) padded to one byte over the per-image byte limit: built on demand."""
    head = encode(gradient_image(8, 8, seed=70), "PNG")
    return head + b"\x00" * (limit_bytes + 1 - len(head))


def counts_by_kind(cases: list[Case]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for case in cases:
        counts[case.kind] = counts.get(case.kind, 0) + 1
    return counts


def write_corpus(directory: Path, cases: list[Case] | None = None) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for case in cases or build_corpus():
        path = directory / case.name
        path.write_bytes(case.data)
        paths.append(path)
    return paths


if __name__ == "__main__":  # pragma: no cover
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus")
    for written in write_corpus(target):
        print(written)
