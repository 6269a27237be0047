"""Keys read from the environment or a private file: the admin key for Triton's restricted APIs,
and the inference API key a client sends to a proxy that asks for one.

Never from a command-line option: every local user can read a process's argv (``ps``,
``/proc/PID/cmdline``). A key file must be a regular file readable by its owner only (mode 0600
or stricter), as ssh demands of private keys.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from resnet18_triton.contract import (
    ADMIN_KEY_ENV_VAR,
    ADMIN_KEY_FILE_ENV_VAR,
    API_KEY_ENV_VAR,
    API_KEY_FILE_ENV_VAR,
)
from resnet18_triton.errors import AdminKeyError, ApiKeyError, ResNet18TritonError


def read_key_file(
    path: Path, what: str = "admin key", error: type[ResNet18TritonError] = AdminKeyError
) -> str:
    """The key in ``path`` (surrounding whitespace removed); refuses files others can read.

    ``what`` names the key in the messages and ``error`` is the class raised, so that each key
    says which file is wrong.
    """
    try:
        info = path.stat()
    except OSError as failure:
        raise error(f"cannot read the {what} file {path}: {failure.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"the {what} file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise error(
            f"the {what} file {path} is readable by other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}): run chmod 600 {path}"
        )
    key = path.read_text().strip()
    if not key:
        raise error(f"the {what} file {path} is empty")
    return key


def admin_key_from(key_file: Path | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The key from ``key_file``, else ``$RESNET18_TRITON_ADMIN_KEY_FILE``, else
    ``$RESNET18_TRITON_ADMIN_KEY``; None when none is set."""
    file_name = key_file or environ.get(ADMIN_KEY_FILE_ENV_VAR)
    if file_name:
        return read_key_file(Path(file_name))
    return environ.get(ADMIN_KEY_ENV_VAR) or None


def api_key_from(key_file: Path | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The inference API key from ``key_file``, else ``$RESNET18_TRITON_API_KEY_FILE``, else
    ``$RESNET18_TRITON_API_KEY``; None when none is set. Raises ApiKeyError for an unreadable,
    unsafe or empty file."""
    file_name = key_file or environ.get(API_KEY_FILE_ENV_VAR)
    if file_name:
        return read_key_file(Path(file_name), "inference API key", ApiKeyError)
    return environ.get(API_KEY_ENV_VAR) or None
