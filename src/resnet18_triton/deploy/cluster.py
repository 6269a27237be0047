"""N ordinary ``resnet18-triton serve`` processes behind the distribution's nginx, on one machine.

For tests and a user's trial of the replicated setup without Docker. Each replica is a separate
``serve`` process on its own loopback ports; nginx (rendered from the same template as the
compose and Kubernetes proxy) spreads requests and retries a failed one on the next replica.
Like a container's restart policy, the cluster starts a replica again when its process exits.

The replicas always listen on 127.0.0.1: only the proxy is bound to ``ClusterOptions.host``. A
proxy bound beyond loopback needs an API key file (or the explicit ``insecure_no_auth``); keys
are read from that file, and only their SHA-256 hashes are written for nginx.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from resnet18_triton import contract
from resnet18_triton.contract import ADMIN_KEY_ENV_VAR
from resnet18_triton.deploy import keys, proxy
from resnet18_triton.errors import ProxyError, ServerStartError
from resnet18_triton.repository.layout import missing_files
from resnet18_triton.server.embedded import free_port

SERVER_BINARY_NAME = "tritonserver"
# Replicas are reached by the proxy only, on this machine.
REPLICA_HOST = "127.0.0.1"
# The proxy's tenant metrics listen here, whatever host the proxy serves.
METRICS_HOST = "127.0.0.1"


def _term_with_parent() -> None:
    """In the child: SIGTERM when the cluster process dies, so nothing is orphaned."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def http_ok(url: str, timeout_s: float = 2.0, context: ssl.SSLContext | None = None) -> bool:
    """True when ``GET url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def child_pids(parent: int) -> list[int]:
    """Direct children of ``parent``, read from /proc (Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == parent:
            found.append(int(entry.name))
    return found


@dataclass
class Replica:
    """One ``resnet18-triton serve`` process and its ports."""

    index: int
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def upstream(self) -> proxy.Upstream:
        return proxy.Upstream(self.host, self.http_port, self.grpc_port)

    def is_ready(self) -> bool:
        return http_ok(f"http://{self.url}/v2/health/ready")

    def server_pid(self) -> int | None:
        """Process id of this replica's tritonserver (the child of its serve process)."""
        if self.process is None or self.process.poll() is not None:
            return None
        for pid in child_pids(self.process.pid):
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if name == SERVER_BINARY_NAME:
                return pid
        return None


@dataclass
class ClusterOptions:
    """How to run the cluster. Defaults: loopback only, two replicas, restart on exit."""

    repository: Path
    replicas: int = 2
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    admin_key: str | None = None
    workdir: Path | None = None
    ready_timeout_s: float = 300.0
    restart_replicas: bool = True
    serve_args: tuple[str, ...] = field(default_factory=tuple)
    # The proxy's edge: a key file (``keys`` format) turns API keys on; certificate and key
    # (PEM) turn TLS on for both ports. ``insecure_no_auth`` lets a non-loopback host run
    # without keys (behind a firewall or another authenticating proxy).
    api_key_file: Path | None = None
    insecure_no_auth: bool = False
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    limits: proxy.Limits = field(default_factory=proxy.Limits)
    access_log: bool = True
    # The proxy's tenant metrics (GET /metrics), always on loopback; 0 turns them off. They need
    # nginx's Lua module: without it the cluster runs without them (``Cluster.metrics_url``).
    metrics_port: int = proxy.METRICS_PORT


def check_edge(options: ClusterOptions) -> None:
    """``ProxyError`` when the options would expose the proxy unsafely or half-configured.

    Beyond loopback, a key file is required unless ``insecure_no_auth`` says otherwise; a
    certificate needs its key and the other way round; both files must be readable.
    """
    if options.api_key_file is not None and options.insecure_no_auth:
        raise ProxyError("--api-key-file and --insecure-no-auth contradict each other: pick one")
    if (
        options.api_key_file is None
        and not options.insecure_no_auth
        and not contract.is_loopback(options.host)
    ):
        raise ProxyError(
            f"refusing to serve on {options.host} without API keys: anyone who can reach it "
            "could run inferences. Make a key file with `resnet18-triton cluster keys add NAME "
            "--api-key-file keys.txt` and pass --api-key-file keys.txt (add --tls-cert and "
            "--tls-key for HTTPS), or pass --insecure-no-auth if a firewall or another proxy "
            "already authenticates callers"
        )
    if (options.tls_certificate is None) != (options.tls_key is None):
        raise ProxyError("TLS needs both --tls-cert and --tls-key (PEM files)")
    for path in (options.tls_certificate, options.tls_key):
        if path is not None and not path.is_file():
            raise ProxyError(f"the TLS file {path} does not exist")


class Cluster:
    """Start replicas, wait until each is ready, then nginx in front; ``stop()`` ends them all."""

    def __init__(self, options: ClusterOptions) -> None:
        if options.replicas < 1:
            raise ServerStartError("a cluster needs at least one replica")
        check_edge(options)
        if options.api_key_file is not None:
            keys.read_api_keys(options.api_key_file)  # a bad key file fails before any process
        self.options = options
        self.workdir = options.workdir or Path(tempfile.mkdtemp(prefix="resnet18-triton-cluster-"))
        self.replicas = [
            Replica(
                index=index,
                host=REPLICA_HOST,
                http_port=free_port(REPLICA_HOST),
                grpc_port=free_port(REPLICA_HOST),
                metrics_port=free_port(REPLICA_HOST),
                log_path=self.workdir / f"replica-{index}.log",
            )
            for index in range(1, options.replicas + 1)
        ]
        self.nginx: subprocess.Popen[bytes] | None = None
        self.settings: proxy.ProxySettings | None = None  # what nginx runs, once started
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._lock = threading.Lock()
        # Decided once: the metrics need the port and nginx's Lua module.
        self._metrics = None
        if options.metrics_port and proxy.TenantMetrics.available():
            self._metrics = proxy.TenantMetrics(f"{METRICS_HOST}:{options.metrics_port}")
        # Canaries (publish --canary) are routed by nginx's njs module, read from the repository.
        self.canary_routing = proxy.CanaryRouting.available()
        self._reload_lock = threading.Lock()

    @property
    def url(self) -> str:
        """HTTP address of the proxy (what clients use)."""
        return f"{self.options.host}:{self.options.http_port}"

    @property
    def scheme(self) -> str:
        """``https`` when the proxy terminates TLS, else ``http``."""
        return "https" if self.options.tls_certificate is not None else "http"

    @property
    def api_key_hashes(self) -> Path:
        """The hash -> name map nginx includes (written from the key file; holds no key)."""
        return self.workdir / "api-key-hashes.map"

    @property
    def access_log(self) -> Path:
        return self.workdir / "nginx-access.log"

    @property
    def metrics_url(self) -> str | None:
        """Where Prometheus scrapes the proxy's tenant metrics; None when they are off (port 0)
        or this nginx has no Lua module."""
        return None if self._metrics is None else f"http://{self._metrics.listen}/metrics"

    @property
    def grpc_url(self) -> str:
        return f"{self.options.host}:{self.options.grpc_port}"

    @property
    def nginx_config(self) -> Path:
        return self.workdir / "nginx.conf"

    def start(self) -> Cluster:
        try:
            self._check_startable()
        except Exception:
            # Nothing was written yet: the folder this cluster made goes too (one the caller
            # named stays).
            if self.options.workdir is None:
                with contextlib.suppress(OSError):  # rmdir refuses a folder that is not empty
                    self.workdir.rmdir()
            raise
        try:
            for replica in self.replicas:
                self._start_replica(replica)
            for replica in self.replicas:
                self.wait_replica_ready(replica, self.options.ready_timeout_s)
            self._start_proxy()
        except BaseException:
            self.stop()
            raise
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()
        return self

    def _check_startable(self) -> None:
        """``ServerStartError`` for a repository that is not filled, ``ProxyError`` when nginx is
        not installed: before any replica starts."""
        missing = missing_files(self.options.repository)
        if missing:
            raise ServerStartError(
                f"the model repository {self.options.repository} is not ready "
                f"({missing[0].relative_to(self.options.repository)} missing): run "
                "`resnet18-triton export` first"
            )
        proxy.nginx_binary()

    def _serve_command(self, replica: Replica) -> list[str]:
        return [
            sys.executable,
            "-m",
            "resnet18_triton.cli",
            "serve",
            f"--repo={self.options.repository}",
            f"--host={replica.host}",
            f"--http-port={replica.http_port}",
            f"--grpc-port={replica.grpc_port}",
            f"--metrics-port={replica.metrics_port}",
            *self.options.serve_args,
        ]

    def _start_replica(self, replica: Replica) -> None:
        env = dict(os.environ)
        if self.options.admin_key:
            # Through the environment, never on a command line other users can read.
            env[ADMIN_KEY_ENV_VAR] = self.options.admin_key
        with replica.log_path.open("ab") as log:
            replica.process = subprocess.Popen(
                self._serve_command(replica),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_term_with_parent,
            )
        replica.starts += 1

    def wait_replica_ready(self, replica: Replica, timeout_s: float) -> None:
        """Block until ``replica`` answers ready; ``ServerStartError`` with its log otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            process = replica.process
            # A first start that fails is a configuration problem: say so at once. A restarted
            # replica may exit again; the supervisor starts it once more, so keep waiting.
            if process is not None and process.poll() is not None and replica.starts == 1:
                raise ServerStartError(
                    f"replica {replica.index} exited with code {process.returncode}; "
                    f"last log lines:\n{_tail(replica.log_path)}"
                )
            if replica.is_ready():
                return
            time.sleep(0.3)
        raise ServerStartError(
            f"replica {replica.index} was not ready within {timeout_s:.0f} s; "
            f"last log lines:\n{_tail(replica.log_path)}"
        )

    def proxy_settings(self) -> proxy.ProxySettings:
        """The nginx settings of this cluster (writes the key hashes and the njs script)."""
        runtime = self.workdir / "nginx"
        script = self.workdir / proxy.NJS_SCRIPT_NAME
        if self.options.api_key_file is not None or self.canary_routing:
            script.write_text(proxy.script_text())
        auth = canaries = None
        if self.options.api_key_file is not None:
            self._write_key_hashes()
            auth = proxy.Auth(key_map=str(self.api_key_hashes), script=str(script))
        if self.canary_routing:
            repository = str(self.options.repository.resolve())
            canaries = proxy.CanaryRouting(repository=repository, script=str(script))
        tls = None
        if self.options.tls_certificate is not None and self.options.tls_key is not None:
            tls = proxy.Tls(str(self.options.tls_certificate), str(self.options.tls_key))
        return proxy.ProxySettings(
            upstreams=tuple(replica.upstream for replica in self.replicas),
            listen_http=self.url,
            listen_grpc=self.grpc_url,
            max_body_bytes=proxy.repository_body_limit(self.options.repository),
            runtime_dir=str(runtime),
            error_log=str(self.workdir / "nginx-error.log"),
            access_log=str(self.access_log) if self.options.access_log else "off",
            user=_root_user(),
            auth=auth,
            tls=tls,
            limits=self.options.limits,
            metrics=self._metrics,
            canaries=canaries,
        )

    def _write_key_hashes(self) -> int:
        assert self.options.api_key_file is not None
        api_keys = keys.read_api_keys(self.options.api_key_file)
        keys.write_private(self.api_key_hashes, keys.hash_map(api_keys))
        return len(api_keys)

    def _health_probe(self) -> tuple[str, ssl.SSLContext | None]:
        """URL and TLS context to see that this proxy is up (on loopback when bound to all)."""
        host = self.options.host
        if host in ("0.0.0.0", "::", "[::]"):
            host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
        context = None
        if self.scheme == "https":
            # Only "is nginx listening" is asked here; the certificate may name another host.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return f"{self.scheme}://{host}:{self.options.http_port}/v2/health/ready", context

    def _start_proxy(self) -> None:
        settings = self.settings = self.proxy_settings()
        runtime = Path(settings.runtime_dir)
        proxy.prepare_runtime_dir(runtime)
        self.nginx_config.write_text(proxy.render(settings))
        proxy.check_config(self.nginx_config, runtime)
        self.nginx = proxy.start_nginx(self.nginx_config, runtime, self.workdir / "nginx.log")
        url, context = self._health_probe()
        deadline = time.monotonic() + 15
        while not http_ok(url, context=context):
            if self.nginx.poll() is not None or time.monotonic() > deadline:
                errors = self.workdir / "nginx-error.log"
                raise ProxyError(
                    f"nginx did not start on {self.url}; last lines of {errors}:\n"
                    f"{_tail(errors, lines=5)}"
                )
            time.sleep(0.1)

    def reload_api_keys(self, timeout_s: float = 30.0) -> int:
        """Read the key file again and make nginx use it; returns the number of keys.

        Returns once every nginx worker that knew the old keys has exited, so a revoked key is
        refused from then on. ``ProxyError`` when keys are off, the file is invalid (the old
        keys stay in force) or nginx does not finish the reload in ``timeout_s``.
        """
        if self.options.api_key_file is None or self.nginx is None:
            raise ProxyError("this cluster runs without API keys: start it with --api-key-file")
        count = self._write_key_hashes()
        self._reload_nginx(timeout_s)
        return count

    def _reload_nginx(self, timeout_s: float | None) -> None:
        """Render the config again (keys), check it, and make nginx use it (SIGHUP: new
        workers take new requests, old ones finish theirs). With ``timeout_s``, returns once every
        old worker has exited."""
        assert self.nginx is not None
        with self._reload_lock:
            self.settings = self.proxy_settings()
            self.nginx_config.write_text(proxy.render(self.settings))
            proxy.check_config(self.nginx_config, self.workdir / "nginx")
            old_workers = set(child_pids(self.nginx.pid))
            self.nginx.send_signal(signal.SIGHUP)
        if timeout_s is None:
            return
        deadline = time.monotonic() + timeout_s
        while True:
            current = set(child_pids(self.nginx.pid))
            if current and not current & old_workers:
                return
            if self.nginx.poll() is not None or time.monotonic() > deadline:
                raise ProxyError(
                    f"nginx did not finish reloading; see {self.workdir}/nginx-error.log"
                )
            time.sleep(0.05)

    def _supervise(self) -> None:
        """Restart a replica whose serve process exited (its tritonserver died or was killed),
        when told to."""
        while not self._stopping.wait(0.5):
            if not self.options.restart_replicas:
                continue
            for replica in self.replicas:
                with self._lock:
                    if self._stopping.is_set():
                        return
                    if replica.process is not None and replica.process.poll() is not None:
                        self._start_replica(replica)

    def stop(self) -> None:
        """Stop nginx and every replica (SIGTERM: in-flight requests finish first)."""
        self._stopping.set()
        with self._lock:  # waits for a restart in progress, so its process is stopped too
            pass
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        processes = [replica.process for replica in self.replicas]
        if self.nginx is not None:
            processes.insert(0, self.nginx)
        for process in processes:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in processes:
            if process is None:
                continue
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _root_user() -> str:
    """``"root root"`` when this process is root, else "" (nginx then keeps its workers as the
    current user; as root it would switch them to nobody)."""
    if os.geteuid() != 0:
        return ""
    import grp
    import pwd

    return f"{pwd.getpwuid(0).pw_name} {grp.getgrgid(0).gr_name}"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
