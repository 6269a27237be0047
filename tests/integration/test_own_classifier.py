"""A user's own classifier served beside the default one by the session server.

The digits classifier (tests/digits.py: a ResNet-18 with a 10-class head fitted on scikit-learn's
digits, saved as a Lightning checkpoint, resized straight to 96x96 with mean and std 0.5) was
added to the session repository by ``export --name digits --labels ...`` before the server started
(tests/integration/conftest.py). Its answers are compared with the in-process PyTorch model
through torchvision's transform built from the same settings.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from click.testing import CliRunner

from resnet18_triton import contract
from resnet18_triton.client.cli import classify, health
from resnet18_triton.export.cli.quantize import quantize
from tests.digits import DIGIT_LABELS, custom_preprocessing, write_images
from tests.support import (
    PROBABILITY_ATOL,
    DigitsClassifier,
    TorchReference,
    tree_digest,
    varied_images,
)

pytest.importorskip("sklearn")


def served(client, model: str, images: list[bytes]) -> np.ndarray:
    data = httpclient.InferInput(contract.ENSEMBLE_INPUT, [len(images), 1], "BYTES")
    data.set_data_from_numpy(np.array([[image] for image in images], dtype=object))
    return client.infer(model, [data]).as_numpy(contract.ENSEMBLE_OUTPUT)


def served_in_batches(client, model: str, images: list[bytes], batch: int = 8) -> np.ndarray:
    return np.concatenate(
        [
            served(client, model, images[start : start + batch])
            for start in range(0, len(images), batch)
        ]
    )


@pytest.fixture(scope="module")
def digits_reference(digits_classifier: DigitsClassifier) -> TorchReference:
    return TorchReference(model=digits_classifier.model, preprocessing=custom_preprocessing())


def test_the_digits_classifier_answers_like_its_pytorch_reference_within_1e_6(
    http_client, digits_classifier: DigitsClassifier, digits_reference: TorchReference
) -> None:
    images = digits_classifier.splits["held_out"][0][:16]
    answers = served_in_batches(http_client, digits_classifier.name, images)
    expected = digits_reference.probabilities(images)
    assert answers.shape == expected.shape == (16, 10)
    np.testing.assert_allclose(answers, expected, rtol=0, atol=PROBABILITY_ATOL)
    # Any other preprocessing would show: the ImageNet transform moves these answers far more.
    assert np.abs(expected - expected[::-1]).max() > 100 * PROBABILITY_ATOL


def test_held_out_accuracy_through_the_server_equals_the_in_process_accuracy(
    http_client, digits_classifier: DigitsClassifier
) -> None:
    images, targets = digits_classifier.splits["held_out"]
    answers = served_in_batches(http_client, digits_classifier.name, images)
    accuracy = float((answers.argmax(1) == targets).mean())
    assert accuracy == digits_classifier.accuracy
    assert accuracy > 0.8  # chance is 0.1


def test_the_default_classifier_keeps_answering_correctly_while_digits_are_classified(
    url: str, reference: TorchReference, digits_classifier: DigitsClassifier
) -> None:
    photos = list(varied_images().values())[:4]
    digit_images = digits_classifier.splits["held_out"][0][:32]

    def ask(model: str, images: list[bytes]) -> np.ndarray:
        client = httpclient.InferenceServerClient(url, network_timeout=120.0)
        try:
            return np.concatenate([served(client, model, [image]) for image in images])
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=3) as pool:
        digit_answers = [pool.submit(ask, digits_classifier.name, digit_images) for _ in range(2)]
        default_answers = pool.submit(ask, contract.ENSEMBLE_MODEL, photos)
        defaults = default_answers.result()
        digits = [future.result() for future in digit_answers]
    np.testing.assert_allclose(
        defaults, reference.probabilities(photos), rtol=0, atol=PROBABILITY_ATOL
    )
    assert defaults.shape == (4, contract.NUM_CLASSES)
    assert all(answer.shape == (32, 10) for answer in digits)
    np.testing.assert_array_equal(digits[0].argmax(1), digits[1].argmax(1))


def test_exporting_the_digits_classifier_left_the_default_classifier_byte_identical(
    digits_classifier: DigitsClassifier,
) -> None:
    assert digits_classifier.default_before
    assert digits_classifier.default_after == digits_classifier.default_before


def test_classify_by_name_answers_with_the_digit_labels(
    url: str,
    digits_classifier: DigitsClassifier,
    digits_reference: TorchReference,
    tmp_path: Path,
) -> None:
    image = digits_classifier.splits["held_out"][0][0]
    path = tmp_path / "digit.png"
    path.write_bytes(image)
    expected = DIGIT_LABELS[int(digits_reference.probabilities([image])[0].argmax())]
    result = CliRunner().invoke(
        classify, ["--url", url, "--model", digits_classifier.name, "--top-k", "1", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert expected in result.stdout
    assert [label for label in DIGIT_LABELS if label in result.stdout] == [expected]
    # The warning about random weights belongs to the default classifier, not to this one.
    assert "RANDOM weights" not in result.output


def test_health_lists_each_classifier_with_its_classes_input_and_preprocessing(
    url: str, admin_key: str, digits_classifier: DigitsClassifier
) -> None:
    # The repository index that lists the classifiers is an admin API: the key opens it.
    environment = {contract.ADMIN_KEY_ENV_VAR: admin_key, contract.ADMIN_KEY_FILE_ENV_VAR: ""}
    result = CliRunner().invoke(health, ["--url", url, "--json"], env=environment)
    assert result.exit_code == 0, result.output
    listed = {item["name"]: item for item in json.loads(result.stdout)["classifiers"]}
    digits, default = listed[digits_classifier.name], listed[contract.ENSEMBLE_MODEL]
    assert (digits["classes"], digits["input_size"]) == (10, 96)
    assert digits["preprocessing"]["mean"] == "0.5,0.5,0.5"
    assert digits["preprocessing"]["resize_size"] == "0"
    assert digits["provenance"]["path"] == digits_classifier.checkpoint.name
    assert (default["classes"], default["input_size"]) == (1000, 224)
    assert default["preprocessing"]["resize_size"] == "256"


def test_health_without_the_admin_key_reports_the_classifiers_it_is_told_about(
    url: str, digits_classifier: DigitsClassifier
) -> None:
    environment = {contract.ADMIN_KEY_ENV_VAR: "", contract.ADMIN_KEY_FILE_ENV_VAR: ""}
    result = CliRunner().invoke(
        health, ["--url", url, "--model", digits_classifier.name], env=environment
    )
    assert result.exit_code == 0, result.output
    assert "classifier digits: 10 classes, input 96x96 (resize straight, bilinear" in result.stdout
    assert "classifier resnet18: 1000 classes, input 224x224 (resize 256, crop 224" in result.stdout


def test_quantize_by_name_reports_fidelity_on_the_digits_own_held_out_images(
    session_repository, tmp_path: Path
) -> None:
    source, digits = session_repository
    repo = tmp_path / "model_repository"
    shutil.copytree(source, repo)
    calibration, held_out = digits.splits["calibration"][0], digits.splits["held_out"][0]
    report = tmp_path / "report.json"
    result = CliRunner().invoke(
        quantize,
        [
            "--repo", str(repo),
            "--name", digits.name,
            "--calibration-images", str(write_images(tmp_path / "calibration", calibration)),
            "--eval-images", str(write_images(tmp_path / "held_out", held_out)),
            "--report", str(report),
            "--min-agreement", "0.97",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    figures = json.loads(report.read_text())
    assert figures["classifier"] == digits.name
    assert figures["fidelity"]["num_images"] == len(held_out)
    assert figures["fidelity"]["top1_agreement"] >= 0.97
    assert (repo / "digits_int8" / "1" / "model.onnx").is_file()
    assert (repo / "digits_int8_ensemble" / "labels.txt").read_text().split("\n")[0] == "digit 0"
    assert not (repo / "resnet18_int8").exists()
    default = ("preprocess", "resnet18_onnx", "resnet18")
    assert tree_digest(repo, default) == tree_digest(source, default)


def test_openvino_by_name_builds_the_digits_variant_on_its_own_held_out_images(
    session_repository, tmp_path: Path
) -> None:
    pytest.importorskip("openvino")
    from resnet18_triton.export.cli.openvino import openvino
    from resnet18_triton.repository.layout import served_models

    source, digits = session_repository
    repo = tmp_path / "model_repository"
    shutil.copytree(source, repo)
    held_out = digits.splits["held_out"][0]
    report = tmp_path / "report.json"
    result = CliRunner().invoke(
        openvino,
        [
            "--repo", str(repo),
            "--name", digits.name,
            "--precision", "f32",
            "--eval-images", str(write_images(tmp_path / "held_out", held_out)),
            "--report", str(report),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    figures = json.loads(report.read_text())
    assert figures["fidelity"]["num_images"] == len(held_out)
    assert figures["fidelity"]["top1_agreement"] >= 0.99
    assert (repo / "digits_openvino" / "1" / "model.onnx").read_bytes() == (
        repo / "digits_onnx" / "1" / "model.onnx"
    ).read_bytes()
    labels = (repo / "digits_openvino_ensemble" / "labels.txt").read_text()
    assert labels.split("\n")[0] == "digit 0"
    assert {"digits_openvino", "digits_openvino_ensemble"} <= set(served_models(repo))
    assert "--model digits_openvino_ensemble" in result.output
    assert not (repo / "resnet18_openvino").exists()
    default = ("preprocess", "resnet18_onnx", "resnet18")
    assert tree_digest(repo, default) == tree_digest(source, default)
