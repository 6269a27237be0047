"""Test helpers for the proxy's edge: self-signed certificates and API key files.

Certificates come from the ``openssl`` command (the venv has no ``cryptography``); keys are
written to files with mode 0600 and never passed on a command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """(certificate, private key) PEM files for ``host`` (an IP address), valid for 2 days."""
    openssl = shutil.which("openssl")
    if openssl is None:
        message = "openssl is not installed (apt-get install openssl)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    directory.mkdir(parents=True, exist_ok=True)
    certificate, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", f"/CN={host}",
            "-addext", f"subjectAltName=IP:{host}",
            "-keyout", str(key), "-out", str(certificate),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    key.chmod(0o600)
    return certificate, key


def write_key_file(path: Path, lines: list[str]) -> Path:
    """A key file (mode 0600) holding ``lines``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path
