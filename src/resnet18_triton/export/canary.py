"""A canary of a served classifier (``repository.versions``): start it, end it.

While it runs, the ensemble keeps answering with the stable version and the canary's own two
models with the new one; the proxy in front (``resnet18-triton cluster``, compose's edge and
proxy) sends the canary ensemble ``percent`` of the classifier's inference requests. No served
model is reloaded to start or end a canary: the stable version's models keep their config, and
the canary's are loaded and unloaded on their own. Starting installs and loads the canary while
its share is still 0, and only then gives it its share, so the proxy never sends a request to a
model not yet loaded. Ending sets the share to 0, waits for the requests the canary took
(``DRAIN_S``), then unloads and removes the canary's models: no request reaches a model that is
gone. Promoting first sends every request to the canary (``route_all``), so that the ensemble
moves to the canary's version while no request is inside it, then ends the canary.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from resnet18_triton.contract import ClassifierNames
from resnet18_triton.errors import RepositoryError, ServerUnavailableError
from resnet18_triton.repository.transaction import install, install_lock, remove, staging_directory
from resnet18_triton.repository.versions import (
    NewVersion,
    read_canary,
    stage_canary,
    stage_canary_share,
    stage_state,
)
from resnet18_triton.server.admin import AdminEndpoint
from resnet18_triton.server.watchdog import record_loaded

# The proxies read a canary's share on every request (deploy/edge.js), so none is sent to the
# canary once its share is 0; this leaves the requests it already took time to finish.
DRAIN_S = 3.0
# The largest share a user gives a canary: beyond half, it is the stable version. ``promote``
# gives it ALL for the moment the ensemble moves to the canary's version.
MAX_PERCENT = 50
ALL = 100


def start(
    repo: Path,
    names: ClassifierNames,
    live: Sequence[AdminEndpoint],
    stable: int,
    new: NewVersion,
    keep: tuple[int, ...],
    percent: int,
) -> None:
    """Install the canary state (the ONNX model holds ``new`` on disk but still serves
    ``stable`` only, the canary's models answer with ``new``) at share 0, load the canary on
    every server in ``live``, then give it ``percent``."""
    with staging_directory(repo) as staging:
        models = stage_state(repo, staging, names, (stable,), stable, keep, new)
        # The canary's models derive from the staged ones, which hold the new version's file.
        canary = stage_canary(staging, staging, names, new.version, 0)
        with install_lock(repo):
            install(staging, repo, (*models, *canary))
    for endpoint in live:
        for model in names.canary_models:
            endpoint.load(model)
        if endpoint.versions(names.canary) != (new.version,):
            raise ServerUnavailableError(
                f"the server at {endpoint.url} does not answer with v{new.version} of "
                f"{names.canary!r} after loading the canary; see its log"
            )
    set_percent(repo, names, percent)
    # The served models' files changed too (the ONNX model holds the new version, unserved), yet
    # a reload serves what they serve now: the watchdog may reload them after a stub dies.
    record_loaded(repo, (*models, *names.canary_models))


def set_percent(repo: Path, names: ClassifierNames, percent: int) -> None:
    """Give the running canary ``percent`` of the requests (its config only: Triton does not
    read it, the proxy does). RepositoryError when no canary of the classifier runs."""
    if read_canary(repo, names) is None:
        raise RepositoryError(
            f"{names.name!r} has no canary in {repo}: start one with `resnet18-triton publish "
            "--canary PERCENT`"
        )
    with staging_directory(repo) as staging:
        model = stage_canary_share(repo, staging, names, percent)
        with install_lock(repo):
            install(staging, repo, (model,))


def route_all(repo: Path, names: ClassifierNames, drain_s: float = DRAIN_S) -> None:
    """Send every request of the classifier to its canary, and wait ``drain_s`` for the proxies
    to do so."""
    set_percent(repo, names, ALL)
    time.sleep(drain_s)


def end(
    repo: Path, names: ClassifierNames, live: Sequence[AdminEndpoint], drain_s: float = DRAIN_S
) -> None:
    """Stop the proxies sending to the canary, wait ``drain_s``, then unload it from every server
    in ``live`` and remove it from the repository. Without a canary, only removes what an
    interrupted end left on disk."""
    canary = read_canary(repo, names)
    if canary is None:
        # An end killed between its two removals leaves the canary's ONNX model: take it out.
        remove(repo, names.canary_onnx)
        return
    if canary.percent:
        set_percent(repo, names, 0)
        time.sleep(drain_s)
    for endpoint in live:
        # The ensemble first: it is what holds requests on the canary's ONNX model.
        for model in reversed(names.canary_models):
            endpoint.unload(model)
    for model in reversed(names.canary_models):
        remove(repo, model)
