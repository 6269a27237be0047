"""The console script against the real server: classify --json and health, as a user runs them."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from tests.support import SAMPLE_FILES, TorchReference, run_cli

CLI = [sys.executable, "-m", "resnet18_triton.cli"]


def test_classify_json_matches_reference(
    url: str, reference: TorchReference, tmp_path: Path
) -> None:
    bad = tmp_path / "not_an_image.jpg"
    bad.write_text("this is text, not a JPEG")
    files = [str(path) for path in SAMPLE_FILES] + [str(bad)]
    result = run_cli(
        "classify", "--url", url, "--json", "--top-k", "5", "--batch-size", "2", *files
    )
    assert result.returncode == 1, result.stderr  # one bad file: the rest still answered
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == files
    assert "cannot identify an image" in lines[-1]["error"]
    expected = reference.probabilities([path.read_bytes() for path in SAMPLE_FILES])
    for line, probabilities in zip(lines[:-1], expected, strict=True):
        top = line["top"]
        assert [entry["index"] for entry in top] == list(np.argsort(-probabilities)[:5])
        for entry in top:
            assert abs(entry["probability"] - probabilities[entry["index"]]) < 1e-6
            assert set(entry) == {"label", "index", "probability"}


def test_classify_table_and_exit_code_zero(url: str) -> None:
    result = run_cli("classify", "--url", url, "--top-k", "3", str(SAMPLE_FILES[0].parent))
    assert result.returncode == 0, result.stderr
    for path in SAMPLE_FILES:
        assert path.name in result.stdout
    assert "random" in result.stderr.lower()  # random weights are announced


def test_health_reports_models_and_provenance(url: str) -> None:
    result = run_cli("health", "--url", url, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    text = json.dumps(report)
    assert [model["name"] for model in report["models"]] == [
        "preprocess",
        "resnet18_onnx",
        "resnet18",
    ]
    assert "random" in text
    human = run_cli("health", "--url", url)
    assert "WARNING" in human.stdout + human.stderr


def test_classify_reports_fifos_and_oversized_files_per_file_and_goes_on(
    url: str, tmp_path: Path
) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    big = tmp_path / "big.jpg"
    big.write_bytes(SAMPLE_FILES[0].read_bytes() + b"\0" * 4096)
    files = [str(fifo), str(big), str(SAMPLE_FILES[0])]
    result = run_cli(
        "classify", "--url", url, "--json", "--max-file-bytes", str(big.stat().st_size - 1), *files
    )
    assert result.returncode == 1, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == files
    assert lines[0]["error"] == "not a regular file (a FIFO); not read"
    assert "over the limit of" in lines[1]["error"]
    assert "top" in lines[2]
