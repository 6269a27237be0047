"""Move a served classifier between the versions on disk, on every server, with no failed
request: the half of ``publish`` that needs no export, and all of ``promote`` and ``rollback``.

A move makes ``target`` the version that answers in two states (``repository.versions`` explains
them): first *both*, where the ONNX model serves the old and the new version and the ensemble
answers with the new one, then *settled*, the new one alone. Each state is installed by one
transaction and loaded on every live server (``load_everywhere``) before the next. In-flight
requests finish on the version they started on. ``settle`` finishes a move that a killed command
left half done.

``promote`` ends a canary (``export.canary``) by moving to its version; ``rollback`` moves to an
earlier version, or ends a canary. This module imports neither torch nor ONNX Runtime, so those
commands start in a fraction of a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from resnet18_triton import contract
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.errors import ExportError, PublishRefused, ServerUnavailableError
from resnet18_triton.export import canary as canaries
from resnet18_triton.keys import admin_key_from
from resnet18_triton.repository import variants
from resnet18_triton.repository.layout import classifiers
from resnet18_triton.repository.transaction import (
    install,
    install_lock,
    is_served,
    staging_directory,
)
from resnet18_triton.repository.versions import (
    DEFAULT_KEEP,
    NewVersion,
    read_state,
    retained,
    stage_state,
)
from resnet18_triton.server.admin import AdminEndpoint
from resnet18_triton.server.watchdog import record_loaded

Echo = Callable[[str], None]


def quiet(_: str) -> None:
    """An ``Echo`` that says nothing."""


@dataclass(frozen=True)
class Servers:
    """The servers of a repository: those that answered, and the URLs that did not."""

    live: tuple[AdminEndpoint, ...]
    absent: tuple[str, ...] = ()


def admin_endpoints(urls: Sequence[str], admin_key_file: Path | None) -> tuple[AdminEndpoint, ...]:
    """The admin API of the servers at ``urls``, with the key of ``admin_key_file`` (or the
    environment's; ``keys.admin_key_from``)."""
    key = admin_key_from(admin_key_file)
    return tuple(AdminEndpoint(url, key) for url in urls)


def find_servers(repo: Path, endpoints: Sequence[AdminEndpoint]) -> Servers:
    """Which of ``endpoints`` answer (AdminKeyError when one refuses its key). Refuses when a
    server runs on ``repo`` and none of them answered: that one would never load the move."""
    live = tuple(endpoint for endpoint in endpoints if endpoint.answers())
    absent = tuple(endpoint.url for endpoint in endpoints if endpoint not in live)
    if not live and is_served(repo):
        tried = ", ".join(absent) or "none given"
        raise ServerUnavailableError(
            f"a server is serving {repo}, but no server answered at {tried}: give its address "
            "with --url (every replica's, for a cluster)"
        )
    return Servers(live, absent)


@dataclass
class MoveTimes:
    """Seconds each part of a move took."""

    install_s: float = 0.0
    load_s: list[float] = field(default_factory=list)


def load_everywhere(
    repo: Path, names: ClassifierNames, servers: Servers, answer_with: int
) -> list[float]:
    """Load the classifier's ONNX model, then its ensemble, on every live server, check that the
    ensemble now answers with ``answer_with``, and record the loaded files for the watchdog.
    Returns each server's load time."""
    times = []
    for endpoint in servers.live:
        started = time.monotonic()
        endpoint.load(names.onnx)
        # Always, even when the ensemble already answers with ``answer_with``: loading the ONNX
        # model makes Triton reload the ensemble with the config it read when it last loaded it,
        # over the version directories on disk now. Only loading the ensemble itself reads its
        # new config; a stale one (an exported, unpinned ensemble) would later answer under one
        # version number with another version's weights.
        endpoint.load(names.ensemble)
        got = endpoint.versions(names.ensemble)
        if got != (answer_with,):
            raise ServerUnavailableError(
                f"the server at {endpoint.url} answers with version(s) {list(got)} of "
                f"{names.ensemble!r} after loading version {answer_with}; see its log"
            )
        times.append(time.monotonic() - started)
    record_loaded(repo, (names.onnx, names.ensemble))
    return times


def apply_state(
    repo: Path,
    names: ClassifierNames,
    servers: Servers,
    serve: tuple[int, ...],
    answer_with: int,
    keep: tuple[int, ...],
    new: NewVersion | None = None,
) -> MoveTimes:
    """Install one state of ``repository.versions`` (one transaction), then load it."""
    times = MoveTimes()
    started = time.monotonic()
    with staging_directory(repo) as staging:
        models = stage_state(repo, staging, names, serve, answer_with, keep, new)
        with install_lock(repo):
            install(staging, repo, models)
    times.install_s = time.monotonic() - started
    times.load_s = load_everywhere(repo, names, servers, answer_with)
    return times


def settle(repo: Path, names: ClassifierNames, servers: Servers, keep: int) -> MoveTimes | None:
    """Bring the classifier to its settled state: its ONNX model serves the version that answers,
    and at most ``keep`` versions stay on disk. None when it already was."""
    state = read_state(repo, names)
    kept = retained(state.on_disk, (state.served,), keep)
    if state.settled and kept == state.on_disk:
        return None
    if not state.settled:
        # Killed between installing a state and loading it, a server may still run the old
        # version only: it must load the state on disk (which keeps that version) before a
        # state without it, or its ensemble would lose the version it answers with.
        load_everywhere(repo, names, servers, state.served)
    return apply_state(repo, names, servers, (state.served,), state.served, kept)


def move_to(
    repo: Path,
    names: ClassifierNames,
    servers: Servers,
    target: int,
    keep: int,
    new: NewVersion | None = None,
    echo: Echo = quiet,
) -> tuple[MoveTimes, MoveTimes | None]:
    """Make ``target`` the version that answers: state *both*, then settled."""
    state = read_state(repo, names)
    both = tuple(sorted({state.served, target}))
    echo(f"loading v{target} beside v{state.served} ...")
    first = apply_state(repo, names, servers, both, target, state.on_disk, new)
    echo(f"v{target} answers; unloading v{state.served} ...")
    return first, settle(repo, names, servers, keep)


def check_publishable(repo: Path, names: ClassifierNames) -> None:
    """ExportError when the classifier cannot take a new version."""
    if names.name not in {found.name for found in classifiers(repo)}:
        named = "" if names.name == contract.ENSEMBLE_MODEL else f" --name {names.name}"
        raise ExportError(
            f"{repo} has no classifier {names.name!r} to publish to: run "
            f"`resnet18-triton export{named}` first"
        )
    running = read_state(repo, names).canary
    if running is not None:
        raise PublishRefused(
            f"a canary of v{running.version} of {names.name!r} is running: end it first with "
            f"`resnet18-triton promote` or `resnet18-triton rollback`"
        )
    held = variants.present(repo, names)
    if held:
        keys = ", ".join(variant.key for variant in held)
        commands = ", ".join(
            dict.fromkeys(f"`resnet18-triton {variant.write_command}`" for variant in held)
        )
        raise PublishRefused(
            f"classifier {names.name!r} has variants ({keys}) derived from its served weights; "
            "a new version would leave them answering with the old ones. Versions move the FP32 "
            "classifier only: serve it without variants to publish, then derive them again "
            f"({commands})"
        )


@dataclass(frozen=True)
class MoveResult:
    """A publish, promote or rollback that went through."""

    previous: int
    version: int
    servers: Servers
    times: dict[str, float]

    def describe(self, verb: str) -> str:
        """What a person reads: ``verb`` ("published", ...), the version, where it was loaded,
        how long each part took, then a line for each server that did not answer."""
        served = ", ".join(endpoint.url for endpoint in self.servers.live) or "no running server"
        timing = ", ".join(
            f"{name.removesuffix('_s')} {value:.1f} s" for name, value in self.times.items()
        )
        lines = [f"{verb} v{self.version} (was v{self.previous}); loaded on {served}; {timing}"]
        lines += [
            f"note: nothing answered at {url}; it serves v{self.version} when it starts"
            for url in self.servers.absent
        ]
        return "\n".join(lines)


def promote(
    repo: Path,
    name: str,
    endpoints: Sequence[AdminEndpoint],
    keep: int = DEFAULT_KEEP,
    echo: Echo = quiet,
) -> MoveResult:
    """End the classifier's canary and make its version answer all requests, the way a publish
    moves. ExportError when no canary runs."""
    repo = Path(repo).resolve()
    names = ClassifierNames.of(name)
    state = read_state(repo, names)
    if state.canary is None:
        raise ExportError(
            f"{names.name!r} has no canary to promote: start one with `resnet18-triton publish "
            "--canary PERCENT`"
        )
    servers = find_servers(repo, endpoints)
    version = state.canary.version
    # The canary answers every request while the ensemble moves to its version, so no request
    # is inside the ensemble while Triton reloads it with the new pin.
    echo(f"sending every request to the canary of v{version} ...")
    canaries.route_all(repo, names)
    first, second = move_to(repo, names, servers, version, keep, None, echo)
    echo("ending the canary ...")
    canaries.end(repo, names, servers.live)
    return MoveResult(state.served, version, servers, move_times(first, second))


def rollback(
    repo: Path,
    name: str,
    endpoints: Sequence[AdminEndpoint],
    to: int | None = None,
    keep: int = DEFAULT_KEEP,
    echo: Echo = quiet,
) -> MoveResult:
    """Make ``to`` (default: the newest version older than the served one) answer again, the
    same way a publish moves. ExportError when there is no such version on disk."""
    repo = Path(repo).resolve()
    names = ClassifierNames.of(name)
    state = read_state(repo, names)
    if state.canary is not None:
        # Rolling back a canary is ending it: the served version never stopped answering.
        servers = find_servers(repo, endpoints)
        echo(f"ending the canary of v{state.canary.version} ...")
        canaries.end(repo, names, servers.live)
        settled = settle(repo, names, servers, keep)
        times = move_times(settled, None) if settled else {}
        return MoveResult(state.canary.version, state.served, servers, times)
    check_publishable(repo, names)
    servers = find_servers(repo, endpoints)
    settle(repo, names, servers, keep)
    state = read_state(repo, names)
    target = state.previous() if to is None else to
    if target is None or target not in state.on_disk or target == state.served:
        kept = ", ".join(f"v{v}" for v in state.on_disk)
        raise ExportError(
            f"no version to roll back to: {names.name!r} answers with v{state.served} and the "
            f"repository holds {kept}"
        )
    first, second = move_to(repo, names, servers, target, max(keep, len(state.on_disk)), None, echo)
    return MoveResult(state.served, target, servers, move_times(first, second))


def move_times(first: MoveTimes, second: MoveTimes | None) -> dict[str, float]:
    """A move's times by name, in seconds, as the commands report them."""
    times = {"install_both_s": first.install_s, "load_both_s": sum(first.load_s)}
    if second is not None:
        times.update(install_settled_s=second.install_s, load_settled_s=sum(second.load_s))
    return times
