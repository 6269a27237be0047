"""The postprocessing model's softmax against torch.softmax."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support import postprocess_module

torch = pytest.importorskip("torch")
postprocess = postprocess_module()


def test_softmax_matches_torch() -> None:
    logits = np.random.default_rng(0).normal(0, 5, size=(4, 1000)).astype(np.float32)
    expected = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    probabilities = postprocess.softmax(logits)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_softmax_is_stable_for_large_logits() -> None:
    probabilities = postprocess.softmax(np.array([[1000.0, 1000.0, -1000.0]], dtype=np.float32))
    np.testing.assert_allclose(probabilities, [[0.5, 0.5, 0.0]], atol=1e-7)
