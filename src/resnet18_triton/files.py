"""File helpers every part shares: atomic writes and which files count as images.

Standard library only, so that the thin client can use it.

Atomic writes: the data goes to a temporary file in the target's directory (same filesystem), is
flushed to disk (fsync), gets mode 0644 and is renamed over the target with ``os.replace``. A
reader (a running Triton server, another process) sees the old file or the new one, never half a
file; a crash leaves at most a hidden ``.<name>.*.tmp`` file beside the target, never a truncated
target. Mode 0644 because a server in a container may run as another user and must read the file.

Image files: one suffix list (``IMAGE_SUFFIXES``) for every place that picks images out of a
folder (classify, quantize calibration, benchmarks). Hidden files are never images.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o644
# The formats the preprocessing accepts by default (contract.ALLOWED_FORMATS: JPEG, PNG, WebP,
# GIF, BMP, TIFF), matched case-insensitively.
IMAGE_SUFFIXES = (
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".gif",
    ".bmp",
    ".tif",
    ".tiff",
)


def write_bytes_atomically(path: Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically (see the module docstring); returns ``path``.

    Creates missing parent directories. On any error the target is left as it was.
    """
    return _replace_atomically(Path(path), lambda handle: handle.write(data))


def write_text_atomically(path: Path, text: str) -> Path:
    """``write_bytes_atomically`` of ``text`` encoded as UTF-8; returns ``path``."""
    return write_bytes_atomically(path, text.encode("utf-8"))


def install_file_atomically(source: Path, target: Path) -> Path:
    """Copy ``source`` over ``target`` atomically (temporary copy beside ``target``, fsync,
    mode 0644, rename); returns ``target``. Streams the data, so large models need no memory."""
    with Path(source).open("rb") as stream:
        return _replace_atomically(
            Path(target), lambda handle: shutil.copyfileobj(stream, handle, 1 << 20)
        )


def _replace_atomically(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Replace ``path`` with what ``write`` writes to the open temporary file beside it, as the
    module docstring says (parents created, fsync, mode 0644, rename); returns ``path``. On any
    error the target is left as it was and the temporary file removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; chmod (not the umask) so the result does not depend on the caller.
        os.chmod(tmp_name, FILE_MODE)
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return path


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """Hard-link ``source`` at ``target`` (no space for an ONNX file the repository already
    holds), or copy it where a link cannot be made (another filesystem). Callers replace files by
    rename, never in place, so a change to one name never shows through the other."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def fsync_directory(directory: Path) -> None:
    """Make renames inside ``directory`` durable: a rename is on disk once its directory is."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names an image by its suffix (case-insensitive); hidden files never do."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Regular image files in ``folder`` (see ``is_image_file``), sorted by path.

    FIFOs, devices and sockets never count, whatever their name: reading one would block or
    never end.
    With ``recursive`` subfolders count too, except hidden ones (caches, VCS data). Returns an
    empty list for an empty folder; raises NotADirectoryError when ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a directory")
    found: list[Path] = []
    for root, subfolders, names in os.walk(folder):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found.extend(
            Path(root, name)
            for name in names
            if is_image_file(Path(name)) and Path(root, name).is_file()
        )
        if not recursive:
            break
    return sorted(found)


def image_suffixes_text() -> str:
    """The suffixes for messages, e.g. ``"bmp, gif, jpeg, ..."``."""
    return ", ".join(sorted(suffix[1:] for suffix in IMAGE_SUFFIXES))
