"""Triton Python-backend model: encoded image bytes -> ResNet-18 input pixels (uint8 CHW).

The default transform is the pixel part of torchvision's
``ResNet18_Weights.IMAGENET1K_V1.transforms()`` done with Pillow and NumPy, so that the served
pixels are the ones PyTorch would compute (bit for bit on the same Pillow): resize the shorter side
to 256 (bilinear, Pillow's resize is antialiased), centre-crop 224, and emit the crop as uint8
[3, 224, 224]. A classifier's config may set other settings (``Transform``: resize size or resize
straight to the input size, input size, bilinear or bicubic), each equal to the torchvision
transform built from them. The float part (scale to [0, 1], normalise with the classifier's mean
and std) runs inside the classifier's ONNX graph, in the same float32 order as torchvision; sending
uint8 moves a quarter of the bytes between the models. The config's ``mean`` and ``std`` describe
that graph prefix (read back for display); this model does not apply them.
Grayscale, LA, RGBA, palette and CMYK inputs
are converted to RGB with ``Image.convert("RGB")``, as the reference does. Two decisions go beyond
torchvision's transform (the test reference in ``tests/support.py`` makes the same ones):

- the EXIF orientation is honoured (``ImageOps.exif_transpose``): the model sees the photo the way
  every viewer shows it, not the sensor's raw landscape buffer;
- 16-bit (and 32-bit integer) grayscale is scaled to 8 bits (``value >> 8``) before the RGB
  conversion; Pillow's ``convert`` would clip it, turning almost every such image white.

Animated images (GIF, WebP, APNG) are classified by their first frame.

What a request may cost is bounded before any pixel is decoded: the encoded bytes, the pixel
count, the aspect ratio (the resize keeps it, so a 100000x100 image would otherwise become a
256000x256 intermediate), and the format, which must be on an allow-list (JPEG, PNG, WebP, GIF,
BMP, TIFF by default) so that no other decoder, and no external program such as Ghostscript for
EPS, ever sees client bytes. Any failure while preprocessing one request fails that request only.

This file is self-contained (Pillow + NumPy only): it runs unchanged in the embedded server and in
the official Triton container, where this project's Python package is not installed. Everything it
needs to know (tensor names, limits) comes from its ``config.pbtxt``.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import numpy.typing as npt

try:  # Present inside the Triton Python-backend stub; absent when unit tests import this file.
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - exercised only outside Triton
    pb_utils = None

RESIZE_SIZE = 256
CROP_SIZE = 224

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # a 40-megapixel photo; decompression bombs claim far more
DEFAULT_MAX_IMAGE_BYTES = 32 * 1024 * 1024
# Longer side / shorter side. Bounds the resized intermediate to 256 x 8192 pixels (~8 MB) while
# still taking wide panoramas; a 100000x100 strip would otherwise need ~376 MB.
DEFAULT_MAX_ASPECT_RATIO = 32.0
# Pillow format names. Everything else is refused before a decoder sees it.
DEFAULT_ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Formats Pillow cannot read but clients send anyway: named in the refusal instead of
# "cannot identify". (prefix searched for in the first bytes, name)
FOREIGN_SIGNATURES = (
    (b"%PDF-", "PDF"),
    (b"<svg", "SVG"),
    (b"ftypheic", "HEIC"),
    (b"ftypavif", "AVIF"),
)


class ImageRejected(ValueError):
    """The bytes are not an image this model accepts; the message is sent to the client."""


@dataclass(frozen=True)
class Limits:
    """Explicit input limits, configurable through the model config's ``parameters``."""

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
    allowed_formats: tuple[str, ...] = DEFAULT_ALLOWED_FORMATS


def resized_size(width: int, height: int, short_side: int = RESIZE_SIZE) -> tuple[int, int]:
    """The (width, height) torchvision's ``resize(img, 256)`` gives: shorter side -> 256."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def decode_image(data: bytes, limits: Limits = Limits(), draft_min_size: int = 0) -> Image.Image:
    """Decode encoded bytes to an RGB image, refusing what is not an image or is too large.

    ``draft_min_size`` > 0 lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale (``Image.draft``,
    DCT-domain downscaling) as long as both sides stay >= ``draft_min_size``. Off (0) by default:
    it changes the pixels of large JPEGs slightly (see docs/performance.md for the tolerance);
    images smaller than twice the limit on either side decode exactly as without it.
    """
    if not data:
        raise ImageRejected("empty image: the request carried 0 bytes")
    if len(data) > limits.max_image_bytes:
        raise ImageRejected(
            f"image too large: {len(data)} bytes exceeds the limit of "
            f"{limits.max_image_bytes} bytes"
        )
    image = _open_allowed(data, limits.allowed_formats)
    # The header is read, the pixels are not: refuse what would cost too much before decoding.
    check_shape(image.size, limits)
    if draft_min_size > 0 and image.format == "JPEG":
        image.draft(None, (draft_min_size, draft_min_size))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(
            f"corrupt or truncated {image.format or 'image'} data: {error}"
        ) from None
    return to_rgb(image)


def _open_allowed(data: bytes, allowed: tuple[str, ...]) -> Image.Image:
    """Read the header with the allowed formats' plugins only; refuse anything else by name."""
    try:
        return Image.open(io.BytesIO(data), formats=list(allowed))
    except UnidentifiedImageError:
        detected = sniff_format(data)
        if detected is not None and detected not in allowed:
            raise ImageRejected(
                f"image format {detected} is not accepted; send one of {', '.join(allowed)}"
            ) from None
        raise ImageRejected(
            f"cannot identify an image in {len(data)} bytes (expected one of {', '.join(allowed)})"
        ) from None
    except Image.DecompressionBombError as error:
        raise ImageRejected(f"image too large: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageRejected(f"corrupt or truncated image header: {error}") from None


def sniff_format(data: bytes) -> str | None:
    """The format the leading bytes announce, or None; runs no decoder.

    Asks each Pillow plugin's signature check (a pure test of the first bytes), then a few
    document formats Pillow does not read.
    """
    Image.init()
    prefix = data[:16]
    for name, (_factory, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix):
                return name
        except Exception:  # a signature check that chokes on short input says nothing
            continue
    head = data[:1024]
    for signature, name in FOREIGN_SIGNATURES:
        if signature in head:
            return name
    return None


def check_shape(size: tuple[int, int], limits: Limits) -> None:
    """Refuse sizes whose pixel count or aspect ratio exceed the limits (message names them)."""
    width, height = size
    if width * height > limits.max_image_pixels:
        raise ImageRejected(
            f"image too large: {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{limits.max_image_pixels} pixels"
        )
    if width < 1 or height < 1:
        raise ImageRejected(f"image has no pixels: {width}x{height}")
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise ImageRejected(
            f"image too elongated: {width}x{height} has an aspect ratio of {ratio:.0f}:1, "
            f"over the limit of {limits.max_aspect_ratio:g}:1; crop it first"
        )


EXIF_ORIENTATION_TAG = 0x0112
WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB: EXIF orientation applied, wide integer grayscale scaled to 8 bits."""
    if image.getexif().get(EXIF_ORIENTATION_TAG, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in WIDE_INTEGER_MODES:
        pixels = np.asarray(image).astype(np.int64) >> 8
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")
    # convert() of an RGB image is a plain copy (~0.2 ms for a photo); skip it.
    return image if image.mode == "RGB" else image.convert("RGB")


INTERPOLATIONS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
# resize_size 0: resize straight to input_size x input_size (no aspect kept, no crop).
RESIZE_STRAIGHT = 0


@dataclass(frozen=True)
class Transform:
    """The classifier's preprocessing, from its config's parameters (defaults: ImageNet).

    ``resize_size`` > 0 resizes the shorter side to it, then centre-crops ``input_size``;
    ``RESIZE_STRAIGHT`` (0) resizes the whole image to ``input_size`` x ``input_size``.
    ``mean`` and ``std`` are the normalisation the classifier's graph applies to these pixels
    (torchvision's ToTensor + Normalize); they are validated and carried here, not applied.
    """

    resize_size: int = RESIZE_SIZE
    input_size: int = CROP_SIZE
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {INTERPOLATIONS}")
        if self.input_size < 1 or (0 < self.resize_size < self.input_size):
            raise ValueError(
                f"resize_size {self.resize_size} cannot be cropped to input_size {self.input_size}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values each, std all above 0")


IMAGENET = Transform()


def preprocess_image(image: Image.Image, transform: Transform = IMAGENET) -> npt.NDArray[np.uint8]:
    """RGB PIL image -> uint8 [3, S, S] (S = ``transform.input_size``): the pixels the torchvision
    transform with the same settings would scale and normalise (default: ImageNet's, S = 224).

    The result is a CHW view of the crop's HWC buffer (not contiguous): the batch assembly copies
    it once, straight into its place in the batch.
    """
    size = transform.input_size
    resample = INTERPOLATIONS[transform.interpolation]
    if transform.resize_size == RESIZE_STRAIGHT:
        if image.size != (size, size):
            image = image.resize((size, size), resample)
    else:
        width, height = image.size
        new_size = resized_size(width, height, transform.resize_size)
        if new_size != (width, height):
            image = image.resize(new_size, resample)
        width, height = image.size
        # torchvision's centre crop rounds with Python's round() (half to even); keep it identical.
        top = round((height - size) / 2.0)
        left = round((width - size) / 2.0)
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)  # HWC view -> CHW view, no copy


def preprocess_bytes(
    data: bytes,
    limits: Limits = Limits(),
    draft_min_size: int = 0,
    transform: Transform = IMAGENET,
) -> npt.NDArray[np.uint8]:
    """Encoded image bytes -> uint8 [3, S, S], contiguous."""
    image = decode_image(data, limits, draft_min_size)
    return np.ascontiguousarray(preprocess_image(image, transform))


def preprocess_batch(
    items: npt.NDArray[np.object_],
    limits: Limits = Limits(),
    draft_min_size: int = 0,
    transform: Transform = IMAGENET,
) -> npt.NDArray[np.uint8]:
    """An object array [N, 1] of encoded images -> uint8 [N, 3, S, S].

    A bad image fails the whole request (Triton answers a request with one error), and the message
    says which image of the request it was.
    """
    flat = items.reshape(-1)
    size = transform.input_size
    batch = np.empty((len(flat), 3, size, size), dtype=np.uint8)
    for position, data in enumerate(flat):
        try:
            image = decode_image(_as_bytes(data), limits, draft_min_size)
            batch[position] = preprocess_image(image, transform)
        except ImageRejected as error:
            prefix = f"image {position + 1} of {len(flat)}: " if len(flat) > 1 else ""
            raise ImageRejected(f"{prefix}{error}") from None
    return batch


def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, np.bytes_):
        return bytes(data)
    if isinstance(data, str):
        raise ImageRejected("IMAGE must carry the encoded file's bytes, not text")
    raise ImageRejected(f"IMAGE element has unsupported type {type(data).__name__}")


def limits_from_config(model_config: dict[str, Any]) -> Limits:
    """Read the limits from the model config's string parameters; absent ones keep the defaults.

    ``allowed_formats`` is a comma-separated list of Pillow format names (``JPEG,PNG``).
    """
    parameters = model_config.get("parameters", {})

    def text(key: str) -> str:
        value: str = parameters.get(key, {}).get("string_value", "").strip()
        return value

    formats = tuple(name.strip().upper() for name in text("allowed_formats").split(",") if name)
    return Limits(
        max_image_pixels=int(text("max_image_pixels") or DEFAULT_MAX_IMAGE_PIXELS),
        max_image_bytes=int(text("max_image_bytes") or DEFAULT_MAX_IMAGE_BYTES),
        max_aspect_ratio=float(text("max_aspect_ratio") or DEFAULT_MAX_ASPECT_RATIO),
        allowed_formats=formats or DEFAULT_ALLOWED_FORMATS,
    )


def transform_from_config(model_config: dict[str, Any]) -> Transform:
    """Read the preprocessing settings from the config's string parameters (absent: ImageNet).

    ``mean`` and ``std`` are comma-separated triples; ``resize_size`` 0 means resize straight to
    ``input_size``.
    """
    parameters = model_config.get("parameters", {})

    def text(key: str) -> str:
        value: str = parameters.get(key, {}).get("string_value", "").strip()
        return value

    def triple(key: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
        values = tuple(float(item) for item in text(key).split(",") if item.strip())
        return values or default  # type: ignore[return-value]

    return Transform(
        resize_size=int(text("resize_size") or IMAGENET.resize_size),
        input_size=int(text("input_size") or IMAGENET.input_size),
        mean=triple("mean", IMAGENET.mean),
        std=triple("std", IMAGENET.std),
        interpolation=text("interpolation") or IMAGENET.interpolation,
    )


class TritonPythonModel:
    """Preprocesses every request of one ``execute`` call (dynamic batching hands us a list)."""

    def initialize(self, args: dict[str, str]) -> None:
        model_config = json.loads(args["model_config"])
        self.input_name = model_config["input"][0]["name"]
        self.output_name = model_config["output"][0]["name"]
        self.limits = limits_from_config(model_config)
        self.transform = transform_from_config(model_config)
        # Image.draft for large JPEGs (0 = off, the default; see decode_image).
        draft = (
            model_config.get("parameters", {}).get("jpeg_draft_min_size", {}).get("string_value")
        )
        self.draft_min_size = int(draft) if draft else 0
        # Pillow's own bomb check warns at MAX_IMAGE_PIXELS and raises at twice that; keep it
        # consistent with our explicit limit, which is checked first with a clearer message.
        Image.MAX_IMAGE_PIXELS = self.limits.max_image_pixels

    def execute(self, requests: list[Any]) -> list[object]:
        return [self._execute_one(request) for request in requests]

    def _execute_one(self, request: object) -> object:
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor is None:
            return _error_response(f"missing input '{self.input_name}'")
        batch, failure = preprocess_outcome(
            tensor.as_numpy(), self.limits, self.draft_min_size, self.transform
        )
        if failure is not None:
            return _error_response(*failure)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, batch)])


def preprocess_outcome(
    items: npt.NDArray[np.object_],
    limits: Limits,
    draft_min_size: int = 0,
    transform: Transform = IMAGENET,
) -> tuple[npt.NDArray[np.uint8] | None, tuple[str, str] | None]:
    """(batch, None), or (None, (message, Triton error code)) for this request alone.

    A refused image is INVALID_ARG (HTTP 400); anything unexpected, MemoryError included, is
    INTERNAL (500) for this request only: the stub and the other requests of the batch go on.
    """
    try:
        return preprocess_batch(items, limits, draft_min_size, transform), None
    except ImageRejected as error:
        return None, (str(error), "INVALID_ARG")
    except Exception as error:
        return None, (f"preprocessing failed: {type(error).__name__}: {error}", "INTERNAL")


def _error_response(message: str, code_name: str = "INVALID_ARG") -> object:
    """An error for this request only; Triton maps INVALID_ARG to HTTP 400, INTERNAL to 500."""
    code = getattr(pb_utils.TritonError, code_name, None)
    error = (
        pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    )
    return pb_utils.InferenceResponse(error=error)
