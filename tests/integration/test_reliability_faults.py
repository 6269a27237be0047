"""Faults: kill -9 backend processes under load, stop under load (a new model version under
load: test_publish.py).

Runs its OWN server on a copy of the exported repository (the session server is never touched).
Measured figures are printed (``pytest -s``) as ``FIGURE {...}`` lines; docs/reliability.md quotes
them. Every wait is bounded; the only time limits are generous deadlines that define "recovered".
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from resnet18_triton import contract
from resnet18_triton.client.api import ImageClassifier
from resnet18_triton.perf import harness, soak
from resnet18_triton.server.admin import AdminEndpoint
from resnet18_triton.server.embedded import EmbeddedServer, StubWatchdog
from tests.lifecycle_support import ReadinessProbe

ADMIN_KEY = "faults-test-key"
RECOVERY_DEADLINE_S = 60.0  # "recovered" = good answers again within this time (measured: ~3 s)
LOAD_CLIENTS = 4


def figure(**values) -> None:
    print("FIGURE " + json.dumps(values, sort_keys=True))


@pytest.fixture(scope="module")
def own_server(exported_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    repository = tmp_path_factory.mktemp("faults") / "repository"
    shutil.copytree(exported_repository, repository)
    log_path = repository.parent / "tritonserver.log"
    options = harness.local_options(repository, admin_key=ADMIN_KEY, exit_timeout_s=10)
    with harness.local_server(options, log_path) as server:
        yield server


@pytest.fixture(scope="module")
def workload(own_server):
    images = soak.distinct_images(12, seed=5000)
    return images, soak.expected_answers(own_server.url, images)


def _kill_stub(server: EmbeddedServer, model: str) -> tuple[int, float]:
    victim = harness.stack_processes(server.process.pid)[model]
    killed_at = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    return victim.pid, killed_at


def _first_success_after_failures(timeline, since: float) -> float | None:
    """Seconds from ``since`` to the first good answer after the last failure (None: never)."""
    after = [(t, ok) for t, ok in timeline if t >= since]
    failures = [t for t, ok in after if not ok]
    if not failures:
        return 0.0
    later = [t for t, ok in after if ok and t > max(failures)]
    return (min(later) - since) if later else None


def _wait_for_good_answers(load, since: float, deadline_s: float) -> None:
    """Until the last 5 answers ended after ``since`` were all good (bounded by the deadline)."""
    end = since + deadline_s
    while time.monotonic() < end:
        after = [ok for t, ok in list(load.stats.timeline) if t > since]
        if len(after) >= 5 and all(after[-5:]):
            return
        time.sleep(0.2)


def _wait_for_recovery(server, count: int, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and len(server.stub_recoveries) <= count:
        time.sleep(0.2)


@pytest.mark.parametrize("model", [contract.PREPROCESS_MODEL, contract.ONNX_MODEL])
def test_killed_backend_stub_is_replaced_and_good_requests_succeed_again(
    own_server, workload, model: str
) -> None:
    images, expected = workload
    load = soak.LoadGenerator(own_server.url, images, expected, LOAD_CLIENTS, max_s=120).start()
    try:
        time.sleep(1.5)
        before = len(own_server.stub_recoveries)
        with ReadinessProbe(own_server.url) as probe:
            dead_pid, killed_at = _kill_stub(own_server, model)
            _wait_for_recovery(own_server, before, RECOVERY_DEADLINE_S)
            reloaded = own_server.stub_recoveries[before:]
            _wait_for_good_answers(
                load, reloaded[0].reloaded_at if reloaded else killed_at, RECOVERY_DEADLINE_S
            )
            time.sleep(1.0)
    finally:
        stats = load.stop()
    recovered_after = _first_success_after_failures(stats.timeline, killed_at)
    recoveries = own_server.stub_recoveries[before:]
    failed_during = sum(1 for t, ok in stats.timeline if t >= killed_at and not ok)
    figure(
        fault=f"kill -9 {model} stub",
        failed_requests=failed_during,
        ok_requests=stats.ok,
        wrong_answers=stats.wrong,
        recovered_after_s=None if recovered_after is None else round(recovered_after, 2),
        detected_after_s=round(recoveries[0].detected_at - killed_at, 2) if recoveries else None,
        reloaded_after_s=round(recoveries[0].reloaded_at - killed_at, 2) if recoveries else None,
        server_not_ready_samples=probe.not_ready(),
        ensemble_not_ready_samples=probe.ensemble_not_ready(),
        samples=len(probe.samples),
        errors=sorted({e.split(": ", 1)[-1][:90] for e in stats.errors}),
    )
    assert stats.wrong == 0, "a wrong answer was served"
    assert [r.model for r in recoveries] == [model] and recoveries[0].dead_pid == dead_pid
    assert recoveries[0].ok, recoveries[0].detail
    assert recovered_after is not None and recovered_after < RECOVERY_DEADLINE_S
    # Every failure is a clean server error naming the stub or the reloading model.
    for error in stats.errors:
        assert (
            "is not healthy" in error
            or "has no available versions" in error
            or "unavailable" in error.lower()
        ), error
    new = harness.stack_processes(own_server.process.pid)[model]
    assert new.pid != dead_pid and new.is_running()


def test_without_the_watchdog_triton_stays_ready_but_fails_until_reloaded(
    own_server, workload
) -> None:
    """Triton 2.51's own behaviour: a dead Python stub is not restarted and readiness says 200."""
    images, expected = workload
    own_server._watchdog.stop()
    try:
        load = soak.LoadGenerator(own_server.url, images, expected, LOAD_CLIENTS, max_s=120).start()
        try:
            time.sleep(1.0)
            with ReadinessProbe(own_server.url) as probe:
                _, killed_at = _kill_stub(own_server, "preprocess")
                time.sleep(4.0)
            ok_while_dead = sum(
                1 for t, ok in list(load.stats.timeline) if t > killed_at + 1.0 and ok
            )
            failed_while_dead = sum(
                1 for t, ok in list(load.stats.timeline) if t > killed_at + 1.0 and not ok
            )
            reload_started = time.monotonic()
            # Unload (keeping the ensemble) and load, each answered 200.
            assert AdminEndpoint(own_server.url, ADMIN_KEY).reload("preprocess") == (True, "")
            _wait_for_good_answers(load, reload_started, RECOVERY_DEADLINE_S)
        finally:
            stats = load.stop()
    finally:
        own_server._watchdog = StubWatchdog(own_server).start()
    figure(
        fault="kill -9 preprocess stub, no watchdog",
        ok_while_dead=ok_while_dead,
        failed_while_dead=failed_while_dead,
        samples_while_dead=len(probe.samples),
        server_not_ready_samples=probe.not_ready(),
        ensemble_not_ready_samples=probe.ensemble_not_ready(),
        recovered_after_manual_reload_s=_first_success_after_failures(
            stats.timeline, reload_started
        ),
    )
    assert ok_while_dead == 0 and failed_while_dead > 0
    assert probe.not_ready() == 0 and probe.ensemble_not_ready() == 0, (
        "Triton 2.51 reports ready with a dead stub (documented)"
    )
    assert any("Stub process 'preprocess_0_0' is not healthy" in e for e in stats.errors)
    assert stats.wrong == 0
    assert _first_success_after_failures(stats.timeline, reload_started) is not None


def test_client_rides_out_a_killed_stub_with_retries(own_server) -> None:
    """classify_files across a kill: every image classified, no image blamed, never hangs."""
    images = soak.distinct_images(6, seed=6000)
    done = threading.Event()
    results: list = []

    def classify() -> None:
        with ImageClassifier(own_server.url, concurrency=2, network_timeout=30) as classifier:
            end = time.monotonic() + 20
            while time.monotonic() < end and not done.is_set():
                results.extend(classifier.classify_bytes(images, top_k=1))

    errors: list[BaseException] = []

    def run() -> None:
        try:
            classify()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(1.5)
    _kill_stub(own_server, "preprocess")
    time.sleep(8.0)
    done.set()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the client hung"
    figure(
        fault="kill -9 preprocess stub, client classify_bytes loop",
        images_classified=len(results),
        client_error=str(errors[0]) if errors else None,
    )
    assert not errors, f"the client gave up: {errors[0]!r}"
    assert len(results) >= len(images)


def test_a_model_changed_on_disk_is_not_reloaded_until_it_is_restored(own_server) -> None:
    """A re-export then a stub crash must not switch the weights silently: the watchdog refuses
    the reload and says why, then retries (backoff) and heals once the served file is back."""
    model_file = own_server.options.repository / contract.ONNX_MODEL / "1" / "model.onnx"
    original = model_file.read_bytes()
    before = len(own_server.stub_recoveries)
    model_file.write_bytes(original + b"\0")  # any change: another export's weights
    try:
        _kill_stub(own_server, contract.ONNX_MODEL)
        _wait_for_recovery(own_server, before, RECOVERY_DEADLINE_S)
    finally:
        model_file.write_bytes(original)
    refused = own_server.stub_recoveries[before]
    assert not refused.ok and "changed on disk" in refused.detail, refused
    assert "changed on disk since the server started" in own_server.log_tail
    end = time.monotonic() + RECOVERY_DEADLINE_S
    while time.monotonic() < end and not own_server.stub_recoveries[-1].ok:
        time.sleep(0.2)
    retried = own_server.stub_recoveries[before:]
    figure(
        fault="model.onnx changed, then its stub killed",
        attempts=len(retried),
        healed_after_restore=retried[-1].ok,
    )
    assert retried[-1].ok and retried[-1].model == contract.ONNX_MODEL, retried


OVERSIZED_BODY_MB = int(os.environ.get("RESNET18_OVERSIZED_BODY_MB", "0"))


@pytest.mark.skipif(
    OVERSIZED_BODY_MB <= 0,
    reason="needs ~4x the body in memory; set RESNET18_OVERSIZED_BODY_MB=256 to run",
)
def test_oversized_body_is_refused_but_costs_memory(own_server) -> None:
    """Triton 2.51 has no HTTP body limit: the body is received, then the byte limit says 400."""
    import numpy as np
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from tests.corpus import oversized_image

    processes = harness.stack_processes(own_server.process.pid)
    before = harness.rss_mb(processes)
    peak = dict.fromkeys(processes, 0.0)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            for role, mb in harness.rss_mb(processes).items():
                peak[role] = max(peak[role], mb)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    client = httpclient.InferenceServerClient(own_server.url, network_timeout=300.0)
    data = httpclient.InferInput(contract.ENSEMBLE_INPUT, [1, 1], "BYTES")
    data.set_data_from_numpy(
        np.array([[oversized_image(OVERSIZED_BODY_MB * 2**20 - 1)]], dtype=object)
    )
    started = time.monotonic()
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(contract.ENSEMBLE_MODEL, [data])
    finally:
        client.close()
        stop.set()
        sampler.join(timeout=5)
    figure(
        fault=f"{OVERSIZED_BODY_MB} MiB body",
        status=caught.value.status(),
        seconds=round(time.monotonic() - started, 2),
        rss_mb_before=before,
        rss_mb_peak=peak,
        rss_mb_after=harness.rss_mb(processes),
    )
    assert caught.value.status() == "400" and "image too large" in caught.value.message()
    assert own_server.is_ready()


def test_shutdown_under_load_finishes_cleanly_without_orphans(own_server, workload) -> None:
    """Runs last: stops the module's server while 8 clients are sending."""
    images, expected = workload
    family = [own_server.process.pid] + [
        p.pid for p in psutil.Process(own_server.process.pid).children(recursive=True)
    ]
    load = soak.LoadGenerator(
        own_server.url, images, expected, 8, max_s=120, network_timeout=30
    ).start()
    time.sleep(2.0)
    started = time.monotonic()
    code = own_server.stop()
    stop_s = time.monotonic() - started
    stats = load.stop(join_timeout=60)
    assert load.alive == 0, "a client hung after shutdown"
    alive = [
        pid
        for pid in family
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    figure(
        fault="stop (SIGTERM) under load",
        stop_s=round(stop_s, 2),
        exit_code=code,
        ok_requests=stats.ok,
        failed_requests=stats.failed,
        wrong_answers=stats.wrong,
        errors=sorted({e.split(":", 1)[0] for e in stats.errors}),
        orphans=alive,
    )
    # Triton 2.51 keeps serving open keep-alive connections during the exit timeout; if
    # clients are still sending when it expires it exits "immediately": with status 1 or,
    # measured here too, SIGSEGV on the way out (docs/reliability.md). Anything else fails.
    # The log line is the evidence when it arrives; a process that dies of SIGSEGV loses its
    # buffered stdout, so the stop having lasted the whole exit timeout counts as well.
    timed_out = (
        "Exit timeout expired" in own_server.log_tail or stop_s >= own_server.options.exit_timeout_s
    )
    assert code == 0 or (timed_out and code in (1, -signal.SIGSEGV)), code
    assert stop_s < own_server.options.exit_timeout_s + 15
    assert stats.wrong == 0
    # Failures are connection-level or a clean server error; the load's client (ImageClassifier,
    # no retries) reports a server it cannot reach as ServerUnavailableError.
    for error in stats.errors:
        assert error.split(":", 1)[0] in (
            "ServerUnavailableError",
            "ConnectionRefusedError",
            "ConnectionResetError",
            "InferenceServerException",
            "BrokenPipeError",
            "HTTPParseError",
            "OSError",
        ), error
    assert not alive, f"orphans: {alive}"
