"""API keys for the proxy: read a key file, hash the keys, render nginx's hash -> name map.

A key file holds one key per line, or ``name:key``, or ``name:key:weight``; blank lines and lines
starting with ``#`` are skipped. A key without a name is named ``key-`` + the first 8 hex digits
of its SHA-256, so the name stays the same when other lines are added or removed. A key's name is
its tenant: the proxy counts each tenant's requests in flight, and a ``weight`` of 1 to
``MAX_WEIGHT`` (default 1) multiplies its share (``proxy.Limits.key_in_flight``). nginx never
sees a key: the proxy hashes the bearer token of each request (njs, ``deploy/edge.js``) and looks
the hash up in the map rendered here, whose value is the key's name and weight (the name is what
the access log records). Revoking a key is removing its line and reloading nginx.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from resnet18_triton.errors import ProxyError

# 128 bits of entropy as hex is 32 characters; anything shorter than this is a password, not a key.
MIN_KEY_CHARS = 16
# Characters of a bearer token (RFC 6750 b64token) minus "=" padding at the end being special:
# no spaces, quotes or semicolons, so a key can never break out of a line or a header.
_KEY_PATTERN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# Names go into nginx's config (map values) and its access log.
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
GENERATED_KEY_BYTES = 32
# Weights are few and small: nginx needs one limit_conn zone per weight (proxy._tenant_zones).
WEIGHTS = (1, 2, 3, 4)
MAX_WEIGHT = WEIGHTS[-1]


@dataclass(frozen=True)
class ApiKey:
    """One key of a key file: its name (may be logged), the key itself (never logged) and its
    tenant's weight."""

    name: str
    key: str
    weight: int = 1

    @property
    def sha256(self) -> str:
        return key_hash(self.key)

    def __repr__(self) -> str:  # the key must not reach a traceback or a log by accident
        return f"ApiKey(name={self.name!r}, weight={self.weight})"


def key_hash(key: str) -> str:
    """Lowercase hex SHA-256 of the key's UTF-8 bytes, as the proxy's njs script computes it."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_api_keys(text: str, source: str = "the key file") -> list[ApiKey]:
    """The keys in a key file's ``text``; ``ProxyError`` naming the line of a bad entry.

    Messages never quote a key, only line numbers and names.
    """
    keys: list[ApiKey] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, separator, key = line.partition(":")
        if not separator:
            name, key = "", line
        key, _, weight_text = key.partition(":")
        name, key, weight_text = name.strip(), key.strip(), weight_text.strip()
        where = f"{source}, line {number}"
        weight = _weight(weight_text or "1", where)
        if not _KEY_PATTERN.fullmatch(key):
            raise ProxyError(
                f"{where}: a key may hold only letters, digits and -._~+/ (no spaces or quotes); "
                "make one with `resnet18-triton cluster keys add NAME --api-key-file FILE`"
            )
        if len(key) < MIN_KEY_CHARS:
            raise ProxyError(
                f"{where}: the key has {len(key)} characters, fewer than {MIN_KEY_CHARS}; make a "
                "random one with `resnet18-triton cluster keys add NAME --api-key-file FILE`"
            )
        if separator and not _NAME_PATTERN.fullmatch(name):
            raise ProxyError(
                f"{where}: the name before ':' must be 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        keys.append(ApiKey(name or f"key-{key_hash(key)[:8]}", key, weight))
    names = [key.name for key in keys]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ProxyError(f"{source}: the name(s) {', '.join(repeated)} appear more than once")
    if len({key.sha256 for key in keys}) != len(keys):
        raise ProxyError(f"{source}: the same key appears on two lines; keep one of them")
    return keys


def _weight(text: str, where: str) -> int:
    if text not in {str(weight) for weight in WEIGHTS}:
        raise ProxyError(
            f"{where}: the weight after the key must be one of {', '.join(map(str, WEIGHTS))} "
            "(name:key:weight; 1 when left out)"
        )
    return int(text)


def read_api_keys(path: Path) -> list[ApiKey]:
    """The keys of the file at ``path``, which must be readable only by its owner (mode 0600).

    ``ProxyError`` when it is missing, readable by others, or malformed. An empty file is valid:
    it revokes every key.
    """
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as error:
        raise ProxyError(f"cannot read the API key file {path}: {error.strerror}") from error
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ProxyError(
            f"the API key file {path} can be read by other users (mode {stat.filemode(mode)}): "
            f"run `chmod 600 {path}`"
        )
    return parse_api_keys(text, str(path))


def hash_map(keys: list[ApiKey]) -> str:
    """The body of nginx's ``map $api_key_hash $api_key_entry``: one ``"hash" "name:weight";`` a
    line (a map of ``"hash" "name";`` lines, as earlier versions wrote, means weight 1)."""
    header = (
        "# SHA-256 of each API key -> its name and weight. Generated by resnet18-triton from a\n"
        "# key file; it holds no key. Revoke a key: remove its line from the key file, re-render,\n"
        "# reload.\n"
    )
    return header + "".join(f'"{key.sha256}" "{key.name}:{key.weight}";\n' for key in keys)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the start (never briefly readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.replace(partial, path)


def add_api_key(path: Path, name: str) -> str:
    """Append a fresh random key named ``name`` to the key file (created mode 0600); return it.

    ``ProxyError`` when the name is invalid or already taken.
    """
    existing = read_api_keys(path) if path.exists() else []
    key = secrets.token_hex(GENERATED_KEY_BYTES)
    text = path.read_text() if path.exists() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    text += f"{name}:{key}\n"
    keys = parse_api_keys(text, str(path))  # validates the name and its uniqueness
    assert len(keys) == len(existing) + 1
    write_private(path, text)
    return key
