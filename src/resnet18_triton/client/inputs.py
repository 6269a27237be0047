"""What the client sends: the images named on a command line, each read into an ``Item``.

``expand_inputs`` turns command-line arguments (files, directories, globs) into the list of
images to classify. Globs are expanded here rather than by the shell so that quoted patterns
(``'photos/*.JPG'``) work, also on shells that do not expand them, and so that a pattern matching
nothing is reported by name instead of being passed through as a literal file name.

``read_image_bytes`` reads one file, bounded and never blocking; ``Item`` is an image on its way
to the server: its bytes, or the reason it cannot be sent, which becomes that image's error.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from resnet18_triton import contract
from resnet18_triton.errors import ImageError, NoImagesError
from resnet18_triton.files import image_files, image_suffixes_text

_GLOB_CHARACTERS = frozenset("*?[")


def expand_inputs(arguments: Iterable[str], recursive: bool = False) -> list[Path]:
    """Expand files, directories and globs into an ordered list of image paths without duplicates.

    * a file is kept as given, even if it does not exist: the classifier reports it as that
      image's error, so one typo does not hide the answers for the other images;
    * a directory contributes its regular image files (``resnet18_triton.files.image_files``: by
      suffix, case-insensitively, hidden files skipped), sorted by path; with ``recursive`` its
      subdirectories too (hidden ones skipped); files named explicitly are sent whatever their
      suffix;
    * a pattern with ``*``, ``?`` or ``[`` is expanded like the shell would (``**`` spans
      directories) and each match is treated as if it had been given as an argument.

    The first spelling of a file wins when two arguments name the same file. Raises NoImagesError
    naming the pattern or directory that yields nothing.
    """
    unique: dict[str, Path] = {}
    for argument in arguments:
        for path in _expand_argument(os.path.expanduser(argument), recursive):
            unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def _expand_argument(argument: str, recursive: bool) -> list[Path]:
    path = Path(argument)
    if _is_pattern(argument) and not path.exists():
        matches = sorted(glob.glob(argument, recursive=True))
        if not matches:
            raise NoImagesError(f"no file matches the pattern '{argument}'")
        return [found for match in matches for found in _expand_path(Path(match), recursive)]
    return _expand_path(path, recursive)


def _expand_path(path: Path, recursive: bool) -> list[Path]:
    if not path.is_dir():
        return [path]
    images = image_files(path, recursive)
    if not images:
        extensions = image_suffixes_text()
        where = "or below it " if recursive else ""
        raise NoImagesError(f"no image files ({extensions}) in directory '{path}' {where}".strip())
    return images


def _is_pattern(argument: str) -> bool:
    return any(character in _GLOB_CHARACTERS for character in argument)


def read_image_bytes(
    path: str | os.PathLike[str], max_bytes: int = contract.MAX_IMAGE_BYTES
) -> bytes:
    """Read a regular file of at most ``max_bytes`` for sending.

    Never blocks on a FIFO or a device (opened non-blocking, refused unless a regular file) and
    never reads more than ``max_bytes + 1`` bytes. Raises ImageError with a short reason a
    person understands.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as error:
        raise ImageError(error.strerror or str(error)) from None
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        os.close(descriptor)
        if stat.S_ISDIR(info.st_mode):
            raise ImageError("is a directory")
        raise ImageError(f"not a regular file ({_file_kind(info.st_mode)}); not read")
    with os.fdopen(descriptor, "rb") as file:
        if info.st_size > max_bytes:
            raise ImageError(_too_large(info.st_size, max_bytes))
        try:
            data = file.read(max_bytes + 1)
        except OSError as error:
            raise ImageError(error.strerror or str(error)) from None
    if len(data) > max_bytes:  # grew while we read it
        raise ImageError(_too_large(len(data), max_bytes))
    if not data:
        raise ImageError("file is empty")
    return data


def _too_large(size: int, max_bytes: int) -> str:
    return (
        f"file is {size} bytes, over the limit of {max_bytes} bytes (the server's default; "
        "see --max-file-bytes)"
    )


def _file_kind(mode: int) -> str:
    kinds = {
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a file")


@dataclass
class Item:
    """An image on its way to the server: ``data`` to send, or the ``error`` that says why it
    cannot be sent (then ``data`` is None). ``path`` names it in its result."""

    path: str
    data: bytes | None = None
    error: str | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], max_bytes: int) -> Item:
        """The file's bytes (``read_image_bytes``), or its ImageError's reason as the error."""
        try:
            return cls(str(path), data=read_image_bytes(path, max_bytes))
        except ImageError as error:
            return cls(str(path), error=str(error))

    @classmethod
    def named(cls, name: str, data: bytes) -> Item:
        """Bytes held in memory (copied), named ``name``; empty ones are an error."""
        return cls(name, data=bytes(data)) if data else cls(name, error="empty image")

    @classmethod
    def numbered(cls, position: int, data: bytes) -> Item:
        """Like ``named``, for the image at ``position`` of a list: ``image <position>``."""
        return cls.named(f"image {position}", data)
