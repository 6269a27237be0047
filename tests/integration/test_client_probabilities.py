"""``ImageClassifier.probabilities`` against the session server: the whole probability vector of
each image, as the PyTorch reference computes it, through the client's own requests."""

from __future__ import annotations

import numpy as np
import pytest

from resnet18_triton import ImageClassifier, ImageError
from tests.support import PROBABILITY_ATOL, TorchReference, varied_images

IMAGES = varied_images()


def test_probabilities_are_the_pytorch_references_for_more_images_than_one_request_holds(
    url: str, reference: TorchReference
) -> None:
    images = [IMAGES[name] for name in sorted(IMAGES)[:10]]
    with ImageClassifier(url) as classifier:
        assert len(images) > classifier.max_batch_size  # two requests, answered in order
        served = classifier.probabilities(images)
    assert served.dtype == np.float32 and served.shape == (len(images), 1000)
    np.testing.assert_allclose(
        served, reference.probabilities(images), rtol=0, atol=PROBABILITY_ATOL
    )


def test_the_top_k_of_the_probabilities_is_what_classify_answers(url: str) -> None:
    image = IMAGES["gradient_500x375.jpg"]
    with ImageClassifier(url) as classifier:
        [vector] = classifier.probabilities([image])
        [predictions] = classifier.classify_bytes([image], top_k=5)
    assert [p.index for p in predictions] == list(np.argsort(-vector)[:5])
    for prediction in predictions:
        assert prediction.probability == pytest.approx(vector[prediction.index], abs=1e-6)


def test_probabilities_name_the_image_the_server_rejected(url: str) -> None:
    with ImageClassifier(url) as classifier, pytest.raises(ImageError, match=r"^image 1: "):
        classifier.probabilities([IMAGES["gradient_500x375.jpg"], b"GIF89a broken"])


def test_a_classifier_with_ten_classes_gives_vectors_of_ten_even_for_no_images(
    url: str, digits_classifier
) -> None:
    with ImageClassifier(url, digits_classifier.name) as classifier:
        assert classifier.probabilities([]).shape == (0, 10)
        [vector] = classifier.probabilities([IMAGES["gradient_500x375.jpg"]])
    assert vector.shape == (10,) and vector.sum() == pytest.approx(1.0, abs=1e-5)
