"""Replace model directories of a Triton repository all at once, or not at all.

Used by export and quantize: build the new model directories in ``staging_directory(repo)`` (a
hidden sibling of the repository, same filesystem), check them there, then ``install`` them under
``install_lock``. Each model directory is swapped in with one ``renameat2(RENAME_EXCHANGE)``, in
the order given (steps before ensembles); if a swap fails, the swaps already made are undone.
Until ``install`` runs the repository is untouched, so an error or a killed process (SIGKILL
included) leaves it byte-identical; only a kill during the swaps themselves (microseconds) can
leave some directories new and others old. A staging directory left behind by a killed process is
removed by ``remove_stale_staging`` once that process is gone. Standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from resnet18_triton.errors import RepositoryError
from resnet18_triton.files import fsync_directory

# Installed directories must be readable by a server running as another user (a container uid).
DIRECTORY_MODE = 0o755
_STAGING_INFIX = ".export-"
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


@contextlib.contextmanager
def staging_directory(repository: Path) -> Iterator[Path]:
    """A private directory beside ``repository`` (same filesystem), removed on exit."""
    repository.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{repository.name}{_STAGING_INFIX}{os.getpid()}-"
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=repository.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_stale_staging(repository: Path) -> list[Path]:
    """Remove staging directories for ``repository`` whose process is gone (killed mid-way);
    returns them. Those of running processes are kept."""
    if not repository.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(repository.name)}{_STAGING_INFIX}(\d+)-")
    removed = []
    for entry in repository.parent.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not _process_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def install_lock(repository: Path) -> Iterator[None]:
    """Serialise installs into ``repository`` between processes (``flock`` on a hidden sibling
    file), so that two concurrent installs cannot interleave their model directories: the last
    one wins whole."""
    lock = repository.parent / f".{repository.name}.export.lock"
    with open(lock, "a") as handle:  # the lock goes with the open file; closing releases it
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def hold_served(repository: Path) -> int | None:
    """Mark ``repository`` as served until the returned descriptor is closed (a shared ``flock``
    on the directory itself, which a container bind-mounting it shares with the host), so that
    ``is_served`` can tell; None when the directory cannot be opened."""
    try:
        descriptor = os.open(repository, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    fcntl.flock(descriptor, fcntl.LOCK_SH)
    return descriptor


def is_served(repository: Path) -> bool:
    """True while a server started on ``repository`` runs (``hold_served``)."""
    try:
        descriptor = os.open(repository, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # closing releases a lock taken here
    return False


def install(staging: Path, repository: Path, models: Sequence[str]) -> None:
    """Swap ``staging/<model>`` into ``repository/<model>`` for each of ``models``, in order.
    Afterwards ``staging/<model>`` holds the replaced directory, if there was one. A failed swap
    undoes the earlier ones and raises RepositoryError."""
    repository.mkdir(parents=True, exist_ok=True)
    _make_readable(staging)
    done: list[tuple[Path, Path, bool]] = []
    try:
        for name in models:
            new, target = staging / name, repository / name
            done.append((new, target, swap_in(new, target)))
    except OSError as error:
        for new, target, replaced in reversed(done):
            swap_back(new, target, replaced)
        raise RepositoryError(
            f"cannot install the exported models into {repository}: {error}; the repository "
            "is unchanged"
        ) from error
    fsync_directory(repository)


def remove(repository: Path, model: str) -> None:
    """Take ``repository/<model>`` out in one rename (to a staging directory, then deleted), under
    the install lock; nothing when it is absent."""
    target = repository / model
    with staging_directory(repository) as staging, install_lock(repository):
        if target.exists():
            os.rename(target, staging / model)
            fsync_directory(repository)


def swap_in(new: Path, target: Path) -> bool:
    """Put directory ``new`` at ``target``; a previous ``target`` ends up at ``new``. Returns
    whether there was one.

    Atomic (one ``renameat2(RENAME_EXCHANGE)``) where the kernel and filesystem support it; else
    three renames with a moment in which ``target`` is absent.
    """
    if not target.exists():
        os.rename(new, target)
        return False
    if not _exchange(new, target):
        aside = new.with_name(f"{new.name}.replaced")
        os.rename(target, aside)
        os.rename(new, target)
        os.rename(aside, new)
    return True


def swap_back(new: Path, target: Path, replaced: bool) -> None:
    """Undo ``swap_in(new, target)``, which returned ``replaced``."""
    if replaced:
        swap_in(new, target)
    else:
        os.rename(target, new)


def _exchange(first: Path, second: Path) -> bool:
    """Atomically exchange two paths; False when this system cannot (then nothing happened)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _make_readable(root: Path) -> None:
    for directory, _, _ in os.walk(root):
        os.chmod(directory, DIRECTORY_MODE)
