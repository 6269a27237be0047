"""Hostile input is bounded before decoding: aspect ratio, format allow-list, per-request faults.

The preprocessing model and the ONNX Runtime backend are the real Triton-side files, loaded the
way the stub loads them; no Triton server is needed for these checks.
"""

from __future__ import annotations

import numpy as np
import pytest

from resnet18_triton.repository.layout import backend_source
from tests.corpus import extreme_shapes, foreign_formats, psd_header, strip_png
from tests.support import encode, gradient_image, load_module, preprocess_module

preprocess = preprocess_module()
backend = load_module(backend_source("onnxruntime"), "ort_backend_for_hostile_input")


@pytest.mark.parametrize("case", extreme_shapes(), ids=lambda case: case.name)
def test_extreme_aspect_ratios_are_refused_naming_the_limit(case) -> None:
    with pytest.raises(preprocess.ImageRejected, match=case.expect):
        preprocess.decode_image(case.data)


def test_a_panorama_at_the_aspect_limit_is_still_classified() -> None:
    tensor = preprocess.preprocess_bytes(strip_png(32 * 40, 40))
    assert tensor.shape == (3, 224, 224)


def test_the_aspect_limit_comes_from_the_model_config() -> None:
    config = {"parameters": {"max_aspect_ratio": {"string_value": "2.5"}}}
    limits = preprocess.limits_from_config(config)
    preprocess.check_shape((250, 100), limits)
    with pytest.raises(preprocess.ImageRejected, match=r"over the limit of 2.5:1"):
        preprocess.check_shape((251, 100), limits)


@pytest.mark.parametrize("case", foreign_formats(), ids=lambda case: case.name)
def test_formats_outside_the_allow_list_are_refused_by_name(case) -> None:
    with pytest.raises(preprocess.ImageRejected, match=case.expect):
        preprocess.decode_image(case.data)


def test_eps_never_reaches_ghostscript(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow runs Ghostscript from EpsImageFile.load; with the allow-list no EPS is opened."""
    from PIL import EpsImagePlugin

    opened: list[object] = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(self))
    eps = encode(gradient_image(32, 32, seed=1), "EPS")
    with pytest.raises(preprocess.ImageRejected, match="image format EPS is not accepted"):
        preprocess.decode_image(eps)
    assert opened == []


def test_the_allow_list_comes_from_the_model_config() -> None:
    config = {"parameters": {"allowed_formats": {"string_value": "png, bmp"}}}
    limits = preprocess.limits_from_config(config)
    assert limits.allowed_formats == ("PNG", "BMP")
    preprocess.decode_image(encode(gradient_image(40, 30, seed=2), "BMP"), limits)
    jpeg = encode(gradient_image(40, 30, seed=2), "JPEG")
    with pytest.raises(preprocess.ImageRejected, match="image format JPEG is not accepted"):
        preprocess.decode_image(jpeg, limits)


def test_defaults_accept_jpeg_png_webp_gif_bmp_and_tiff() -> None:
    image = gradient_image(40, 30, seed=3)
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"):
        assert preprocess.decode_image(encode(image, fmt)).size == (40, 30), fmt


def test_psd_is_named_even_though_pillow_cannot_write_it() -> None:
    assert preprocess.sniff_format(psd_header()) == "PSD"


def test_an_unexpected_failure_fails_that_request_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A MemoryError in one request becomes that request's INTERNAL error, not a dead stub."""

    def exhausted(*_args: object) -> np.ndarray:
        raise MemoryError("cannot allocate 59 GB")

    monkeypatch.setattr(preprocess, "preprocess_batch", exhausted)
    batch, failure = preprocess.preprocess_outcome(
        np.array([[b"x"]], dtype=object), preprocess.Limits()
    )
    assert batch is None
    assert failure == ("preprocessing failed: MemoryError: cannot allocate 59 GB", "INTERNAL")


def test_a_failed_batch_is_retried_per_request_so_only_the_bad_one_fails() -> None:
    calls: list[int] = []

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch = feeds["input"]
        calls.append(len(batch))
        if np.isnan(batch).any():
            raise RuntimeError("non-finite input")
        return [batch * 2]

    good = [{"input": np.full((n, 2), float(n), np.float32)} for n in (1, 2)]
    bad = {"input": np.array([[np.nan, 0]], np.float32)}
    outcomes = backend.run_requests(run, [good[0], bad, good[1]])
    assert calls == [4, 1, 1, 2]
    np.testing.assert_array_equal(outcomes[0][0], good[0]["input"] * 2)
    assert outcomes[1] == "ONNX Runtime failed: non-finite input"
    np.testing.assert_array_equal(outcomes[2][0], good[1]["input"] * 2)


def test_a_batch_that_runs_is_run_once() -> None:
    calls: list[int] = []

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        calls.append(len(feeds["input"]))
        return [feeds["input"] + 1]

    requests = [{"input": np.zeros((n, 1), np.float32)} for n in (1, 3)]
    outcomes = backend.run_requests(run, requests)
    assert calls == [4] and [o[0].shape for o in outcomes] == [(1, 1), (3, 1)]


def test_the_model_files_defaults_are_the_contracts_limits() -> None:
    """model.py cannot import the package (it also runs in the container): same values."""
    from resnet18_triton import contract

    assert preprocess.DEFAULT_MAX_ASPECT_RATIO == contract.MAX_ASPECT_RATIO
    assert preprocess.DEFAULT_ALLOWED_FORMATS == contract.ALLOWED_FORMATS
    assert preprocess.DEFAULT_MAX_IMAGE_BYTES == contract.MAX_IMAGE_BYTES
