"""The proxy's public edge, for real: ``Cluster`` with 2 replicas, API keys, TLS and tight limits.

A real nginx (with Debian's njs module) in front of two real ``resnet18-triton serve`` processes.
Requests are KServe v2 binary requests built by tritonclient and sent over ``http.client`` so
that each simulated client can have its own source address (127.0.0.N): the limits are per client
address. Keys live only in a mode-0600 file, never on a command line.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from resnet18_triton import contract
from resnet18_triton.deploy import keys, proxy
from resnet18_triton.deploy.cluster import Cluster
from resnet18_triton.perf import harness
from resnet18_triton.perf.harness import infer_request
from resnet18_triton.perf.images import encode, gradient_image, noisy_png
from resnet18_triton.server.embedded import free_port
from tests.edge_support import (
    NEEDS_NGINX_WITH_NJS,
    SecuredOptions,
    announce_oversized_body,
    self_signed_certificate,
    write_key_file,
)
from tests.support import PROBABILITY_ATOL, TorchReference

pytestmark = NEEDS_NGINX_WITH_NJS

ALICE = "alice-" + "a1" * 16
BOB = "bob-" + "b2" * 16
WRONG = "nobody-" + "c3" * 16
LIMITS = proxy.Limits(
    rate_per_s=2, burst=3, client_connections=2, max_in_flight=6, body_budget_bytes=96 * proxy.MIB
)
# The module's secured cluster (conftest's ``secured``).
REPLICAS = 2
KEYS = (f"alice:{ALICE}", f"bob:{BOB}")
# The flood: far more clients than the machine's 2 cores, each with its own address.
FLOOD_CLIENTS = 32
FLOOD_REQUESTS_PER_CLIENT = 6


@dataclass
class Edge:
    cluster: Cluster
    key_file: Path
    certificate: Path

    @property
    def port(self) -> int:
        return self.cluster.options.http_port

    def connection(self, source: str = "127.0.0.1", tls: bool = True) -> http.client.HTTPConnection:
        context = ssl.create_default_context(cafile=str(self.certificate)) if tls else None
        return harness.connect("127.0.0.1", self.port, source=source, tls=context)


@pytest.fixture(scope="module")
def edge(secured: tuple[Cluster, SecuredOptions]) -> Edge:
    running, options = secured
    return Edge(running, options.key_file, options.certificate)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return dict(json.loads(self.body))


def request(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    key: str | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    sent = dict(headers or {})
    if key is not None:
        sent[contract.API_KEY_HEADER] = f"Bearer {key}"
    connection.request(method, path, body=body, headers=sent)
    response = connection.getresponse()
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())


def probabilities(reply: Reply) -> np.ndarray:
    header_length = reply.headers.get("inference-header-content-length")
    return harness.binary_probabilities(reply.body, header_length)


INFER_PATH = f"/v2/models/{contract.ENSEMBLE_MODEL}/infer"
METADATA_PATH = f"/v2/models/{contract.ENSEMBLE_MODEL}"


@pytest.fixture(scope="module")
def photo() -> bytes:
    return encode(gradient_image(320, 240, seed=71), "JPEG")


@pytest.fixture(scope="module")
def large_png() -> bytes:
    """The "large photo" of the flood: about 6.8 MB of noise, which does not compress."""
    return noisy_png(seed=5)


# --- keys


def test_a_request_without_a_key_gets_401_with_a_json_body_and_www_authenticate(
    edge: Edge, photo: bytes
) -> None:
    body, headers = infer_request(photo)
    reply = request(edge.connection("127.0.0.2"), "POST", INFER_PATH, body=body, headers=headers)
    assert reply.status == 401
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert reply.headers["content-type"] == "application/json"
    assert "Authorization: Bearer" in reply.json()["error"]


@pytest.mark.parametrize(
    "header",
    [f"Bearer {WRONG}", f"Basic {ALICE}", f"Bearer {ALICE}x", "Bearer", f"Bearer {ALICE[:-1]}"],
)
def test_a_wrong_key_gets_401(edge: Edge, header: str) -> None:
    reply = request(
        edge.connection("127.0.0.2"), "GET", METADATA_PATH, headers={"Authorization": header}
    )
    assert reply.status == 401 and reply.headers["www-authenticate"].startswith("Bearer")


def test_a_good_key_over_tls_gets_the_right_classification(
    edge: Edge, photo: bytes, reference: TorchReference
) -> None:
    body, headers = infer_request(photo)
    reply = request(edge.connection("127.0.0.3"), "POST", INFER_PATH, BOB, body, headers)
    assert reply.status == 200, reply.body[:300]
    expected = reference.probabilities([photo])[0]
    assert float(np.abs(probabilities(reply) - expected).max()) <= PROBABILITY_ATOL


def test_health_needs_no_key_so_that_probes_work(edge: Edge) -> None:
    reply = request(edge.connection("127.0.0.2"), "GET", "/v2/health/ready")
    assert reply.status == 200


def test_the_admin_paths_stay_closed_with_a_good_key(edge: Edge, admin_key: str) -> None:
    for method, path in (("POST", "/v2/repository/index"), ("GET", "/metrics")):
        reply = request(
            edge.connection("127.0.0.3"),
            method,
            path,
            ALICE,
            headers={contract.ADMIN_KEY_HEADER: admin_key},
        )
        assert reply.status in (403, 404), path


def test_a_revoked_key_gets_401_after_the_reload_and_the_others_keep_working(
    edge: Edge,
) -> None:
    assert request(edge.connection("127.0.0.4"), "GET", METADATA_PATH, ALICE).status == 200
    write_key_file(edge.key_file, [f"bob:{BOB}"])  # alice's line removed
    try:
        assert edge.cluster.reload_api_keys() == 1
        revoked = request(edge.connection("127.0.0.4"), "GET", METADATA_PATH, ALICE)
        assert revoked.status == 401
        assert request(edge.connection("127.0.0.4"), "GET", METADATA_PATH, BOB).status == 200
    finally:
        write_key_file(edge.key_file, [f"alice:{ALICE}", f"bob:{BOB}"])
        edge.cluster.reload_api_keys()


def test_a_broken_key_file_is_refused_on_reload_and_the_old_keys_stay(edge: Edge) -> None:
    write_key_file(edge.key_file, ["too-short"])
    try:
        with pytest.raises(Exception, match="line 1"):
            edge.cluster.reload_api_keys()
        assert request(edge.connection("127.0.0.4"), "GET", METADATA_PATH, BOB).status == 200
    finally:
        write_key_file(edge.key_file, [f"alice:{ALICE}", f"bob:{BOB}"])
        edge.cluster.reload_api_keys()


def test_grpc_over_tls_needs_the_key_too(
    edge: Edge, photo: bytes, reference: TorchReference
) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(
        edge.cluster.grpc_url, ssl=True, root_certificates=str(edge.certificate)
    )
    try:
        data = grpcclient.InferInput(contract.ENSEMBLE_INPUT, [1, 1], "BYTES")
        data.set_data_from_numpy(np.array([[photo]], dtype=object))
        with pytest.raises(InferenceServerException, match=r"(?i)unauthenticated|401"):
            client.infer(contract.ENSEMBLE_MODEL, [data])
        answer = client.infer(
            contract.ENSEMBLE_MODEL, [data], headers={"authorization": f"Bearer {BOB}"}
        ).as_numpy(contract.ENSEMBLE_OUTPUT)[0]
        expected = reference.probabilities([photo])[0]
        assert float(np.abs(answer - expected).max()) <= PROBABILITY_ATOL
    finally:
        client.close()


# --- TLS


def test_plain_http_to_the_tls_port_is_refused_explicitly(edge: Edge) -> None:
    reply = request(edge.connection("127.0.0.5", tls=False), "GET", METADATA_PATH, ALICE)
    assert reply.status == 400
    assert b"plain HTTP request was sent to HTTPS port" in reply.body


def test_a_client_that_does_not_trust_the_certificate_is_refused_by_tls(edge: Edge) -> None:
    connection = http.client.HTTPSConnection(
        "127.0.0.1", edge.port, timeout=30, context=ssl.create_default_context()
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        request(connection, "GET", "/v2/health/ready")


# --- limits


def test_a_burst_beyond_the_limit_gets_429_with_retry_after(edge: Edge) -> None:
    connection = edge.connection("127.0.0.6")
    replies = [request(connection, "GET", METADATA_PATH, ALICE) for _ in range(LIMITS.burst + 5)]
    statuses = Counter(reply.status for reply in replies)
    assert statuses[200] >= 1 and statuses[429] >= 1, statuses
    assert set(statuses) == {200, 429}, statuses
    for reply in replies:
        if reply.status == 429:
            assert reply.headers["retry-after"] == str(LIMITS.retry_after_s)
            assert reply.json()["retry_after_s"] == LIMITS.retry_after_s


def test_a_body_over_the_budget_gets_413_before_any_replica_sees_it(edge: Edge) -> None:
    assert edge.cluster.settings is not None
    limit = edge.cluster.settings.body_limit
    assert limit == LIMITS.body_budget_bytes // LIMITS.max_in_flight
    connection = edge.connection("127.0.0.7")
    key = {"Authorization": f"Bearer {ALICE}"}
    response = announce_oversized_body(connection, INFER_PATH, limit + 1, key)
    assert response.status == 413
    assert "send fewer or smaller images" in json.loads(response.read())["error"]


# --- the flood


@dataclass
class Outcome:
    kind: str  # "ok", "wrong", "429", "429 without Retry-After", or the failure
    image: int = -1


def test_a_flood_of_clients_gets_right_answers_or_explicit_429s_and_replicas_stay_ready(
    edge: Edge, photo: bytes, large_png: bytes, reference: TorchReference
) -> None:
    images = [large_png, photo, encode(gradient_image(500, 375, seed=72), "JPEG")]
    expected = reference.probabilities(images)
    requests = [infer_request(image) for image in images]
    print(f"\nflood: large PNG {len(large_png) / 1e6:.1f} MB")
    stop = threading.Event()
    not_ready: list[str] = []

    def watch_replicas() -> None:
        while not stop.wait(0.2):
            for replica in edge.cluster.replicas:
                if not replica.is_ready():
                    not_ready.append(f"replica {replica.index}")

    def client(number: int) -> list[Outcome]:
        source = harness.loopback_address(number, "127.0.1.1")
        outcomes = []
        connection = edge.connection(source)
        for attempt in range(FLOOD_REQUESTS_PER_CLIENT):
            index = (number + attempt) % len(images)
            body, headers = requests[index]
            try:
                reply = request(connection, "POST", INFER_PATH, ALICE, body, headers)
            except (OSError, http.client.HTTPException) as error:
                outcomes.append(Outcome(f"{type(error).__name__}: {error}", index))
                connection.close()
                connection = edge.connection(source)
                continue
            if reply.status == 200:
                worst = float(np.abs(probabilities(reply) - expected[index]).max())
                outcomes.append(Outcome("ok" if worst <= PROBABILITY_ATOL else "wrong", index))
            elif reply.status == 429:
                explicit = "retry-after" in reply.headers and "error" in reply.json()
                outcomes.append(Outcome("429" if explicit else "429 without Retry-After", index))
            else:
                outcomes.append(Outcome(f"HTTP {reply.status}: {reply.body[:200]!r}", index))
            if reply.headers.get("connection", "").lower() == "close":
                connection.close()
                connection = edge.connection(source)
        connection.close()
        return outcomes

    starts = [replica.starts for replica in edge.cluster.replicas]
    watcher = threading.Thread(target=watch_replicas)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=FLOOD_CLIENTS) as pool:
            results = [o for outcomes in pool.map(client, range(FLOOD_CLIENTS)) for o in outcomes]
    finally:
        stop.set()
        watcher.join()
    kinds = Counter(outcome.kind for outcome in results)
    large_ok = sum(1 for o in results if o.kind == "ok" and o.image == 0)
    print(
        f"FIGURE edge flood: {FLOOD_CLIENTS} clients, {dict(kinds)}, large PNGs answered {large_ok}"
    )
    assert len(results) == FLOOD_CLIENTS * FLOOD_REQUESTS_PER_CLIENT
    assert set(kinds) <= {"ok", "429"}, dict(kinds)
    assert kinds["ok"] > 0 and kinds["429"] > 0, dict(kinds)
    assert large_ok > 0
    assert not not_ready, f"replicas not ready during the flood: {Counter(not_ready)}"
    assert [replica.starts for replica in edge.cluster.replicas] == starts


# --- last: nothing above left a key where it could be read


def test_no_key_is_in_any_log_or_any_process_command_line(edge: Edge) -> None:
    secrets = [ALICE.encode(), BOB.encode(), WRONG.encode()]
    logs = sorted(edge.cluster.workdir.glob("*.log"))
    assert edge.cluster.access_log in logs
    access = edge.cluster.access_log.read_text()
    assert "key=alice" in access and "key=bob" in access  # names are logged, keys are not
    for path in logs:
        content = path.read_bytes()
        assert not [s for s in secrets if s in content], f"a key is in {path}"
    leaked = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            content = cmdline.read_bytes()
        except OSError:
            continue
        if any(s in content for s in secrets):
            leaked.append(cmdline.parent.name)
    assert not leaked, f"a key is on the command line of process(es) {leaked}"
    hashes = edge.cluster.api_key_hashes.read_text()
    assert keys.key_hash(BOB) in hashes and BOB not in hashes


# --- the command line: exposed on all interfaces, keys from a file, SIGHUP reloads them


def test_the_cluster_command_on_all_interfaces_serves_with_keys_and_reloads_them_on_sighup(
    exported_repository: Path, tmp_path: Path
) -> None:
    key_file = write_key_file(tmp_path / "keys.txt", [f"alice:{ALICE}", f"bob:{BOB}"])
    certificate, tls_key = self_signed_certificate(tmp_path / "tls")
    port = free_port()
    log = (tmp_path / "cluster.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "resnet18_triton.cli", "cluster", "--replicas", "1",
            f"--repo={exported_repository}", "--host", "0.0.0.0", f"--http-port={port}",
            f"--grpc-port={free_port()}", f"--api-key-file={key_file}",
            f"--tls-cert={certificate}", f"--tls-key={tls_key}",
            f"--workdir={tmp_path / 'work'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(certificate))

    def status(key: str) -> int:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
        try:
            return request(connection, "GET", METADATA_PATH, key).status
        finally:
            connection.close()

    def wait_for_log(text: str) -> None:
        while text not in (tmp_path / "cluster.log").read_text():
            assert process.poll() is None, (tmp_path / "cluster.log").read_text()
            time.sleep(0.2)

    try:
        wait_for_log("ready: https://0.0.0.0")
        assert status(ALICE) == 200 and status(WRONG) == 401
        write_key_file(key_file, [f"bob:{BOB}"])
        process.send_signal(signal.SIGHUP)
        wait_for_log("reloaded 1 API key(s)")
        assert status(ALICE) == 401 and status(BOB) == 200
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
        log.close()
    text = (tmp_path / "cluster.log").read_text()
    assert "API keys required" in text and ALICE not in text and BOB not in text


def _classify_over_tls(edge: Edge, *options: str, env: dict[str, str] | None = None):
    sample = Path(__file__).parents[1] / "data" / "samples"
    environment = {
        **{k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")},
        contract.API_KEY_ENV_VAR: ALICE,
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "resnet18_triton.cli", "classify", "--no-progress",
         "--url", f"https://127.0.0.1:{edge.port}", *options, str(sorted(sample.glob("*.jpg"))[0])],
        capture_output=True, text=True, timeout=120, env=environment,
    )  # fmt: skip


def test_classify_trusts_the_proxys_private_certificate_only_when_told_to(edge: Edge) -> None:
    untrusted = _classify_over_tls(edge)
    assert untrusted.returncode == 2, untrusted.stderr
    assert "cannot trust" in untrusted.stderr and "--ca-file" in untrusted.stderr
    assert "Traceback" not in untrusted.stderr
    by_option = _classify_over_tls(edge, "--json", "--ca-file", str(edge.certificate))
    assert by_option.returncode == 0, by_option.stdout + by_option.stderr
    by_environment = _classify_over_tls(
        edge, "--json", env={contract.CA_FILE_ENV_VAR: str(edge.certificate)}
    )
    assert by_environment.returncode == 0, by_environment.stdout + by_environment.stderr
    # The same answer either way (a retry on a busy machine may tell one run from the other).
    assert json.loads(by_option.stdout)["top"] == json.loads(by_environment.stdout)["top"]
