"""A canary of a served classifier (``repository.versions``): start it, end it.

While it runs, the ensemble keeps answering with the stable version and the canary ensemble with
the new one; the proxy in front (``resnet18-triton cluster``) sends it ``percent`` of the
ensemble's inference requests. Starting installs and loads the canary while its share is still 0,
and only then gives it its share, so the proxy never sends a request to a model not yet loaded.
Ending sets the share to 0, waits for the proxies to stop sending (``DRAIN_S``), then unloads and
removes the canary ensemble: no request reaches a model that is gone. Promoting first sends every
request to the canary (``route_all``), so that the ensemble moves to the canary's version while
no request is inside it, then ends the canary.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from resnet18_triton.contract import ClassifierNames
from resnet18_triton.errors import ServerUnavailableError
from resnet18_triton.repository.transaction import install, install_lock, remove, staging_directory
from resnet18_triton.repository.versions import NewVersion, read_canary, stage_canary, stage_state
from resnet18_triton.server.admin import AdminEndpoint
from resnet18_triton.server.watchdog import record_loaded

# The cluster's proxy reads the canaries every 0.5 s and reloads nginx gracefully (its old
# workers finish their requests); this leaves it several times that.
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
    """Install the canary state (the ONNX model serves ``stable`` and ``new``, the ensemble stays
    on ``stable``, the canary ensemble answers ``new``) at share 0, load it on every server in
    ``live``, then give it ``percent``."""
    with staging_directory(repo) as staging:
        both = tuple(sorted({stable, new.version}))
        models = stage_state(repo, staging, names, both, stable, keep, new)
        canary = stage_canary(repo, staging, names, new.version, 0)
        with install_lock(repo):
            install(staging, repo, (*models, canary))
    for endpoint in live:
        endpoint.load(names.onnx)
        for model, version in ((names.ensemble, stable), (names.canary, new.version)):
            # Triton reloads the ensembles that use the ONNX model, but may not have yet.
            if endpoint.versions(model) != (version,):
                endpoint.load(model)
            if endpoint.versions(model) != (version,):
                raise ServerUnavailableError(
                    f"the server at {endpoint.url} does not answer with v{version} of {model!r} "
                    "after loading the canary; see its log"
                )
    set_percent(repo, names, percent)
    record_loaded(repo, (names.onnx, names.ensemble, names.canary))


def set_percent(repo: Path, names: ClassifierNames, percent: int) -> None:
    """Give the running canary ``percent`` of the requests (its config only: Triton does not
    read it, the proxy does)."""
    canary = read_canary(repo, names)
    assert canary is not None, "set_percent needs a canary"
    with staging_directory(repo) as staging:
        model = stage_canary(repo, staging, names, canary.version, percent)
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
    in ``live`` and remove it from the repository. Nothing when there is no canary."""
    canary = read_canary(repo, names)
    if canary is None:
        return
    if canary.percent:
        set_percent(repo, names, 0)
        time.sleep(drain_s)
    for endpoint in live:
        endpoint.unload(names.canary)
    remove(repo, names.canary)
