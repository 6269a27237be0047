"""The web app's only way to Triton: the thin client, one ``ImageClassifier`` per worker thread.

``tritonclient.http`` is gevent-based and a classifier must stay on the thread that made it, so
the app runs every Triton call on a small pool of worker threads, each holding its own
classifiers (one per model, created on first use). The app itself holds no model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from resnet18_triton import contract
from resnet18_triton.client.api import ImageClassifier
from resnet18_triton.client.results import ClassificationResult, HealthReport
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.repository.variants import REGISTRY
from resnet18_triton.ui.uploads import Upload

# What a client can call for the default classifier: its FP32 ensemble, then each registered
# variant's entry model (INT8 and OpenVINO ensembles, their fused models); the page offers those
# the server has ready.
DEFAULT_MODELS = (
    contract.ENSEMBLE_MODEL,
    *(variant.entry(ClassifierNames.of()) for variant in REGISTRY),
)
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Answer:
    """What Triton said about one request's images, and how long it took to say it."""

    results: list[ClassificationResult]
    model_version: str | None
    seconds: float

    @property
    def failed(self) -> list[ClassificationResult]:
        return [result for result in self.results if not result.ok]


class TritonService:
    """Runs classifications and health checks on worker threads with their own classifiers."""

    def __init__(
        self,
        url: str,
        workers: int = 4,
        timeout: float = 60.0,
        api_key: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        """``api_key``: sent to Triton with every request; ``ca_file``: CA certificates trusted
        for an https:// URL (None: from the environment, as ``ImageClassifier`` takes them)."""
        # Fails now, with the client's message, on a malformed URL, an unsafe key file or a CA
        # file that is no PEM certificate.
        ImageClassifier(url, api_key=api_key, ca_file=ca_file).close()
        self.url = url
        self.timeout = timeout
        self._api_key = api_key
        self._ca_file = ca_file
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="triton-client")
        self._local = threading.local()

    def classify(self, model: str, uploads: Sequence[Upload], top_k: int) -> Answer:
        """Classify the uploads with ``model`` (call on a worker thread)."""
        classifier = self._classifier(model)
        started = time.perf_counter()
        results = list(
            classifier.classify_named(((upload.name, upload.data) for upload in uploads), top_k)
        )
        return Answer(results, classifier.answered_version, time.perf_counter() - started)

    def health(self, models: Sequence[str]) -> HealthReport:
        """Readiness and versions of ``models`` (call on a worker thread)."""
        return self._classifier(contract.ENSEMBLE_MODEL).health(models)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    def _classifier(self, model: str) -> ImageClassifier:
        classifiers: dict[str, ImageClassifier] = self._local.__dict__.setdefault("classifiers", {})
        if model not in classifiers:
            classifiers[model] = ImageClassifier(
                self.url,
                model,
                connection_timeout=min(self.timeout, CONNECT_TIMEOUT),
                network_timeout=self.timeout,
                concurrency=2,
                api_key=self._api_key,
                ca_file=self._ca_file,
            )
        return classifiers[model]
