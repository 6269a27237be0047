"""Exporting one's own ResNet-18: checkpoint shapes, labels, names, preprocessing, refusals.

Refusals run the real ``export`` command against a repository already holding the default
classifier and check that it stays byte-identical.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torchvision.models import resnet18, resnet34

from resnet18_triton.cli import main
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.errors import ExitCode, RepositoryError, WeightsUnavailableError
from resnet18_triton.export.cli.export import export
from resnet18_triton.export.onnx_input import inspect_onnx
from resnet18_triton.export.pipeline import ExportRequest, export_repository
from resnet18_triton.export.weights import load_resnet18
from resnet18_triton.repository import variants
from resnet18_triton.repository.classifier import Preprocessing, load_labels
from resnet18_triton.repository.configs.settings import ServingSettings
from resnet18_triton.repository.layout import classifiers, served_models


def ten_class_model(seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return resnet18(weights=None, num_classes=10).eval()


def digest(repo: Path) -> dict[str, str]:
    return {
        str(path.relative_to(repo)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(repo.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def default_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo") / "model_repository"
    request = ExportRequest(
        repository=repo, weights="random", settings=ServingSettings(warmup=False)
    )
    return export_repository(request).repository


# --- names -------------------------------------------------------------------------------------


def test_the_default_classifier_keeps_todays_model_names() -> None:
    names = ClassifierNames.of("resnet18")
    assert names.served == ("preprocess", "resnet18_onnx", "resnet18")
    assert variants.INT8.models(names) == ("resnet18_int8", "resnet18_int8_ensemble")


def test_another_classifier_derives_every_model_name_from_its_own() -> None:
    names = ClassifierNames.of("digits")
    assert names.served == ("digits_preprocess", "digits_onnx", "digits")
    assert variants.INT8.models(names) == ("digits_int8", "digits_int8_ensemble")


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "name with space", "x" * 65, "é"])
def test_names_triton_cannot_serve_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        ClassifierNames.of(name)


# --- checkpoints -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: sd, id="plain"),
        pytest.param(lambda sd: {"state_dict": sd}, id="state_dict"),
        pytest.param(lambda sd: {"model": sd, "epoch": 1}, id="model"),
        pytest.param(lambda sd: {f"module.{k}": v for k, v in sd.items()}, id="dataparallel"),
        pytest.param(
            lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}}, id="lightning"
        ),
    ],
)
@pytest.mark.slow
def test_every_common_checkpoint_shape_loads_with_its_class_count(tmp_path: Path, wrap) -> None:
    model = ten_class_model()
    path = tmp_path / "weights.pth"
    torch.save(wrap(model.state_dict()), path)
    loaded, provenance = load_resnet18(str(path))
    assert loaded.fc.out_features == 10
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded(images), model(images))
    assert provenance.path == "weights.pth"


@pytest.mark.slow
def test_a_torchscript_module_is_rebuilt_and_checked_against_itself(tmp_path: Path) -> None:
    model = ten_class_model()
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    loaded, _ = load_resnet18(str(path))
    images = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(images), model(images))


@pytest.mark.slow
def test_a_resnet34_state_dict_is_refused_as_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(resnet34(weights=None, num_classes=10).state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match=r"ResNet-34") as caught:
        load_resnet18(str(path))
    assert "unexpected keys (layer1.2." in str(caught.value)


def test_a_tiny_cnn_state_dict_is_refused_naming_what_is_missing(tmp_path: Path) -> None:
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    path = tmp_path / "tiny.pth"
    torch.save(tiny.state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match="is not a torchvision ResNet-18"):
        load_resnet18(str(path))


# --- ONNX files --------------------------------------------------------------------------------


def onnx_file(tmp_path: Path, model: torch.nn.Module, shape: tuple[int, ...]) -> Path:
    path = tmp_path / "user.onnx"
    torch.onnx.export(
        model,
        (torch.randn(*shape),),
        str(path),
        dynamo=False,
        input_names=["pixels"],
        output_names=["scores"],
        dynamic_axes={"pixels": {0: "n"}, "scores": {0: "n"}},
    )
    return path


@pytest.mark.slow
def test_an_onnx_classifier_is_run_to_find_its_input_size_and_class_count(tmp_path: Path) -> None:
    found = inspect_onnx(onnx_file(tmp_path, ten_class_model(), (1, 3, 128, 128)))
    assert (found.input_size, found.num_classes) == (128, 10)
    assert (found.input_name, found.output_name) == ("pixels", "scores")


@pytest.mark.slow
def test_an_onnx_file_is_served_through_the_repository_layout(tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    from tests.support import normalised

    model = ten_class_model()
    path = onnx_file(tmp_path, model, (1, 3, 128, 128))
    request = ExportRequest(
        repository=tmp_path / "repo",
        weights=str(path),
        name="mine",
        settings=ServingSettings(warmup=False),
        preprocessing=Preprocessing(
            resize_size=146, input_size=128, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3)
        ),
    )
    result = export_repository(request)
    assert result.default_labels and result.classifier.labels[9] == "class_9"
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (3, 3, 128, 128), dtype=torch.uint8, generator=generator)
    logits, probabilities = session.run(["logits", "probabilities"], {"input": pixels.numpy()})
    settings = request.preprocessing
    images = torch.from_numpy(normalised(pixels.numpy(), settings.mean, settings.std))
    with torch.inference_mode():
        expected = model(images).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    assert served_models(result.repository) == (
        "mine_preprocess",
        "mine_onnx",
        "mine",
    )


@pytest.mark.slow
def test_an_onnx_input_whose_size_differs_from_the_preprocessing_is_refused(
    tmp_path: Path,
) -> None:
    path = onnx_file(tmp_path, ten_class_model(), (1, 3, 128, 128))
    request = ExportRequest(
        repository=tmp_path / "repo", weights=str(path), name="mine", settings=ServingSettings()
    )
    with pytest.raises(RepositoryError, match=r"model takes 128x128; set --input-size 128"):
        export_repository(request)
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


# --- labels ------------------------------------------------------------------------------------


def test_labels_come_from_lines_a_json_list_or_a_class_to_idx_mapping(tmp_path: Path) -> None:
    lines, listed, mapping = tmp_path / "a.txt", tmp_path / "b.json", tmp_path / "c.json"
    lines.write_text("cat\ndog\n\n")
    listed.write_text(json.dumps(["cat", "dog"]))
    mapping.write_text(json.dumps({"dog": 1, "cat": 0}))
    assert load_labels(lines) == load_labels(listed) == load_labels(mapping) == ["cat", "dog"]


def test_a_class_to_idx_mapping_with_a_gap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gap.json"
    path.write_text(json.dumps({"cat": 0, "dog": 2}))
    with pytest.raises(RepositoryError, match=r"indices must be 0\.\.1"):
        load_labels(path)


# --- preprocessing -----------------------------------------------------------------------------


def test_a_resize_smaller_than_the_crop_is_refused() -> None:
    with pytest.raises(RepositoryError, match="resize size 200 is smaller than the 224-pixel crop"):
        Preprocessing(resize_size=200).check()


def test_preprocessing_settings_round_trip_through_config_parameters() -> None:
    settings = Preprocessing(
        resize_size=0, input_size=96, mean=(0.5,) * 3, std=(0.25,) * 3, interpolation="bicubic"
    )
    assert Preprocessing.from_parameters(settings.parameters()) == settings


# --- refusals through the command, repository byte-identical ---------------------------------


def run_export(repo: Path, *args: str):
    return CliRunner().invoke(export, ["--repo", str(repo), "--no-warmup", *args])


def run_main(capsys: pytest.CaptureFixture[str], repo: Path, *args: str) -> tuple[int, str]:
    """The real entry point (one-line errors, exit codes); returns (exit code, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main(["export", "--repo", str(repo), "--no-warmup", *args])
    return int(exited.value.code), capsys.readouterr().err


@pytest.mark.parametrize(
    "problem",
    ["label_count", "architecture", "onnx_shape", "collides_with_onnx", "collides_with_ensemble"],
)
@pytest.mark.slow
def test_each_refusal_names_the_problem_and_changes_nothing(
    default_repository: Path, tmp_path: Path, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = digest(default_repository)
    weights = tmp_path / "ten.pth"
    torch.save(ten_class_model().state_dict(), weights)
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"n{index}\n" for index in range(9)))
    if problem == "label_count":
        args = ["--weights", str(weights), "--name", "ten", "--labels", str(labels)]
        expected = "has 9 labels but the model has 10 classes"
    elif problem == "architecture":
        torch.save(resnet34(weights=None).state_dict(), weights)
        args, expected = ["--weights", str(weights), "--name", "ten"], "a ResNet-34?"
    elif problem == "onnx_shape":
        path = onnx_file(
            tmp_path,
            torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)),
            (1, 1, 28, 28),
        )
        args = ["--weights", str(path), "--name", "ten"]
        expected = "input 'pixels' has shape [n, 1, 28, 28]; expected [N, 3, S, S]"
    elif problem == "collides_with_onnx":
        args = ["--weights", str(weights), "--name", "resnet18_onnx"]
        expected = "collides with model 'resnet18_onnx' of classifier 'resnet18'"
    else:
        args = ["--weights", str(weights), "--name", "resnet18_int8"]
        expected = "collides with model 'resnet18_int8' of classifier 'resnet18'"
    code, errors = run_main(capsys, default_repository, *args)
    assert code == ExitCode.USAGE_OR_UNREACHABLE
    assert expected in errors
    assert "Traceback" not in errors
    assert digest(default_repository) == before


@pytest.mark.slow
def test_a_second_classifier_is_added_beside_the_first_which_stays_byte_identical(
    default_repository: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "model_repository"
    import shutil

    shutil.copytree(default_repository, repo)
    before = digest(repo)
    weights = tmp_path / "ten.pth"
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in ten_class_model().state_dict().items()}},
        weights,
    )
    result = run_export(
        repo, "--weights", str(weights), "--name", "ten", "--resize-straight", "--input-size", "64"
    )
    assert result.exit_code == 0, result.output
    assert "WARNING: no --labels" in result.output
    after = digest(repo)
    assert {key: after[key] for key in before} == before
    assert [names.name for names in classifiers(repo)] == ["resnet18", "ten"]
    assert served_models(repo) == (
        "preprocess", "resnet18_onnx", "ten_preprocess", "ten_onnx", "resnet18", "ten",
    )  # fmt: skip
    config = (repo / "ten_preprocess" / "config.pbtxt").read_text()
    assert 'key: "resize_size"' in config and "dims: 64" in config
    assert (repo / "ten" / "labels.txt").read_text().splitlines()[-1] == "class_9"


def test_loadtest_by_name_sweeps_that_classifiers_ensemble_and_onnx_model(tmp_path: Path) -> None:
    from resnet18_triton.perf.loadtest import LoadTestPlan, sweeps

    image = tmp_path / "digit.png"
    image.write_bytes(b"\x89PNG not decoded here")
    plan = LoadTestPlan(
        url="127.0.0.1:1",
        out=tmp_path,
        targets=("ensemble", "raw"),
        images=(image,),
        classifier="digits",
    )
    assert [sweep.model for _, sweep in sweeps(plan)] == ["digits", "digits_onnx"]


def test_the_readme_walkthrough_uses_only_options_the_commands_have() -> None:
    import re

    from resnet18_triton.client.cli import classify, health

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Serve your own model", 1)[1].split("```bash", 1)[1].split("```")[0]
    commands = {"export": export, "health": health, "classify": classify}
    used = re.findall(r"resnet18-triton (\w+)((?:[^\n]|\\\n)*)", section)
    assert [name for name, _ in used] == ["export", "serve", "health", "classify"]
    for name, arguments in used:
        if name in commands:
            known = {opt for param in commands[name].params for opt in param.opts}
            assert set(re.findall(r"(--[a-z-]+)", arguments)) <= known, name


@pytest.mark.parametrize(
    "settings",
    [
        Preprocessing(),
        Preprocessing(resize_size=0, input_size=96, mean=(0.5,) * 3, std=(0.5,) * 3),
        Preprocessing(resize_size=320, input_size=288, interpolation="bicubic"),
        Preprocessing(resize_size=0, input_size=160, interpolation="bicubic", std=(0.2, 0.3, 0.4)),
    ],
    ids=["imagenet", "straight96", "bicubic288", "straight160_bicubic"],
)
@pytest.mark.slow
def test_the_served_transform_read_from_its_config_equals_torchvision_bit_for_bit(
    settings: Preprocessing,
) -> None:
    import numpy as np
    from google.protobuf import json_format

    from resnet18_triton.repository.configs.builders import preprocess_model_config
    from tests.support import (
        normalised,
        preprocess_module,
        reference_rgb,
        torchvision_transform,
        varied_images,
    )

    module = preprocess_module()
    config = preprocess_model_config(ServingSettings(), "mine_preprocess", settings)
    as_json = json_format.MessageToDict(config, preserving_proto_field_name=True)
    transform = module.transform_from_config(as_json)
    assert list(config.output[0].dims) == [3, settings.input_size, settings.input_size]
    reference = torchvision_transform(settings)
    for name, data in sorted(varied_images().items())[:6]:
        pixels = module.preprocess_bytes(data, transform=transform)
        served = normalised(pixels, transform.mean, transform.std)
        expected = reference(reference_rgb(data)).numpy()
        assert pixels.dtype == np.uint8, name
        assert np.array_equal(served, expected), name
