"""Unit tests of the export library: weights, ONNX export and verification (random weights only,
so they run offline)."""

from __future__ import annotations

import time
import urllib.error
from pathlib import Path

import onnx
import pytest
import torch

from resnet18_triton.contract import (
    CHANNELS,
    IMAGE_SIZE,
    NUM_CLASSES,
    ONNX_INPUT,
    ONNX_OUTPUTS,
    PROVENANCE_PARAMETER,
)
from resnet18_triton.errors import (
    ExitCode,
    ExportError,
    RepositoryError,
    ResNet18TritonError,
    VerificationError,
    WeightsUnavailableError,
)
from resnet18_triton.export import weights as weights_module
from resnet18_triton.export.onnx_export import export_onnx
from resnet18_triton.export.verify import VerificationReport, verify_onnx
from resnet18_triton.export.weights import (
    Provenance,
    imagenet_cache_path,
    imagenet_categories,
    load_resnet18,
)


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- errors -------------------------------------------------------------------------------------


def test_error_hierarchy() -> None:
    assert issubclass(ExportError, ResNet18TritonError)
    assert issubclass(WeightsUnavailableError, ExportError)
    assert issubclass(VerificationError, ExportError)


def test_the_repository_core_has_its_own_error_with_the_exit_code_of_a_refused_export() -> None:
    # Every command reads the repository; none of them should have to catch an export's error.
    assert issubclass(RepositoryError, ResNet18TritonError)
    assert not issubclass(RepositoryError, ExportError)
    assert RepositoryError.exit_code == ExportError.exit_code == ExitCode.USAGE_OR_UNREACHABLE


# --- provenance ---------------------------------------------------------------------------------


def test_provenance_json_round_trip_is_compact_and_sorted() -> None:
    provenance = Provenance("file", path="/w.pth", sha256="ab" * 32)
    text = provenance.to_json()
    assert " " not in text
    assert text.index('"path"') < text.index('"sha256"') < text.index('"source"')
    assert Provenance.from_json(text) == provenance


def test_provenance_describe_flags_random_weights() -> None:
    random_provenance = Provenance("random", seed=0)
    assert random_provenance.is_random
    assert random_provenance.describe() == "RANDOM weights (seed 0): labels are meaningless"
    assert not Provenance("imagenet").is_random
    assert "ImageNet" in Provenance("imagenet").describe()


def test_provenance_rejects_unknown_source() -> None:
    with pytest.raises(ValueError):
        Provenance.from_json('{"source": "internet"}')


# --- weights ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_random_weights_are_deterministic_per_seed_and_differ_across_seeds() -> None:
    first, provenance = load_resnet18("random", seed=0)
    again, _ = load_resnet18("random", seed=0)
    other, _ = load_resnet18("random", seed=1)
    assert provenance == Provenance("random", seed=0)
    assert not first.training
    assert _same_state(first, again)
    assert not _same_state(first, other)


def test_random_weights_leave_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_resnet18("random", seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
@pytest.mark.slow
def test_weights_file_round_trip(tmp_path: Path, wrap: str | None) -> None:
    source, _ = load_resnet18("random", seed=3)
    path = tmp_path / "weights.pth"
    state = source.state_dict()
    torch.save(state if wrap is None else {wrap: state, "epoch": 9}, path)

    model, provenance = load_resnet18(str(path))

    assert _same_state(model, source)
    assert not model.training
    assert provenance.source == "file"
    # No host path: the provenance is readable through Triton's model-config API.
    assert provenance.path == "weights.pth" and str(tmp_path) not in provenance.to_json()
    assert provenance.sha256 == weights_module.file_sha256(path)
    assert len(provenance.sha256) == 64


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        load_resnet18(str(tmp_path / "nope.pth"))


def test_wrong_keys_and_shapes_are_named(tmp_path: Path) -> None:
    state = load_resnet18("random")[0].state_dict()
    state["fc.weight"] = torch.zeros(10, 512)  # a 10-class head with a 1000-class bias
    state["extra.weight"] = torch.zeros(1)
    del state["conv1.weight"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)

    with pytest.raises(WeightsUnavailableError) as caught:
        load_resnet18(str(path))

    message = str(caught.value)
    assert "conv1.weight" in message  # missing
    assert "extra.weight" in message  # unexpected
    assert "fc.bias (1000,) (expected (10,))" in message  # the class count comes from fc.weight


def test_file_that_is_not_a_state_dict_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsUnavailableError, match="not a state dict"):
        load_resnet18(str(path))


def test_imagenet_categories_need_no_download() -> None:
    categories = imagenet_categories()
    assert len(categories) == NUM_CLASSES
    assert categories[0] == "tench"


@pytest.mark.skipif(
    imagenet_cache_path().is_file(), reason="ImageNet weights are cached: no download to fail"
)
@pytest.mark.timeout(60)
def test_imagenet_offline_fails_fast_with_alternatives() -> None:
    # This machine is offline: the real download must fail within seconds, not hang.
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as caught:
        load_resnet18("imagenet")
    assert time.monotonic() - started < 45
    message = str(caught.value)
    assert "--weights random" in message
    assert "--weights PATH" in message
    assert "TORCH_HOME" in message
    assert str(imagenet_cache_path()) in message


def test_imagenet_download_failure_message_without_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The same message on a machine that is online: the download is made to fail."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("simulated: no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    with pytest.raises(WeightsUnavailableError, match="simulated: no network") as caught:
        load_resnet18("imagenet")
    assert "--weights random" in str(caught.value)
    assert str(tmp_path) in str(caught.value)


@pytest.mark.slow
def test_imagenet_uses_a_cached_checkpoint_without_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A checkpoint copied into the torch cache (the offline workaround) loads without network."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not download when the checkpoint is cached")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    source, _ = load_resnet18("random", seed=4)  # stands in for the real ImageNet file
    imagenet_cache_path().parent.mkdir(parents=True)
    torch.save(source.state_dict(), imagenet_cache_path())

    model, provenance = load_resnet18("imagenet")

    assert _same_state(model, source)
    assert provenance == Provenance(
        "imagenet", sha256=weights_module.file_sha256(imagenet_cache_path())
    )


# --- export and verify --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_model() -> tuple[torch.nn.Module, Provenance]:
    return load_resnet18("random", seed=0)


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, random_model: tuple[torch.nn.Module, Provenance]
) -> Path:
    """One export for the whole module: it is the slow step (a few seconds)."""
    model, provenance = random_model
    directory = tmp_path_factory.mktemp("export")
    return export_onnx(model, directory / "model.onnx", provenance=provenance)


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [dim.dim_param or dim.dim_value for dim in value_info.type.tensor_type.shape.dim]


@pytest.mark.slow
def test_export_writes_one_file_with_contract_names_and_dynamic_batch(exported: Path) -> None:
    model = onnx.load(str(exported))
    assert [value.name for value in model.graph.input] == [ONNX_INPUT]
    assert [value.name for value in model.graph.output] == list(ONNX_OUTPUTS)
    input_dims = _dims(model.graph.input[0])
    assert isinstance(input_dims[0], str)  # symbolic batch, shared by both outputs
    assert input_dims[1:] == [CHANNELS, IMAGE_SIZE, IMAGE_SIZE]
    for output in model.graph.output:
        assert _dims(output) == [input_dims[0], NUM_CLASSES], output.name
    opset = {entry.domain: entry.version for entry in model.opset_import}[""]
    assert opset >= 17
    # Weights embedded, no side files, no leftover temporary file.
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert [path.name for path in exported.parent.iterdir()] == [exported.name]


@pytest.mark.slow
def test_export_records_provenance_and_producer(exported: Path, random_model: tuple) -> None:
    metadata = {prop.key: prop.value for prop in onnx.load(str(exported)).metadata_props}
    assert Provenance.from_json(metadata[PROVENANCE_PARAMETER]) == random_model[1]
    assert metadata["producer"] == "resnet18_triton.export"
    assert metadata["torch_version"] == torch.__version__


def test_export_rejects_opset_the_dynamo_exporter_cannot_emit(tmp_path: Path) -> None:
    model, _ = load_resnet18("random")
    with pytest.raises(ExportError, match="dynamo=False"):
        export_onnx(model, tmp_path / "model.onnx", opset=17, dynamo=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_verify_matches_the_source_model(exported: Path, random_model: tuple) -> None:
    report = verify_onnx(random_model[0], exported, num_inputs=4, batch_sizes=(1, 3))
    assert isinstance(report, VerificationReport)
    assert report.passed
    assert report.batch_sizes == (1, 3, 1, 3)
    assert report.num_images == report.top1_agree == report.top5_agree == 8
    assert report.max_abs_diff <= report.atol == 1e-3
    assert 0 <= report.mean_abs_diff <= report.max_abs_diff
    assert report.probability_atol == 1e-6
    assert report.probability_tolerance == 1e-6 + report.max_abs_diff / 2
    assert report.max_abs_probability_diff <= report.probability_tolerance
    assert report.max_row_sum_error <= 1e-5
    assert "top-1 agreement 8/8" in report.summary()
    assert "max |probability difference| vs torch.softmax" in report.summary()


@pytest.mark.slow
def test_verify_rejects_a_model_that_does_not_match(exported: Path) -> None:
    other_model, _ = load_resnet18("random", seed=1)
    with pytest.raises(VerificationError, match="does NOT match") as caught:
        verify_onnx(other_model, exported)
    report = caught.value.report
    assert report is not None and not report.passed
    assert report.max_abs_diff > report.atol


def _edited_copy(exported: Path, path: Path, edit) -> Path:
    model = onnx.load(str(exported))
    edit(model.graph)
    onnx.save(model, str(path))
    return path


@pytest.mark.slow
def test_verify_rejects_a_softmax_over_the_wrong_axis(
    exported: Path, random_model: tuple, tmp_path: Path
) -> None:
    def batch_axis_softmax(graph: onnx.GraphProto) -> None:
        (softmax,) = [node for node in graph.node if node.op_type == "Softmax"]
        del softmax.attribute[:]
        softmax.attribute.append(onnx.helper.make_attribute("axis", 0))

    path = _edited_copy(exported, tmp_path / "model.onnx", batch_axis_softmax)
    with pytest.raises(VerificationError, match="does NOT match") as caught:
        verify_onnx(random_model[0], path, batch_sizes=(3,))
    report = caught.value.report
    assert report.max_abs_diff <= report.atol  # the logits are still right
    assert report.max_abs_probability_diff > 0.1 > report.probability_tolerance
    assert report.max_row_sum_error > 1e-5


@pytest.mark.slow
def test_verify_rejects_a_file_without_the_probabilities_output(
    exported: Path, random_model: tuple, tmp_path: Path
) -> None:
    def logits_only(graph: onnx.GraphProto) -> None:
        del graph.output[1:]

    path = _edited_copy(exported, tmp_path / "model.onnx", logits_only)
    with pytest.raises(VerificationError, match="'probabilities'"):
        verify_onnx(random_model[0], path)


def test_verify_rejects_a_file_that_is_not_onnx(tmp_path: Path, random_model: tuple) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a protobuf")
    with pytest.raises(VerificationError, match="not a valid ONNX model"):
        verify_onnx(random_model[0], path)


@pytest.mark.slow
def test_export_command_renders_the_preprocessing_options(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from resnet18_triton.export.cli.export import export
    from resnet18_triton.repository.configs.parser import parse

    repo = tmp_path / "repo"
    result = CliRunner().invoke(
        export,
        [
            "--weights",
            "random",
            "--repo",
            str(repo),
            "--preprocess-instances",
            "2",
            "--jpeg-draft-min-size",
            "512",
        ],
    )
    assert result.exit_code == 0, result.output
    config = parse((repo / "preprocess" / "config.pbtxt").read_text())
    assert [group.count for group in config.instance_group] == [2]
    assert config.parameters["jpeg_draft_min_size"].string_value == "512"


@pytest.mark.slow
def test_export_fused_adds_the_fused_fp32_model_and_a_plain_export_writes_only_the_classifier(
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from resnet18_triton.contract import ClassifierNames
    from resnet18_triton.export.cli.export import export
    from resnet18_triton.repository import variants
    from resnet18_triton.repository.configs.builders import fused_model_config
    from resnet18_triton.repository.configs.parser import read_config

    repo, names = tmp_path / "repo", ClassifierNames.of()
    argv = ["--weights", "random", "--repo", str(repo), "--cores", "2"]
    plain = CliRunner().invoke(export, argv)
    assert plain.exit_code == 0, plain.output
    assert sorted(path.name for path in repo.iterdir()) == sorted(names.served)
    fused = CliRunner().invoke(export, [*argv, "--fused"])
    assert fused.exit_code == 0, fused.output
    model = variants.FP32_FUSED.entry(names)
    assert f"fused FP32 model ready: {model}" in fused.output
    assert variants.present(repo, names) == (variants.FP32_FUSED,)
    # The classifier's own file, not a copy of an older one.
    onnx = repo / names.onnx / "1" / "model.onnx"
    assert variants.FP32_FUSED.model_path(repo, names).read_bytes() == onnx.read_bytes()
    expected = fused_model_config(
        read_config(repo, names.onnx), read_config(repo, names.preprocess), name=model
    )
    assert read_config(repo, model) == expected
    assert len(expected.instance_group) == 1 and expected.instance_group[0].count == 2
