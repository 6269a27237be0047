"""The serving defaults chosen by the measurements in docs/performance.md."""

from __future__ import annotations

import json

from resnet18_triton.repository.configs.builders import onnx_model_config, preprocess_model_config
from resnet18_triton.repository.configs.settings import ServingSettings
from tests.support import preprocess_module

PROVENANCE = '{"path":null,"seed":0,"sha256":null,"source":"random"}'


def test_ort_spinning_is_off_by_default() -> None:
    config = onnx_model_config(ServingSettings(), PROVENANCE)
    assert config.parameters["session.intra_op.allow_spinning"].string_value == "0"
    spinning = onnx_model_config(ServingSettings(intra_op_spinning=True), PROVENANCE)
    assert spinning.parameters["session.intra_op.allow_spinning"].string_value == "1"


def test_ort_backend_passes_the_spinning_entry_through() -> None:
    from google.protobuf import json_format

    from resnet18_triton.repository.layout import backend_source
    from tests.support import load_module

    backend = load_module(
        backend_source("onnxruntime"),
        "ort_backend_for_perf_defaults",
    )
    config = json.loads(
        json_format.MessageToJson(
            onnx_model_config(ServingSettings(), PROVENANCE), preserving_proto_field_name=True
        )
    )
    options = backend.session_options(config)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_jpeg_draft_is_off_by_default_and_read_by_the_model() -> None:
    config = preprocess_model_config(ServingSettings())
    assert config.parameters["jpeg_draft_min_size"].string_value == "0"
    module = preprocess_module()
    model = module.TritonPythonModel()
    as_json = {
        "input": [{"name": "IMAGE"}],
        "output": [{"name": "PIXELS"}],
        "parameters": {"jpeg_draft_min_size": {"string_value": "256"}},
    }
    model.initialize({"model_config": json.dumps(as_json)})
    assert model.draft_min_size == 256
    as_json["parameters"] = {}
    model.initialize({"model_config": json.dumps(as_json)})
    assert model.draft_min_size == 0


def test_ort_memory_arena_is_off_by_default() -> None:
    config = onnx_model_config(ServingSettings(), PROVENANCE)
    assert config.parameters["enable_mem_arena"].string_value == "0"
    arena = onnx_model_config(ServingSettings(ort_memory_arena=True), PROVENANCE)
    assert arena.parameters["enable_mem_arena"].string_value == "1"
