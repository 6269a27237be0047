"""A new version of a served classifier, published and rolled back under load by the real
commands, against a real ``serve``.

The classifier is the 10-class digits ResNet-18 (its own labels and preprocessing). Its "retrained"
version 2 is the same network with a sharper head (same top-1 answers, other probabilities), so
every answer can be told apart by value and checked against an independent PyTorch reference of
the version the server names. A head whose rows were shuffled plays the model trained on shuffled
labels. The tests run in order on one server: refused, published, rolled back, killed mid-way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from resnet18_triton.errors import ExportError
from resnet18_triton.export.cli.export import export
from resnet18_triton.server.embedded import free_port
from tests import digits
from tests.lifecycle_support import (
    Published,
    ReadinessProbe,
    VersionedLoad,
    admin_key_file,
    export_digits,
    head_variant,
    repository_pins,
    served_pins,
    version_references,
)
from tests.support import CLI, invoke_cli, run_cli, serve_process, tree_digest

NAME = "digits"
ONNX = f"{NAME}_onnx"
PREPROCESS = f"{NAME}_preprocess"
# Served probabilities against PyTorch's on the same weights (the FP32 path's bar, with room for
# the 96x96 digits' tempered head).
ATOL = 1e-5
LOAD_CLIENTS = 6


@dataclass
class Lifecycle(Published):
    metrics_port: int


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lifecycle]:
    work = tmp_path_factory.mktemp("publish")
    model, splits, _ = digits.custom_digits_model()
    models = {
        "1": model,
        "2": head_variant(model, scale=2.0),
        "shuffled": head_variant(model, shuffle=True),
    }
    checkpoints = export_digits(work, NAME, models)
    repo = work / "model_repository"
    held_out, truth = splits["held_out"]
    eval_images = work / "held-out"
    for index, (data, digit) in enumerate(zip(held_out, truth, strict=True)):
        folder = eval_images / digits.DIGIT_LABELS[digit]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:03d}.png").write_bytes(data)
    images = list(held_out[:8])
    references = version_references(models, {"1": "1", "2": "2"}, images)
    # The two versions must be told apart by value, far beyond the tolerance.
    assert np.abs(references["1"] - references["2"]).max() > 100 * ATOL
    key_file = admin_key_file(work, "publish-test-admin-key")
    metrics_port = free_port()
    extra = ("--admin-key-file", str(key_file), "--metrics-port", str(metrics_port))
    with serve_process(repo, work / "serve.log", *extra) as url:
        yield Lifecycle(
            NAME, work, repo, url, key_file, eval_images, checkpoints, references, images,
            metrics_port,
        )  # fmt: skip


def _check_answers(load: VersionedLoad, lifecycle: Lifecycle, versions: set[str]) -> None:
    """No request failed, and every answer equals the reference of the version it names."""
    assert load.failures == [], load.failures[:3]
    assert set(load.versions()) <= versions, load.versions()
    for answer in load.answers:
        expected = lifecycle.references[answer.version][answer.image]
        np.testing.assert_allclose(answer.probabilities, expected, rtol=0, atol=ATOL)


def _published(lifecycle: Lifecycle, load: VersionedLoad, args: list[str]) -> str:
    load.wait_for(20)
    result = invoke_cli(*args)
    assert result.returncode == 0, result.stderr
    settled = len(load.answers)
    load.wait_for(settled + 20)
    return result.stderr


def _while_serving(
    lifecycle: Lifecycle, args: list[str]
) -> tuple[str, VersionedLoad, ReadinessProbe]:
    """Run ``args`` while clients send and readiness is sampled: its output, the load, the probe."""
    with (
        ReadinessProbe(lifecycle.admin_url, NAME) as probe,
        VersionedLoad(lifecycle.admin_url, lifecycle.images, LOAD_CLIENTS, NAME) as load,
    ):
        output = _published(lifecycle, load, args)
    return output, load, probe


def test_a_model_trained_on_shuffled_labels_is_refused_and_nothing_changes(lifecycle) -> None:
    before = tree_digest(lifecycle.repo, (ONNX, NAME))
    result = invoke_cli(*lifecycle.publish("shuffled"))
    assert result.returncode == 1, result.stderr
    assert "was not published" in result.stderr and "accuracy" in result.stderr
    assert "| accuracy of new v2" in result.stderr  # the report is printed
    assert tree_digest(lifecycle.repo, (ONNX, NAME)) == before


def test_export_refuses_to_replace_a_served_classifier_and_points_to_publish(lifecycle) -> None:
    before = tree_digest(lifecycle.repo, (ONNX, NAME))
    args = ["--repo", str(lifecycle.repo), "--name", NAME, "--weights", "random"]
    result = CliRunner().invoke(export, args)
    assert isinstance(result.exception, ExportError), result.output
    assert result.exception.exit_code == 2
    message = str(result.exception)
    assert "served by a running server" in message and "publish" in message
    assert tree_digest(lifecycle.repo, (ONNX, NAME)) == before


def test_publish_under_load_answers_every_request_with_the_version_it_names(lifecycle) -> None:
    output, load, probe = _while_serving(lifecycle, lifecycle.publish("2"))
    assert "published v2 (was v1)" in output
    _check_answers(load, lifecycle, {"1", "2"})
    # The server runs the ensemble's config as the repository has it now, not the one it read
    # at start (unpinned): reloaded later as a dependant, a stale one would answer under one
    # version number with another version's weights.
    assert served_pins(lifecycle.admin_url, NAME) == repository_pins(lifecycle.repo, NAME)
    assert served_pins(lifecycle.admin_url, NAME)[0] == [2]
    # Answers move from v1 to v2 and stay there; the classifier stays ready throughout.
    assert load.answers[0].version == "1" and load.answers[-1].version == "2"
    assert probe.ensemble_not_ready() == 0
    listed = invoke_cli("versions", "--repo", str(lifecycle.repo), "--name", NAME)
    assert [line.split()[:1] + line.split()[3:5] for line in listed.stdout.splitlines()[1:]] == [
        ["2", "answers", "since"],
        ["1", "kept"],
    ]


def test_every_answer_names_its_version_in_the_json_and_the_metrics(lifecycle) -> None:
    image = lifecycle.work / "digit.png"
    image.write_bytes(lifecycle.images[0])
    result = run_cli(
        "classify", "--url", lifecycle.admin_url, "--model", NAME, "--json", str(image)
    )
    assert result.returncode == 0, result.stderr
    assert '"model_version": "2"' in result.stdout
    metrics = f"http://127.0.0.1:{lifecycle.metrics_port}/metrics"
    with urllib.request.urlopen(metrics, timeout=10) as reply:
        metrics = reply.read().decode()
    for version in ("1", "2"):
        assert f'nv_inference_request_success{{model="{NAME}",version="{version}"}}' in metrics


def test_rollback_under_load_answers_every_request_and_goes_back_to_the_previous_version(
    lifecycle,
) -> None:
    output, load, probe = _while_serving(lifecycle, lifecycle.command("rollback"))
    assert "rolled back to v1 (was v2)" in output
    _check_answers(load, lifecycle, {"1", "2"})
    assert (
        served_pins(lifecycle.admin_url, NAME)
        == repository_pins(lifecycle.repo, NAME)
        == (
            [1],
            {PREPROCESS: -1, ONNX: 1},
        )
    )
    assert load.answers[-1].version == "1"
    assert probe.ensemble_not_ready() == 0


def _kill_when(command: list[str], ready, scratch: Path) -> None:
    """Run ``resnet18-triton COMMAND`` and SIGKILL it as soon as ``ready()`` is true. Its
    temporary files, which a killed process cannot remove, go to ``scratch``."""
    scratch.mkdir(exist_ok=True)
    process = subprocess.Popen(
        [*CLI, *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    try:
        deadline = time.monotonic() + 300
        while not ready() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process.poll() is None, "publish ended before the point it was to be killed at"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_a_publish_killed_at_each_step_leaves_one_version_answering_and_the_next_recovers(
    lifecycle,
) -> None:
    staging = lambda: any(  # noqa: E731
        entry.name.startswith(f".{lifecycle.repo.name}.export-")
        for entry in lifecycle.repo.parent.iterdir()
    )
    scratch = lifecycle.work / "tmp"
    before = tree_digest(lifecycle.repo, (ONNX, NAME))
    with VersionedLoad(lifecycle.admin_url, lifecycle.images, LOAD_CLIENTS, NAME) as load:
        # While it exports: the repository is untouched.
        _kill_when(lifecycle.publish("2"), staging, scratch)
        assert tree_digest(lifecycle.repo, (ONNX, NAME)) == before
        # Once the next version is on disk, while the servers load it.
        _kill_when(
            lifecycle.publish("2"),
            lambda: (lifecycle.repo / ONNX / "3").is_dir(),
            scratch,
        )
        load.wait_for(len(load.answers) + 20)
        # The next publish finishes the move first, then publishes.
        output = _published(lifecycle, load, lifecycle.publish("2"))
    assert "published v4 (was v3)" in output or "published v4 (was v1)" in output, output
    lifecycle.references["3"] = lifecycle.references["4"] = lifecycle.references["2"]
    _check_answers(load, lifecycle, {"1", "3", "4"})
    assert load.answers[-1].version == "4"
    listed = invoke_cli("versions", "--repo", str(lifecycle.repo), "--name", NAME).stdout
    assert "unfinished" not in listed
    # Retention: the served version and the two before it.
    assert sorted(p.name for p in (lifecycle.repo / ONNX).iterdir() if p.name.isdigit()) == [
        "2",
        "3",
        "4",
    ]
