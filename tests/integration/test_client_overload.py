"""The client under real overload: a Triton whose models queue at most one request, flooded by
several ``resnet18-triton classify`` processes at once. Triton refuses what its queues cannot
hold (503 "Exceeds maximum queue size"); the client resends with backoff, and every image ends
either answered, with the same answer as on a calm server, or with an explicit overload error.
Nothing hangs: each process must exit on its own.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from resnet18_triton import contract
from resnet18_triton.client.api import ImageClassifier
from resnet18_triton.client.error_map import OVERLOAD_ERROR_PREFIX
from resnet18_triton.client.results import Prediction
from resnet18_triton.perf import harness
from tests.support import PROBABILITY_ATOL, SAMPLE_FILES

QUEUE_SIZE = 1
CLIENTS = 4  # classify processes at once
CONCURRENCY = 8  # requests in flight per process: 32 against queues of one
COPIES = 4  # of each sample photo per process
TOP_K = 5
# A guard against a hang, far above what a run takes; not a performance bound.
PROCESS_TIMEOUT_S = 600


def limit_queue(config: Path, size: int) -> None:
    """Give a model's dynamic batcher a queue of at most ``size`` requests (the one it has, if
    any, is resized)."""
    text = config.read_text()
    if "max_queue_size" in text:
        text = re.sub(r"max_queue_size: \d+", f"max_queue_size: {size}", text)
    else:
        policy = f"dynamic_batching {{\n  default_queue_policy {{\n    max_queue_size: {size}\n  }}"
        text, count = re.subn(r"dynamic_batching \{", policy, text, count=1)
        assert count == 1, f"{config} has no dynamic_batching"
    config.write_text(text)


@pytest.fixture(scope="module")
def queue_limited_url(
    exported_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A server of its own for the default classifier, whose two steps queue one request each."""
    repository = tmp_path_factory.mktemp("queue_limited") / "model_repository"
    shutil.copytree(exported_repository, repository)
    for model in (contract.PREPROCESS_MODEL, contract.ONNX_MODEL):
        limit_queue(repository / model / "config.pbtxt", QUEUE_SIZE)
    options = harness.local_options(repository, models=contract.SERVED_MODELS, exit_timeout_s=10)
    with harness.local_server(options, repository.parent / "tritonserver.log") as running:
        yield running.url


def calm_answers(url: str) -> dict[str, list[Prediction]]:
    """Each sample's top-k with one request at a time, which a queue of one never refuses."""
    with ImageClassifier(url, concurrency=1) as classifier:
        results = list(classifier.classify_files(SAMPLE_FILES, top_k=TOP_K, batch_size=1))
    assert all(result.ok for result in results), [result.error for result in results]
    return {Path(result.path).name: result.predictions for result in results}


def copies(directory: Path) -> dict[str, str]:
    """``COPIES`` of every sample in ``directory``; copy name -> sample name."""
    directory.mkdir()
    names = {}
    for sample in SAMPLE_FILES:
        for number in range(COPIES):
            copy = directory / f"{sample.stem}-{number}{sample.suffix}"
            shutil.copyfile(sample, copy)
            names[copy.name] = sample.name
    return names


def test_a_flood_ends_in_right_answers_or_explicit_overload_errors_and_nothing_hangs(
    queue_limited_url: str, tmp_path: Path
) -> None:
    expected = calm_answers(queue_limited_url)
    command = Path(sys.executable).parent / "resnet18-triton"
    flags = ["--url", queue_limited_url, "--json", "--no-progress", "--batch-size", "1"]
    flags += ["--concurrency", str(CONCURRENCY), "--top-k", str(TOP_K)]
    directories = [tmp_path / f"client{number}" for number in range(CLIENTS)]
    sample_of: dict[str, str] = {}
    for directory in directories:
        sample_of.update(copies(directory))
    processes = [
        subprocess.Popen(
            [str(command), "classify", *flags, str(directory)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for directory in directories
    ]
    outputs = [process.communicate(timeout=PROCESS_TIMEOUT_S) for process in processes]

    answered = after_retries = overloaded = retries = 0
    for process, directory, (out, err) in zip(processes, directories, outputs, strict=True):
        assert process.returncode in (0, 1), err
        records = [json.loads(line) for line in out.splitlines()]
        assert sorted(Path(record["image"]).name for record in records) == sorted(
            path.name for path in directory.iterdir()
        )
        for record in records:
            retries += record.get("retries", 0)
            if "top" in record:
                want = expected[sample_of[Path(record["image"]).name]]
                assert [entry["index"] for entry in record["top"]] == [p.index for p in want]
                got = [entry["probability"] for entry in record["top"]]
                assert got == pytest.approx([p.probability for p in want], abs=PROBABILITY_ATOL)
                answered += 1
                after_retries += record.get("retries", 0) > 0
            else:
                assert record["error"].startswith(OVERLOAD_ERROR_PREFIX), record
                assert "--concurrency" in record["error"] and "replicas" in record["error"]
                assert record["retries"] == contract.CLIENT_OVERLOAD_RETRIES
                overloaded += 1
        if process.returncode == 1:
            assert "refused as overloaded" in err, err
    total = CLIENTS * COPIES * len(SAMPLE_FILES)
    assert answered + overloaded == total
    # The flood did overload the server: otherwise this test showed nothing.
    assert retries > 0
    sys.stdout.write(
        f"\nFIGURE overload flood: {total} images, {CLIENTS} x {CONCURRENCY} in flight, "
        f"max_queue_size {QUEUE_SIZE}: {answered} answered ({after_retries} after retries), "
        f"{overloaded} explicit overload errors, {retries} retries in all\n"
    )
