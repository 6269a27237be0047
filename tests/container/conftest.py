"""A real Docker engine, the project's images built from this checkout, and a model repository.

The engine: the one that answers ``docker info`` (then the images get a tag of their own, removed
at the end), else a private ``dockerd`` started here with the flags this machine kind needs (vfs,
no bridge, no iptables, host networking), its data root in a temporary directory, stopped by its
PID and removed at the end. Starting one needs root; outside CI a machine without an engine skips
these tests, in CI it fails them.

The engine and the server and proxy images take minutes and need nothing from the other tests,
so they are made in a thread (``Prebuild``) that starts when collection ends, while the rest of
the suite runs; the container tests run last and wait for it. Only the model-repository image,
which copies the repository fixture, is built when they start.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.compose_support import REPO_ROOT
from tests.container_support import SECOND_CLASSIFIER, SECOND_SEED, Engine, Repository

ENGINE_START_TIMEOUT_S = 60
BUILD_TIMEOUT_S = 1500


def _is_container_test(item: pytest.Item) -> bool:
    return "tests/container/" in str(item.fspath)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _is_container_test(item):
            item.add_marker(pytest.mark.container)
            # The first test waits for the images' build (session fixture), which may take up to
            # BUILD_TIMEOUT_S on vfs: the suite's per-test time-out would cut it short.
            item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT_S + 300))
    # Last, so that the images build while everything else runs (``Prebuild``).
    items.sort(key=_is_container_test)


def pytest_collection_finish(session: pytest.Session) -> None:
    # Not for --collect-only: no fixture teardown would run, and the engine would outlive pytest.
    if session.config.option.collectonly:
        return
    if any(_is_container_test(item) for item in session.items):
        PREBUILD.start()


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _answers(env: dict[str, str]) -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "info"], env=env, capture_output=True, timeout=30)
    return result.returncode == 0


def _start_dockerd(root: Path) -> subprocess.Popen[bytes]:
    socket_path = root / "docker.sock"
    log = (root / "dockerd.log").open("wb")
    process = subprocess.Popen(
        [
            "dockerd",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--storage-driver=vfs",
            f"--data-root={root / 'data'}",
            f"--exec-root={root / 'exec'}",
            f"--pidfile={root / 'dockerd.pid'}",
            f"--host=unix://{socket_path}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    env = {**os.environ, "DOCKER_HOST": f"unix://{socket_path}"}
    deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if socket_path.exists() and _answers(env):
            return process
        time.sleep(0.5)
    process.kill()
    tail = (root / "dockerd.log").read_text(errors="replace")[-3000:]
    pytest.fail(f"dockerd did not answer within {ENGINE_START_TIMEOUT_S} s:\n{tail}")


def _stop_dockerd(process: subprocess.Popen[bytes], root: Path) -> None:
    pid_file = root / "dockerd.pid"
    pid = int(pid_file.read_text()) if pid_file.exists() else process.pid
    os.kill(pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _own_engine() -> tuple[Engine, subprocess.Popen[bytes] | None, Path | None]:
    """The engine that answers, else a private dockerd (its process and root folder)."""
    if _answers(dict(os.environ)):
        # Someone else's engine: a tag of this session's own, removed at the end.
        return Engine(dict(os.environ), f"test-{uuid.uuid4().hex[:8]}"), None, None
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        raise EngineUnavailable(
            "no Docker engine answers and none can be started here (needs root and dockerd: "
            "apt-get install docker.io)"
        )
    # Short path: dockerd's and containerd's sockets live under the exec root.
    root = Path(tempfile.mkdtemp(prefix="r18d-", dir="/tmp"))
    process = _start_dockerd(root)
    return (
        Engine({**os.environ, "DOCKER_HOST": f"unix://{root / 'docker.sock'}"}, "0.1.0"),
        process,
        root,
    )


class EngineUnavailable(Exception):
    """No engine answers and none can be started here."""


@dataclass
class Prebuild:
    """The engine, then ``scripts/build-image.sh`` for the server and proxy images, in a thread."""

    engine: Engine | None = None
    process: subprocess.Popen[bytes] | None = None
    root: Path | None = None
    error: BaseException | None = None
    build: subprocess.CompletedProcess[str] | None = None
    engine_ready: threading.Event = field(default_factory=threading.Event)
    built: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _stopped: bool = False

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="prebuild", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self.engine, self.process, self.root = _own_engine()
        except BaseException as error:  # reported by the engine fixture, in the main thread
            self.error = error
        finally:
            self.engine_ready.set()
        try:
            if self.engine is not None:
                self.build = subprocess.run(
                    ["bash", "scripts/build-image.sh", "--tag", self.engine.tag],
                    cwd=REPO_ROOT,
                    env=self.engine.env,
                    capture_output=True,
                    text=True,
                    timeout=BUILD_TIMEOUT_S,
                )
        except BaseException as error:
            self.error = error
        finally:
            self.built.set()

    def stop(self, build_wait_s: float) -> None:
        """Undo ``start``, once: remove the images from an engine that was running already, or
        stop the private engine and remove its data. First waits up to ``build_wait_s`` for a
        build still running (always to its end on an engine that stays up, which would keep the
        images a late build makes); a private engine stopped under a build ends it."""
        if self._thread is None or self._stopped:
            return
        self._stopped = True
        self.engine_ready.wait()
        engine = self.engine
        if engine is None:
            return
        if self.process is None:
            self.built.wait(timeout=BUILD_TIMEOUT_S)
            _remove_images(engine)
            return
        self.built.wait(timeout=build_wait_s)
        engine.docker("rm", "-f", *engine.docker("ps", "-aq").split(), check=False)
        _stop_dockerd(self.process, self.root)
        self.built.wait(timeout=60)
        assert self.root is not None
        _unmount_below(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


PREBUILD = Prebuild()


def pytest_sessionfinish(session: pytest.Session) -> None:
    # A run that ends before any container test used the engine (-x after an early failure, an
    # interrupt) never tears the engine fixture down: stop the engine here, at once, rather than
    # leave a dockerd behind. After the fixture did, this does nothing.
    PREBUILD.stop(build_wait_s=0)


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    PREBUILD.start()  # already running unless collection was skipped
    PREBUILD.engine_ready.wait()
    if isinstance(PREBUILD.error, EngineUnavailable):
        _unavailable(str(PREBUILD.error))
    if PREBUILD.error is not None and PREBUILD.engine is None:
        raise PREBUILD.error
    assert PREBUILD.engine is not None
    try:
        yield PREBUILD.engine
    finally:
        # A build still running (an early failure) must not outlive the engine.
        PREBUILD.stop(build_wait_s=BUILD_TIMEOUT_S)


def _unmount_below(root: Path) -> None:
    """dockerd leaves its network namespace mounted under the exec root (nsfs): unmount what is
    left below ``root``, deepest first, so that the folder can be removed."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", mount], capture_output=True, timeout=30)


def _remove_images(engine: Engine) -> None:
    for name in ("server", "proxy", "model-repository"):
        engine.docker("rmi", "-f", f"resnet18-triton/{name}:{engine.tag}", check=False)


@pytest.fixture(scope="session")
def repository() -> Iterator[Repository]:
    """The digits classifier as ``resnet18`` with every registered variant (the real ``quantize``
    and ``openvino``, at this CPU's default precision), plus a second classifier exported with
    ``--name``; readable by the containers' non-root user (pytest's own temporary folders are
    private to root)."""
    from click.testing import CliRunner

    from resnet18_triton.contract import ClassifierNames
    from resnet18_triton.cpu_flags import cpu_flags
    from resnet18_triton.export.cli.export import export
    from tests.digits import digits_int8_repository, digits_model
    from tests.support import tree_snapshot
    from tests.variant_support import one_precision_each, write_matrix

    work = Path(tempfile.mkdtemp(prefix="r18-container-"))
    try:
        repo, _ = digits_int8_repository(work)
        result = CliRunner().invoke(
            export,
            ["--repo", str(repo), "--weights", "random", "--seed", str(SECOND_SEED),
             "--name", SECOND_CLASSIFIER],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        write_matrix(repo, one_precision_each(ClassifierNames.of(), cpu_flags()), work)
        for path in [work, *work.rglob("*")]:
            path.chmod(
                path.stat().st_mode | 0o055 if path.is_dir() else path.stat().st_mode | 0o044
            )
        model, splits, _ = digits_model()
        exported = tree_snapshot(repo, directories=False)
        yield Repository(repo, model, list(splits["held_out"][0][:8]), exported)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def images(engine: Engine, repository: Repository) -> Engine:
    """``scripts/build-image.sh`` on this checkout: the server and proxy images (``Prebuild``),
    then the model-repository image of ``repository``."""
    PREBUILD.built.wait()
    if PREBUILD.error is not None:
        raise PREBUILD.error
    assert PREBUILD.build is not None
    assert PREBUILD.build.returncode == 0, PREBUILD.build.stderr[-5000:]
    result = subprocess.run(
        [
            "bash",
            "scripts/build-image.sh",
            "--tag",
            engine.tag,
            "--repository",
            str(repository.path),
            "--repository-only",
        ],
        cwd=REPO_ROOT,
        env=engine.env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return engine
