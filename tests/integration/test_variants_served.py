"""Every registered variant, served by the default ``serve`` on this CPU, at each precision this CPU
serves it at (``tests.variant_support``): its models are ready, ``health`` shows them with that
precision, and its answers are within the variant's ``served_atol`` of its engine run in this
process on torchvision's pixels. A variant added to the registry is checked here with no new code.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resnet18_triton.cpu_flags import cpu_flags
from tests.digits import digits_model
from tests.support import TorchReference, classify_ensemble
from tests.variant_support import in_process_probabilities, serving_matrix

IMAGES = 4
MATRIX = serving_matrix(cpu_flags())


def _served(variant_stack, cell) -> None:
    """Skip nothing: a cell this module lists and the stack lacks is a broken fixture."""
    assert cell in variant_stack.matrix, (cell.id, [c.id for c in variant_stack.matrix])


@pytest.mark.parametrize("cell", MATRIX, ids=[cell.id for cell in MATRIX])
def test_every_model_of_the_variant_is_ready_under_the_default_serve(variant_stack, cell) -> None:
    import tritonclient.http as httpclient

    _served(variant_stack, cell)
    client = httpclient.InferenceServerClient(variant_stack.url)
    try:
        not_ready = [model for model in cell.models if not client.is_model_ready(model)]
    finally:
        client.close()
    tail = variant_stack.log.read_text(errors="replace")[-3000:]
    assert not not_ready, f"{not_ready} not ready; serve's log ends:\n{tail}"


@pytest.mark.parametrize("cell", MATRIX, ids=[cell.id for cell in MATRIX])
def test_the_variant_answers_like_its_engine_in_process_on_torchvision_pixels(
    variant_stack, cell
) -> None:
    _served(variant_stack, cell)
    images = digits_model()[1]["held_out"][0][:IMAGES]
    pixels = np.stack([TorchReference(model=digits_model()[0]).pixels(data) for data in images])
    served = np.concatenate([classify_ensemble(variant_stack.url, cell.entry, [d]) for d in images])
    expected = in_process_probabilities(variant_stack.repository, cell, pixels)
    gap = float(np.abs(served - expected).max())
    assert gap <= cell.variant.served_atol, f"{cell.id}: {gap:.2e} from its engine in-process"
    assert np.isfinite(served).all() and np.allclose(served.sum(1), 1.0, atol=1e-3)


@pytest.mark.parametrize("cell", MATRIX, ids=[cell.id for cell in MATRIX])
def test_health_shows_the_variant_ready_at_its_precision(variant_stack, cell) -> None:
    from resnet18_triton.client.api import ImageClassifier

    _served(variant_stack, cell)
    with ImageClassifier(variant_stack.url) as classifier:
        report = classifier.health(classifiers=[cell.names.name])
    shown = {model.name: (model.ready, model.precision) for model in report.models}
    assert {model: shown.get(model) for model in cell.models} == {
        model: (True, cell.precision) for model in cell.models
    }


def test_serve_names_a_variant_model_that_fails_to_load_and_what_to_try(
    variant_stack, tmp_path: Path
) -> None:
    """A variant's model file that its engine cannot read: serve exits 2 naming the model, the
    ensemble that runs it and the way to serve the rest, instead of Triton's summary alone."""
    from resnet18_triton.repository import variants
    from resnet18_triton.repository.layout import served_models
    from resnet18_triton.server.embedded import free_port

    names = next(cell.names for cell in MATRIX if cell.variant is variants.OPENVINO)
    repo = tmp_path / "repo"
    for model in served_models(variant_stack.repository):
        if variants.owner(model, [names]) is not None:
            shutil.copytree(variant_stack.repository / model, repo / model)
    broken = variants.OPENVINO.model_path(repo, names)
    broken.write_bytes(b"not an ONNX model")
    result = subprocess.run(
        [sys.executable, "-m", "resnet18_triton.cli", "serve", "--repo", str(repo), "--quiet",
         "--http-port", str(free_port()), "--grpc-port", str(free_port()),
         "--metrics-port", str(free_port())],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    model, ensemble = variants.OPENVINO.models(names)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"model(s) failed to load:\n  {model}: " in result.stderr, result.stderr[-3000:]
    assert f"so did the ensembles that run them: {ensemble}" in result.stderr
    assert f"rm -r {repo / model} {repo / ensemble}" in result.stderr
    assert "Traceback" not in result.stderr.split("failed to load:")[0][-200:]
