"""The built wheel, installed (not editable) into a fresh virtual environment, works end to end.

The wheel is built from a copy of the project (so no build output lands in the checkout) and
installed with ``--no-deps``; the dependencies come from the test's own environment through one
``.pth`` line in the fresh environment's site-packages (reinstalling torch would take minutes).
Then, from an empty working directory with only the fresh environment's ``bin/`` first on PATH:
``export``, ``serve``, ``classify`` and ``health``, as a user on a new machine runs them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from resnet18_triton.perf.harness import serve_port_arguments
from resnet18_triton.server.embedded import free_port
from tests.support import SAMPLE_FILES, TorchReference, stop_process

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT_S = 600
READY_TIMEOUT_S = 300
TRITON_CODE = (
    "resnet18_triton/server/backends/onnxruntime/model.py",
    "resnet18_triton/server/models/preprocess/model.py",
)


def _run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, **kwargs
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    copy = work / "project"
    shutil.copytree(
        PROJECT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT / name, copy / name)
    dist = work / "dist"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    _run([*pip_wheel, "--no-index", "-w", str(dist), str(copy)])
    (built,) = dist.glob("resnet18_triton-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "fresh"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install"]
    _run([*install, "--no-deps", "--no-index", str(wheel)])
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    # Appended after the fresh site-packages: the installed wheel wins over any other copy.
    dependencies = sysconfig.get_paths()["purelib"]
    (Path(site.stdout.strip()) / "resnet18_triton_test_dependencies.pth").write_text(
        dependencies + "\n"
    )
    return venv


@pytest.fixture()
def user_env(fresh_venv: Path) -> dict[str, str]:
    """The environment of a user who installed the wheel: its bin/ first, nothing of ours set."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "PYTHONPATH" and not key.startswith("RESNET18_TRITON_")
    }
    env["PATH"] = f"{fresh_venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(fresh_venv)
    return env


def test_the_wheel_ships_the_code_that_runs_inside_triton_and_the_proxys_files(
    wheel: Path,
) -> None:
    """Besides the models' code, every file the proxy renders from (its template, the njs and Lua
    scripts it embeds): ``cluster`` from the wheel reads them all."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert set(TRITON_CODE) <= names
    package = PROJECT / "src/resnet18_triton"
    proxy_files = {
        path.relative_to(package.parent).as_posix()
        for path in (package / "deploy").iterdir()
        if path.is_file() and path.suffix != ".py"
    }
    assert {"resnet18_triton/deploy/tenant_queue.lua"} <= proxy_files <= names
    assert not any(name.startswith(("tests/", "src/")) for name in names)


def test_the_installed_wheel_exports_serves_and_classifies_from_an_empty_directory(
    fresh_venv: Path, user_env: dict[str, str], tmp_path: Path
) -> None:
    cwd = tmp_path / "empty"
    cwd.mkdir()
    command = shutil.which("resnet18-triton", path=user_env["PATH"])
    assert command is not None and Path(command).parent == fresh_venv / "bin"
    # The library's public names come from the wheel, with the wheel's version.
    imported = _run(
        ["python", "-c", "import resnet18_triton as r; r.ImageClassifier; "
         "print(r.__file__); print(r.__version__)"],
        cwd=cwd,
        env=user_env,
    )  # fmt: skip
    location, version = imported.stdout.split()
    assert Path(location).is_relative_to(fresh_venv), imported.stdout
    assert version == importlib.metadata.version("resnet18-triton"), imported.stdout

    exported = _run(
        ["resnet18-triton", "export", "--weights", "random", "--repo", "repo"],
        cwd=cwd,
        env=user_env,
    )
    assert "model repository ready" in exported.stderr

    url = f"127.0.0.1:{free_port()}"
    with _serving(cwd, user_env, url) as server:
        _wait_healthy(url, cwd, user_env, server)
        photo = SAMPLE_FILES[0]
        answer = _run(
            ["resnet18-triton", "classify", "--url", url, "--json", str(photo)],
            cwd=cwd,
            env=user_env,
        )
        health = _run(["resnet18-triton", "health", "--url", url], cwd=cwd, env=user_env)

    (line,) = [json.loads(text) for text in answer.stdout.splitlines()]
    expected = TorchReference(seed=0).probabilities([photo.read_bytes()])[0]
    assert [entry["index"] for entry in line["top"]] == list(np.argsort(-expected)[:5])
    for entry in line["top"]:
        assert abs(entry["probability"] - expected[entry["index"]]) < 1e-6
    assert "ready: yes" in health.stdout


@contextlib.contextmanager
def _serving(cwd: Path, env: dict[str, str], url: str) -> Iterator[subprocess.Popen[str]]:
    """``resnet18-triton serve`` on free ports in the background; stopped with SIGINT."""
    command = ["resnet18-triton", "serve", "--repo", "repo", "--quiet"]
    command += serve_port_arguments(int(url.rsplit(":", 1)[1]))
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        stop_process(process, signal.SIGINT, timeout_s=120)
        process.stderr.close()


def _wait_healthy(url: str, cwd: Path, env: dict[str, str], server: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"serve exited with {server.returncode}: {server.stderr.read()}")
        probe = subprocess.run(
            ["resnet18-triton", "health", "--url", url],
            cwd=cwd,
            env=env,
            capture_output=True,
            timeout=60,
        )
        if probe.returncode == 0:
            return
        time.sleep(1)
    pytest.fail("serve did not become healthy in time")
