"""The admin key for Triton's restricted APIs, read from the environment or a private file.

Never from a command-line option: every local user can read a process's argv (``ps``,
``/proc/PID/cmdline``). A key file must be a regular file readable by its owner only (mode 0600
or stricter), as ssh demands of private keys.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from resnet18_triton.contract import ADMIN_KEY_ENV_VAR, ADMIN_KEY_FILE_ENV_VAR
from resnet18_triton.errors import AdminKeyError


def read_key_file(path: Path) -> str:
    """The key in ``path`` (surrounding whitespace removed); refuses files others can read."""
    try:
        info = path.stat()
    except OSError as error:
        raise AdminKeyError(f"cannot read the admin key file {path}: {error.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise AdminKeyError(f"the admin key file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise AdminKeyError(
            f"the admin key file {path} is readable by other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}): run chmod 600 {path}"
        )
    key = path.read_text().strip()
    if not key:
        raise AdminKeyError(f"the admin key file {path} is empty")
    return key


def admin_key_from(key_file: Path | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The key from ``key_file``, else ``$RESNET18_TRITON_ADMIN_KEY_FILE``, else
    ``$RESNET18_TRITON_ADMIN_KEY``; None when none is set."""
    file_name = key_file or environ.get(ADMIN_KEY_FILE_ENV_VAR)
    if file_name:
        return read_key_file(Path(file_name))
    return environ.get(ADMIN_KEY_ENV_VAR) or None
