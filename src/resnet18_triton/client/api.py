"""Classify images with the ResNet-18 ensemble on a Triton server, without the command line.

The client sends the encoded file bytes (JPEG, PNG, ...) and lets the server decode them, so it
needs neither torch nor Pillow. It asks Triton's classification extension for the top k classes,
which the server answers as ``"probability:index:label"`` strings, or for the classifier's whole
probability vector (``probabilities``).

``tritonclient.http`` is gevent-based: an ``ImageClassifier`` must be used from the OS thread that
created it (one classifier per thread). Concurrency comes from ``async_infer`` greenlets.

Every request carries the inference API key (``Authorization: Bearer``) when one is set, for a
proxy that asks for it. A request the server refuses as overloaded (429, 503 with a full queue or
``Retry-After``) is sent again a few times with jittered backoff (``OverloadPolicy``); after the
last refusal each of its images gets an error saying so. Each result counts its retries.

Example::

    from resnet18_triton.client.api import ImageClassifier

    with ImageClassifier("127.0.0.1:8000") as classifier:
        for result in classifier.classify_files(["cat.jpg", "dog.png"], top_k=3):
            print(result.path, result.error or result.predictions[0].label)
"""

from __future__ import annotations

import os
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import gevent
import gevent.ssl
import numpy as np
import numpy.typing as npt
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from resnet18_triton import contract
from resnet18_triton.client.error_map import (
    NETWORK_ERRORS,
    Blame,
    Resend,
    failure_of,
    mapped_errors,
    overload_error,
    reason,
    status_of,
)
from resnet18_triton.client.flights import (
    PROBABILITIES,
    Ask,
    Flight,
    Outcome,
    RequestFailed,
    Row,
    chunks,
)
from resnet18_triton.client.health import HealthCheck
from resnet18_triton.client.inputs import Item
from resnet18_triton.client.policies import (
    DEFAULT_OVERLOAD,
    DEFAULT_RETRY,
    OverloadPolicy,
    RetryPolicy,
    overload_delay,
)
from resnet18_triton.client.results import (
    ClassificationResult,
    HealthReport,
    Prediction,
    parse_classifications,
)
from resnet18_triton.client.transport import (
    TritonHttpClient,
    parse_url,
    quiet_hub,
    quietly,
    tls_context_factory,
)
from resnet18_triton.errors import ImageError, ResNet18TritonError
from resnet18_triton.keys import api_key_from

T = TypeVar("T")


class ImageClassifier:
    """A connection to the ResNet-18 ensemble on one Triton server.

    ``connection_timeout`` bounds connecting, ``network_timeout`` each wait for an answer (a
    request additionally gives up after their sum), so no call hangs. ``concurrency`` is both
    the number of HTTP connections and the number of requests in flight. Use it from one thread.

    ``retry`` governs resending after faults the server heals from (a dropped connection, a
    backend process being replaced), ``overload`` after overload refusals (429; 503 from a full
    queue or with ``Retry-After``); nothing else is resent, in particular no 4xx image or model
    error. ``api_key`` is sent as ``Authorization: Bearer <key>`` with every request; None takes
    it from ``$RESNET18_TRITON_API_KEY_FILE`` (a 0600 file) or ``$RESNET18_TRITON_API_KEY``, and
    sends none when neither is set (raises ApiKeyError for an unsafe or unreadable file). A 401
    raises ApiKeyError, whatever the call. For an ``https://`` URL, ``ca_file`` (None:
    ``$RESNET18_TRITON_CA_FILE``) names PEM CA certificates trusted beside the system's; a
    certificate that does not verify raises ServerUnavailableError saying so.
    """

    def __init__(
        self,
        url: str = contract.DEFAULT_URL,
        model: str = contract.ENSEMBLE_MODEL,
        *,
        connection_timeout: float = contract.CONNECT_TIMEOUT_S,
        network_timeout: float = contract.REQUEST_TIMEOUT_S,
        concurrency: int = contract.CLIENT_CONCURRENCY,
        retry: RetryPolicy = DEFAULT_RETRY,
        overload: OverloadPolicy = DEFAULT_OVERLOAD,
        api_key: str | None = None,
        ca_file: str | Path | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        address, tls = parse_url(url)
        if api_key is None:
            api_key = api_key_from(None)
        self.url = address
        self.model = model
        self.concurrency = concurrency
        self.retry = retry
        self.overload = overload
        self.sends_api_key = bool(api_key)
        # Jitter only has to differ between clients; it needs no cryptographic quality.
        self._random = random.Random()
        self.connection_timeout = connection_timeout
        self.network_timeout = network_timeout
        self._max_batch_size: int | None = None
        self._answered_version: str | None = None
        self._client = TritonHttpClient(
            address,
            api_key=api_key,
            concurrency=concurrency,
            connection_timeout=connection_timeout,
            network_timeout=network_timeout,
            ssl=tls,
            ssl_context_factory=tls_context_factory(ca_file) if tls else None,
        )

    def __enter__(self) -> ImageClassifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Wait for requests still in flight, then close the connections."""
        with quiet_hub():
            self._client.close()

    # --- readiness and health -------------------------------------------------------------

    def ensure_ready(self) -> None:
        """Fail before sending any image if the server or the model cannot answer.

        Raises ServerUnavailableError with a message saying what to check.
        """
        self._health_check().ensure_ready()

    @property
    def max_batch_size(self) -> int:
        """The model's ``max_batch_size``: no request carries more images than this."""
        if self._max_batch_size is None:
            config = self._call(self._client.get_model_config, self.model)
            size = int(config.get("max_batch_size", 0))
            if size < 1:
                raise ResNet18TritonError(
                    f"model '{self.model}' has max_batch_size {size}; this client sends "
                    "batches of shape [N, 1] and needs a model with batching enabled"
                )
            self._max_batch_size = size
        return self._max_batch_size

    def weights_provenance(self, model: str | None = None) -> dict[str, Any]:
        """Where the served weights come from, e.g. ``{"source": "random", "seed": 0}``.

        Read from the ``weights_provenance`` parameter of the classifier that ``model`` (default:
        this client's model) runs: its last ensemble step, or the model itself. Raises
        ResNet18TritonError when it is missing or not a JSON object.
        """
        return self._health_check().weights_provenance(model)

    def health(
        self,
        models: Sequence[str] | None = None,
        admin_key: str | None = None,
        classifiers: Sequence[str] = (),
    ) -> HealthReport:
        """Server liveness and readiness, each model's readiness and versions, weights provenance,
        each classifier's classes, input size, preprocessing and provenance, and the precision
        of each model.

        The classifiers are ``classifiers`` plus those the repository index lists (an admin API:
        it needs ``admin_key`` on a server started by ``serve``), else the default one;
        ``models`` defaults to their models. Raises ServerUnavailableError only when the server
        cannot be reached at all; anything else that is wrong is part of the report.
        """
        return self._health_check().report(models, admin_key, classifiers)

    def _health_check(self) -> HealthCheck:
        # Made per question: url and model are public attributes a caller may change.
        return HealthCheck(self._call, self._client, self.url, self.model)

    # --- classification -------------------------------------------------------------------

    def classify_bytes(
        self, images: Sequence[bytes], top_k: int = contract.DEFAULT_TOP_K
    ) -> list[list[Prediction]]:
        """Classify encoded images (JPEG, PNG, ... bytes); one list of predictions per image.

        Raises ImageError naming the first image (by position) the server rejected.
        """
        return self._answer_bytes(images, self._top_classes(top_k))

    def probabilities(self, images: Sequence[bytes]) -> npt.NDArray[np.float32]:
        """The classifier's whole probability vector (softmax over its classes) for each encoded
        image: float32 of shape ``(len(images), classes)``, rows in input order.

        Sent like ``classify_bytes`` (requests of up to ``max_batch_size`` images, the same
        retries, API key and errors): raises ImageError naming the first image (by position) the
        server rejected, ServerUnavailableError when it cannot answer, ApiKeyError on a 401.
        """
        rows = self._answer_bytes(images, PROBABILITIES)
        if rows:
            return np.stack(rows)
        # Nothing was sent: the ensemble's config says how many classes there are.
        config = self._call(self._client.get_model_config, self.model)
        classes = int(config.get("output", [{}])[0].get("dims", [0])[-1])
        return np.empty((0, classes), dtype=np.float32)

    def _answer_bytes(self, images: Sequence[bytes], ask: Ask[Row]) -> list[Row]:
        """Each image's answer to ``ask``, in order; raises ImageError naming the first image
        the server rejected."""
        items = [Item.numbered(position, data) for position, data in enumerate(images)]
        rows = []
        # Every answer first, so that no request is still in flight when one image fails.
        for item, outcome in list(quietly(self._answer_items(items, ask, None, None))):
            if outcome.row is None:
                raise ImageError(f"{item.path}: {outcome.error}")
            rows.append(outcome.row)
        return rows

    def classify_files(
        self,
        paths: Iterable[str | os.PathLike[str]],
        top_k: int = contract.DEFAULT_TOP_K,
        batch_size: int | None = None,
        concurrency: int | None = None,
        max_file_bytes: int = contract.MAX_IMAGE_BYTES,
    ) -> Iterator[ClassificationResult]:
        """Classify image files, yielding one result per path **in input order**.

        Only regular files of at most ``max_file_bytes`` are read (default: the server's
        default byte limit); anything else becomes that result's ``error``, unread.

        Files are read lazily and sent in requests of up to ``batch_size`` images (default and
        upper bound: the model's ``max_batch_size``), with up to ``concurrency`` requests in
        flight (default and upper bound: the classifier's). An unreadable file or an image the
        server rejects becomes that result's ``error``; a batch the server rejects is retried
        image by image so its good images still get answers. A request refused as overloaded is
        resent per ``overload``; when that runs out, each of its images gets an error that says
        so. Raises ServerUnavailableError if the server becomes unreachable (after retries) or
        does not answer in time, ApiKeyError on a 401.
        """
        items = (Item.from_file(path, max_file_bytes) for path in paths)
        return quietly(self._classify_items(items, top_k, batch_size, concurrency))

    def classify_named(
        self,
        images: Iterable[tuple[str, bytes]],
        top_k: int = contract.DEFAULT_TOP_K,
        batch_size: int | None = None,
    ) -> Iterator[ClassificationResult]:
        """Classify ``(name, encoded bytes)`` pairs held in memory, e.g. uploads.

        Like ``classify_files`` (results in input order, batching, per-image errors, retries),
        with ``name`` as each result's ``path``; an empty image is that result's error.
        """
        items = (Item.named(name, data) for name, data in images)
        return quietly(self._classify_items(items, top_k, batch_size, None))

    @property
    def answered_version(self) -> str | None:
        """The model version named in the server's answers to the latest classify call; None
        when no image of that call was answered."""
        return self._answered_version

    def _classify_items(
        self,
        items: Iterable[Item],
        top_k: int,
        batch_size: int | None,
        concurrency: int | None,
    ) -> Iterator[ClassificationResult]:
        answered = self._answer_items(items, self._top_classes(top_k), batch_size, concurrency)
        for item, outcome in answered:
            yield ClassificationResult(
                item.path,
                predictions=outcome.row or [],
                error=None if outcome.row is not None else outcome.error,
                retries=outcome.retries,
                model_version=outcome.version,
            )

    @staticmethod
    def _top_classes(top_k: int) -> Ask[list[Prediction]]:
        if not 1 <= top_k <= contract.NUM_CLASSES:
            raise ValueError(f"top_k must be between 1 and {contract.NUM_CLASSES}, not {top_k}")
        return Ask(top_k, parse_classifications)

    def _answer_items(
        self,
        items: Iterable[Item],
        ask: Ask[Row],
        batch_size: int | None,
        concurrency: int | None,
    ) -> Iterator[tuple[Item, Outcome[Row]]]:
        """Each item with its outcome, in input order, ``concurrency`` requests in flight."""
        self._answered_version = None
        in_flight = min(concurrency or self.concurrency, self.concurrency)
        window: deque[Flight[Row]] = deque()
        for chunk in chunks(items, self._batch_size(batch_size)):
            window.append(self._launch(chunk, ask))
            if len(window) >= in_flight:
                yield from self._land(window.popleft())
        while window:
            yield from self._land(window.popleft())

    def _batch_size(self, requested: int | None) -> int:
        if requested is not None and requested < 1:
            raise ValueError(f"batch_size must be at least 1, not {requested}")
        return min(requested or self.max_batch_size, self.max_batch_size)

    def _launch(self, items: list[Item], ask: Ask[Row]) -> Flight[Row]:
        flight = Flight(items, ask, None)
        if flight.images:
            flight.request = self._send(flight.images, ask)
        return flight

    def _land(self, flight: Flight[Row]) -> Iterator[tuple[Item, Outcome[Row]]]:
        outcomes = iter(self._outcomes(flight) if flight.request is not None else [])
        for item in flight.items:
            outcome = next(outcomes) if item.data is not None else Outcome(error=item.error or "")
            yield item, outcome

    def _outcomes(self, flight: Flight[Row]) -> Sequence[Outcome[Row]]:
        """Each image's outcome; splits a rejected batch so only the bad images fail."""
        assert flight.request is not None
        images = flight.images
        try:
            rows, retries = self._answers(images, flight.ask, flight.request)
        except RequestFailed as failed:
            outcome: Outcome[Row] = self._failure(failed, 0)
            split = failure_of(failed.cause, self).blame is Blame.IMAGES
            if split and len(images) > 1:
                return [self._single_outcome(image, flight.ask, failed.retries) for image in images]
            return [outcome] * len(images)
        # _answers has just read this request's answer, version included.
        version = self._answered_version
        return [Outcome(row, retries=retries, version=version) for row in rows]

    def _single_outcome(self, image: bytes, ask: Ask[Row], earlier_retries: int) -> Outcome[Row]:
        try:
            rows, retries = self._answers([image], ask, self._send([image], ask))
        except RequestFailed as failed:
            return self._failure(failed, earlier_retries)
        return Outcome(rows[0], retries=earlier_retries + retries, version=self._answered_version)

    def _failure(self, failed: RequestFailed, earlier_retries: int) -> Outcome[Any]:
        """The images' outcome when their request failed for good; raises when the failure is
        the run's (``Blame.RUN``: the server, the network or the key), not the images'."""
        retries = earlier_retries + failed.retries
        error = failed.cause
        failure = failure_of(error, self)
        if failure.blame is Blame.RUN:
            raise failure.raised(error, self) from None
        if failure.resend is Resend.OVERLOAD:  # its resends ran out
            message = overload_error(status_of(error), reason(error), failed.retries)
            return Outcome(error=message, retries=retries)
        return Outcome(error=reason(error), retries=retries)

    def _answers(
        self, images: list[bytes], ask: Ask[Row], request: triton_http.InferAsyncRequest
    ) -> tuple[list[Row], int]:
        """Wait for ``request`` and return its rows and how many times it was resent.

        A fault is resent per ``self.retry``, an overload refusal per ``self.overload``, anything
        else not at all. Raises RequestFailed when a failure is final.
        """
        fault_delays = self.retry.delays()
        overloads = retries = 0
        while True:
            try:
                return self._await(request, len(images), ask), retries
            except (InferenceServerException, *NETWORK_ERRORS) as error:
                resend = failure_of(error, self).resend
                overloaded = resend is Resend.OVERLOAD
                delay = self._retry_delay(error, resend, overloads, fault_delays)
                if delay is None:
                    raise RequestFailed(error, retries, overloaded) from error
                overloads += overloaded
            gevent.sleep(delay)
            retries += 1
            request = self._send(images, ask)

    def _retry_delay(
        self,
        error: BaseException,
        resend: Resend | None,
        overloads: int,
        fault_delays: Iterator[float],
    ) -> float | None:
        """Seconds to wait before resending after ``error``; None when it must not be resent."""
        if resend is Resend.OVERLOAD:
            if overloads >= self.overload.retries:
                return None
            retry_after = getattr(error, "retry_after", None)
            return overload_delay(self.overload, overloads, retry_after, self._random)
        if resend is Resend.FAULT:
            return next(fault_delays, None)
        return None

    def _send(self, images: list[bytes], ask: Ask[Any]) -> triton_http.InferAsyncRequest:
        image_input = triton_http.InferInput(contract.ENSEMBLE_INPUT, [len(images), 1], "BYTES")
        image_input.set_data_from_numpy(np.array(images, dtype=np.object_).reshape(-1, 1))
        output = triton_http.InferRequestedOutput(
            contract.ENSEMBLE_OUTPUT, binary_data=True, class_count=ask.class_count
        )
        return self._client.async_infer(self.model, [image_input], outputs=[output])

    def _await(
        self, request: triton_http.InferAsyncRequest, count: int, ask: Ask[Row]
    ) -> list[Row]:
        deadline = self.connection_timeout + self.network_timeout
        answer = request.get_result(block=True, timeout=deadline)
        self._answered_version = str(answer.get_response().get("model_version", "")) or None
        entries = answer.as_numpy(contract.ENSEMBLE_OUTPUT)
        try:
            if entries is None:
                raise ValueError(f"no '{contract.ENSEMBLE_OUTPUT}' output")
            rows = ask.rows(entries)
            if len(rows) != count:
                raise ValueError(f"{len(rows)} results for {count} images")
        except ValueError as error:
            raise ResNet18TritonError(
                f"unexpected answer from Triton at {self.url}: {error}"
            ) from None
        return rows

    # --- error mapping --------------------------------------------------------------------

    def _call(self, method: Callable[..., T], *args: Any) -> T:
        """Run a synchronous client call (readiness, metadata, config). A refusal as overloaded
        is sent again per ``self.overload``, as an inference request is, since a proxy's rate
        limit counts these calls too; any other failure, or the last refusal, raises what
        ``error_map.FAILURES`` says."""
        overloads = 0
        while True:
            with mapped_errors(self):
                try:
                    return method(*args)
                except (InferenceServerException, *NETWORK_ERRORS) as error:
                    # No fault delays: only an overload refusal is sent again here.
                    resend = failure_of(error, self).resend
                    delay = self._retry_delay(error, resend, overloads, iter(()))
                    if delay is None:
                        raise
            overloads += 1
            gevent.sleep(delay)
