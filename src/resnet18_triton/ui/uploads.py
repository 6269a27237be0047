"""Read a ``multipart/form-data`` body of images into memory, enforcing the upload limits.

Every upload stays in memory, in its own buffer, for the one request that carries it: nothing
is written to disk, so concurrent requests can never see each other's files. The limits are
checked while the body streams in, so an oversized upload is refused before it is held whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from resnet18_triton.errors import UploadError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

IMAGE_FIELD = "image"
MEGABYTE = 1024 * 1024


@dataclass(frozen=True)
class UploadLimits:
    """What one request may carry: bytes per image, images, and bytes in all."""

    max_file_bytes: int = 10 * MEGABYTE
    max_files: int = 32
    max_request_bytes: int = 32 * MEGABYTE


@dataclass(frozen=True)
class Upload:
    """One uploaded image: the name the browser or curl gave it, and its bytes."""

    name: str
    data: bytes


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


def describe_size(size: int) -> str:
    """``12.3 MB``, or ``51 KB`` below a megabyte (binary units, as the limits are set)."""
    if size < MEGABYTE:
        return f"{size / 1024:.0f} KB"
    return f"{size / MEGABYTE:.1f} MB"


def check_declared_length(content_length: str | None, limits: UploadLimits) -> None:
    """Refuse a body whose declared length is over the limit, before reading any of it."""
    if content_length is None:
        return
    try:
        length = int(content_length)
    except ValueError:
        raise UploadError(f"invalid Content-Length {content_length!r}") from None
    if length > limits.max_request_bytes:
        raise UploadError(_request_too_large(length, limits), status=413)


async def with_idle_timeout(body: AsyncIterator[bytes], seconds: float) -> AsyncIterator[bytes]:
    """``body``, refused with 408 when no data arrives for ``seconds``: a client that stalls
    mid-upload must not hold a request slot for ever."""
    iterator = aiter(body)
    while True:
        try:
            chunk = await asyncio.wait_for(anext(iterator), seconds)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise UploadError(
                f"the upload stalled: no data for {seconds:g} s; send the whole body at once",
                status=408,
            ) from None
        yield chunk


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary of a ``multipart/form-data`` content type; UploadError otherwise."""
    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        raise UploadError(
            f"send the images as multipart/form-data with the field '{IMAGE_FIELD}' "
            f"(curl -F {IMAGE_FIELD}=@photo.jpg); got {kind.decode('latin-1') or 'no content type'}"
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError("the multipart/form-data content type has no boundary")
    return boundary


async def read_uploads(
    body: AsyncIterator[bytes], content_type: str | None, limits: UploadLimits
) -> list[Upload]:
    """Every ``image`` part of the body, in order; other fields are refused by name.

    Raises UploadError: 413 for a file or body over its limit, 400 for anything malformed, too
    many files, an unknown field or no image at all.
    """
    reader = _PartReader(limits)
    parser = MultipartParser(boundary_of(content_type), reader.callbacks())
    total = 0
    async for chunk in body:
        total += len(chunk)
        if total > limits.max_request_bytes:
            raise UploadError(_request_too_large(total, limits), status=413)
        try:
            parser.write(chunk)
        except MultipartParseError as error:
            raise UploadError(f"malformed multipart body: {error}") from None
        if reader.failure is not None:
            raise reader.failure
    try:
        parser.finalize()
    except MultipartParseError as error:
        raise UploadError(f"malformed multipart body: {error}") from None
    if reader.failure is not None:
        raise reader.failure
    if not reader.uploads:
        raise UploadError(f"no '{IMAGE_FIELD}' field in the form: curl -F {IMAGE_FIELD}=@photo.jpg")
    return reader.uploads


class _PartReader:
    """Collects parts from the parser's callbacks. A broken limit is kept as ``failure`` and
    raised by the caller after the current chunk: raising inside a callback would leave the
    parser in an undefined state."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.uploads: list[Upload] = []
        self.failure: UploadError | None = None
        self._part = _Part()
        self._field = b""
        self._value = b""

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._part = _Part()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._part.headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.failure is not None:
            return
        self._part.size += end - start
        if self._part.size > self.limits.max_file_bytes:
            name = self._name()
            self.failure = UploadError(
                f"{name} is larger than the limit of "
                f"{describe_size(self.limits.max_file_bytes)} per image",
                status=413,
            )
            self._part.chunks.clear()
            return
        self._part.chunks.append(data[start:end])

    def _end(self) -> None:
        if self.failure is not None:
            return
        _, options = parse_options_header(self._part.headers.get(b"content-disposition", b""))
        field_name = options.get(b"name", b"").decode("utf-8", "replace")
        if field_name != IMAGE_FIELD:
            self.failure = UploadError(
                f"unknown form field '{field_name}': send images in the field '{IMAGE_FIELD}'"
            )
            return
        if len(self.uploads) >= self.limits.max_files:
            self.failure = UploadError(
                f"more than {self.limits.max_files} images in one request: send them in several",
                status=413,
            )
            return
        self.uploads.append(Upload(self._name(), b"".join(self._part.chunks)))

    def _name(self) -> str:
        _, options = parse_options_header(self._part.headers.get(b"content-disposition", b""))
        filename = options.get(b"filename", b"").decode("utf-8", "replace")
        return filename or f"image {len(self.uploads) + 1}"


def _request_too_large(size: int, limits: UploadLimits) -> str:
    return (
        f"the request is larger than the limit of {describe_size(limits.max_request_bytes)} "
        f"(at least {describe_size(size)}): send fewer or smaller images"
    )
