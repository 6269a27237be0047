"""The Python-based onnxruntime backend reads the native backend's config keys."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from resnet18_triton.repository.layout import backend_source
from tests.support import load_module

backend = load_module(backend_source("onnxruntime"), "ort_python_backend")


def config(parameters: dict[str, str], level: int | None = None) -> dict:
    result = {"parameters": {k: {"string_value": v} for k, v in parameters.items()}}
    if level is not None:
        result["optimization"] = {"graph": {"level": level}}
    return result


def test_thread_and_memory_keys() -> None:
    options = backend.session_options(
        config(
            {
                "intra_op_thread_count": "3",
                "inter_op_thread_count": "2",
                "execution_mode": "1",
                "enable_mem_arena": "0",
                "enable_mem_pattern": "false",
            }
        )
    )
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 2
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert options.enable_cpu_mem_arena is False
    assert options.enable_mem_pattern is False


def test_absent_keys_keep_onnxruntime_defaults() -> None:
    options = backend.session_options(config({}))
    assert options.intra_op_num_threads == 0
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.enable_cpu_mem_arena is True


@pytest.mark.parametrize(
    "level, expected",
    [
        (-1, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        (1, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
        (2, ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
        (None, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        (0, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    ],
)
def test_graph_optimization_level(level: int | None, expected: ort.GraphOptimizationLevel) -> None:
    assert backend.graph_optimization_level(config({}, level)) == expected


def test_session_config_entries_pass_through() -> None:
    options = backend.session_options(config({"session.intra_op.allow_spinning": "0"}))
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_split_batches_returns_each_request_its_rows_in_order() -> None:
    logits = np.arange(6 * 2).reshape(6, 2)
    pieces = backend.split_batches([logits], [1, 3, 2])
    assert [p[0].tolist() for p in pieces] == [
        logits[0:1].tolist(),
        logits[1:4].tolist(),
        logits[4:6].tolist(),
    ]


def test_split_batches_keeps_every_output_of_a_request_together() -> None:
    """The classifier has two outputs (logits, probabilities): each request gets its rows of
    both."""
    logits = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)
    probabilities = logits / 100
    first, second = backend.split_batches([logits, probabilities], [3, 1])
    assert [p.tolist() for p in first] == [logits[:3].tolist(), probabilities[:3].tolist()]
    assert [p.tolist() for p in second] == [logits[3:].tolist(), probabilities[3:].tolist()]
