"""JPEG draft decoding (preprocess parameter ``jpeg_draft_min_size``): its stated tolerance.

Off by default. With it on, libjpeg decodes large JPEGs at 1/2, 1/4 or 1/8 scale before the
antialiased resize, so the tensor is close to but not equal to the reference. Stated tolerance
(measured on 12-MP, 6-MP and 1-MP JPEGs, see docs/performance.md): |tensor difference| <= 0.1
(normalised units; mean <= 0.02), probabilities within 2e-4 and the same top-5 classes.
Images under twice the limit on a side decode exactly as without it.
"""

from __future__ import annotations

import numpy as np
import pytest

from resnet18_triton.perf import images
from tests.support import TorchReference, encode, gradient_image, normalised, preprocess_module

TENSOR_ATOL = 0.1
TENSOR_MEAN_ATOL = 0.02
PROBABILITY_ATOL_DRAFT = 2e-4


@pytest.fixture(scope="module")
def preprocess():
    return preprocess_module()


def test_draft_is_off_by_default_and_exact_for_typical_images(preprocess) -> None:
    data = images.jpeg_bytes(500, 375, seed=3)
    reference = preprocess.preprocess_bytes(data)
    np.testing.assert_array_equal(preprocess.preprocess_bytes(data, draft_min_size=0), reference)
    np.testing.assert_array_equal(preprocess.preprocess_bytes(data, draft_min_size=256), reference)


def test_draft_leaves_non_jpeg_alone(preprocess) -> None:
    data = encode(gradient_image(1200, 900, seed=2), "PNG")
    np.testing.assert_array_equal(
        preprocess.preprocess_bytes(data, draft_min_size=256), preprocess.preprocess_bytes(data)
    )


@pytest.mark.slow
def test_draft_within_the_stated_tolerance(preprocess) -> None:
    import torch

    reference_model = TorchReference(seed=0)
    data = [images.jpeg_bytes(3000, 2000, seed=5), images.jpeg_bytes(1200, 900, seed=7)]
    full = normalised(np.stack([preprocess.preprocess_bytes(item) for item in data]))
    drafted = normalised(
        np.stack([preprocess.preprocess_bytes(item, draft_min_size=256) for item in data])
    )
    difference = np.abs(full - drafted)
    assert difference.max() > 0  # the trick really changes pixels of large JPEGs
    assert difference.max() <= TENSOR_ATOL
    assert difference.mean() <= TENSOR_MEAN_ATOL
    with torch.inference_mode():
        p_full = torch.softmax(reference_model.model(torch.from_numpy(full)), 1).numpy()
        p_draft = torch.softmax(reference_model.model(torch.from_numpy(drafted)), 1).numpy()
    np.testing.assert_allclose(p_draft, p_full, atol=PROBABILITY_ATOL_DRAFT, rtol=0)
    for row_full, row_draft in zip(p_full, p_draft, strict=True):
        assert list(np.argsort(-row_full)[:5]) == list(np.argsort(-row_draft)[:5])
