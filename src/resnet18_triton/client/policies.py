"""How the client resends a request that failed: ``RetryPolicy`` for faults the server heals from,
``OverloadPolicy`` for overload refusals, and the waits in between.

Which failure is which, and what is said when resending stops, is ``error_map.FAILURES``.

A fault (a connection error, a 503 that is not overload such as "Server not ready", a backend
process being replaced) is resent patiently: bounded exponential backoff, long enough for the
server to replace a backend process that died. An overload refusal (a full queue: 503 ``Exceeds
maximum queue size``; a proxy's 429, or 503 with ``Retry-After``) says "not now", not "never":
the client waits and sends the same request again, a few times at most, because under overload
every retry is more load.

The wait after an overload refusal is exponential backoff with full jitter (uniform between 0
and the exponential bound): clients refused together then come back spread out instead of
together. A ``Retry-After`` from the server is honoured (plus a little jitter, for the same
reason), up to a cap, so that a proxy that asks for an hour does not hang a command line.

Everything here is a pure function of its arguments (the random source is one of them), so the
delays can be tested exactly with a seeded ``random.Random``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from resnet18_triton import contract

# An exponent past this changes nothing (the bound is capped long before) but could overflow.
_MAX_EXPONENT = 32


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff for inference that failed on a connection error, a 503 that
    is not overload (e.g. "Server not ready"), or a backend process being replaced.

    Overload refusals follow ``OverloadPolicy`` instead: fewer retries, with jitter.
    Inference is idempotent, so resending is safe; timeouts are not retried because a server
    that is too slow once would only make the user wait ``attempts`` times as long. The default
    waits up to 5.75 s in all, longer than the ~3 s the server needs to replace a backend process
    that died (docs/reliability.md).
    """

    attempts: int = 6
    initial_delay: float = 0.25
    max_delay: float = 2.0

    def delays(self) -> Iterator[float]:
        """The pauses between attempts (one fewer than ``attempts``)."""
        for attempt in range(max(self.attempts, 1) - 1):
            yield min(self.max_delay, self.initial_delay * 2**attempt)


@dataclass(frozen=True)
class OverloadPolicy:
    """How the client resends a request the server refused as overloaded.

    ``retries`` resends at most (0: none, the refusal is reported at once). Before resend ``n``
    (0-based) it waits a uniform random time in ``[0, min(max_delay_s, base_delay_s * 2**n)]``,
    or the server's ``Retry-After`` plus up to ``base_delay_s`` of jitter, never more than
    ``max_retry_after_s``. The defaults wait at most 0.5 + 1 + 2 = 3.5 s over three retries
    without ``Retry-After``.
    """

    retries: int = contract.CLIENT_OVERLOAD_RETRIES
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_retry_after_s: float = 30.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, not {self.retries}")
        for name in ("base_delay_s", "max_delay_s", "max_retry_after_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value}")


# What ImageClassifier and classify use unless told otherwise.
DEFAULT_RETRY = RetryPolicy()
DEFAULT_OVERLOAD = OverloadPolicy()


def backoff_bound(policy: OverloadPolicy, retry: int) -> float:
    """The longest wait before resend ``retry`` (0-based) when the server gave no Retry-After."""
    exponent = min(max(retry, 0), _MAX_EXPONENT)
    return min(policy.max_delay_s, math.ldexp(policy.base_delay_s, exponent))


def overload_delay(
    policy: OverloadPolicy, retry: int, retry_after: float | None, rng: random.Random
) -> float:
    """Seconds to wait before resend ``retry`` (0-based) of a refused request.

    With ``retry_after`` (the server's ``Retry-After``, in seconds): that plus a uniform jitter
    of up to ``base_delay_s``, capped at ``max_retry_after_s``. Without: full jitter, a uniform
    time in ``[0, backoff_bound(policy, retry)]``. Always within ``[0, max(max_delay_s,
    max_retry_after_s)]``.
    """
    if retry_after is not None:
        jitter = rng.uniform(0.0, policy.base_delay_s)
        return min(max(retry_after, 0.0) + jitter, policy.max_retry_after_s)
    return rng.uniform(0.0, backoff_bound(policy, retry))
