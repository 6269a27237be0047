"""Two embedded Triton replicas behind the distribution's nginx (``resnet18-triton cluster``).

Everything is real: two ``resnet18-triton serve`` processes, nginx rendered from the shipped
template, HTTP and gRPC through the proxy, ``kill -9`` of a replica's tritonserver under load.
Per-replica counts come from each replica's own ``/v2/models/resnet18/stats``.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from resnet18_triton import contract
from resnet18_triton.deploy import proxy
from resnet18_triton.deploy.cluster import Cluster, Replica
from resnet18_triton.perf import harness
from tests.edge_support import announce_oversized_body
from tests.support import (
    PROBABILITY_ATOL,
    TorchReference,
    classify_ensemble,
    encode,
    gradient_image,
)

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None and not os.environ.get("CI"),
    reason="nginx is not installed (apt-get install nginx; scripts/setup.sh does it)",
)

LOAD_REQUESTS = 600
CLIENT_THREADS = 4
KILL_AFTER = 150
DISTINCT_IMAGES = 12
REJOIN_REQUESTS = 60


@pytest.fixture(scope="module")
def cluster(
    exported_repository: Path, admin_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    options = harness.cluster_options(
        exported_repository,
        2,
        tmp_path_factory.mktemp("cluster"),
        admin_key=admin_key,
        # This module is about failover and spreading load from one client address; the edge's
        # limits are tested in test_edge.py.
        limits=proxy.Limits(rate_per_s=10_000, burst=10_000, client_connections=64),
    )
    with Cluster(options) as running:
        yield running


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [
        encode(gradient_image(180 + 7 * i, 140 + 5 * i, seed=300 + i), "JPEG")
        for i in range(DISTINCT_IMAGES)
    ]


@pytest.fixture(scope="module")
def expected(images: list[bytes], reference: TorchReference) -> np.ndarray:
    return reference.probabilities(images)


def ensemble_counts(replica: Replica) -> tuple[int, int]:
    """(inference_count, failed requests) of the ensemble on one replica, from its statistics."""
    url = f"http://{replica.url}/v2/models/{contract.ENSEMBLE_MODEL}/stats"
    with urllib.request.urlopen(url, timeout=10) as reply:
        stats = json.load(reply)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["inference_stats"]["fail"]["count"])


def settled_counts(replicas: list[Replica]) -> list[int]:
    """Each replica's ensemble inference_count once it stops changing.

    Triton updates its statistics just after sending a response, so a read right after the last
    answer can miss it.
    """
    counts = [ensemble_counts(replica)[0] for replica in replicas]
    for _ in range(20):
        time.sleep(0.25)
        again = [ensemble_counts(replica)[0] for replica in replicas]
        if again == counts:
            return counts
        counts = again
    return counts


def classify(url: str, image: bytes) -> np.ndarray:
    """One request, one image, no retry: a failure during failover counts."""
    return classify_ensemble(url, contract.ENSEMBLE_MODEL, [image])[0]


def send_all(
    url: str, images: list[bytes], count: int, on_done: threading.Event | None = None
) -> tuple[list[tuple[int, np.ndarray]], list[str]]:
    """``count`` requests over ``CLIENT_THREADS`` threads, cycling through ``images``.

    Returns (image index, answer) pairs and the failures as text; never raises.
    """
    answers: list[tuple[int, np.ndarray]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def one(position: int) -> None:
        index = position % len(images)
        try:
            answer = classify(url, images[index])
        except Exception as error:  # every failure counts, whatever its type
            with lock:
                failures.append(f"request {position}: {type(error).__name__}: {error}")
            return
        with lock:
            answers.append((index, answer))
            if on_done is not None and len(answers) >= KILL_AFTER:
                on_done.set()

    with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
        list(pool.map(one, range(count)))
    return answers, failures


def assert_answers_match(answers: list[tuple[int, np.ndarray]], expected: np.ndarray) -> None:
    worst = max(float(np.abs(expected[index] - answer).max()) for index, answer in answers)
    assert worst <= PROBABILITY_ATOL, f"an answer differs from the reference by {worst:.2e}"


def test_load_spreads_over_both_replicas(
    cluster: Cluster, images: list[bytes], expected: np.ndarray
) -> None:
    before = settled_counts(cluster.replicas)
    answers, failures = send_all(cluster.url, images, 100)
    after = settled_counts(cluster.replicas)
    assert not failures, failures[:3]
    assert_answers_match(answers, expected)
    served = [b - a for a, b in zip(before, after, strict=True)]
    assert sum(served) == 100, served
    assert min(served) > 0, f"one replica got no request: {served}"


def test_kill_9_of_one_replica_under_load_loses_no_request_and_it_rejoins(
    cluster: Cluster, images: list[bytes], expected: np.ndarray
) -> None:
    victim, survivor = cluster.replicas
    victim_before, survivor_before = settled_counts([victim, survivor])
    victim_pid = victim.server_pid()
    assert victim_pid is not None
    starts_before = victim.starts
    reached = threading.Event()
    killed_at_count: list[int] = []

    def kill_mid_load() -> None:
        reached.wait(timeout=600)
        killed_at_count.append(ensemble_counts(victim)[0] - victim_before)
        os.kill(victim_pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_mid_load)
    killer.start()
    answers, failures = send_all(cluster.url, images, LOAD_REQUESTS, on_done=reached)
    killer.join(timeout=30)
    assert killed_at_count, "the load ended before the kill"
    assert not failures, f"{len(failures)} failed requests, e.g. {failures[:3]}"
    assert len(answers) == LOAD_REQUESTS
    assert_answers_match(answers, expected)

    # The survivor took the load: it served everything the victim did not before it died.
    survivor_served = settled_counts([survivor])[0] - survivor_before
    print(
        f"\nFIGURE cluster kill -9: {LOAD_REQUESTS} requests, 0 failed; victim served "
        f"{killed_at_count[0]} before the kill, survivor {survivor_served}"
    )
    assert survivor_served > LOAD_REQUESTS // 2

    # The cluster restarted the victim (new serve process, new tritonserver) and it rejoins.
    cluster.wait_replica_ready(victim, timeout_s=300)
    assert victim.starts > starts_before
    assert victim.server_pid() not in (None, victim_pid)
    time.sleep(proxy.FAIL_TIMEOUT_S + 1)  # nginx tries a failed replica again after this
    served_after_restart = settled_counts([victim])[0]
    answers, failures = send_all(cluster.url, images, REJOIN_REQUESTS)
    assert not failures, failures[:3]
    assert_answers_match(answers, expected)
    rejoined = settled_counts([victim])[0] - served_after_restart
    print(
        f"FIGURE cluster rejoin: restarted replica served {served_after_restart} of the load "
        f"after its restart, then {rejoined} of {REJOIN_REQUESTS} further requests"
    )
    assert rejoined > 0, "the restarted replica got no request through the proxy"


def test_body_over_the_limit_gets_413_from_the_proxy_and_never_reaches_triton(
    cluster: Cluster,
) -> None:
    assert cluster.settings is not None
    limit = cluster.settings.body_limit
    before = [ensemble_counts(replica) for replica in cluster.replicas]
    host, port = cluster.url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        path = f"/v2/models/{contract.ENSEMBLE_MODEL}/infer"
        content = {"Content-Type": "application/octet-stream"}
        status = announce_oversized_body(connection, path, limit + 1, content).status
    finally:
        connection.close()
    assert status == 413
    assert [ensemble_counts(replica) for replica in cluster.replicas] == before


RESTRICTED = [
    ("POST", "/v2/repository/index"),
    ("POST", f"/v2/repository/models/{contract.ENSEMBLE_MODEL}/unload"),
    ("POST", f"/v2/repository/models/{contract.ENSEMBLE_MODEL}/load"),
    ("GET", "/v2/systemsharedmemory/status"),
    ("POST", "/v2/systemsharedmemory/region/x/register"),
    ("GET", "/v2/cudasharedmemory/status"),
    ("GET", "/v2/logging"),
    ("POST", "/v2/logging"),
    ("GET", "/v2/trace/setting"),
    ("GET", f"/v2/models/{contract.ENSEMBLE_MODEL}/trace/setting"),
    ("GET", "/metrics"),
    ("GET", "/"),
]


@pytest.mark.parametrize(("method", "path"), RESTRICTED)
def test_restricted_and_admin_paths_are_refused_even_with_the_admin_key(
    cluster: Cluster, admin_key: str, method: str, path: str
) -> None:
    request = urllib.request.Request(
        f"http://{cluster.url}{path}",
        method=method,
        data=b"{}" if method == "POST" else None,
        headers={contract.ADMIN_KEY_HEADER: admin_key},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code in (403, 404)
    # The key did not help: the ensemble is still loaded on every replica.
    for replica in cluster.replicas:
        assert replica.is_ready()


@pytest.mark.parametrize(
    "path",
    [
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        f"/v2/models/{contract.ENSEMBLE_MODEL}",
        f"/v2/models/{contract.ENSEMBLE_MODEL}/config",
        # Read-only; perf_analyzer reads them before it measures.
        "/v2/models/stats",
    ],
)
def test_health_and_metadata_pass_the_proxy(cluster: Cluster, path: str) -> None:
    with urllib.request.urlopen(f"http://{cluster.url}{path}", timeout=10) as reply:
        assert reply.status == 200


def test_grpc_inference_passes_the_proxy_over_http2(
    cluster: Cluster, images: list[bytes], expected: np.ndarray
) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(cluster.grpc_url)
    try:
        data = grpcclient.InferInput(contract.ENSEMBLE_INPUT, [1, 1], "BYTES")
        data.set_data_from_numpy(np.array([[images[0]]], dtype=object))
        answer = client.infer(contract.ENSEMBLE_MODEL, [data]).as_numpy(contract.ENSEMBLE_OUTPUT)
        assert float(np.abs(expected[0] - answer[0]).max()) <= PROBABILITY_ATOL
        with pytest.raises(InferenceServerException):
            client.get_model_repository_index(
                headers={contract.ADMIN_KEY_HEADER: "integration-test-key"}
            )
    finally:
        client.close()


def test_stopping_the_cluster_after_a_replica_restart_ends_every_process_by_itself(
    cluster: Cluster,
) -> None:
    """Last in this module (it stops the module's cluster), after the kill -9 test restarted a
    replica from the cluster's supervisor thread: that replica gets two SIGTERMs back to back
    (the cluster's, and the kernel's parent-death signal when that thread ends). Every process
    still stops on its own, exit code 0; none is left to the SIGKILL that ends a stop which
    waited too long."""
    restarted = [replica for replica in cluster.replicas if replica.starts > 1]
    assert restarted, "no replica was restarted before this test"
    processes = [cluster.nginx, *(replica.process for replica in cluster.replicas)]
    cluster.stop()
    codes = [process.returncode for process in processes if process is not None]
    assert codes == [0] * len(processes), codes
