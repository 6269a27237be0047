"""The serving settings every rendered config depends on, and the policies that derive them.

``ServingSettings`` is the typed form of a classifier's configs: ``builders`` renders it into
``ModelConfig`` messages and ``parser.settings_from_configs`` reads it back. Its defaults are the
ones the measurements chose.

The core budget rule
--------------------
ONNX Runtime instances x intra-op threads must not exceed the cores given to inference, or the
threads of different instances fight over the same cores (and a spinning ORT pool starves the
Python preprocessing). ``ServingSettings.from_core_budget`` derives the thread count from the cores
and the instance count: ``intra_op_threads = cores // instances`` (at least 1), and refuses a plan
that would oversubscribe. One instance using every core gives the lowest latency at batch 1; more
instances with fewer threads each trade latency for throughput only when the cores outnumber what a
single batched session run can use.

The queue policy
----------------
A model's queue is bounded, so excess work is refused at once (Triton's "Exceeds maximum queue
size", HTTP 503) instead of piling up until clients time out: it holds about ``QUEUE_BUDGET_S`` of
work for the cores given to inference, at ``IMAGE_CORE_S`` of core time per image, and never less
than one full batch (``queue_bound``). Larger images cost more than the estimate, so a request
still queued at the entry model (preprocess, or a fused model) after ``QUEUE_TIMEOUT_FACTOR``
budgets is refused too ("Request timeout expired", ``queue_timeout_us``). The classifier behind the
preprocessing gets no timeout: a request that reaches it has been decoded already, and refusing it
then would throw that work away.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from resnet18_triton import contract
from resnet18_triton.errors import RepositoryError

# Seconds of work a queue holds for the cores given to inference.
QUEUE_BUDGET_S = 2.0
# Core time per image: the FP32 JPEG ensemble's measured cost (docs/decisions.md, "Bounded
# queues").
IMAGE_CORE_S = 0.054
# Budgets a request may wait at the entry model: twice the budget leaves a burst that the estimate
# says fits room to drain.
QUEUE_TIMEOUT_FACTOR = 2


def available_cores() -> int:
    """Cores this process may run on (honours taskset/cgroup affinity, unlike os.cpu_count)."""
    return len(os.sched_getaffinity(0))


def queue_bound(cores: int, max_batch_size: int, budget_s: float = QUEUE_BUDGET_S) -> int:
    """Requests a model's queue holds for ``cores`` (see the module docstring)."""
    return max(max_batch_size, math.ceil(budget_s * cores / IMAGE_CORE_S))


def queue_timeout_us(budget_s: float = QUEUE_BUDGET_S) -> int:
    """How long a request may wait queued at the entry model before it is refused, in
    microseconds."""
    return round(budget_s * QUEUE_TIMEOUT_FACTOR * 1_000_000)


@dataclass(frozen=True)
class ServingSettings:
    """Every knob the rendered configs depend on, with the defaults the measurements chose."""

    cores: int = 2
    onnx_instances: int = 1
    intra_op_threads: int = 2
    inter_op_threads: int = 1
    preprocess_instances: int = 1
    max_batch_size: int = contract.MAX_BATCH_SIZE
    max_queue_delay_us: int = 0
    # The queue policy of every batching model (preprocess, classifiers, fused models): at most
    # this many queued requests (0: Triton's unbounded default); at the entry models (preprocess,
    # fused), refused after this long queued (0: never). ``from_core_budget`` derives both.
    max_queue_size: int = 0
    queue_timeout_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = field(default_factory=tuple)
    max_image_pixels: int = contract.MAX_IMAGE_PIXELS
    max_image_bytes: int = contract.MAX_IMAGE_BYTES
    max_aspect_ratio: float = contract.MAX_ASPECT_RATIO
    # Pillow format names the preprocessing opens; anything else is refused before decoding.
    allowed_formats: tuple[str, ...] = contract.ALLOWED_FORMATS
    # response_cache only marks the configs as cacheable: Triton
    # caches nothing unless the server also runs with --cache-config (serve
    # --response-cache-bytes); a config with the flag loads fine on a server without a cache.
    response_cache: bool = False
    # model_warmup samples, so the first real request finds every model warm; Triton runs them
    # while loading and reports the model (and, with strict readiness, the server) ready after.
    warmup: bool = True
    # Ask the container's native ONNX Runtime backend for its OpenVINO execution accelerator.
    # Container only: this project's Python-based ONNX Runtime backend does not use it.
    openvino: bool = False
    # ONNX Runtime's intra-op pool busy-waits between ops by default; on a small machine that spin
    # steals the core the preprocessing needs (measured in docs/performance.md, "ORT thread
    # spinning"). Rendered as session.intra_op.allow_spinning.
    intra_op_spinning: bool = False
    # ONNX Runtime's CPU memory arena keeps freed blocks; off, the ORT stub's RSS is lower with no
    # measurable throughput change (docs/performance.md). Rendered as enable_mem_arena.
    ort_memory_arena: bool = False
    # Preprocess: Image.draft for JPEGs at least twice this size on both sides (0 = off). Off by
    # default: it changes large JPEGs' probabilities slightly (tolerance in docs/performance.md).
    jpeg_draft_min_size: int = 0

    @classmethod
    def from_core_budget(
        cls, cores: int | None = None, onnx_instances: int = 1, **overrides: Any
    ) -> ServingSettings:
        """Derive intra-op threads and the queue policy from the cores given to inference (see
        the module docstring); ``overrides`` win over what is derived."""
        cores = cores or available_cores()
        if cores < 1 or onnx_instances < 1:
            raise RepositoryError("the core budget and the instance count must be at least 1")
        intra = overrides.pop("intra_op_threads", None) or max(1, cores // onnx_instances)
        batch = overrides.get("max_batch_size", contract.MAX_BATCH_SIZE)
        overrides.setdefault("max_queue_size", queue_bound(cores, batch))
        overrides.setdefault("queue_timeout_us", queue_timeout_us())
        settings = cls(
            cores=cores, onnx_instances=onnx_instances, intra_op_threads=intra, **overrides
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse plans that oversubscribe the cores or cannot batch."""
        threads = self.onnx_instances * self.intra_op_threads
        if threads > self.cores:
            raise RepositoryError(
                f"{self.onnx_instances} ONNX Runtime instance(s) x {self.intra_op_threads} "
                f"intra-op threads = {threads} threads oversubscribe the {self.cores}-core "
                "budget; lower the instances or threads, or raise --cores"
            )
        if self.max_batch_size < 1:
            raise RepositoryError("max_batch_size must be at least 1")
        if self.max_queue_size < 0 or self.queue_timeout_us < 0:
            raise RepositoryError("the queue size and timeout must be 0 (unbounded) or more")
        too_big = [size for size in self.preferred_batch_sizes if size > self.max_batch_size]
        if too_big:
            raise RepositoryError(
                f"preferred batch sizes {too_big} exceed max_batch_size {self.max_batch_size}"
            )


def describe_queue(settings: ServingSettings) -> str:
    """The queue policy in words, for export, tune and the docs."""
    if not settings.max_queue_size:
        return "unbounded queues"
    after = (
        f", refused after {settings.queue_timeout_us / 1e6:g} s queued"
        if settings.queue_timeout_us
        else ""
    )
    return f"queues of at most {settings.max_queue_size} requests{after}"
