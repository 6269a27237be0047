"""Load: a short soak (the long one is ``resnet18-triton soak``) and 64 concurrent clients.

The soak runs against the session server: high concurrency for SOAK_SECONDS after a warm-up,
then 0 failed requests, 0 wrong answers, RSS of every server process (tritonserver and each
Python stub) grown by less than 10 % since the warm-up, answers still equal to the reference.
``RESNET18_SOAK_SECONDS`` lengthens it (e.g. 600 for ten minutes).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, fields

import numpy as np
from click.testing import CliRunner

from resnet18_triton import contract
from resnet18_triton.cli import cli
from resnet18_triton.perf import harness, soak
from tests.support import PROBABILITY_ATOL

SOAK_SECONDS = float(os.environ.get("RESNET18_SOAK_SECONDS", "20"))
WARMUP_SECONDS = 8.0
SOAK_CONCURRENCY = 32
MAX_RSS_GROWTH_PERCENT = 10.0
CONCURRENT_CLIENTS = 64


def test_soak_loses_nothing_and_does_not_grow(server, url, reference) -> None:
    images = soak.distinct_images(32, seed=7000)
    summary = soak.run_soak(
        url,
        server.process.pid,
        SOAK_SECONDS,
        SOAK_CONCURRENCY,
        WARMUP_SECONDS,
        reference=reference.probabilities(images),
        images=images,
    )
    print("FIGURE " + json.dumps(asdict(summary), sort_keys=True))
    print(soak.markdown(summary))
    assert summary.requests_failed == 0, summary.errors
    assert summary.answers_wrong == 0, summary.errors
    assert summary.requests_ok > 0
    assert summary.max_difference_from_reference is not None
    assert summary.max_difference_from_reference <= PROBABILITY_ATOL
    assert summary.answers_after_soak_equal
    assert summary.pids_unchanged and summary.processes_alive_at_end
    assert summary.max_rss_growth_percent is not None
    assert summary.max_rss_growth_percent < MAX_RSS_GROWTH_PERCENT, (
        summary.rss_growth_percent_after_warmup
    )


def test_64_concurrent_clients_with_distinct_images_each_get_their_own_answer(
    url, reference
) -> None:
    images = soak.distinct_images(CONCURRENT_CLIENTS, seed=8000)
    expected = reference.probabilities(images)
    with ThreadPoolExecutor(max_workers=CONCURRENT_CLIENTS) as pool:
        served = list(pool.map(lambda image: harness.probabilities(url, [image])[0], images))
    distances = np.abs(np.stack(served)[:, None, :] - expected[None, :, :]).max(axis=2)
    for position in range(CONCURRENT_CLIENTS):
        assert distances[position, position] <= PROBABILITY_ATOL, f"client {position}: wrong answer"
        others = np.delete(distances[position], position)
        assert others.min() > 10 * PROBABILITY_ATOL, f"client {position}: ambiguous images"
    assert served[0].shape == (contract.NUM_CLASSES,)


def test_soak_command_against_the_session_server_passes_and_writes_its_summary(
    server, url, tmp_path
) -> None:
    summary_path = tmp_path / "soak.json"
    arguments = ["soak", "--url", url, "--server-pid", str(server.process.pid)]
    arguments += ["--duration", "3", "--warmup", "1", "--concurrency", "4", "--images", "8"]
    result = CliRunner().invoke(cli, [*arguments, "--json-out", str(summary_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads(summary_path.read_text())
    assert summary["requests_ok"] > 0 and summary["requests_failed"] == 0
    assert summary["distinct_images"] == 8 and summary["concurrency"] == 4
    # The summary's fields in order, then where it ran: the JSON that scripts already read.
    assert list(summary) == [field.name for field in fields(soak.SoakSummary)] + ["machine"]
    assert "| process |" in result.output
