"""The overload policy's pure parts: the delay before each retry, Retry-After, what counts as
overload, and how a refusal's reason is read from its body."""

from __future__ import annotations

import random

import pytest

from resnet18_triton.client.error_map import (
    OVERLOAD_ERROR_PREFIX,
    QUEUE_FULL_MESSAGE,
    is_overload,
    overload_error,
)
from resnet18_triton.client.policies import OverloadPolicy, backoff_bound, overload_delay
from resnet18_triton.client.transport import parse_retry_after, reason_in
from resnet18_triton.contract import CLIENT_OVERLOAD_RETRIES

POLICY = OverloadPolicy(retries=5, base_delay_s=0.5, max_delay_s=4.0, max_retry_after_s=10.0)


def test_the_default_policy_retries_a_few_times_from_the_contract() -> None:
    assert OverloadPolicy().retries == CLIENT_OVERLOAD_RETRIES == 3


def test_the_backoff_bound_doubles_from_the_base_delay_up_to_the_maximum() -> None:
    bounds = [backoff_bound(POLICY, retry) for retry in range(6)]
    assert bounds == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff_bound(POLICY, 10_000) == 4.0  # no overflow, however many retries


def test_without_retry_after_each_delay_is_drawn_between_zero_and_its_bound() -> None:
    rng = random.Random(7)
    for retry in range(6):
        delays = [overload_delay(POLICY, retry, None, rng) for _ in range(2000)]
        bound = backoff_bound(POLICY, retry)
        assert all(0.0 <= delay <= bound for delay in delays)
        # Full jitter: the draws spread over the whole range, not around one value.
        assert min(delays) < 0.05 * bound and max(delays) > 0.95 * bound


def test_the_same_seed_gives_the_same_delays_and_another_seed_other_ones() -> None:
    def delays(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [overload_delay(POLICY, retry, None, rng) for retry in range(5)]

    assert delays(1) == delays(1)
    assert delays(1) != delays(2)


def test_retry_after_is_honoured_with_a_little_jitter_on_top() -> None:
    rng = random.Random(3)
    delays = [overload_delay(POLICY, 0, 2.0, rng) for _ in range(1000)]
    assert all(2.0 <= delay <= 2.0 + POLICY.base_delay_s for delay in delays)
    assert len(set(delays)) > 1


def test_retry_after_is_honoured_even_when_longer_than_the_backoff_bound() -> None:
    rng = random.Random(4)
    assert overload_delay(POLICY, 0, 6.0, rng) >= 6.0 > backoff_bound(POLICY, 0)


def test_retry_after_is_capped() -> None:
    rng = random.Random(5)
    assert overload_delay(POLICY, 0, 3600.0, rng) == POLICY.max_retry_after_s


def test_retry_after_zero_means_only_the_jitter() -> None:
    rng = random.Random(6)
    assert 0.0 <= overload_delay(POLICY, 2, 0.0, rng) <= POLICY.base_delay_s


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("3", 3.0), (" 120 ", 120.0), ("0", 0.0), ("1.5", 1.5), (None, None), ("", None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", None), ("-1", None), ("inf", None), ("nan", None)],
)  # fmt: skip
def test_retry_after_is_read_as_seconds_and_anything_else_is_ignored(
    header: str | None, seconds: float | None
) -> None:
    assert parse_retry_after(header) == seconds


@pytest.mark.parametrize(
    ("status", "message", "retry_after", "overload"),
    [
        ("429", "Too Many Requests", None, True),
        ("503", f"in ensemble 'resnet18', [request id: <id_unknown>] {QUEUE_FULL_MESSAGE}", None,
         True),
        ("503", "Service Temporarily Unavailable", 5.0, True),
        ("503", "Server not ready", None, False),  # starting or stopping: a fault, not overload
        ("400", "cannot identify an image", None, False),
        ("400", QUEUE_FULL_MESSAGE, 5.0, False),  # a client error never is, whatever it says
        ("404", "Request for unknown model", None, False),
        ("401", "Unauthorized", 5.0, False),
        ("500", "model is not healthy", None, False),
        (None, "failed to obtain inference response", None, False),
    ],
)  # fmt: skip
def test_what_counts_as_overload(
    status: str | None, message: str, retry_after: float | None, overload: bool
) -> None:
    assert is_overload(status, message, retry_after) is overload


def test_the_overload_error_says_what_happened_and_what_to_do() -> None:
    error = overload_error("503", QUEUE_FULL_MESSAGE, 3)
    assert error.startswith(OVERLOAD_ERROR_PREFIX)
    assert "refused 4 times" in error and QUEUE_FULL_MESSAGE in error
    assert "--concurrency" in error and "replicas" in error
    assert "refused once" in overload_error("429", "Too Many Requests", 0)


def test_the_policy_refuses_negative_or_unbounded_settings() -> None:
    with pytest.raises(ValueError, match="retries"):
        OverloadPolicy(retries=-1)
    with pytest.raises(ValueError, match="max_retry_after_s"):
        OverloadPolicy(max_retry_after_s=float("inf"))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"error":"Exceeds maximum queue size"}', "Exceeds maximum queue size"),
        (b"<html><head><title>429 Too Many Requests</title></head><body>...</body></html>",
         "429 Too Many Requests"),
        (b"slow down\nplease", "slow down"),
        (b"", "HTTP 503"),
        (b"x" * 500, "x" * 197 + "..."),
    ],
)  # fmt: skip
def test_a_refusal_reason_is_the_json_error_the_page_title_or_the_first_line(
    body: bytes, reason: str
) -> None:
    assert reason_in(body, 503) == reason
