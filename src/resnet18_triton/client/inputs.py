"""Turn command-line arguments (files, directories, globs) into the list of images to classify.

Globs are expanded here rather than by the shell so that quoted patterns (``'photos/*.JPG'``)
work, also on shells that do not expand them, and so that a pattern matching nothing is reported
by name instead of being passed through as a literal file name.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from resnet18_triton.errors import NoImagesError
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
