"""Every way a request to Triton can fail, mapped in one table to what the client does about it.

A failure arrives as an ``InferenceServerException`` (the server answered with a status, or
tritonclient gave up waiting: no status) or as a network error (``NETWORK_ERRORS``). ``FAILURES``
lists, in order, the conditions the client tells apart; the first row whose condition holds
decides everything at once:

* ``error`` and ``message``: what a call that fails for good raises, in words for people (the
  message is a template; ``_fields`` lists what it may name);
* ``resend``: whether the request is sent again, per ``RetryPolicy`` (a fault the server heals
  from) or ``OverloadPolicy`` (an overload refusal), or not at all;
* ``blame``: what a failure that is not resent does to the images of a classify call: it stops
  the run (raised), or each image gets the server's reason as its error (a batch refused as bad
  input is first resent image by image, so that only the bad ones fail).

Like httpx's mapping of transport exceptions to its own, the table is data: which condition is
which error is read in one place, not rebuilt by if-chains in each caller. Rows go from specific
to general (``ConnectionRefusedError`` before any ``ConnectionError``).

Overload refusals, the project's word for "not now": Triton answers 503 ``Exceeds maximum queue
size`` when a model's queue is full (through the ensemble ``in ensemble 'resnet18', [request id:
<id_unknown>] Exceeds maximum queue size``, no ``Retry-After``); a proxy answers 429, or 503 with
``Retry-After``. After the last resend each image of such a request gets ``overload_error``.
"""

from __future__ import annotations

import contextlib
import enum
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import gevent
from geventhttpclient.response import HTTPParseError
from tritonclient.utils import InferenceServerException

from resnet18_triton import contract
from resnet18_triton.errors import ApiKeyError, ResNet18TritonError, ServerUnavailableError

# Errors raised by the HTTP layer when the server cannot be talked to (refused, DNS, timeout,
# reset, garbage on the wire). Server-side failures arrive as InferenceServerException instead.
NETWORK_ERRORS = (OSError, HTTPParseError, gevent.Timeout)
# What Triton says when a model's queue is full (its HTTP front end answers 503).
QUEUE_FULL_MESSAGE = "Exceeds maximum queue size"
# How every per-image overload error starts, so that callers can count them.
OVERLOAD_ERROR_PREFIX = "server overloaded:"
# Server-side failures that heal by themselves: a backend stub that died (500) until the
# server reloads its model, and the ensemble while that reload runs (404). Not the image's fault.
_HEALING_MESSAGES = ("is not healthy", "has no available versions")


class Peer(Protocol):
    """What the messages say about the server asked: ``ImageClassifier`` is one."""

    @property
    def url(self) -> str: ...

    @property
    def network_timeout(self) -> float: ...

    @property
    def sends_api_key(self) -> bool: ...


class Resend(enum.Enum):
    """Which policy resends a failed request."""

    FAULT = "RetryPolicy"  # a fault the server heals from: patient backoff
    OVERLOAD = "OverloadPolicy"  # "not now": a few jittered resends, then each image's error


class Blame(enum.Enum):
    """What a failure that is not resent (any more) does to the images of a classify call."""

    RUN = "run"  # the server, the network or the key failed: raised, the run cannot go on
    REQUEST = "request"  # the server refused the request: each image gets the reason
    IMAGES = "images"  # bad input (400): a batch is resent image by image, the bad ones fail


Condition = Callable[[BaseException, Peer], bool]


@dataclass(frozen=True)
class Failure:
    """One row of ``FAILURES``: the condition, and what the client does when it holds."""

    when: Condition
    error: type[ResNet18TritonError]
    message: str
    resend: Resend | None = None
    blame: Blame = Blame.RUN

    def raised(self, cause: BaseException, peer: Peer) -> ResNet18TritonError:
        """The error a call that failed for good with ``cause`` raises."""
        return self.error(self.message.format_map(_fields(cause, peer)))


def _status(*codes: str) -> Condition:
    """The server answered with one of these HTTP statuses."""
    return lambda error, _peer: status_of(error) in codes


def _kind(*kinds: type[BaseException]) -> Condition:
    return lambda error, _peer: isinstance(error, kinds)


def _key_sent(error: BaseException, peer: Peer) -> bool:
    return status_of(error) == "401" and peer.sends_api_key


def _overloaded(error: BaseException, _peer: Peer) -> bool:
    if not isinstance(error, InferenceServerException):
        return False
    retry_after = getattr(error, "retry_after", None)
    return is_overload(error.status(), error.message() or "", retry_after)


def _unanswered(error: BaseException, _peer: Peer) -> bool:
    """No answer in time: a timeout, or tritonclient's exception without a status."""
    if isinstance(error, InferenceServerException):
        return error.status() is None
    return isinstance(error, (TimeoutError, gevent.Timeout))


def _healing(error: BaseException, _peer: Peer) -> bool:
    """503 (busy, not ready yet; overload is matched before), or a backend being replaced."""
    status = status_of(error)
    if status == "503":
        return True
    message = error.message() or "" if isinstance(error, InferenceServerException) else ""
    return status in ("500", "404") and any(m in message for m in _HEALING_MESSAGES)


def _answered(error: BaseException, _peer: Peer) -> bool:
    return status_of(error) is not None


def _anything(_error: BaseException, _peer: Peer) -> bool:
    return True


_KEY_FILE = f"a file only you can read (chmod 600) named by ${contract.API_KEY_FILE_ENV_VAR}"
_LOST = "lost the connection to {where}: {reason}"
_REJECTED = "{where}: {reason}"

# First match wins. Messages are str.format templates over ``_fields``.
FAILURES: tuple[Failure, ...] = (
    Failure(
        _key_sent,
        ApiKeyError,
        "{where} refused the inference API key (HTTP 401: {reason}): check the key in "
        f"${contract.API_KEY_ENV_VAR}, or in the file given by --api-key-file or "
        f"${contract.API_KEY_FILE_ENV_VAR}",
    ),
    Failure(
        _status("401"),
        ApiKeyError,
        "{where} asks for an inference API key (HTTP 401: {reason}) and none was sent: set "
        f"${contract.API_KEY_ENV_VAR}, or put the key in {_KEY_FILE} or by --api-key-file",
    ),
    Failure(
        _overloaded,
        ServerUnavailableError,
        "{where} is overloaded (HTTP {status}: {reason}) — send fewer requests at once or add "
        "replicas, then try again",
        resend=Resend.OVERLOAD,
        blame=Blame.REQUEST,
    ),
    Failure(
        _kind(ssl.SSLCertVerificationError),
        ServerUnavailableError,
        "cannot trust {where}: its TLS certificate did not verify ({verify}) — pass --ca-file "
        "with the CA certificate that signed it (for `cluster`'s self-signed one, its "
        f"certificate file) or set ${contract.CA_FILE_ENV_VAR}",
    ),
    Failure(
        _kind(socket.gaierror),
        ServerUnavailableError,
        f"cannot reach {{where}}: unknown host '{{host}}' — check --url or ${contract.URL_ENV_VAR}",
    ),
    Failure(
        _kind(ConnectionRefusedError),
        ServerUnavailableError,
        "cannot reach {where}: connection refused — is `resnet18-triton serve` running?",
        resend=Resend.FAULT,
    ),
    Failure(
        _unanswered,
        ServerUnavailableError,
        "{where} did not answer within {timeout:g} s — overloaded or hung?",
    ),
    Failure(
        _healing, ServerUnavailableError, "{where} is unavailable: {reason}", resend=Resend.FAULT
    ),
    Failure(_status("400"), ResNet18TritonError, _REJECTED, blame=Blame.IMAGES),
    Failure(_answered, ResNet18TritonError, _REJECTED, blame=Blame.REQUEST),
    Failure(
        _kind(ConnectionError, HTTPParseError), ServerUnavailableError, _LOST, resend=Resend.FAULT
    ),
    Failure(_anything, ServerUnavailableError, _LOST),
)


def failure_of(error: BaseException, peer: Peer) -> Failure:
    """The row of ``FAILURES`` that ``error`` (from asking ``peer``) falls under."""
    return next(row for row in FAILURES if row.when(error, peer))


@contextlib.contextmanager
def mapped_errors(peer: Peer) -> Iterator[None]:
    """Raise what ``FAILURES`` says for a failure of the calls to ``peer`` inside the block."""
    try:
        yield
    except (InferenceServerException, *NETWORK_ERRORS) as error:
        raise failure_of(error, peer).raised(error, peer) from None


def reason(error: BaseException) -> str:
    """The failure in the server's words (``server_message``), else the network error's."""
    if isinstance(error, InferenceServerException):
        return server_message(error)
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def server_message(error: InferenceServerException) -> str:
    """The server's own words: no ``[400]`` status prefix, no ``in ensemble 'x',`` wrapper, no
    ``[request id: ...]`` tag."""
    message = error.message() or str(error)
    return re.sub(r"^(in ensemble '[^']*', |\[request id: [^\]]*\] )+", "", message).strip()


def is_overload(status: str | None, message: str, retry_after: float | None) -> bool:
    """Whether an HTTP refusal means "overloaded, come back later": 429, or 503 that either
    carries ``Retry-After`` or is Triton's full queue.

    A 503 without either (Triton starting or stopping: "Server not ready") is not overload: it is
    retried as a fault the server heals from and, if it lasts, reported as the server being
    unavailable.
    """
    if status == "429":
        return True
    return status == "503" and (retry_after is not None or QUEUE_FULL_MESSAGE in message)


def overload_error(status: str | None, reason: str, retries: int) -> str:
    """The per-image error after the last refusal: what happened and what to do about it."""
    tries = "once" if retries == 0 else f"{retries + 1} times"
    return (
        f"{OVERLOAD_ERROR_PREFIX} refused {tries} (HTTP {status}: {reason}); send fewer requests "
        "at once (classify --concurrency) or add replicas (resnet18-triton cluster --replicas N), "
        "then try these images again"
    )


def status_of(error: BaseException) -> str | None:
    """The HTTP status the server answered with; None when it did not answer."""
    if isinstance(error, InferenceServerException):
        status: str | None = error.status()
        return status
    return None


def _fields(error: BaseException, peer: Peer) -> dict[str, Any]:
    """What a message template may name."""
    return {
        "where": f"Triton at {peer.url}",
        "reason": reason(error),
        "status": status_of(error),
        "host": peer.url.split("/")[0].rsplit(":", 1)[0],
        "verify": getattr(error, "verify_message", None),
        "timeout": peer.network_timeout,
    }
