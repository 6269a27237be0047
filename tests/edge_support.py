"""Test helpers for the proxy's edge: the skip mark for a machine without nginx and njs,
self-signed certificates, API key files, a cluster's options with both, and a request that
announces too large a body.

Certificates come from the ``openssl`` command (the venv has no ``cryptography``); keys are
written to files with mode 0600 and never passed on a command line.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from resnet18_triton.deploy import proxy
from resnet18_triton.deploy.cluster import Cluster, ClusterOptions
from resnet18_triton.perf import harness
from tests.support import missing

# Marks a module that needs the proxy's edge (nginx with Debian's njs module): skipped without
# them, except in CI, where they must be installed.
NEEDS_NGINX_WITH_NJS = pytest.mark.skipif(
    (shutil.which("nginx") is None or not Path(proxy.NJS_MODULE_PATH).exists())
    and not os.environ.get("CI"),
    reason="nginx and its njs module are not installed (apt-get install nginx "
    "libnginx-mod-http-js; scripts/setup.sh does it)",
)


def self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """(certificate, private key) PEM files for ``host`` (an IP address), valid for 2 days."""
    openssl = shutil.which("openssl")
    if openssl is None:
        missing("openssl is not installed (apt-get install openssl)")
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


@dataclass(frozen=True)
class SecuredOptions:
    """A cluster's options with TLS and API keys, and the files a test reaches it with."""

    options: ClusterOptions
    key_file: Path
    certificate: Path


def secured_cluster_options(
    repository: Path, replicas: int, work: Path, keys: list[str], **settings: Any
) -> SecuredOptions:
    """Options for ``replicas`` replicas of ``repository`` behind the proxy with TLS (a
    self-signed certificate) and the API key file holding ``keys`` (its lines), on free ports:
    the secrets in ``work/secrets``, the cluster's files in ``work/cluster``. ``settings``: any
    other field (limits, admin key)."""
    key_file = write_key_file(work / "secrets" / "keys.txt", keys)
    certificate, tls_key = self_signed_certificate(work / "secrets")
    (work / "cluster").mkdir(parents=True, exist_ok=True)
    options = harness.cluster_options(
        repository,
        replicas,
        work / "cluster",
        api_key_file=key_file,
        tls_certificate=certificate,
        tls_key=tls_key,
        **settings,
    )
    return SecuredOptions(options, key_file, certificate)


@contextlib.contextmanager
def secured_cluster(
    repository: Path, replicas: int, work: Path, keys: list[str], **settings: Any
) -> Iterator[tuple[Cluster, SecuredOptions]]:
    """A running ``Cluster`` with ``secured_cluster_options``, and those options; stopped on
    exit."""
    secured = secured_cluster_options(repository, replicas, work, keys, **settings)
    with Cluster(secured.options) as running:
        yield running, secured


def announce_oversized_body(
    connection: http.client.HTTPConnection, path: str, length: int, headers: dict[str, str]
) -> http.client.HTTPResponse:
    """POST to ``path`` declaring a ``length``-byte body but sending only its first 4 KiB: nginx
    judges the declared length before reading the body, so no test needs to send it whole."""
    connection.putrequest("POST", path)
    for name, value in {**headers, "Content-Length": str(length)}.items():
        connection.putheader(name, value)
    connection.endheaders()
    connection.send(b"\0" * 4096)
    return connection.getresponse()
