"""A request's life inside ``ImageClassifier``: what it asks the ensemble for (``Ask``), the batch
while its request is in flight (``Flight``), each image's ``Outcome``, and the failure that ends
a request for good (``RequestFailed``). Internal to the client: the pipeline in ``api`` builds
them; what a user sees are ``results``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt
import tritonclient.http as triton_http

from resnet18_triton.client.inputs import Item

# What the server answers for one image: its top-k predictions, or its probability vector.
Row = TypeVar("Row")


@dataclass(frozen=True)
class Ask(Generic[Row]):
    """What a request asks the ensemble's output for, and how the answer reads as one ``Row`` per
    image: the top ``class_count`` classes (Triton's classification extension), or with
    ``class_count`` 0 the whole probability vector."""

    class_count: int
    rows: Callable[[npt.NDArray[Any]], list[Row]]


def _probability_rows(entries: npt.NDArray[Any]) -> list[npt.NDArray[np.float32]]:
    """The ``[N, classes]`` PROBABILITIES tensor as one float32 vector per image."""
    if entries.ndim != 2:
        raise ValueError(f"probabilities of shape {entries.shape}, expected [images, classes]")
    return list(entries.astype(np.float32, copy=False))


PROBABILITIES = Ask(0, _probability_rows)


@dataclass
class Flight(Generic[Row]):
    """A batch whose request is in flight; unreadable items ride along to keep the order."""

    items: list[Item]
    ask: Ask[Row]
    request: triton_http.InferAsyncRequest | None

    @property
    def images(self) -> list[bytes]:
        return [item.data for item in self.items if item.data is not None]


@dataclass(frozen=True)
class Outcome(Generic[Row]):
    """An image's outcome: its answer, or the reason it has none; its request's retries; and
    the model version the answer names."""

    row: Row | None = None
    error: str = ""
    retries: int = 0
    version: str | None = None


class RequestFailed(Exception):
    """A request that failed for good after ``retries`` resends; ``cause`` is the last failure,
    ``overloaded`` whether it was an overload refusal (then the retries for overload ran out)."""

    def __init__(self, cause: BaseException, retries: int, overloaded: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.retries = retries
        self.overloaded = overloaded


def chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """``items`` in lists of ``size`` (the last one shorter), in order."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
