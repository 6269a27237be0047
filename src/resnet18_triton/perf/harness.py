"""One harness for throwaway stacks: what ``perf``, ``benchmarks/`` and the tests each need to
start a server, measure it and talk to it, written once.

- a local server on free loopback ports (``local_options``, ``local_server``,
  ``serve_port_arguments`` for ``resnet18-triton serve``), or replicas behind the proxy
  (``cluster_options``);
- a scratch repository, exported with random weights (``export_random``, ``scratch_repository``);
- the machine's description (``machine``, ``cpu_model``);
- the process tree's memory and CPU (``stack_processes``, ``rss_mb``, ``tree_rss_mb``,
  ``cpu_seconds``, ``tree_cpu_seconds``), by process role: ``tritonserver``, the model a
  Python-backend stub serves, else the process's name;
- a binary inference request for the ensemble and its answer (``infer_request``,
  ``binary_probabilities``);
- image -> probabilities through the library's own ``ImageClassifier`` (``probabilities``);
- HTTP(S) connections from a chosen loopback source address (``loopback_address``, ``connect``):
  the proxy limits per client address, so each simulated client needs its own.

psutil (the ``perf`` and ``test`` extras), the export pipeline (torch) and the client are
imported on use: importing this module costs only the standard library, numpy and the launcher.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import math
import os
import platform
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from resnet18_triton import contract
from resnet18_triton.repository.layout import stub_model
from resnet18_triton.server.embedded import EmbeddedServer, ServerOptions, free_port

if TYPE_CHECKING:
    import psutil

    from resnet18_triton.client.api import ImageClassifier
    from resnet18_triton.deploy.cluster import ClusterOptions

Probabilities = npt.NDArray[np.float32]

# --- a local server ------------------------------------------------------------------------------


def local_options(
    repository: Path, *, host: str = contract.DEFAULT_HOST, metrics: bool = True, **settings: Any
) -> ServerOptions:
    """``ServerOptions`` serving ``repository`` (resolved) on ``host`` (a loopback address) with
    free ports: HTTP, gRPC and metrics (``metrics=False``: no metrics port at all). ``settings``
    sets any other field."""
    return ServerOptions(
        repository=repository.resolve(),
        host=host,
        http_port=free_port(host),
        grpc_port=free_port(host),
        metrics_port=free_port(host) if metrics else 0,
        **settings,
    )


def cluster_options(
    repository: Path, replicas: int, workdir: Path, **settings: Any
) -> ClusterOptions:
    """``ClusterOptions`` for ``replicas`` replicas of ``repository`` (resolved) behind the proxy
    on free loopback ports, working in ``workdir``. ``settings`` sets any other field."""
    from resnet18_triton.deploy.cluster import ClusterOptions

    return ClusterOptions(
        repository=repository.resolve(),
        replicas=replicas,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        workdir=workdir,
        **settings,
    )


def serve_port_arguments(http_port: int) -> list[str]:
    """The port options of ``resnet18-triton serve`` for a server on ``http_port`` (which the
    caller connects to) and free gRPC and metrics ports."""
    return [
        "--http-port", str(http_port),
        "--grpc-port", str(free_port()),
        "--metrics-port", str(free_port()),
    ]  # fmt: skip


@contextlib.contextmanager
def local_server(
    options: ServerOptions | Path, log: Path | None = None, *, append_log: bool = False
) -> Iterator[EmbeddedServer]:
    """A started ``EmbeddedServer``, stopped on exit. ``options``: the server's, or a repository
    to serve with ``local_options``' defaults. Triton's log goes to the file ``log`` (appended to
    with ``append_log``); None keeps the launcher's default."""
    if isinstance(options, Path):
        options = local_options(options)
    with contextlib.ExitStack() as stack:
        stream = stack.enter_context(open(log, "a" if append_log else "w")) if log else None
        yield stack.enter_context(EmbeddedServer(options, log_stream=stream))


# --- a scratch repository ------------------------------------------------------------------------


def export_random(
    target: Path, name: str = contract.DEFAULT_CLASSIFIER, max_queue_delay_us: int | None = None
) -> Path:
    """Export a verified repository with random weights (seed 0) holding classifier ``name`` into
    ``target``; returns it. ``max_queue_delay_us``: the queue delay of the core-budget settings
    (None: the export's default settings); 2000 batches the requests of a load test."""
    from resnet18_triton.export.pipeline import ExportRequest, export_repository
    from resnet18_triton.repository.configs.settings import ServingSettings

    budget = {} if max_queue_delay_us is None else {"max_queue_delay_us": max_queue_delay_us}
    settings = ServingSettings.from_core_budget(**budget)
    request = ExportRequest(
        repository=target, weights="random", seed=0, name=name, settings=settings
    )
    return export_repository(request).repository


@contextlib.contextmanager
def scratch_repository(
    prefix: str = "scratch-repo-", max_queue_delay_us: int | None = None
) -> Iterator[Path]:
    """``export_random`` into a temporary directory, removed on exit."""
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        yield export_random(Path(scratch), max_queue_delay_us=max_queue_delay_us)


# --- the machine ---------------------------------------------------------------------------------


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows of it."""
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


@dataclass(frozen=True)
class Machine:
    """Where a figure was measured: the CPU, the cores this process may use (taskset and cgroup
    affinity), the logical CPUs of the machine and the 1/5/15-minute load average."""

    cpu: str
    cores: int
    logical_cpus: int
    load_average: tuple[float, float, float]


def machine() -> Machine:
    """This machine now (see ``Machine``)."""
    one, five, fifteen = (round(value, 2) for value in os.getloadavg())
    return Machine(
        cpu=cpu_model(),
        cores=len(os.sched_getaffinity(0)),
        logical_cpus=os.cpu_count() or 1,
        load_average=(one, five, fifteen),
    )


# --- the process tree ----------------------------------------------------------------------------


def process_role(process: psutil.Process) -> str:
    """``tritonserver``, the model a Python-backend stub serves (``preprocess``,
    ``resnet18_onnx``, ...), else the process's name; ``?`` when it cannot be read."""
    try:
        cmdline = process.cmdline()
        if cmdline and Path(cmdline[0]).name == "tritonserver":
            return "tritonserver"
        return stub_model(cmdline) or str(process.name())
    except Exception:
        return "?"


def stack_processes(pid: int, include_root: bool = True) -> dict[str, psutil.Process]:
    """role -> process for ``pid`` and every descendant (the second of a role is ``role#2``);
    empty when ``pid`` is gone."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)][0 if include_root else 1 :]
    except psutil.NoSuchProcess:
        return {}
    found: dict[str, psutil.Process] = {}
    for process in processes:
        role = process_role(process)
        key, number = role, 1
        while key in found:
            number += 1
            key = f"{role}#{number}"
        found[key] = process
    return found


def rss_mb(processes: dict[str, psutil.Process]) -> dict[str, float]:
    """Each process's resident memory in MB; NaN for one that cannot be read (gone, denied)."""
    result: dict[str, float] = {}
    for role, process in processes.items():
        try:
            result[role] = process.memory_info().rss / 2**20
        except Exception:
            result[role] = math.nan
    return result


def tree_rss_mb(pid: int) -> dict[str, float]:
    """Resident memory in MB of ``pid`` and each descendant that can be read, by role."""
    return {role: mb for role, mb in rss_mb(stack_processes(pid)).items() if not math.isnan(mb)}


def cpu_seconds(pid: int, include_root: bool = True) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of ``pid`` (unless not ``include_root``) and each
    descendant that can be read: pid -> (role without the ``#n``, seconds)."""
    usage: dict[int, tuple[str, float]] = {}
    for key, process in stack_processes(pid, include_root).items():
        try:
            times = process.cpu_times()
        except Exception:
            continue
        usage[process.pid] = (key.partition("#")[0], times.user + times.system)
    return usage


def tree_cpu_seconds(pid: int, include_root: bool = True) -> float:
    """CPU seconds (user + system) used so far by the live processes under ``pid``."""
    return sum(seconds for _, seconds in cpu_seconds(pid, include_root).values())


# --- requests ------------------------------------------------------------------------------------


def infer_request(image: bytes) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a binary KServe v2 request for the ensemble, one encoded image, as
    tritonclient sends it (the answer comes back as float32 bytes: ``binary_probabilities``)."""
    import tritonclient.http as httpclient

    data = httpclient.InferInput(contract.ENSEMBLE_INPUT, [1, 1], "BYTES")
    data.set_data_from_numpy(np.array([[image]], dtype=object))
    output = httpclient.InferRequestedOutput(contract.ENSEMBLE_OUTPUT, binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([data], [output])
    headers = {"Content-Type": "application/octet-stream"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return body, headers


def binary_probabilities(payload: bytes, header_length: str | int | None) -> Probabilities:
    """The probability vector of the answer to an ``infer_request``: the float32 bytes after
    its JSON header of ``header_length`` bytes (the ``Inference-Header-Content-Length``)."""
    offset = int(header_length or 0)
    return np.frombuffer(payload[offset:], dtype=np.float32).copy()


def measuring_classifier(
    url: str,
    model: str = contract.ENSEMBLE_MODEL,
    connection_timeout: float = contract.CONNECT_TIMEOUT_S,
    network_timeout: float = contract.REQUEST_TIMEOUT_S,
) -> ImageClassifier:
    """An ``ImageClassifier`` for a measurement: one connection, no retries and no API key, so
    that every failure shows at once (the client's errors) instead of being healed. Use it from
    one thread."""
    from resnet18_triton.client.probe import unhealed_classifier

    return unhealed_classifier(url, model, connection_timeout, network_timeout, api_key="")


def probabilities(
    url: str,
    images: Sequence[bytes],
    model: str = contract.ENSEMBLE_MODEL,
    network_timeout: float = 120.0,
) -> Probabilities:
    """Each encoded image's probability vector from ``model`` at ``url`` (float32, images x
    classes) through ``ImageClassifier.probabilities`` (requests of up to the model's
    ``max_batch_size``) of a ``measuring_classifier``: a failure raises at once."""
    with measuring_classifier(url, model, network_timeout=network_timeout) as classifier:
        return classifier.probabilities(images)


# --- clients from chosen loopback addresses ------------------------------------------------------


def loopback_address(number: int, first: str = "127.0.0.2") -> str:
    """The loopback address ``number`` places after ``first``: client ``number``'s own source
    address. ValueError past the end of 127.0.0.0/8."""
    address = ipaddress.IPv4Address(first) + number
    if address not in ipaddress.IPv4Network("127.0.0.0/8") or address.packed[-1] in (0, 255):
        raise ValueError(f"{address} is not a loopback host address: start lower or use fewer")
    return str(address)


def connect(
    host: str,
    port: int,
    *,
    source: str = "127.0.0.1",
    tls: ssl.SSLContext | None = None,
    timeout_s: float = 120.0,
) -> http.client.HTTPConnection:
    """An HTTP connection (HTTPS with ``tls``) to ``host:port`` from the address ``source``."""
    if tls is None:
        return http.client.HTTPConnection(host, port, timeout=timeout_s, source_address=(source, 0))
    return http.client.HTTPSConnection(
        host, port, timeout=timeout_s, source_address=(source, 0), context=tls
    )


MetricSamples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metric_samples(url: str) -> MetricSamples:
    """Every sample of the Prometheus text exposition at ``url`` (a metrics port, such as the
    proxy's tenant metrics): (sample name, sorted labels) -> value, read by prometheus_client's
    parser (the ``test`` extra), not by ours."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
