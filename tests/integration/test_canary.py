"""A canary through the real proxy: ``publish --canary``, ``promote`` and ``rollback`` under load.

One ``cluster`` (a real ``serve`` replica behind nginx) serves the 10-class digits classifier.
Version 2 is the same network with a sharper head, version 3 the first weights again: every answer
can be told apart by value and is checked against an independent PyTorch reference of the version
the server names. Clients send through the proxy without pause while the commands run; the tests
run in order on one cluster.
"""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from resnet18_triton.contract import CANARY_PERCENT_PARAMETER
from resnet18_triton.deploy import proxy
from resnet18_triton.deploy.cluster import Cluster
from resnet18_triton.perf import harness
from resnet18_triton.server.watchdog import loaded_record, model_fingerprint
from tests import digits
from tests.lifecycle_support import (
    Published,
    VersionedLoad,
    admin_key_file,
    export_digits,
    head_variant,
    version_references,
)
from tests.support import invoke_cli

NAME = "digits"
CANARY = f"{NAME}_canary"
CANARY_ONNX = f"{NAME}_onnx_canary"
ONNX = f"{NAME}_onnx"
ATOL = 1e-5
CLIENTS = 4
PERCENT = 25
# Answers counted during the canary: the share sent to it is binomial, so 600 answers put
# 25 % +- 6 % (TOLERANCE) at 3.4 standard deviations: a failure by chance about once in 1,400
# runs, while a canary at half or twice its share still fails. (A 10 % canary needs 1,000
# answers for the same power at 3 points: the proxy's split is the same code at any percent.)
COUNTED = 600
TOLERANCE = 0.06
ADMIN_KEY = "canary-test-admin-key"


@dataclass
class Stack(Published):
    proxy_url: str
    metrics_url: str
    marks: dict[str, int] = field(default_factory=dict)  # phase -> its first answer's index
    times: dict[str, float] = field(default_factory=dict)  # phase -> time.monotonic()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("canary")
    model, splits, _ = digits.custom_digits_model()
    models = {"1": model, "2": head_variant(model, scale=2.0)}
    checkpoints = export_digits(work, NAME, models)
    repo = work / "model_repository"
    held_out, _ = splits["held_out"]
    eval_images = work / "held-out"
    eval_images.mkdir()
    for index, data in enumerate(held_out):
        (eval_images / f"{index:03d}.png").write_bytes(data)
    images = list(held_out[:8])
    references = version_references(models, {"1": "1", "2": "2", "3": "1"}, images)
    assert np.abs(references["1"] - references["2"]).max() > 100 * ATOL
    key_file = admin_key_file(work, ADMIN_KEY)
    (work / "cluster").mkdir()
    # The clients send without pause, and the small digits model answers well over the proxy's
    # default 100 requests/s per address on a fast host: rate limits are not what this tests.
    limits = proxy.Limits(rate_per_s=5000, burst=5000)
    options = harness.cluster_options(repo, 1, work / "cluster", admin_key=ADMIN_KEY, limits=limits)
    with Cluster(options) as cluster:
        replica = cluster.replicas[0]
        yield Stack(
            NAME, work, repo, replica.url, key_file, eval_images, checkpoints, references, images,
            cluster.url, f"http://{replica.host}:{replica.metrics_port}/metrics",
        )  # fmt: skip


def _check_answers(load: VersionedLoad, stack: Stack) -> None:
    """No request failed, and every answer equals the reference of the version it names."""
    assert load.failures == [], load.failures[:3]
    for index, answer in enumerate(load.answers):
        expected = stack.references[answer.version][answer.image]
        if np.abs(answer.probabilities - expected).max() > ATOL:
            matches = [
                version
                for version, probabilities in stack.references.items()
                if np.abs(answer.probabilities - probabilities[answer.image]).max() <= ATOL
            ]
            times = {phase: round(at - answer.at, 2) for phase, at in stack.times.items()}
            wall = time.strftime(
                "%H:%M:%S", time.localtime(time.time() - time.monotonic() + answer.at)
            )
            pytest.fail(
                f"answer {index} of {len(load.answers)} names {answer.model} v{answer.version} but "
                f"equals {matches or 'no version'}'s output; phases began at {stack.marks}, "
                f"seconds after it: {times}; it came at {wall}"
            )


def _first_answer_of(load: VersionedLoad, version: str, after: int, timeout_s: float = 30) -> int:
    """The index of the first answer of ``version`` from answer ``after`` on (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [i for i, a in enumerate(load.answers[after:], after) if a.version == version]
        if found:
            return found[0]
        time.sleep(0.1)
    pytest.fail(f"no answer of v{version} within {timeout_s} s: {load.versions()}")


def _run(stack: Stack, load: VersionedLoad, args: list[str]) -> int:
    """Run a command while ``load`` sends; the number of answers when it returned."""
    load.wait_for(20)
    stack.marks[args[0] + " began"] = len(load.answers)
    stack.times[args[0] + " began"] = time.monotonic()
    result = invoke_cli(*args)
    assert result.returncode == 0, result.stderr
    stack.marks[args[0] + " returned"] = len(load.answers)
    stack.times[args[0] + " returned"] = time.monotonic()
    return len(load.answers)


def test_a_canary_answers_its_share_through_the_proxy_and_promote_moves_every_request_to_it(
    stack: Stack,
) -> None:
    with VersionedLoad(stack.proxy_url, stack.images, CLIENTS, model=NAME) as load:
        published = _run(stack, load, stack.publish("2", "--canary", str(PERCENT)))
        # A stub that dies during the canary is reloaded by the watchdog, which reloads only
        # models whose files are recorded as the ones served.
        record = loaded_record(stack.repo)
        for model in (ONNX, NAME, CANARY_ONNX, CANARY):
            assert record.get(model) == model_fingerprint(stack.repo / model), model
        # The proxy applies the canary within a second of publish returning: count from its
        # first answer on.
        started = _first_answer_of(load, "2", published)
        load.wait_for(started + COUNTED, timeout_s=300)
        during = load.answers[started : started + COUNTED]
        # Triton's own metrics count the canary's answers under its model and version (while
        # it is loaded: an unloaded model's series go).
        with urllib.request.urlopen(stack.metrics_url, timeout=10) as reply:
            metrics = reply.read().decode()
        promoted = _run(stack, load, stack.command("promote"))
        load.wait_for(promoted + 40)
    _check_answers(load, stack)
    share = sum(answer.version == "2" for answer in during) / len(during)
    print(f"canary at {PERCENT} %: {100 * share:.1f} % of {len(during)} answers from v2")
    assert len(during) == COUNTED
    assert abs(share - PERCENT / 100) <= TOLERANCE
    assert {answer.version for answer in load.answers[promoted:]} == {"2"}
    assert f'nv_inference_request_success{{model="{CANARY}",version="2"}}' in metrics
    assert not (stack.repo / CANARY).exists() and not (stack.repo / CANARY_ONNX).exists()


def test_rolling_back_a_canary_ends_it_and_the_served_version_answers_alone(stack: Stack) -> None:
    with VersionedLoad(stack.proxy_url, stack.images, CLIENTS, model=NAME) as load:
        started = _run(stack, load, stack.publish("1", "--canary", str(PERCENT)))
        load.wait_for(started + 200)
        assert "3" in {answer.version for answer in load.answers[started:]}
        rolled_back = _run(stack, load, stack.command("rollback"))
        load.wait_for(rolled_back + 40)
    _check_answers(load, stack)
    assert {answer.version for answer in load.answers[rolled_back:]} == {"2"}
    versions = invoke_cli("versions", "--name", NAME, "--repo", str(stack.repo))
    assert versions.returncode == 0, versions.stderr
    assert "canary" not in versions.stdout
    assert not (stack.repo / CANARY).exists() and not (stack.repo / CANARY_ONNX).exists()


def test_a_request_picked_for_a_canary_already_unloaded_is_answered_by_the_served_model(
    stack: Stack,
) -> None:
    """Ending a canary waits 3 s before unloading it; a request picked for it whose body takes
    longer arrives to an unknown model. The same moment, held open: a canary config that takes
    every request, for a canary no server has loaded."""
    canary = stack.repo / CANARY
    canary.mkdir()
    (canary / "config.pbtxt").write_text(
        f'name: "{CANARY}"\nplatform: "ensemble"\n'
        f'parameters {{\n  key: "{CANARY_PERCENT_PARAMETER}"\n'
        '  value {\n    string_value: "100"\n  }\n}\n'
    )
    try:
        with VersionedLoad(stack.proxy_url, stack.images, CLIENTS, model=NAME) as load:
            load.wait_for(200)
    finally:
        shutil.rmtree(canary)
    _check_answers(load, stack)
    assert {answer.model for answer in load.answers} == {NAME}
    assert set(load.versions()) == {"2"}
