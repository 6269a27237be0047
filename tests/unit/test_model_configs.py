"""Rendered configs parse as Triton's ModelConfig, the ensemble is wired right, cores are not
oversubscribed."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import model_config_pb2 as mc

from resnet18_triton import contract
from resnet18_triton.errors import RepositoryError
from resnet18_triton.repository.configs.builders import all_model_configs
from resnet18_triton.repository.configs.parser import parse, render
from resnet18_triton.repository.configs.settings import ServingSettings
from resnet18_triton.repository.layout import missing_files, onnx_model_path, version_dir
from resnet18_triton.repository.writer import (
    install_python_models,
    write_configs,
    write_labels,
)

PROVENANCE = '{"seed":0,"source":"random"}'


def configs_by_name(settings: ServingSettings | None = None) -> dict[str, mc.ModelConfig]:
    chosen = settings if settings is not None else ServingSettings()
    return {config.name: config for config in all_model_configs(chosen, PROVENANCE)}


def test_every_config_round_trips_through_text(tmp_path: Path) -> None:
    written = write_configs(tmp_path, ServingSettings(), PROVENANCE)
    assert sorted(path.parent.name for path in written) == sorted(contract.SERVED_MODELS)
    for path in written:
        config = parse(path.read_text())
        assert render(config) == path.read_text()
    assert (tmp_path / contract.ENSEMBLE_MODEL / "1").is_dir()


def test_a_filled_repository_holds_exactly_the_served_models(tmp_path: Path) -> None:
    """No postprocess model: the export writes none and the server's check requires none."""
    write_configs(tmp_path, ServingSettings(warmup=False), PROVENANCE)
    install_python_models(tmp_path)
    write_labels(tmp_path, [f"class {index}" for index in range(contract.NUM_CLASSES)])
    assert missing_files(tmp_path) == [onnx_model_path(tmp_path)]
    onnx_model_path(tmp_path).parent.mkdir(parents=True, exist_ok=True)
    onnx_model_path(tmp_path).write_bytes(b"stands in for model.onnx")
    assert missing_files(tmp_path) == []
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(contract.SERVED_MODELS)


def test_each_model_version_has_its_own_numbered_directory(tmp_path: Path) -> None:
    assert version_dir(tmp_path, "m") == tmp_path / "m" / contract.VERSION
    assert version_dir(tmp_path, "m", 2) == version_dir(tmp_path, "m", "2") == tmp_path / "m" / "2"
    assert onnx_model_path(tmp_path).parent == version_dir(tmp_path, contract.ONNX_MODEL)


@pytest.mark.parametrize("version", [0, -1, "01", "v2", "", "1.0", "\u00b2"])
def test_a_version_directory_triton_would_ignore_is_refused(
    tmp_path: Path, version: object
) -> None:
    with pytest.raises(ValueError, match="not a version Triton loads"):
        version_dir(tmp_path, "m", version)


def test_parse_rejects_unknown_fields() -> None:
    with pytest.raises(Exception, match="no_such_field"):
        parse('name: "x"\nno_such_field: 1\n')


def _tensors(config: mc.ModelConfig, kind: str) -> dict[str, tuple[int, tuple[int, ...]]]:
    return {t.name: (t.data_type, tuple(t.dims)) for t in getattr(config, kind)}


def test_ensemble_wiring_matches_its_steps() -> None:
    configs = configs_by_name()
    ensemble = configs[contract.ENSEMBLE_MODEL]
    # Every ensemble tensor (its inputs, then each step's outputs) has one dtype and shape.
    known = _tensors(ensemble, "input")
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        assert model.max_batch_size >= ensemble.max_batch_size
        inputs, outputs = _tensors(model, "input"), _tensors(model, "output")
        assert set(step.input_map) == set(inputs), step.model_name
        for model_input, ensemble_tensor in step.input_map.items():
            assert known[ensemble_tensor] == inputs[model_input], (step.model_name, model_input)
        for model_output, ensemble_tensor in step.output_map.items():
            known[ensemble_tensor] = outputs[model_output]
    for name, spec in _tensors(ensemble, "output").items():
        assert known[name] == spec


def test_raw_model_takes_nchw_images_and_gives_labelled_logits_and_probabilities() -> None:
    config = configs_by_name()[contract.ONNX_MODEL]
    assert config.backend == "onnxruntime"
    assert len(config.input) == 1
    assert config.input[0].format == mc.ModelInput.FORMAT_NCHW
    assert list(config.input[0].dims) == [3, 224, 224]
    assert [output.name for output in config.output] == ["logits", "probabilities"]
    for output in config.output:
        assert output.data_type == mc.TYPE_FP32 and list(output.dims) == [contract.NUM_CLASSES]
        assert output.label_filename == contract.LABELS_FILENAME
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert config.parameters[contract.PROVENANCE_PARAMETER].string_value == PROVENANCE
    assert config.HasField("dynamic_batching")


def test_ensemble_output_carries_labels_for_the_classification_extension() -> None:
    ensemble = configs_by_name()[contract.ENSEMBLE_MODEL]
    assert ensemble.output[0].label_filename == contract.LABELS_FILENAME


def test_ensemble_is_preprocess_then_the_classifier_probabilities() -> None:
    """Two steps: the softmax is in the ONNX graph, there is no postprocessing model."""
    configs = configs_by_name()
    assert list(configs) == list(contract.SERVED_MODELS)
    steps = configs[contract.ENSEMBLE_MODEL].ensemble_scheduling.step
    assert [step.model_name for step in steps] == [contract.PREPROCESS_MODEL, contract.ONNX_MODEL]
    assert dict(steps[1].output_map) == {"probabilities": contract.ENSEMBLE_OUTPUT}


@pytest.mark.parametrize(
    "cores, instances, expected_threads", [(2, 1, 2), (4, 2, 2), (8, 3, 2), (1, 1, 1), (16, 4, 4)]
)
def test_core_budget_rule(cores: int, instances: int, expected_threads: int) -> None:
    settings = ServingSettings.from_core_budget(cores, instances)
    assert settings.intra_op_threads == expected_threads
    assert settings.onnx_instances * settings.intra_op_threads <= cores
    onnx = configs_by_name(settings)[contract.ONNX_MODEL]
    assert onnx.instance_group[0].count == instances
    assert onnx.parameters["intra_op_thread_count"].string_value == str(expected_threads)


def test_oversubscription_is_refused() -> None:
    with pytest.raises(RepositoryError, match="oversubscribe the 2-core budget"):
        ServingSettings.from_core_budget(2, 3)
    with pytest.raises(RepositoryError, match="oversubscribe"):
        ServingSettings.from_core_budget(2, 1, intra_op_threads=4)
