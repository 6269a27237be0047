"""Inference-based liveness: one tiny real classification through the ensemble.

Triton 2.51 keeps reporting live and ready after a Python-backend stub died, and answers every
inference with 500 from then on. A probe that only reads ``/v2/health/*`` cannot see that; this
one sends a 32x32 JPEG (embedded below, 740 bytes) through preprocessing and the classifier and
passes only on a well-formed answer. Thin client only: no Pillow, no torch.
"""

from __future__ import annotations

import base64
import math
import time
from dataclasses import dataclass
from pathlib import Path

from resnet18_triton import contract
from resnet18_triton.client.api import ImageClassifier
from resnet18_triton.client.error_map import OVERLOAD_ERROR_PREFIX
from resnet18_triton.client.policies import OverloadPolicy, RetryPolicy
from resnet18_triton.client.results import Prediction
from resnet18_triton.errors import ImageError

# A 32x32 colour gradient, JPEG quality 75 (made once with Pillow).
PROBE_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHRofHh0aHBwgJC4nICIsIxwc"
    "KDcpLDAxNDQ0Hyc5PTgyPC4zNDL/2wBDAQkJCQwLDBgNDRgyIRwhMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIy"
    "MjIyMjIyMjIyMjIyMjIyMjIyMjL/wAARCAAgACADASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcI"
    "CQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRol"
    "JicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ip"
    "qrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAA"
    "AAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEIFEKRobHBCSMzUvAVYnLR"
    "ChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaHiImKkpOUlZaX"
    "mJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEA"
    "PwDyaCx6cVqQWPTitKCx6cVpwWPTiveq4syy/HbambBY9OK04LHpxWlBY9OK04LHpxXmVcWfc5fjttTMgsenFacFj04r"
    "SgsenFacFj04rzKuLPxbL8dtqZsFj04rTgsenFaUFj04rUgsenFeZVxZ9zl+O21P/9k="
)
# Kubernetes' timeoutSeconds for the exec probe is larger, so the probe reports before it is cut.
DEFAULT_TIMEOUT_S = 4.0


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of one probe: ``ok``, a one-line ``detail`` for the log, and how long it took."""

    ok: bool
    detail: str
    seconds: float


def probe(
    url: str = contract.DEFAULT_URL,
    model: str = contract.ENSEMBLE_MODEL,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    api_key: str | None = None,
    ca_file: str | Path | None = None,
) -> ProbeResult:
    """Classify ``PROBE_JPEG`` once (no retry, not even after an overload refusal) and check the
    answer is a probability. ``api_key`` and ``ca_file`` as for ``ImageClassifier`` (None: from
    the environment).

    An overload refusal (a full queue, a queue timeout, a proxy's 429) counts as live: the
    server's front end and scheduler answered, explicitly, and restarting a server because it is
    busy would turn a flood into an outage. Never raises: any other failure (unreachable, 401,
    other 4xx/5xx, timeout, malformed answer, an unsafe key file) is a failed probe whose detail
    says which.
    """
    started = time.monotonic()
    try:
        with unhealed_classifier(
            url, model, timeout_s, timeout_s, api_key=api_key, ca_file=ca_file
        ) as classifier:
            predictions = classifier.classify_bytes([PROBE_JPEG], top_k=1)
    except ImageError as error:
        if OVERLOAD_ERROR_PREFIX in str(error):
            return ProbeResult(True, f"live but overloaded: {error}", _since(started))
        return ProbeResult(False, f"{type(error).__name__}: {error}", _since(started))
    # A liveness probe must turn every failure into "not live", whatever raised it.
    except Exception as error:
        return ProbeResult(False, f"{type(error).__name__}: {error}", _since(started))
    return _judge(predictions, _since(started))


def unhealed_classifier(
    url: str,
    model: str,
    connection_timeout: float,
    network_timeout: float,
    api_key: str | None = None,
    ca_file: str | Path | None = None,
) -> ImageClassifier:
    """An ``ImageClassifier`` on one connection that sends each request once: no retry, not even
    after an overload refusal, so that every failure shows at once instead of being healed.
    ``api_key`` and ``ca_file`` as for ``ImageClassifier`` (None: from the environment)."""
    return ImageClassifier(
        url,
        model,
        connection_timeout=connection_timeout,
        network_timeout=network_timeout,
        concurrency=1,
        retry=RetryPolicy(attempts=1),
        overload=OverloadPolicy(retries=0),
        api_key=api_key,
        ca_file=ca_file,
    )


def _judge(predictions: list[list[Prediction]], seconds: float) -> ProbeResult:
    if len(predictions) != 1 or len(predictions[0]) != 1:
        return ProbeResult(False, f"malformed answer: {predictions!r}", seconds)
    top = predictions[0][0]
    if not (math.isfinite(top.probability) and 0.0 <= top.probability <= 1.0):
        return ProbeResult(False, f"top-1 probability out of range: {top.probability}", seconds)
    return ProbeResult(
        True, f"classified the probe image: class {top.index}, p={top.probability:.4f}", seconds
    )


def _since(started: float) -> float:
    return time.monotonic() - started
