"""Run the real Triton Inference Server binary from the ``nvidia-pytriton`` wheel, without Docker.

The wheel ships tritonserver 2.51 (the core of the NGC ``tritonserver:24.10-py3`` container) with
its shared libraries and the Python backend, but no ONNX Runtime backend. ``EmbeddedServer`` lays
out a backend directory in which ``python/`` is the wheel's Python backend (with the stub for the
running Python) and ``<name>/model.py`` holds each Python-based backend this project ships
(``onnxruntime``, ``openvino``), then starts the binary on 127.0.0.1 with explicit model control
and waits until it is ready.
"""

from __future__ import annotations

import collections
import compileall
import contextlib
import ctypes
import filecmp
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from resnet18_triton import contract
from resnet18_triton.errors import ServerStartError, StartAborted
from resnet18_triton.repository.layout import (
    backend_source,
    missing_files,
    served_models,
    shipped_backends,
)
from resnet18_triton.repository.transaction import hold_served
from resnet18_triton.server import load_failures
from resnet18_triton.server.watchdog import StubRecovery, StubWatchdog

RESTRICTED_APIS = "model-repository,shared-memory,logging,trace"
# prctl(2) option: the signal the child gets when its parent dies.
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class TritonInstall:
    """Paths inside the installed ``nvidia-pytriton`` wheel."""

    server_binary: Path
    library_dir: Path
    python_backend_dir: Path
    python_stub: Path
    cache_dir: Path

    @classmethod
    def locate(cls) -> TritonInstall:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or spec.origin is None:
            raise ServerStartError(
                "the Triton server binary is not installed: pip install 'resnet18-triton[server]'"
            )
        package = Path(spec.origin).parent
        triton = package / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        install = cls(
            server_binary=triton / "bin" / "tritonserver",
            library_dir=package.parent / "nvidia_pytriton.libs",
            python_backend_dir=triton / "backends" / "python",
            python_stub=triton / "python_backend_stubs" / version / "triton_python_backend_stub",
            cache_dir=triton / "caches",
        )
        install.check()
        return install

    def check(self) -> None:
        for path in (
            self.server_binary,
            self.library_dir,
            self.python_backend_dir,
            self.python_stub,
        ):
            if not path.exists():
                raise ServerStartError(
                    f"the nvidia-pytriton install is incomplete: {path} is missing (a Python "
                    f"{sys.version_info.major}.{sys.version_info.minor} stub is needed); "
                    "reinstall with pip install --force-reinstall 'resnet18-triton[server]'"
                )


# The Python backend's per-stub shared memory (requests in, responses out). Triton 2.51 starts
# each stub's region at 1 MiB and grows it 1 MiB at a time; the largest tensor of this repository
# is a full batch of uint8 pixels, MAX_BATCH_SIZE x 3 x 224 x 224 = 1.2 MB (the preprocess output,
# the classifier input; JPEG requests of 500x375 are ~60 KB per image). Room for that batch in
# and out twice over (a request being read while the previous response is still held) means no
# stub ever grows its region under the default batch limits.
PIXEL_BATCH_BYTES = contract.MAX_BATCH_SIZE * contract.CHANNELS * contract.IMAGE_SIZE**2
PYTHON_SHM_DEFAULT_BYTES = -(-4 * PIXEL_BATCH_BYTES // 2**20) * 2**20  # rounded up to MiB
PYTHON_SHM_GROWTH_BYTES = -(-PIXEL_BATCH_BYTES // 2**20) * 2**20


def shared_memory_arguments(default_bytes: int, growth_bytes: int) -> list[str]:
    """``--backend-config`` flags sizing the stub shared memory of the Python backend and of each
    Python-based backend we ship (each has its own settings, under its own name)."""
    return [
        f"--backend-config={backend},{key}={value}"
        for backend in ("python", *shipped_backends())
        for key, value in (
            ("shm-default-byte-size", default_bytes),
            ("shm-growth-byte-size", growth_bytes),
        )
    ]


@dataclass
class ServerOptions:
    """How to start the server. Defaults are the safe ones: loopback only, explicit loading."""

    repository: Path
    host: str = contract.DEFAULT_HOST
    http_port: int = contract.DEFAULT_HTTP_PORT
    grpc_port: int = contract.DEFAULT_GRPC_PORT
    metrics_port: int = contract.DEFAULT_METRICS_PORT
    # Models to load, in order; None: every classifier of the repository (layout.served_models).
    models: tuple[str, ...] | None = None
    admin_key: str | None = None
    response_cache_bytes: int = 0
    exit_timeout_s: int = contract.SERVER_EXIT_TIMEOUT_S
    ready_timeout_s: float = contract.SERVER_READY_TIMEOUT_S
    log_verbose: int = 0
    python_shm_default_bytes: int = PYTHON_SHM_DEFAULT_BYTES
    python_shm_growth_bytes: int = PYTHON_SHM_GROWTH_BYTES
    # p50/p99 of queue and compute time per model on the metrics port (Prometheus summaries),
    # which the Grafana dashboard in deploy/grafana plots.
    summary_latencies: bool = True
    extra_args: tuple[str, ...] = ()
    # Triton 2.51's Python backend never restarts a stub that died (SIGKILL, OOM kill): the
    # model stays READY but answers 500 "Stub process ... is not healthy" forever. The launcher
    # watches the stubs and reloads the model of a dead one (docs/reliability.md).
    restart_dead_stubs: bool = True
    watchdog_interval_s: float = 0.5
    # A backend directory prepared ahead of time (``prepare_backend_directory``), used as it is and
    # never written to; None: a private copy in a temporary directory for each start. A container
    # prepares it in the image, so that a read-only root with a noexec /tmp still serves.
    backend_dir: Path | None = None
    # The malloc tritonserver and its stubs run with (``ALLOCATORS``): tcmalloc when installed.
    allocator: str = "tcmalloc"
    # A per-start secret when none is given: the restricted endpoints stay closed by default.
    generated_admin_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    @property
    def effective_admin_key(self) -> str:
        return self.admin_key or self.generated_admin_key

    @property
    def load_order(self) -> tuple[str, ...]:
        """The models the server loads: ``models``, or every classifier in the repository."""
        return self.models if self.models is not None else served_models(self.repository)

    @property
    def http_url(self) -> str:
        return connect_address(self.host, self.http_port)


def connect_address(host: str, port: int) -> str:
    """``host:port`` a local client can connect to for a server listening on ``host``.

    A wildcard listener is reached through the loopback of its family; IPv6 literals get
    brackets (``[::1]:8000``), as URLs require.
    """
    loopback = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}
    target = loopback.get(host, host).strip("[]")
    return f"[{target}]:{port}" if ":" in target else f"{target}:{port}"


def http_host(host: str) -> str:
    """Triton's HTTP and metrics servers (libevhtp) parse a bare address as IPv4 (``::1``
    becomes 255.255.255.255); an ``ipv6:`` prefix makes them bind the IPv6 address."""
    bare = host.strip("[]")
    return f"ipv6:{bare}" if ":" in bare else bare


def grpc_host(host: str) -> str:
    """gRPC joins host and port with a colon, so an IPv6 literal needs its brackets there."""
    bare = host.strip("[]")
    return f"[{bare}]" if ":" in bare else bare


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


# Ports ``free_port`` gave this process: the OS may give a port it returned a moment ago once
# more, before the first caller binds it (a replica's HTTP and metrics ports once came out equal).
_GIVEN_PORTS: set[int] = set()
_GIVEN_PORTS_LOCK = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now, and one this process was not given before (used to run
    servers side by side)."""
    with _GIVEN_PORTS_LOCK:
        while True:
            with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
                probe.bind((host.strip("[]"), 0))
                port: int = probe.getsockname()[1]
            if port not in _GIVEN_PORTS:
                _GIVEN_PORTS.add(port)
                return port


def check_port_free(host: str, port: int, what: str) -> None:
    """Refuse to start when something listens on the port.

    ``SO_REUSEADDR``, as the server's own listener uses: connections of a previous run still in
    TIME_WAIT do not count as "in use", so ``serve`` can be restarted at once.
    """
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as error:
            raise ServerStartError(
                f"cannot listen for {what} on {host}:{port}: {error.strerror or error} "
                f"(another server running? choose another --{what}-port)"
            ) from None


def build_backend_directory(install: TritonInstall, target: Path) -> Path:
    """``target/python`` = the wheel's Python backend + stub; ``target/<name>/model.py`` for each
    of our Python-based backends (``layout.shipped_backends``).

    Copies, not symlinks: Triton refuses a backend library whose real path escapes the backend
    directory.
    """
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in install.python_backend_dir.iterdir():
        if source.is_file():
            shutil.copy2(source, python_dir / source.name)
    shutil.copy2(install.python_stub, python_dir / "triton_python_backend_stub")
    for name in shipped_backends():
        backend_dir = target / name
        backend_dir.mkdir()
        shutil.copy2(backend_source(name), backend_dir / "model.py")
    return target


def backend_directory_files(install: TritonInstall) -> dict[str, Path]:
    """Path inside a backend directory -> the installed file it must be a copy of."""
    files = {
        f"python/{source.name}": source
        for source in install.python_backend_dir.iterdir()
        if source.is_file()
    }
    files["python/triton_python_backend_stub"] = install.python_stub
    files.update({f"{name}/model.py": backend_source(name) for name in shipped_backends()})
    return files


def check_backend_directory(install: TritonInstall, directory: Path) -> None:
    """Refuse a prepared backend directory that is missing a file or holds a stale copy.

    A stale copy (another release's backend left in an image layer or a mounted volume) would
    serve with code the installed package does not have, so every file must equal the installed
    one byte for byte (about 20 MB read, a few milliseconds).
    """
    for relative, source in backend_directory_files(install).items():
        copy = directory / relative
        if not copy.is_file() or not filecmp.cmp(copy, source, shallow=False):
            state = "is missing" if not copy.is_file() else "differs from the installed package"
            raise ServerStartError(
                f"the backend directory {directory} is not prepared for this install ({relative} "
                f"{state}): remove it and run `python -m resnet18_triton.server.embedded "
                f"{directory}`, or leave --backend-dir unset"
            )


def prepare_backend_directory(target: Path) -> Path:
    """Lay out a backend directory at ``target`` (new or empty) for ``ServerOptions.backend_dir``.

    Container images call this at build time (``python -m resnet18_triton.server.embedded DIR``).
    """
    if target.exists() and any(target.iterdir()):
        raise ServerStartError(f"{target} is not empty: give a new or empty directory")
    install = TritonInstall.locate()
    build_backend_directory(install, target)
    # The stubs' embedded Python ignores PYTHONDONTWRITEBYTECODE and would write __pycache__ here
    # at the first start: compiled now, the directory is never written again.
    compileall.compile_dir(str(target), quiet=1)
    check_backend_directory(install, target)
    return target


# Triton's own advice for memory that glibc keeps after large, short-lived allocations (request
# bodies): preload tcmalloc or jemalloc. tcmalloc held a flood's growth lowest here
# (docs/decisions.md, "Bounded queues"). Debian's libtcmalloc-minimal4 (scripts/setup.sh, image).
ALLOCATORS = ("tcmalloc", "system")
TBB_NO_DEEPBIND = {"TBB_ENABLE_SANITIZERS": "1"}
TCMALLOC_LIBRARY = "libtcmalloc_minimal.so.4"
_LIBRARY_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
)


def allocator_library(allocator: str, search: tuple[str, ...] = _LIBRARY_DIRS) -> Path | None:
    """The library to preload for ``allocator`` (``ALLOCATORS``); None for glibc's own malloc,
    or when tcmalloc is not installed (the server then runs as before)."""
    if allocator == "system":
        return None
    if allocator != "tcmalloc":
        raise ServerStartError(f"unknown allocator {allocator!r}: choose one of {ALLOCATORS}")
    return next(
        (path for path in (Path(d) / TCMALLOC_LIBRARY for d in search) if path.is_file()), None
    )


def server_environment(install: TritonInstall, preload: Path | None = None) -> dict[str, str]:
    """LD_LIBRARY_PATH for the bundled libraries; this interpreter's bin/ first on PATH;
    ``preload`` (an allocator, ``allocator_library``) first in LD_PRELOAD.

    The Python stub finds its site-packages through the first ``python3`` on PATH, so without
    the virtual environment's ``bin/`` in front it cannot import numpy or onnxruntime.
    """
    env = dict(os.environ)
    if preload is not None:
        env["LD_PRELOAD"] = " ".join(filter(None, [str(preload), env.get("LD_PRELOAD")]))
        # oneTBB (under OpenVINO) dlopens tbbbind with RTLD_DEEPBIND, so the hwloc it brings
        # binds free() to glibc's while glibc's own helpers allocate with the preloaded malloc:
        # hwloc then frees a tcmalloc pointer with glibc and the OpenVINO stub dies at its first
        # compile. This variable is oneTBB's documented switch to load without RTLD_DEEPBIND
        # (docs/decisions.md, "OpenVINO under tcmalloc").
        env.update(TBB_NO_DEEPBIND)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        filter(None, [str(install.library_dir), env.get("LD_LIBRARY_PATH")])
    )
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def server_arguments(options: ServerOptions, install: TritonInstall, backends: Path) -> list[str]:
    key = f"{contract.ADMIN_KEY_HEADER}={options.effective_admin_key}"
    args = [
        str(install.server_binary),
        f"--model-repository={options.repository}",
        "--model-control-mode=explicit",
        *[f"--load-model={name}" for name in options.load_order],
        f"--backend-directory={backends}",
        f"--http-address={http_host(options.host)}",
        f"--http-port={options.http_port}",
        f"--grpc-address={grpc_host(options.host)}",
        f"--grpc-port={options.grpc_port}",
        f"--metrics-address={http_host(options.host)}",
        f"--metrics-port={options.metrics_port}",
        f"--http-restricted-api={RESTRICTED_APIS}:{key}",
        f"--grpc-restricted-protocol={RESTRICTED_APIS}:{key}",
        f"--exit-timeout-secs={options.exit_timeout_s}",
        f"--log-verbose={options.log_verbose}",
        "--strict-readiness=true",
        *shared_memory_arguments(options.python_shm_default_bytes, options.python_shm_growth_bytes),
    ]
    if options.summary_latencies:
        args.append("--metrics-config=summary_latencies=true")
    if options.response_cache_bytes > 0:
        args += [
            f"--cache-directory={install.cache_dir}",
            f"--cache-config=local,size={options.response_cache_bytes}",
        ]
    return args + list(options.extra_args)


_PR_SET_PDEATHSIG = 1  # prctl option: signal to get when the parent dies


def _die_with_parent() -> None:
    """In the child: get SIGKILL if the launcher dies, so no tritonserver is ever orphaned."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class EmbeddedServer:
    """A tritonserver child process. Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(self, options: ServerOptions, log_stream: TextIO | None = None) -> None:
        self.options = options
        self.log_stream = log_stream
        self.process: subprocess.Popen[str] | None = None
        self._log_tail: collections.deque[str] = collections.deque(maxlen=400)
        self._backends: Path | None = None
        self._owned_backends: Path | None = None
        self._reader: threading.Thread | None = None
        self._watchdog: StubWatchdog | None = None
        self._served_marker: int | None = None
        # A plain flag, not an Event: it is set from a signal handler, which must take no lock.
        self._aborted = False

    @property
    def url(self) -> str:
        return self.options.http_url

    @property
    def pid(self) -> int:
        """The tritonserver process id; ServerStartError before ``start()`` or after ``stop()``."""
        if self.process is None:
            raise ServerStartError("the server is not running: call start() first")
        return self.process.pid

    @property
    def log_tail(self) -> str:
        return "".join(self._log_tail)

    def start(self) -> EmbeddedServer:
        install = TritonInstall.locate()
        repository = self.options.repository
        missing = missing_files(repository)
        if missing:
            listed = ", ".join(str(path.relative_to(repository)) for path in missing[:4])
            raise ServerStartError(
                f"the model repository {repository} is not ready ({listed} missing): "
                "run `resnet18-triton export --weights random` (or imagenet / PATH) first"
            )
        for what, port in (
            ("http", self.options.http_port),
            ("grpc", self.options.grpc_port),
            ("metrics", self.options.metrics_port),
        ):
            check_port_free(self.options.host, port, what)
        self._backends = self._backend_directory(install)
        # Export refuses to replace a classifier of a served repository (publish instead).
        self._served_marker = hold_served(repository)
        self.process = subprocess.Popen(
            server_arguments(self.options, install, self._backends),
            env=server_environment(install, allocator_library(self.options.allocator)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group: stop() can reach every stub
            preexec_fn=_die_with_parent,
        )
        self._reader = threading.Thread(target=self._pump_log, daemon=True)
        self._reader.start()
        try:
            self.wait_ready(self.options.ready_timeout_s)
        except BaseException:
            # Nothing is in flight before ready: no need to wait out the exit timeout.
            self.stop(grace_s=1.0)
            raise
        if self.options.restart_dead_stubs:
            self._watchdog = StubWatchdog(self, self.options.watchdog_interval_s).start()
        return self

    def _backend_directory(self, install: TritonInstall) -> Path:
        """The prepared directory when one is given, else a private copy (removed on stop)."""
        if self.options.backend_dir is not None:
            check_backend_directory(install, self.options.backend_dir)
            return self.options.backend_dir
        self._owned_backends = build_backend_directory(
            install, Path(tempfile.mkdtemp(prefix="resnet18-triton-backends-"))
        )
        return self._owned_backends

    @property
    def stub_recoveries(self) -> list[StubRecovery]:
        """Dead stubs the watchdog found and the model reloads it did, oldest first."""
        return list(self._watchdog.recoveries) if self._watchdog is not None else []

    def log_note(self, message: str) -> None:
        """Add a launcher message to the server log (tail and stream)."""
        line = f"[resnet18-triton] {message}\n"
        self._log_tail.append(line)
        if self.log_stream is not None:
            try:
                self.log_stream.write(line)
                self.log_stream.flush()
            except (OSError, ValueError):  # the stream was closed under us
                pass

    def _pump_log(self) -> None:
        """Drain the server's output until it closes, whatever happens to the log stream.

        An undrained pipe blocks tritonserver and its stubs once 64 KiB of log is buffered, so
        a failing stream is dropped (noted in the tail), never allowed to end this loop.
        """
        assert self.process is not None and self.process.stdout is not None
        stdout = self.process.stdout
        while True:
            try:
                line = stdout.readline()
            except (OSError, ValueError):  # the pipe was closed under us: nothing left to drain
                return
            if not line:
                return
            self._log_tail.append(line)
            self._forward(line)

    def _forward(self, line: str) -> None:
        if self.log_stream is None:
            return
        try:
            self.log_stream.write(line)
            self.log_stream.flush()
        except Exception as error:  # a full disk or a closed stream must not stop the drain
            self.log_stream = None
            self._log_tail.append(
                f"[resnet18-triton] log stream failed ({type(error).__name__}: {error}); "
                "the server log is kept in memory only from here on\n"
            )

    def is_ready(self, timeout_s: float = 2.0) -> bool:
        """True when the server answers ready within ``timeout_s``; no answer counts as False."""
        try:
            with urllib.request.urlopen(
                f"http://{self.url}/v2/health/ready", timeout=timeout_s
            ) as reply:
                status: int = reply.status
                return status == 200
        except (urllib.error.URLError, OSError):
            return False

    def abort_start(self) -> None:
        """Make a ``start()`` in progress give up within 0.2 s (safe to call from a signal handler:
        it takes no lock)."""
        self._aborted = True

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._aborted:
                raise StartAborted("start-up interrupted by a signal; the server was stopped")
            if self.process is None or self.process.poll() is not None:
                raise ServerStartError(self._explain_exit())
            if self.is_ready(timeout_s=1.0):
                return
            time.sleep(0.2)
        raise ServerStartError(
            f"the server did not become ready within {timeout_s:.0f} s; last log lines:\n"
            + self._last_lines(15)
        )

    def _last_lines(self, count: int) -> str:
        return "".join(list(self._log_tail)[-count:])

    def _explain_exit(self) -> str:
        if self._reader is not None:
            self._reader.join(timeout=2)
        log = self.log_tail
        code = self.process.returncode if self.process else None
        if "Address already in use" in log or "address already in use" in log:
            reason = "a port is already in use"
        elif explained := load_failures.explain(log, self.options.repository):
            return f"the server failed to start: {explained}"
        elif "failed to load" in log.lower():
            reason = "a model failed to load"
        else:
            reason = f"tritonserver exited with code {code}"
        return f"the server failed to start: {reason}; last log lines:\n{self._last_lines(15)}"

    def stop(self, grace_s: float | None = None) -> int | None:
        """SIGTERM, wait for in-flight requests, then SIGKILL the process group.

        ``grace_s`` is how long the server may take to exit before it is killed (default: the
        exit timeout plus 15 s).
        """
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        process, self.process = self.process, None
        code = None
        if grace_s is None:
            grace_s = self.options.exit_timeout_s + 15
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                code = None
            _kill_group(process.pid)
            if code is None:
                code = process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._backends = None
        if self._owned_backends is not None:
            shutil.rmtree(self._owned_backends, ignore_errors=True)
            self._owned_backends = None
        if self._served_marker is not None:
            os.close(self._served_marker)
            self._served_marker = None
        return code

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _kill_group(pid: int) -> None:
    """Stubs live in the server's process group; none may survive the server."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m resnet18_triton.server.embedded BACKEND_DIR")
    try:
        print(prepare_backend_directory(Path(sys.argv[1])))
    except ServerStartError as error:
        sys.exit(f"error: {error}")
