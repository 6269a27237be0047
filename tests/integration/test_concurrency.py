"""Many concurrent requests with distinct images: each client gets its own answer, never
another's."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from resnet18_triton import contract
from tests.support import (
    PROBABILITY_ATOL,
    TorchReference,
    classify_ensemble,
    encode,
    gradient_image,
)

CONCURRENT_REQUESTS = 40


def classify_one(url: str, image: bytes) -> np.ndarray:
    # One client per call, so per thread: tritonclient.http is gevent-based and not shared across
    # OS threads.
    return classify_ensemble(url, contract.ENSEMBLE_MODEL, [image])[0]


def test_concurrent_distinct_images_each_get_their_own_answer(
    url: str, reference: TorchReference
) -> None:
    images = [
        encode(gradient_image(200 + i, 150 + 2 * i, seed=100 + i), "JPEG")
        for i in range(CONCURRENT_REQUESTS)
    ]
    expected = reference.probabilities(images)
    with ThreadPoolExecutor(max_workers=CONCURRENT_REQUESTS) as pool:
        served = list(pool.map(lambda image: classify_one(url, image), images))
    for position, answer in enumerate(served):
        distances = np.abs(expected - answer).max(axis=1)
        # Its own reference is within tolerance; every other image's answer is far away.
        assert distances[position] <= PROBABILITY_ATOL, f"request {position} got a wrong answer"
        others = np.delete(distances, position)
        assert others.min() > 10 * PROBABILITY_ATOL, f"request {position} is ambiguous"
