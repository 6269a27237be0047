"""INT8 static quantisation: recipe, calibration reader, fidelity figures, refusal, and the whole
``quantize`` command on a model whose predictions mean something.

Why top-1 agreement is meaningful here: a ResNet-18 with seeded random weights has nearly flat
logits (any perturbation flips its top class), so agreement would measure noise. The fidelity
test instead fits the classifier head of a seeded random ResNet-18 on scikit-learn's bundled
handwritten digits (8x8 images upscaled and passed through the served preprocessing): the frozen
random backbone gives 512 features, a logistic regression on 200 training digits becomes the
``fc`` layer (rows 0-9; the other 990 classes get a bias far below). The test asserts that this FP32
model is right on at least 80% of 100 *held-out* digits (measured 92%; chance is 10%), so its
top-1 answers are real, varied decisions (median top-1/top-2 logit margin measured ~5), and INT8
agreeing with it means INT8 keeps those decisions.
(Measured for contrast: the random-weight model agreed 100% with its INT8 copy on 40 digits,
because it gives nearly every digit the same class: agreement there says nothing.) The refusal
test quantises the classifier head too, which measures ~90% agreement on this model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime.quantization")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

from click.testing import CliRunner  # noqa: E402

from resnet18_triton import contract  # noqa: E402
from resnet18_triton.errors import QuantizationRefused  # noqa: E402
from resnet18_triton.export import quantize as q  # noqa: E402
from resnet18_triton.export.fidelity import compare_logits, softmax  # noqa: E402
from tests.digits import (  # noqa: E402
    HELD_OUT,
    digits_int8_repository,
    digits_model,
    export_repository,
    write_images,
)
from tests.support import SAMPLE_FILES, preprocess_module  # noqa: E402


def assert_float_softmax(graph, input_from: str) -> None:
    """The graph's one Softmax is not quantised: it writes the ``probabilities`` graph output
    straight (no QuantizeLinear consumes it) and reads the output of an ``input_from`` node.
    A quantised Softmax would sit between a DequantizeLinear and a QuantizeLinear."""
    producers = {output: node for node in graph.node for output in node.output}
    (softmax_node,) = [node for node in graph.node if node.op_type == "Softmax"]
    (output,) = softmax_node.output
    assert [o.name for o in graph.output] == list(contract.ONNX_OUTPUTS)
    assert output == contract.ONNX_PROBABILITIES
    assert not [n.name for n in graph.node if n.op_type == "QuantizeLinear" and output in n.input]
    assert producers[softmax_node.input[0]].op_type == input_from


# --- fast unit tests


def test_reduce_range_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(q, "cpu_int8_flags", lambda: ())
    assert q.QuantizationRecipe().resolved().reduce_range is True
    monkeypatch.setattr(q, "cpu_int8_flags", lambda: ("avx512_vnni",))
    assert q.QuantizationRecipe().resolved().reduce_range is False
    assert q.QuantizationRecipe(reduce_range=True).resolved().reduce_range is True
    recipe = json.loads(q.QuantizationRecipe(method="entropy").to_json())
    assert recipe["method"] == "entropy" and recipe["format"] == "QDQ"


def test_softmax_is_always_kept_float_and_the_head_unless_asked(tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["logits"], name="fc"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(nodes, "head", [], [])
    path = tmp_path / "head.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert q._float_nodes(path, quantize_head=False) == ["fc", "softmax"]
    assert q._float_nodes(path, quantize_head=True) == ["softmax"]
    nodes[1].ClearField("name")
    onnx.save(helper.make_model(helper.make_graph(nodes, "head", [], [])), str(path))
    with pytest.raises(q.ExportError, match="has no name"):
        q._float_nodes(path, quantize_head=True)


def test_normalisation_prefix_before_the_first_conv_is_kept_float(tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    nodes = [
        helper.make_node("Cast", ["pixels"], ["floats"], name="cast", to=onnx.TensorProto.FLOAT),
        helper.make_node("Div", ["floats", "scale"], ["unit"], name="div255"),
        helper.make_node("Sub", ["unit", "mean"], ["centred"], name="sub_mean"),
        helper.make_node("Div", ["centred", "std"], ["normalised"], name="div_std"),
        helper.make_node("Conv", ["normalised", "w"], ["features"], name="conv1"),
        helper.make_node("Div", ["features", "scale"], ["later"], name="later_div"),
        helper.make_node("Softmax", ["later"], ["probabilities"], name="softmax", axis=1),
    ]
    path = tmp_path / "prefix.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "prefix", [], [])), str(path))
    assert q._float_nodes(path, quantize_head=True) == [
        "cast",
        "div255",
        "sub_mean",
        "div_std",
        "softmax",
    ]


def test_unknown_calibration_method_is_refused() -> None:
    with pytest.raises(q.ExportError, match="calibration method"):
        q.QuantizationRecipe(method="kl")


def test_calibration_uses_the_served_preprocessing() -> None:
    served = q.load_preprocess_module()
    reference = preprocess_module()
    batch = q.preprocess_files(SAMPLE_FILES, served)
    for row, path in zip(batch, SAMPLE_FILES, strict=True):
        np.testing.assert_array_equal(row, reference.preprocess_bytes(path.read_bytes()))
    reader = q.PreprocessedImageReader(batch, batch_size=3)
    sizes = []
    while (feed := reader.get_next()) is not None:
        sizes.append(len(feed["input"]))
    assert sizes == [3, 1] and reader.get_next() is None
    reader.rewind()
    assert len(reader.get_next()["input"]) == 3


def test_holdout_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    files = [tmp_path / f"{i:02d}.png" for i in range(12)]
    calibration, held_out = q.split_holdout(files)
    assert held_out == [files[4], files[9]]
    assert not set(calibration) & set(held_out) and len(calibration) + len(held_out) == 12


def test_image_files_refuses_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(q.ExportError, match="no images"):
        q.image_files(tmp_path)


def test_fidelity_figures() -> None:
    fp32 = np.array([[5.0, 1, 0, 0, 0, 0, 0], [0, 4, 1, 0, 0, 0, 0]])
    int8 = fp32.copy()
    int8[1] = [0, 1, 4, 0, 0, 0, 0]  # second image: top-1 flips
    report = compare_logits(fp32, int8, 100, 25)
    assert report.top1_agreement == 0.5 and report.num_images == 2
    assert report.top5_overlap == 1.0
    diff = np.abs(softmax(fp32) - softmax(int8)).max(axis=1)
    assert report.max_prob_diff == pytest.approx(diff.max())
    assert report.mean_prob_diff == pytest.approx(diff.mean())
    assert not report.passes(0.99) and report.passes(0.5)
    assert "top-1 agreement" in report.table() and "0.25x" in report.table()


@pytest.mark.slow
def test_int8_keeps_the_decisions_of_a_fitted_model(tmp_path: Path) -> None:
    import onnx

    from resnet18_triton.contract import INT8_ENSEMBLE_MODEL, INT8_MODEL
    from resnet18_triton.repository import variants
    from resnet18_triton.repository.layout import onnx_model_path

    _, _, accuracy = digits_model()
    # The FP32 model is meaningful: right on most held-out digits, not one constant answer.
    assert accuracy >= 0.8, accuracy
    repo, figures = digits_int8_repository(tmp_path)
    fidelity = figures["fidelity"]
    assert fidelity["num_images"] == HELD_OUT
    assert fidelity["top1_agreement"] >= 0.97, fidelity
    assert fidelity["top5_overlap"] >= 0.9, fidelity
    assert fidelity["int8_bytes"] < 0.35 * fidelity["fp32_bytes"], fidelity
    assert variants.holds(repo, variants.INT8)
    int8 = onnx.load(str(onnx_model_path(repo, INT8_MODEL)))
    assert any(node.op_type == "QuantizeLinear" for node in int8.graph.node)
    # The head and the softmax stay float: probabilities are a float softmax of float logits.
    assert_float_softmax(int8.graph, input_from="Gemm")
    metadata = {prop.key: prop.value for prop in int8.metadata_props}
    assert json.loads(metadata["quantization"])["format"] == "QDQ"
    assert json.loads(metadata["weights_provenance"])["path"] == "digits-fitted"
    ensemble = (repo / INT8_ENSEMBLE_MODEL / "config.pbtxt").read_text()
    assert f'model_name: "{INT8_MODEL}"' in ensemble and '"resnet18_onnx"' not in ensemble


@pytest.mark.slow
def test_below_threshold_is_refused_unless_forced(tmp_path: Path) -> None:
    """Quantising the classifier head too measures ~90% agreement here: below the default 99%."""
    import onnx

    from resnet18_triton.contract import INT8_MODEL
    from resnet18_triton.export.cli.quantize import quantize
    from resnet18_triton.repository import variants
    from resnet18_triton.repository.layout import onnx_model_path

    model, splits, _ = digits_model()
    repo = export_repository(model, tmp_path / "repo", warmup=False)
    args = [
        "--repo",
        str(repo),
        "--quantize-head",
        "--calibration-images",
        str(write_images(tmp_path / "cal", splits["calibration"][0])),
        "--eval-images",
        str(write_images(tmp_path / "held_out", splits["held_out"][0])),
    ]
    refused = CliRunner().invoke(quantize, args)
    assert isinstance(refused.exception, QuantizationRefused), refused.output
    assert refused.exception.report.top1_agreement < 0.99
    assert "top-1 agreement" in refused.output  # the table is shown before refusing
    assert not variants.holds(repo, variants.INT8) and not (repo / "resnet18_int8").exists()
    assert not list(repo.parent.glob(f".{repo.name}.export-*"))  # no staging left behind
    forced = CliRunner().invoke(quantize, [*args, "--force"], catch_exceptions=False)
    assert forced.exit_code == 0, forced.output
    assert variants.holds(repo, variants.INT8)
    # The quantised head's output (the logits) is 8-bit, but the softmax itself is still float.
    int8 = onnx.load(str(onnx_model_path(repo, INT8_MODEL)))
    assert_float_softmax(int8.graph, input_from="DequantizeLinear")


@pytest.mark.slow
def test_calibration_takes_the_ranges_of_every_batch_not_only_the_last(tmp_path: Path) -> None:
    """Five batches of pixels whose first alone spans 0..255: the scale quantising the first
    convolution's input (the normalised image) must come from it. (ONNX Runtime's
    CalibMaxIntermediateOutputs dropped whole groups of batches: a 4-batch limit kept only the
    fifth batch, and 4 or 8 batches failed outright.)"""
    import onnx
    from onnx import numpy_helper

    from resnet18_triton.export.onnx_export import export_onnx
    from resnet18_triton.export.weights import load_resnet18

    model, provenance = load_resnet18("random", seed=0)
    fp32 = export_onnx(model, tmp_path / "fp32.onnx", provenance=provenance)
    rng = np.random.default_rng(0)
    images = rng.integers(120, 137, (40, 3, 224, 224), dtype=np.uint8)
    images[:8, :, :112] = 0  # the first batch of 8 spans 0..255, the other four 120..136
    images[:8, :, 112:] = 255
    int8 = q.quantize_model(fp32, tmp_path / "int8.onnx", q.PreprocessedImageReader(images))
    graph = onnx.load(str(int8)).graph
    first_conv = next(node for node in graph.node if node.op_type == "Conv")
    producer = {output: node for node in graph.node for output in node.output}
    dequantize = producer[first_conv.input[0]]
    quantize = producer[dequantize.input[0]]
    scales = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    scale = float(scales[quantize.input[1]])
    # ImageNet normalisation of 0..255: (0 - 0.485) / 0.229 up to (1 - 0.406) / 0.225.
    full_range = ((1 - 0.406) / 0.225 - (0 - 0.485) / 0.229) / 255
    assert scale == pytest.approx(full_range, rel=0.05), scale  # ~10x smaller from the last batch
