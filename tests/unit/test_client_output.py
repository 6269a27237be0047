"""Parsing the server's classification strings and formatting results for people and programs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from resnet18_triton.client.cli import (
    describe_provenance,
    format_health,
    format_json_line,
    format_table,
    health_to_json,
)
from resnet18_triton.client.error_map import server_message
from resnet18_triton.client.policies import RetryPolicy
from resnet18_triton.client.results import (
    ClassificationResult,
    HealthReport,
    ModelHealth,
    Prediction,
    parse_classification,
    parse_classifications,
)

# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (b"0.823400:281:tabby", Prediction("tabby", 281, 0.8234)),
        ("0.5:0:tench, Tinca tinca", Prediction("tench, Tinca tinca", 0, 0.5)),
        (b"0.1:7:odd: label, with: colons", Prediction("odd: label, with: colons", 7, 0.1)),
        (b"1e-05:999:toilet tissue", Prediction("toilet tissue", 999, 1e-05)),
        (b"0.25:3:", Prediction("", 3, 0.25)),
        (b"0.25:3", Prediction("", 3, 0.25)),  # no label file on the server
        ("0.5:1:caf\u00e9".encode(), Prediction("caf\u00e9", 1, 0.5)),
    ],
)
def test_parse_classification(entry: bytes | str, expected: Prediction) -> None:
    assert parse_classification(entry) == expected


@pytest.mark.parametrize("entry", [b"", b"0.5", b"high:1:cat", b"0.5:one:cat"])
def test_malformed_entries_are_rejected(entry: bytes) -> None:
    with pytest.raises(ValueError, match="probability:index:label"):
        parse_classification(entry)


def test_parse_classifications_keeps_rows_and_order() -> None:
    rows = np.array([[b"0.9:1:a", b"0.1:2:b"], [b"0.6:3:c", b"0.4:4:d, e"]], dtype=np.object_)
    parsed = parse_classifications(rows)
    assert [[p.index for p in row] for row in parsed] == [[1, 2], [3, 4]]
    assert parsed[1][1].label == "d, e"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("in ensemble 'resnet18', image 2 of 3: cannot identify", "image 2 of 3: cannot identify"),
        ("in ensemble 'a', in ensemble 'b', empty image", "empty image"),
        (
            "Request for unknown model: 'x' is not found",
            "Request for unknown model: 'x' is not found",
        ),
    ],
)
def test_server_message_drops_status_and_ensemble_noise(message: str, expected: str) -> None:
    error = InferenceServerException(msg=message, status="400")
    assert str(error).startswith("[400]")
    assert server_message(error) == expected


def test_retry_delays_grow_and_are_bounded() -> None:
    policy = RetryPolicy(attempts=6, initial_delay=0.5, max_delay=3.0)
    assert list(policy.delays()) == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert list(RetryPolicy(attempts=1).delays()) == []


# --- classify output -------------------------------------------------------------------------

GOOD = ClassificationResult(
    "photos/cat 1.jpg",
    [Prediction("tabby, tabby cat", 281, 0.8234), Prediction("Egyptian cat", 285, 0.05)],
)
BAD = ClassificationResult("photos/broken.jpg", error="cannot identify an image in 7 bytes")


def test_json_line_for_predictions_is_exact() -> None:
    line = format_json_line(GOOD)
    assert "\n" not in line
    assert json.loads(line) == {
        "image": "photos/cat 1.jpg",
        "top": [
            {"label": "tabby, tabby cat", "index": 281, "probability": 0.8234},
            {"label": "Egyptian cat", "index": 285, "probability": 0.05},
        ],
    }
    assert list(json.loads(line)["top"][0]) == ["label", "index", "probability"]


def test_json_line_for_an_error_is_exact() -> None:
    assert json.loads(format_json_line(BAD)) == {
        "image": "photos/broken.jpg",
        "error": "cannot identify an image in 7 bytes",
    }


def test_json_line_keeps_non_ascii_readable() -> None:
    result = ClassificationResult("caf\u00e9.jpg", [Prediction("x", 1, 0.5)])
    assert "caf\u00e9.jpg" in format_json_line(result)


def test_table_rows_are_aligned() -> None:
    assert format_table(GOOD) == (
        "photos/cat 1.jpg\n  1  0.8234  281  tabby, tabby cat\n  2  0.0500  285  Egyptian cat"
    )


def test_table_aligns_ranks_and_indices_of_different_widths() -> None:
    predictions = [Prediction(f"class {i}", i, 0.01) for i in (5, 42, 999, 7, 8, 9, 10, 11, 12, 13)]
    rows = format_table(ClassificationResult("x.jpg", predictions)).splitlines()[1:]
    assert len({row.index("class") for row in rows}) == 1
    assert rows[0] == "   1  0.0100    5  class 5"
    assert rows[9] == "  10  0.0100   13  class 13"


def test_table_for_an_error() -> None:
    assert format_table(BAD) == "photos/broken.jpg\n  error: cannot identify an image in 7 bytes"


# --- health output ---------------------------------------------------------------------------


def report(provenance: dict | None, ready: bool = True) -> HealthReport:
    models = (
        ModelHealth("preprocess", True, ("1",)),
        ModelHealth(
            "resnet18_onnx", ready, ("1",) if ready else (), "" if ready else "load failed"
        ),
    )
    return HealthReport(
        "127.0.0.1:8000", True, True, models, provenance, None if provenance else "no parameter"
    )


def test_health_warns_loudly_about_random_weights() -> None:
    text = format_health(report({"source": "random", "seed": 0}))
    assert "weights: source=random, seed=0" in text
    assert text.splitlines()[-1].startswith("WARNING: the served model has RANDOM weights")


def test_health_without_random_weights_has_no_warning() -> None:
    text = format_health(report({"source": "imagenet"}))
    assert "WARNING" not in text
    assert "weights: source=imagenet" in text


def test_health_lists_models_aligned_with_their_state() -> None:
    lines = format_health(report({"source": "imagenet"}, ready=False)).splitlines()
    assert lines[0] == "Triton 127.0.0.1:8000  live: yes  ready: yes"
    assert lines[1] == "  preprocess     ready      versions: 1"
    assert lines[2] == "  resnet18_onnx  NOT READY  load failed"


def test_health_shows_how_each_ready_model_is_served() -> None:
    serving = (("instances", "2"), ("intra-op threads", "1"), ("max batch", "4"))
    models = (ModelHealth("resnet18_onnx", True, ("1",), serving=serving),)
    text = format_health(HealthReport("127.0.0.1:8000", True, True, models, {"source": "x"}))
    line = (
        "  resnet18_onnx  ready      versions: 1  instances: 2, intra-op threads: 1, max batch: 4"
    )
    assert text.splitlines()[1] == line
    assert health_to_json(HealthReport("u", True, True, models, None))["models"][0]["serving"] == {
        "instances": "2",
        "intra-op threads": "1",
        "max batch": "4",
    }


def test_health_with_unknown_provenance_says_why() -> None:
    assert "weights: unknown (no parameter)" in format_health(report(None))


def test_health_report_flags() -> None:
    assert report({"source": "random"}).random_weights
    assert not report({"source": "file", "path": "/w.pth", "sha256": "ab"}).random_weights
    assert not report(None).random_weights
    assert report(None).all_ready
    assert not report(None, ready=False).all_ready


def test_health_json_is_serialisable_and_complete() -> None:
    data = json.loads(
        json.dumps(health_to_json(report({"source": "random", "seed": 0}, ready=False)))
    )
    assert data["random_weights"] is True
    assert data["all_ready"] is False
    assert data["models"][1] == {
        "name": "resnet18_onnx",
        "ready": False,
        "versions": [],
        "detail": "load failed",
        "precision": "",
        "serving": {},
    }


def test_describe_provenance_shows_source_first_and_every_set_field() -> None:
    text = describe_provenance({"path": "/w.pth", "sha256": "abc", "source": "file"})
    assert text == "source=file, path=/w.pth, sha256=abc"
    assert (
        describe_provenance({"path": None, "seed": 0, "source": "random"})
        == "source=random, seed=0"
    )


def test_health_shows_each_variants_precision() -> None:
    models = (
        ModelHealth("preprocess", True, ("1",)),
        ModelHealth("resnet18_onnx", True, ("1",), precision="fp32"),
        ModelHealth("resnet18_openvino_ensemble", True, ("1",), precision="bf16"),
    )
    report_ = HealthReport("127.0.0.1:8000", True, True, models, {"source": "imagenet"})
    lines = format_health(report_).splitlines()
    assert lines[1].rstrip().endswith("versions: 1")
    assert lines[2].endswith("versions: 1  precision: fp32")
    assert lines[3].endswith("versions: 1  precision: bf16")
    assert [m["precision"] for m in health_to_json(report_)["models"]] == ["", "fp32", "bf16"]


def test_precision_is_read_from_the_classifier_config() -> None:
    from resnet18_triton.client.results import ensemble_classifier, precision_of

    def parameters(**values: str) -> dict:
        return {key: {"string_value": value} for key, value in values.items()}

    openvino = {"backend": "openvino", "parameters": parameters(precision="bf16")}
    assert precision_of(openvino) == "bf16"
    int8 = {"backend": "onnxruntime", "parameters": parameters(quantization="{}")}
    assert precision_of(int8) == "int8"
    assert precision_of({"backend": "onnxruntime"}) == "fp32"
    assert precision_of({"backend": "python"}) == ""
    steps = [{"model_name": "preprocess"}, {"model_name": "resnet18_openvino"}]
    ensemble = {"platform": "ensemble", "ensemble_scheduling": {"step": steps}}
    assert ensemble_classifier(ensemble) == "resnet18_openvino"
    assert ensemble_classifier(openvino) is None
