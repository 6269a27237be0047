"""Configs for the serving features: warm-up, response cache, OpenVINO, INT8 variant."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import model_config_pb2 as mc

from resnet18_triton import contract
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.errors import RepositoryError
from resnet18_triton.repository import layout, variants
from resnet18_triton.repository.configs.builders import (
    WARMUP_DIRNAME,
    WARMUP_IMAGE_FILENAME,
    all_model_configs,
    ensemble_model_config,
    fused_model_config,
    onnx_model_config,
    variant_configs,
)
from resnet18_triton.repository.configs.parser import parse, render
from resnet18_triton.repository.configs.settings import ServingSettings
from resnet18_triton.repository.writer import (
    install_python_models,
    write_configs,
    write_fused_model,
    write_variant,
)
from tests.support import preprocess_module

DEFAULT = ClassifierNames.of()

PROVENANCE = '{"seed":0,"source":"random"}'


def by_name(settings: ServingSettings) -> dict[str, mc.ModelConfig]:
    return {config.name: config for config in all_model_configs(settings, PROVENANCE)}


def test_defaults_warm_up_and_do_not_cache() -> None:
    configs = by_name(ServingSettings())
    assert not any(config.HasField("response_cache") for config in configs.values())
    onnx = configs[contract.ONNX_MODEL]
    assert [w.batch_size for w in onnx.model_warmup] == [1, 8]
    assert all(w.inputs[contract.ONNX_INPUT].zero_data for w in onnx.model_warmup)
    assert list(onnx.model_warmup[0].inputs[contract.ONNX_INPUT].dims) == [3, 224, 224]
    (sample,) = configs[contract.PREPROCESS_MODEL].model_warmup
    assert sample.inputs[contract.PREPROCESS_INPUT].input_data_file == WARMUP_IMAGE_FILENAME
    assert sample.inputs[contract.PREPROCESS_INPUT].data_type == mc.TYPE_STRING
    # Triton does not warm up ensembles; their steps are warm.
    assert not configs[contract.ENSEMBLE_MODEL].model_warmup
    assert not onnx.optimization.execution_accelerators.cpu_execution_accelerator


def test_no_warmup_writes_no_samples() -> None:
    assert not any(c.model_warmup for c in by_name(ServingSettings(warmup=False)).values())


def test_response_cache_marks_the_ensemble_and_the_classifier() -> None:
    configs = by_name(ServingSettings(response_cache=True))
    cached = {name for name, config in configs.items() if config.response_cache.enable}
    assert cached == {contract.ENSEMBLE_MODEL, contract.ONNX_MODEL}


def test_openvino_accelerator_is_on_the_onnx_model_only() -> None:
    configs = by_name(ServingSettings(openvino=True))
    accelerators = configs[contract.ONNX_MODEL].optimization.execution_accelerators
    assert [a.name for a in accelerators.cpu_execution_accelerator] == ["openvino"]
    assert "openvino" in render(configs[contract.ONNX_MODEL])


def test_warmup_file_is_a_length_prefixed_jpeg_the_preprocessing_accepts(tmp_path: Path) -> None:
    write_configs(tmp_path, ServingSettings(), PROVENANCE)
    data = (
        tmp_path / contract.PREPROCESS_MODEL / WARMUP_DIRNAME / WARMUP_IMAGE_FILENAME
    ).read_bytes()
    length = int.from_bytes(data[:4], "little")
    assert length == len(data) - 4  # a wrong prefix crashes tritonserver 2.51 at load
    assert data[4:6] == b"\xff\xd8"  # JPEG
    assert preprocess_module().preprocess_bytes(data[4:]).shape == (3, 224, 224)


def test_named_builders_make_a_variant() -> None:
    settings = ServingSettings()
    onnx = onnx_model_config(settings, PROVENANCE, name=contract.INT8_MODEL)
    ensemble = ensemble_model_config(
        settings, name=contract.INT8_ENSEMBLE_MODEL, classifier=contract.INT8_MODEL
    )
    assert onnx.name == contract.INT8_MODEL
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        contract.PREPROCESS_MODEL,
        contract.INT8_MODEL,
    ]
    assert dict(ensemble.ensemble_scheduling.step[1].output_map) == {
        contract.ONNX_PROBABILITIES: contract.ENSEMBLE_OUTPUT
    }


def test_variant_configs_copy_every_serving_choice() -> None:
    configs = by_name(ServingSettings(onnx_instances=2, intra_op_threads=1, response_cache=True))
    onnx, ensemble = variant_configs(
        configs[contract.ONNX_MODEL],
        configs[contract.ENSEMBLE_MODEL],
        onnx_name=contract.INT8_MODEL,
        ensemble_name=contract.INT8_ENSEMBLE_MODEL,
        parameters={"quantization": "{}"},
    )
    expected = mc.ModelConfig()
    expected.CopyFrom(configs[contract.ONNX_MODEL])
    expected.name = contract.INT8_MODEL
    expected.parameters["quantization"].string_value = "{}"
    assert onnx == expected
    steps = [s.model_name for s in ensemble.ensemble_scheduling.step]
    assert steps == [contract.PREPROCESS_MODEL, contract.INT8_MODEL]
    assert [o.name for o in onnx.output] == list(contract.ONNX_OUTPUTS)
    assert ensemble.response_cache.enable
    with pytest.raises(RepositoryError, match="exactly one"):
        variant_configs(
            configs[contract.ONNX_MODEL],
            configs[contract.ONNX_MODEL],
            onnx_name="a",
            ensemble_name="b",
        )


def test_write_int8_configs_needs_the_fp32_export(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="export"):
        write_variant(tmp_path, variants.INT8, {})
    write_configs(tmp_path, ServingSettings(), PROVENANCE)
    for name in (contract.ONNX_MODEL, contract.ENSEMBLE_MODEL):
        (tmp_path / name / contract.LABELS_FILENAME).write_text("label\n")
    written = write_variant(tmp_path, variants.INT8, {"quantization": "{}"})
    assert [p.parent.name for p in written] == list(contract.INT8_MODELS)
    assert parse(written[0].read_text()).parameters["quantization"].string_value == "{}"
    assert (tmp_path / contract.INT8_MODEL / contract.LABELS_FILENAME).read_text() == "label\n"
    assert not variants.holds(tmp_path, variants.INT8)  # no model.onnx yet
    layout.onnx_model_path(tmp_path, contract.INT8_MODEL).parent.mkdir(parents=True)
    layout.onnx_model_path(tmp_path, contract.INT8_MODEL).write_bytes(b"onnx")
    assert variants.holds(tmp_path, variants.INT8)
    assert layout.served_models(tmp_path) == contract.SERVED_MODELS + contract.INT8_MODELS
    assert layout.served_models(tmp_path, int8=False) == contract.SERVED_MODELS


def test_the_fused_model_takes_the_ensembles_contract_and_the_classifiers_core_budget() -> None:
    configs = by_name(
        ServingSettings(
            cores=4, onnx_instances=2, intra_op_threads=2, max_batch_size=4, response_cache=True
        )
    )
    fused = fused_model_config(
        configs[contract.ONNX_MODEL],
        configs[contract.PREPROCESS_MODEL],
        name=contract.INT8_FUSED_MODEL,
    )
    ensemble = configs[contract.ENSEMBLE_MODEL]
    assert fused.backend == "python" and fused.max_batch_size == 4
    assert list(fused.input) == list(ensemble.input)
    assert list(fused.output) == list(ensemble.output)  # labelled PROBABILITIES
    assert [(g.count, g.kind) for g in fused.instance_group] == [
        (4, mc.ModelInstanceGroup.KIND_CPU)
    ]
    parameters = {key: value.string_value for key, value in fused.parameters.items()}
    assert parameters["intra_op_thread_count"] == "1"
    assert parameters["classifier_output"] == contract.ONNX_PROBABILITIES
    assert parameters["engine"] == "onnxruntime"
    assert parameters[contract.PROVENANCE_PARAMETER] == PROVENANCE
    for key, value in configs[contract.PREPROCESS_MODEL].parameters.items():
        assert parameters[key] == value.string_value, key
    assert [(w.name, w.batch_size) for w in fused.model_warmup] == [
        ("image_batch1", 1),
        ("image_batch4", 4),
    ]
    assert {w.inputs[contract.ENSEMBLE_INPUT].input_data_file for w in fused.model_warmup} == {
        WARMUP_IMAGE_FILENAME
    }
    assert fused.response_cache.enable
    plain = by_name(ServingSettings())
    uncached = fused_model_config(
        plain[contract.ONNX_MODEL], plain[contract.PREPROCESS_MODEL], name="f"
    )
    assert not uncached.HasField("response_cache")
    assert parse(render(uncached)) == uncached


def test_write_fused_model_links_the_int8_file_and_completes_the_variant(tmp_path: Path) -> None:
    write_configs(tmp_path, ServingSettings(), PROVENANCE)
    install_python_models(tmp_path)
    for name in (contract.ONNX_MODEL, contract.ENSEMBLE_MODEL):
        (tmp_path / name / contract.LABELS_FILENAME).write_text("label\n")
    write_variant(tmp_path, variants.INT8, {"quantization": "{}"})
    int8_file = layout.onnx_model_path(tmp_path, contract.INT8_MODEL)
    int8_file.parent.mkdir(parents=True)
    int8_file.write_bytes(b"onnx")
    assert not variants.holds(tmp_path, variants.INT8_FUSED)
    assert layout.served_models(tmp_path) == contract.SERVED_MODELS + contract.INT8_MODELS

    config = parse(write_fused_model(tmp_path, variants.INT8_FUSED, DEFAULT).read_text())

    version = tmp_path / contract.INT8_FUSED_MODEL / layout.VERSION
    assert config.name == contract.INT8_FUSED_MODEL
    expected = (*variants.FUSED_MODEL_FILES, "onnxruntime_engine.py")
    assert sorted(path.name for path in version.iterdir()) == sorted(expected)
    assert (version / "model.onnx").stat().st_ino == int8_file.stat().st_ino  # no second copy
    preprocess = tmp_path / contract.PREPROCESS_MODEL / layout.VERSION / "model.py"
    assert (version / "preprocessing.py").read_bytes() == preprocess.read_bytes()
    warmup = tmp_path / contract.INT8_FUSED_MODEL / WARMUP_DIRNAME / WARMUP_IMAGE_FILENAME
    assert warmup.read_bytes().startswith(len(warmup.read_bytes()[4:]).to_bytes(4, "little"))
    assert variants.holds(tmp_path, variants.INT8_FUSED)
    assert layout.served_models(tmp_path) == (
        *contract.SERVED_MODELS,
        *contract.INT8_MODELS,
        contract.INT8_FUSED_MODEL,
    )
