"""The project's images in a real Docker engine, run by the real docker-compose.yml.

Served answers are compared with PyTorch (torchvision transforms, same weights) and, for each
registered variant (INT8, OpenVINO and their fused models, at this CPU's default precision), with
its engine running its model file in this process on torchvision's pixels.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from resnet18_triton import contract
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.cpu_flags import cpu_flags
from resnet18_triton.deploy import keys, proxy
from tests.compose_support import REPO_ROOT
from tests.container_support import SECOND_CLASSIFIER, SECOND_SEED, Engine, Repository
from tests.edge_support import self_signed_certificate
from tests.support import (
    PROBABILITY_ATOL,
    TorchReference,
    classify_ensemble,
    tree_snapshot,
    varied_images,
)
from tests.variant_support import ServedVariant, in_process_probabilities, one_precision_each

HEALTHY_TIMEOUT_S = 240
ADMIN_KEY = "container-test-admin-key-0123456789"
# compose's default edge: what clients of the default services use (deploy.proxy).
EDGE_URL = "127.0.0.1:8000"
API_KEY = "container-test-api-key-0123456789abcdef"
PROXY_UID = 101
PROJECT = "r18test"
VARIANTS = one_precision_each(ClassifierNames.of(), cpu_flags())


@dataclass
class Compose:
    """docker-compose on the repository's docker-compose.yml, with this session's settings."""

    engine: Engine
    env: dict[str, str]
    last_stderr: str = ""

    def run(self, *args: str, timeout: float = 600, env: dict[str, str] | None = None) -> str:
        """docker-compose's stdout; fails the test with its stderr when it fails. Its stderr is
        kept in ``last_stderr`` (warnings)."""
        result = subprocess.run(
            ["docker-compose", "-p", PROJECT, "-f", str(REPO_ROOT / "docker-compose.yml"), *args],
            cwd=REPO_ROOT,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"docker-compose {' '.join(args)}:\n{result.stderr[-4000:]}"
        self.last_stderr = result.stderr
        return result.stdout

    def container(self, service: str) -> str:
        return f"{PROJECT}_{service}_1"

    def wait_healthy(self, service: str) -> None:
        name = self.container(service)
        deadline = time.monotonic() + HEALTHY_TIMEOUT_S
        status = ""
        while time.monotonic() < deadline:
            status = self.engine.docker("inspect", "-f", "{{.State.Health.Status}}", name).strip()
            if status == "healthy":
                return
            time.sleep(2)
        tail = self.logs(service)[-4000:]
        pytest.fail(f"{name} is {status!r} after {HEALTHY_TIMEOUT_S} s; last log lines:\n{tail}")

    def logs(self, service: str) -> str:
        """The container's output (the server log goes to its stderr)."""
        result = subprocess.run(
            ["docker", "logs", self.container(service)],
            env=self.engine.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result.stdout + result.stderr

    def exec(self, service: str, script: str) -> str:
        return self.engine.docker("exec", self.container(service), "sh", "-c", script)


def _write_proxy_secrets(secrets: Path) -> Path:
    """The replicas proxy's secrets folder: the API key's hash (never the key) and a
    certificate, all readable by the proxy's uid 101; its path."""
    folder = secrets / "proxy"
    folder.mkdir(mode=0o700, exist_ok=True)
    (folder / "api-key-hashes.map").write_text(keys.hash_map([keys.ApiKey("ci", API_KEY)]))
    self_signed_certificate(folder)
    if os.geteuid() == 0:
        os.chown(folder, PROXY_UID, PROXY_UID)
        folder.chmod(0o500)
    for name in ("api-key-hashes.map", "tls.crt", "tls.key"):
        path = folder / name
        if os.geteuid() == 0:
            os.chown(path, PROXY_UID, PROXY_UID)
            path.chmod(0o400)
        else:
            path.chmod(0o644)  # a test's throw-away key; the proxy's user cannot be given it
    if os.geteuid() != 0:
        folder.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def compose(images: Engine, repository: Repository) -> Iterator[Compose]:
    secrets = Path(repository.path.parent / "secrets")
    secrets.mkdir(mode=0o700, exist_ok=True)
    key_file = secrets / "admin-key"
    key_file.write_text(ADMIN_KEY + "\n")
    key_file.chmod(0o600)
    uid = 1000 if os.geteuid() == 0 else os.geteuid()
    if os.geteuid() == 0:
        os.chown(key_file, uid, uid)
    proxy_secrets = _write_proxy_secrets(secrets)
    env = {
        **images.env,
        "RESNET18_TRITON_TAG": images.tag,
        "MODEL_REPOSITORY": str(repository.path),
        "TRITON_ADMIN_KEY_FILE": str(key_file),
        "TRITON_UID": str(uid),
        "TRITON_GID": str(uid),
        "PROXY_SECRETS_DIR": str(proxy_secrets),
    }
    running = Compose(images, env)
    try:
        yield running
    finally:
        running.run("--profile", "replicas", "down", "--timeout", "10", timeout=300)


@pytest.fixture(scope="module")
def triton(compose: Compose) -> str:
    """The default services up, the server healthy and the edge in front of it answering; the
    edge's URL, which is what clients use."""
    compose.run("up", "-d", timeout=900)
    compose.wait_healthy("triton")
    deadline = time.monotonic() + 60
    while not _answers(f"http://{EDGE_URL}/v2/health/ready"):
        assert time.monotonic() < deadline, compose.logs("edge")[-3000:]
        time.sleep(0.5)
    return EDGE_URL


def _answers(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> int:
    """The HTTP status ``url`` answers (0 when nothing answers)."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(os.sys.executable).parent / "resnet18-triton"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_commands_say_nothing_of_the_replicas_profiles_secrets(compose: Compose) -> None:
    """Without the proxy's secrets folder (a user who never set up the replicas profile), a
    command about the default service warns about nothing."""
    compose.run("ps", env={"PROXY_SECRETS_DIR": "/nonexistent/proxy-secrets"})
    assert "secret" not in compose.last_stderr.lower(), compose.last_stderr


def test_the_compose_service_is_healthy_and_classifies_the_sample_photos(
    triton: str, repository: Repository
) -> None:
    health = _cli("health", "--url", triton, f"--model={SECOND_CLASSIFIER}")
    assert health.returncode == 0, health.stdout + health.stderr
    for model in ("resnet18", SECOND_CLASSIFIER, *(cell.entry for cell in VARIANTS)):
        assert re.search(rf"^\s*{model}\s+ready", health.stdout, re.MULTILINE), health.stdout
    samples = sorted((REPO_ROOT / "tests/data/samples").glob("*.*g"))
    classify = _cli("classify", "--url", triton, "--json", *map(str, samples))
    assert classify.returncode == 0, classify.stderr
    records = {Path(r["image"]).name: r for r in map(json.loads, classify.stdout.splitlines())}
    assert sorted(records) == [path.name for path in samples]
    expected = TorchReference(model=repository.digits_model).probabilities(
        [path.read_bytes() for path in samples]
    )
    for path, probabilities in zip(samples, expected, strict=True):
        top = records[path.name]["top"]
        assert len(top) == 5 and top[0]["index"] == int(probabilities.argmax()), top


def test_served_probabilities_equal_pytorch_on_the_unusual_images(triton: str) -> None:
    """Every unusual-but-good image (CMYK, palette, 1x1, ...) through a classifier exported with
    ``--name`` (random ImageNet-shaped weights) against PyTorch with torchvision's transform."""
    images = varied_images()
    served = np.concatenate(
        [classify_ensemble(triton, SECOND_CLASSIFIER, [data]) for data in images.values()]
    )
    expected = TorchReference(seed=SECOND_SEED).probabilities(list(images.values()))
    distances = np.abs(served - expected).max(axis=1)
    wrong = {name: f"{d:.2e}" for name, d in zip(images, distances, strict=True) if d > 1e-6}
    assert not wrong, f"further than {PROBABILITY_ATOL} from PyTorch: {wrong}"


def test_the_default_classifier_equals_its_engine_on_torchvision_pixels_and_pytorch_top1(
    triton: str, repository: Repository
) -> None:
    """The digits-fitted ResNet-18: within 1e-6 of ONNX Runtime running its FP32 file in this
    process on torchvision's resize and crop; PyTorch gives the same top-1 everywhere. Its
    peaked probabilities differ from PyTorch's by up to 3.8e-6 on the embedded server as well
    (FP32 kernels of the two engines), so 1e-6 against PyTorch is the random-weights test's bar."""
    from resnet18_triton.export.fidelity import session
    from resnet18_triton.repository.layout import onnx_model_path

    images = repository.held_out
    served = np.concatenate(
        [classify_ensemble(triton, contract.ENSEMBLE_MODEL, [data]) for data in images]
    )
    reference = TorchReference(model=repository.digits_model)
    engine = session(onnx_model_path(repository.path, contract.ONNX_MODEL))
    expected = np.concatenate(
        [
            engine.run([contract.ONNX_PROBABILITIES], {contract.ONNX_INPUT: pixels[None]})[0]
            for pixels in map(reference.pixels, images)
        ]
    )
    np.testing.assert_allclose(served, expected, rtol=0, atol=PROBABILITY_ATOL)
    pytorch = reference.probabilities(images)
    np.testing.assert_array_equal(served.argmax(1), pytorch.argmax(1))
    np.testing.assert_allclose(served, pytorch, rtol=0, atol=10 * PROBABILITY_ATOL)


@pytest.mark.parametrize("cell", VARIANTS, ids=[cell.id for cell in VARIANTS])
def test_every_registered_variant_is_ready_in_the_image_and_answers_like_its_engine(
    triton: str, repository: Repository, cell: ServedVariant
) -> None:
    """Each variant of the registry, at this CPU's default precision, from the image's own
    ``serve`` (its allocator, its backends): every model ready, and within the variant's
    tolerance of its engine run in this process on torchvision's pixels."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(triton)
    try:
        assert [m for m in cell.models if not client.is_model_ready(m)] == [], cell.models
    finally:
        client.close()
    images = repository.held_out[:4]
    served = np.concatenate([classify_ensemble(triton, cell.entry, [data]) for data in images])
    reference = TorchReference(model=repository.digits_model)
    pixels = np.stack([reference.pixels(data) for data in images])
    expected = in_process_probabilities(repository.path, cell, pixels)
    assert np.abs(served - expected).max() <= cell.variant.served_atol, cell.id


def test_the_container_runs_without_capabilities_as_non_root_on_a_read_only_root(
    compose: Compose, triton: str
) -> None:
    status = compose.exec("triton", "grep -h CapEff /proc/1/status /proc/self/status")
    assert {line.split()[1] for line in status.splitlines()} == {"0000000000000000"}, status
    assert compose.exec("triton", "id -u").strip() != "0"
    write = compose.engine.docker(
        "exec", compose.container("triton"), "sh", "-c", "touch /usr/x 2>&1; echo $?", check=False
    )
    assert "Read-only file system" in write and write.strip().endswith("1"), write


def test_the_admin_key_is_not_on_the_launchers_command_line(compose: Compose, triton: str) -> None:
    """The launcher reads it from the secret file; only tritonserver's own argv holds it (Triton
    2.51 takes it nowhere else, docs/reliability.md)."""
    script = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done; true"
    command_lines = [line for line in compose.exec("triton", script).splitlines() if line]
    others = [line for line in command_lines if "bin/tritonserver" not in line]
    assert any("resnet18-triton serve" in line for line in others), command_lines
    assert not [line for line in others if ADMIN_KEY in line]
    inspect = compose.engine.docker("inspect", compose.container("triton"))
    assert ADMIN_KEY not in inspect


def test_the_edge_refuses_the_admin_api_that_the_servers_own_port_serves_and_counts_answers(
    triton: str,
) -> None:
    """Run after the classify test, so the edge has answered requests to count."""
    admin = {contract.ADMIN_KEY_HEADER: ADMIN_KEY}
    index = "/v2/repository/index"
    assert _answers(f"http://{triton}{index}", "POST", admin) == 403
    server = proxy.COMPOSE_SERVER_UPSTREAM
    assert _answers(f"http://{server.host}:{server.http_port}{index}", "POST", admin) == 200
    with urllib.request.urlopen(f"http://{proxy.COMPOSE_EDGE_METRICS}/metrics") as reply:
        metrics = reply.read().decode()
    counted = re.search(
        r'resnet18_proxy_requests_total\{tenant="-",outcome="answered"\} (\d+)', metrics
    )
    assert counted and int(counted.group(1)) >= 1, metrics
    assert 'outcome="forbidden"' in metrics, metrics


def test_publishing_to_the_compose_server_under_load_through_the_edge_loses_no_request(
    compose: Compose, triton: str, repository: Repository, tmp_path: Path
) -> None:
    """The second classifier's weights published again as v2, through the server's own port
    (the edge refuses the admin API) while clients classify through the edge: every request is
    answered, equal to what v1 answered (same weights), and v2 is what answers afterwards."""
    import tritonclient.http as httpclient

    eval_images = tmp_path / "eval"
    eval_images.mkdir()
    for number, image in enumerate(repository.held_out):
        (eval_images / f"{number}.png").write_bytes(image)
    image = repository.held_out[0]
    expected = classify_ensemble(triton, SECOND_CLASSIFIER, [image])[0]
    server = proxy.COMPOSE_SERVER_UPSTREAM
    key_file = Path(compose.env["TRITON_ADMIN_KEY_FILE"])
    with Load(triton, SECOND_CLASSIFIER, image, expected, threads=4) as load:
        load.wait_for_answers(5, timeout_s=60)
        published = subprocess.run(
            [str(Path(os.sys.executable).parent / "resnet18-triton"), "publish",
             "--name", SECOND_CLASSIFIER, "--weights", "random", "--seed", str(SECOND_SEED),
             "--opset", "17", "--eval-images", str(eval_images), "--repo", str(repository.path),
             "--url", f"{server.host}:{server.http_port}", "--admin-key-file", str(key_file)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        load.wait_for_answers(10, timeout_s=120)
    outcomes = load.snapshot()
    print(f"publish through compose under load: outcomes {dict(outcomes)}")
    assert published.returncode == 0, published.stdout + published.stderr
    assert set(outcomes) == {"ok"}, dict(outcomes)
    client = httpclient.InferenceServerClient(triton)
    assert client.get_model_metadata(SECOND_CLASSIFIER)["versions"] == ["2"]


def _answering_models(url: str, model: str, image: bytes, count: int) -> Counter[str]:
    """``count`` requests for ``model`` through ``url``: how many each model and version
    answered (the names the answers carry)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, network_timeout=120.0)
    tensor = httpclient.InferInput(contract.ENSEMBLE_INPUT, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=object).reshape(-1, 1))
    answered: Counter[str] = Counter()
    try:
        for _ in range(count):
            response = client.infer(model, [tensor]).get_response()
            answered[f"{response['model_name']} v{response['model_version']}"] += 1
    finally:
        client.close()
    return answered


def test_a_canary_published_to_compose_takes_its_share_of_the_edges_requests_until_rolled_back(
    compose: Compose, triton: str, repository: Repository, tmp_path: Path
) -> None:
    """Run after the publish test (v2 answers). Other weights start as a 20 % canary (forced
    past the gate: random weights disagree), through the server's own port; the edge, which
    reads the share from the repository it mounts, sends the canary about a fifth of its
    requests with no reload; rollback ends it and v2 answers alone again."""
    eval_images = tmp_path / "eval"
    eval_images.mkdir()
    for number, image in enumerate(repository.held_out[:20]):
        (eval_images / f"{number}.png").write_bytes(image)
    names = ClassifierNames.of(SECOND_CLASSIFIER)
    server = proxy.COMPOSE_SERVER_UPSTREAM
    servers = ["--url", f"{server.host}:{server.http_port}"]
    servers += ["--admin-key-file", compose.env["TRITON_ADMIN_KEY_FILE"]]
    common = ["--name", SECOND_CLASSIFIER, "--repo", str(repository.path), *servers]
    published = _cli(
        "publish", "--weights", "random", "--seed", str(SECOND_SEED + 1), "--opset", "17",
        "--eval-images", str(eval_images), "--force", "--canary", "20", *common,
    )  # fmt: skip
    assert published.returncode == 0, published.stdout + published.stderr
    during = _answering_models(triton, SECOND_CLASSIFIER, repository.held_out[0], 400)
    rolled_back = _cli("rollback", *common)
    assert rolled_back.returncode == 0, rolled_back.stdout + rolled_back.stderr
    after = _answering_models(triton, SECOND_CLASSIFIER, repository.held_out[0], 40)
    print(f"a 20 % canary through compose's edge: {dict(during)}")
    assert set(during) == {f"{SECOND_CLASSIFIER} v2", f"{names.canary} v3"}, dict(during)
    # 400 requests at 20 %: 80 expected, standard deviation 8.
    assert 48 <= during[f"{names.canary} v3"] <= 112, dict(during)
    assert after == Counter({f"{SECOND_CLASSIFIER} v2": 40})
    assert not (repository.path / names.canary).exists()


# --- faults under load


@dataclass
class Load:
    """Threads classifying one image in a loop; every answer is checked against ``expected``."""

    url: str
    model: str
    image: bytes
    expected: np.ndarray
    threads: int = 3
    # Through the replicas' proxy: its certificate (PEM) and an API key.
    tls_ca: str | None = None
    api_key: str | None = None
    outcomes: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    def _work(self) -> None:
        import tritonclient.http as httpclient
        from gevent import Timeout as GeventTimeout
        from tritonclient.utils import InferenceServerException

        while not self._stop.is_set():
            client = httpclient.InferenceServerClient(
                self.url,
                network_timeout=60.0,
                ssl=self.tls_ca is not None,
                ssl_options={"ca_certs": self.tls_ca} if self.tls_ca else None,
            )
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
            try:
                tensor = httpclient.InferInput(contract.ENSEMBLE_INPUT, [1, 1], "BYTES")
                tensor.set_data_from_numpy(np.array([self.image], dtype=object).reshape(1, 1))
                answer = client.infer(self.model, [tensor], headers=headers).as_numpy(
                    contract.ENSEMBLE_OUTPUT
                )
            except InferenceServerException as error:
                self._count(f"explicit error: {str(error)[:60]}")
                time.sleep(0.05)
                continue
            except (TimeoutError, GeventTimeout):
                self._count("timeout")
                continue
            except Exception as error:  # refused, reset or closed: the client knows at once
                self._count(f"connection: {type(error).__name__}")
                time.sleep(0.05)
                continue
            finally:
                client.close()
            close = np.abs(answer[0] - self.expected).max() <= PROBABILITY_ATOL
            self._count("ok" if close else "wrong")

    def __enter__(self) -> Load:
        self._workers = [threading.Thread(target=self._work) for _ in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=90)

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.outcomes)

    def wait_for_answers(self, count: int, timeout_s: float) -> None:
        start = self.snapshot()["ok"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.snapshot()["ok"] >= start + count:
                return
            time.sleep(0.1)
        pytest.fail(f"fewer than {count} answers in {timeout_s} s: {dict(self.snapshot())}")


def _load(
    url: str, repository: Repository, tls_ca: str | None = None, api_key: str | None = None
) -> Load:
    image = repository.held_out[0]
    expected = TorchReference(model=repository.digits_model).probabilities([image])[0]
    return Load(url, "resnet18", image, expected, tls_ca=tls_ca, api_key=api_key)


def _stubs(compose: Compose, service: str) -> dict[str, str]:
    """pid -> model of every Python stub in the container (its argv names the model's folder)."""
    script = (
        "for p in /proc/[0-9]*; do grep -q triton_python_backend_stub $p/cmdline 2>/dev/null && "
        "echo $(basename $p) $(tr '\\0' ' ' < $p/cmdline); done; true"
    )
    stubs = {}
    for line in compose.exec(service, script).splitlines():
        pid, _, command = line.partition(" ")
        model = re.search(r"/models/([\w.-]+)/", command)
        if model:
            stubs[pid] = model.group(1)
    return stubs


def test_killing_every_python_stub_under_load_gives_no_wrong_answer(
    compose: Compose, triton: str, repository: Repository
) -> None:
    stubs = _stubs(compose, "triton")
    assert len(set(stubs.values())) >= 3, (
        stubs
    )  # preprocess, resnet18_onnx, and the other classifiers' models
    with _load(triton, repository) as load:
        load.wait_for_answers(5, timeout_s=60)
        killed = set()
        for pid, model in stubs.items():
            # A model with two instances has two stubs: its reload already replaced the second.
            if compose.exec("triton", f"kill -9 {pid} 2>/dev/null && echo killed; true").strip():
                killed.add(model)
            time.sleep(1.0)
        # The launcher's watchdog reloads each model whose stub died.
        time.sleep(3)
        load.wait_for_answers(20, timeout_s=90)
    outcomes = load.snapshot()
    print(f"kill -9 of {len(stubs)} stubs under load: outcomes {dict(outcomes)}")
    assert outcomes["wrong"] == 0 and outcomes["timeout"] == 0, dict(outcomes)
    assert set(_stubs(compose, "triton")).isdisjoint(stubs)
    # The launcher's watchdog saw each model's stub die and reloads the models one at a time.
    deadline = time.monotonic() + 120
    while True:
        logs = compose.logs("triton")
        waiting = [m for m in killed if f"model '{m}' reloaded after its stub died" not in logs]
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not waiting, (waiting, logs[-3000:])


def test_docker_stop_under_load_drains_within_the_grace_period(
    compose: Compose, triton: str, repository: Repository
) -> None:
    with _load(triton, repository) as load:
        load.wait_for_answers(5, timeout_s=60)
        started = time.monotonic()
        compose.run("stop", "triton", timeout=120)
        stopped_after = time.monotonic() - started
        time.sleep(1)
    outcomes = load.snapshot()
    print(f"docker stop under load: {stopped_after:.1f} s, outcomes {dict(outcomes)}")
    exit_code = compose.engine.docker(
        "inspect", "-f", "{{.State.ExitCode}}", compose.container("triton")
    ).strip()
    assert stopped_after < 40, f"stop took {stopped_after:.1f} s (grace period 40 s)"
    assert exit_code == "0", exit_code
    # In flight at the stop: answered, or refused explicitly; never a wrong answer or a hang.
    assert outcomes["wrong"] == 0 and outcomes["timeout"] == 0, dict(outcomes)
    assert outcomes["ok"] >= 5


# --- the replicas profile behind the project's nginx image


def _proxy_connection(compose: Compose, tls: bool = True) -> http.client.HTTPConnection:
    if not tls:
        return http.client.HTTPConnection("127.0.0.1", 8080, timeout=30)
    certificate = Path(compose.env["PROXY_SECRETS_DIR"]) / "tls.crt"
    context = ssl.create_default_context(cafile=str(certificate))
    return http.client.HTTPSConnection("127.0.0.1", 8080, timeout=30, context=context)


def test_replicas_behind_nginx_lose_no_request_when_one_is_killed(
    compose: Compose, triton: str, repository: Repository
) -> None:
    compose.run("stop", "triton", timeout=120)
    compose.run("--profile", "replicas", "up", "-d", "proxy", timeout=900)
    url = "127.0.0.1:8080"
    certificate = str(Path(compose.env["PROXY_SECRETS_DIR"]) / "tls.crt")
    with _load(url, repository, tls_ca=certificate, api_key=API_KEY) as load:
        load.wait_for_answers(10, timeout_s=120)
        compose.engine.docker("kill", compose.container("triton-1"))
        time.sleep(1)
        load.wait_for_answers(20, timeout_s=120)
    outcomes = load.snapshot()
    print(f"one replica killed under load: outcomes {dict(outcomes)}")
    assert set(outcomes) == {"ok"}, dict(outcomes)


def test_the_proxy_refuses_no_key_a_wrong_key_and_plain_http(compose: Compose) -> None:
    path = f"/v2/models/{contract.ENSEMBLE_MODEL}"
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789abcdef"}):
        connection = _proxy_connection(compose)
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        assert response.status == 401, headers
        assert response.getheader("WWW-Authenticate", "").startswith("Bearer")
        connection.close()
    connection = _proxy_connection(compose, tls=False)
    connection.request("GET", path, headers={"Authorization": f"Bearer {API_KEY}"})
    response = connection.getresponse()
    assert response.status == 400 and b"plain HTTP" in response.read()
    connection.close()


def test_a_body_over_the_limit_gets_413_from_nginx(compose: Compose) -> None:
    limit = proxy.compose_settings(2).body_limit
    connection = _proxy_connection(compose)
    connection.putrequest("POST", "/v2/models/resnet18/infer")
    connection.putheader("Authorization", f"Bearer {API_KEY}")
    connection.putheader("Content-Length", str(limit + 1))
    connection.putheader("Content-Type", "application/octet-stream")
    connection.endheaders()
    connection.send(b"\0" * 1024)
    response = connection.getresponse()
    assert response.status == 413, response.status
    connection.close()


def test_the_api_key_is_in_neither_the_proxy_log_nor_docker_inspect(compose: Compose) -> None:
    log = compose.logs("proxy")
    assert "key=ci" in log  # the access log names the key
    inspect = compose.engine.docker("inspect", compose.container("proxy"))
    assert API_KEY not in log and API_KEY not in inspect


# --- the model repository as an image (a Kubernetes init container)


def test_the_model_repository_image_copies_the_repository_as_exported(
    images: Engine, repository: Repository, tmp_path: Path
) -> None:
    target = tmp_path / "models"
    target.mkdir()
    if os.geteuid() == 0:
        os.chown(target, 1000, 1000)  # the image's user writes there, as in a pod's emptyDir
    images.docker(
        "run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "-v", f"{target}:/models",
        f"resnet18-triton/model-repository:{images.tag}",
    )  # fmt: skip
    copied = tree_snapshot(target, directories=False)
    assert copied == repository.exported
    assert "resnet18_int8_fused/config.pbtxt" in copied
