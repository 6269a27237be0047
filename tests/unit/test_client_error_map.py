"""The client's one table of failures: each kind of failure is the error, the resend policy and
the fate of a classify call's images that ``error_map.FAILURES`` names for it."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

import gevent
import pytest
from geventhttpclient.response import HTTPParseError
from tritonclient.utils import InferenceServerException

from resnet18_triton.client.error_map import (
    QUEUE_FULL_MESSAGE,
    Blame,
    Resend,
    failure_of,
    mapped_errors,
)
from resnet18_triton.client.transport import HttpRefusal
from resnet18_triton.errors import ApiKeyError, ResNet18TritonError, ServerUnavailableError


@dataclass(frozen=True)
class Server:
    url: str = "triton.example:8000"
    network_timeout: float = 5.0
    sends_api_key: bool = False


def refused(status: str | None, message: str) -> InferenceServerException:
    return InferenceServerException(msg=message, status=status)


def untrusted() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "self-signed certificate"
    return error


# (what failed, the error raised, words of its message, resent by, what it does to images)
CASES = [
    (refused("401", "no key"), ApiKeyError, "and none was sent", None, Blame.RUN),
    (
        HttpRefusal("Too Many Requests", 429, 1.0),
        ServerUnavailableError,
        "HTTP 429",
        Resend.OVERLOAD,
        Blame.REQUEST,
    ),
    (
        refused("503", f"in ensemble 'resnet18', {QUEUE_FULL_MESSAGE}"),
        ServerUnavailableError,
        "is overloaded",
        Resend.OVERLOAD,
        Blame.REQUEST,
    ),
    (
        HttpRefusal("busy", 503, 2.0),
        ServerUnavailableError,
        "is overloaded",
        Resend.OVERLOAD,
        Blame.REQUEST,
    ),
    (
        refused("503", "Server not ready"),
        ServerUnavailableError,
        "is unavailable: Server not ready",
        Resend.FAULT,
        Blame.RUN,
    ),
    (
        refused("500", "stub process 'x' is not healthy"),
        ServerUnavailableError,
        "is unavailable",
        Resend.FAULT,
        Blame.RUN,
    ),
    (
        refused("404", "model 'x' has no available versions"),
        ServerUnavailableError,
        "is unavailable",
        Resend.FAULT,
        Blame.RUN,
    ),
    (
        refused("400", "cannot decode image"),
        ResNet18TritonError,
        "Triton at triton.example:8000: cannot decode image",
        None,
        Blame.IMAGES,
    ),
    (refused("413", "too large"), ResNet18TritonError, ": too large", None, Blame.REQUEST),
    (refused("500", "internal"), ResNet18TritonError, ": internal", None, Blame.REQUEST),
    (
        refused(None, "timed out"),
        ServerUnavailableError,
        "did not answer within 5 s",
        None,
        Blame.RUN,
    ),
    (gevent.Timeout(), ServerUnavailableError, "did not answer within 5 s", None, Blame.RUN),
    (TimeoutError(), ServerUnavailableError, "did not answer", None, Blame.RUN),
    (
        untrusted(),
        ServerUnavailableError,
        "did not verify (self-signed certificate)",
        None,
        Blame.RUN,
    ),
    (
        socket.gaierror(-2, "Name or service not known"),
        ServerUnavailableError,
        "unknown host 'triton.example'",
        None,
        Blame.RUN,
    ),
    (
        ConnectionRefusedError(111, "Connection refused"),
        ServerUnavailableError,
        "connection refused",
        Resend.FAULT,
        Blame.RUN,
    ),
    (
        ConnectionResetError(104, "Connection reset by peer"),
        ServerUnavailableError,
        "lost the connection to Triton at triton.example:8000: Connection reset by peer",
        Resend.FAULT,
        Blame.RUN,
    ),
    (
        HTTPParseError("garbage"),
        ServerUnavailableError,
        "lost the connection",
        Resend.FAULT,
        Blame.RUN,
    ),
    (
        OSError(5, "Input/output error"),
        ServerUnavailableError,
        "lost the connection",
        None,
        Blame.RUN,
    ),
]


@pytest.mark.parametrize(
    ("error", "raised", "words", "resend", "blame"),
    CASES,
    ids=[f"{type(case[0]).__name__}-{i}" for i, case in enumerate(CASES)],
)
def test_each_failure_is_the_error_resend_and_blame_its_row_names(
    error: BaseException,
    raised: type[ResNet18TritonError],
    words: str,
    resend: Resend | None,
    blame: Blame,
) -> None:
    failure = failure_of(error, Server())
    mapped = failure.raised(error, Server())
    assert type(mapped) is raised
    assert words in str(mapped)
    assert (failure.resend, failure.blame) == (resend, blame)


def test_a_401_for_a_key_that_was_sent_says_the_key_was_refused() -> None:
    mapped = failure_of(refused("401", "bad key"), Server(sends_api_key=True))
    message = str(mapped.raised(refused("401", "bad key"), Server(sends_api_key=True)))
    assert "refused the inference API key (HTTP 401: bad key)" in message


def test_a_failure_inside_mapped_errors_is_raised_as_its_rows_error() -> None:
    refusal = pytest.raises(ServerUnavailableError, match="connection refused")
    with refusal as caught, mapped_errors(Server()):
        raise ConnectionRefusedError(111, "Connection refused")
    assert caught.value.__cause__ is None


def test_mapped_errors_lets_what_is_no_request_failure_through() -> None:
    with pytest.raises(KeyError), mapped_errors(Server()):
        raise KeyError("not a failure of a request")
