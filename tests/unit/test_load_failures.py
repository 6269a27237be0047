"""What ``serve`` says when tritonserver cannot load a model: read from a real log of OpenVINO
stubs crashing under a preloaded malloc (lines as tritonserver 2.51 wrote them, shortened)."""

from __future__ import annotations

from pathlib import Path

from resnet18_triton.server.load_failures import explain, load_failures, stub_output

LOG = """\
I1206 22:08:01.921245 12873 model_lifecycle.cc:472] "loading: f32digits_openvino:1"
I1206 22:08:03.753255 12873 python_be.cc:2249] "TRITONBACKEND_ModelInstanceInitialize: f32digits_openvino_0_0 (CPU device 0)"
free(): invalid size
E1206 22:08:05.876576 12873 backend_model.cc:692] "ERROR: Failed to create instance: Stub process 'f32digits_openvino_0_0' is not healthy."
E1206 22:08:05.877246 12873 model_lifecycle.cc:642] "failed to load 'f32digits_openvino' version 1: Internal: Stub process 'f32digits_openvino_0_0' is not healthy."
+----------+---------+
| Model    | Version |
+----------+---------+
Error: Failed to initialize NVML
error: creating server: Invalid argument - load failed for model 'f32digits_openvino_ensemble': ensemble 'f32digits_openvino_ensemble' depends on 'f32digits_openvino' which has no loaded version. Model 'f32digits_openvino' loading failed with error: version 1 is at UNAVAILABLE state: Internal: Stub process 'f32digits_openvino_0_0' is not healthy.;
load failed for model 'f32digits_openvino': version 1 is at UNAVAILABLE state: Internal: Stub process 'f32digits_openvino_0_0' is not healthy.;
"""  # noqa: E501
REPO = Path("/srv/models")


def test_each_failed_model_is_named_once_and_an_ensemble_that_runs_it_is_told_apart() -> None:
    failures = load_failures(LOG)
    assert [failure.model for failure in failures] == [
        "f32digits_openvino_ensemble",
        "f32digits_openvino",
    ]
    assert [failure.dependent for failure in failures] == [True, False]


def test_the_stubs_output_is_what_the_servers_logger_did_not_write() -> None:
    assert stub_output(LOG) == ["free(): invalid size"]


def test_the_explanation_names_the_model_the_stubs_words_and_what_to_try() -> None:
    text = explain(LOG, REPO)
    assert text is not None
    assert text.startswith("1 model(s) failed to load:\n  f32digits_openvino: version 1 is at")
    assert "(so did the ensembles that run them: f32digits_openvino_ensemble)" in text
    assert "the stubs' last output:\n  free(): invalid size" in text
    assert "--allocator system" in text
    # The variant's whole family goes together: the fused model runs the same model file.
    models = ("f32digits_openvino", "f32digits_openvino_ensemble", "f32digits_openvino_fused")
    assert f"rm -r {' '.join(str(REPO / model) for model in models)}" in text
    assert "`resnet18-triton openvino --name f32digits`" in text


def test_a_log_without_a_failed_load_has_nothing_to_explain() -> None:
    assert explain('I1206 1 server.cc:1] "Started HTTPService at 127.0.0.1:8000"\n', REPO) is None
