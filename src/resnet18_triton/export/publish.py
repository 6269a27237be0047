"""Publish a new version of a served classifier, or roll back to an earlier one, while it serves.

``publish(PublishRequest(...))``:

1. *stage*: export and verify the new weights in a staging directory Triton never reads, with the
   served classifier's labels and preprocessing (``pipeline.stage``);
2. *gate*: run the served version and the new one in this process on the held-out images, with
   the repository's own preprocessing code (``gate``). Below the bar it refuses, unless forced,
   and nothing has touched the repository;
3. *settle*: finish a move that a killed publish or rollback left half done (``settle``);
4. *move*: install the state that serves both versions and answers with the new one, load it on
   every server, then the state that serves the new one only, and load that
   (``repository.versions`` explains the two states). Older versions stay on disk for
   ``rollback`` (``keep``).

With a canary (``PublishRequest.canary_percent``), step 4 installs the canary state instead
(``export.canary``): the served version keeps answering, the new one answers the share the proxy
sends its canary ensemble. ``promote`` ends the canary and moves to its version as in step 4;
``rollback`` ends it and settles on the served version.

``rollback`` is otherwise steps 3 and 4 towards an earlier version on disk. Servers are reached
through their model-repository API (``server.admin.AdminEndpoint``) with the admin key they run
with; loading the ONNX model makes Triton reload the ensemble that depends on it, and in-flight
requests finish on the version they started on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from resnet18_triton import contract
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.errors import ExportError, PublishRefused, ServerUnavailableError
from resnet18_triton.export import canary as canaries
from resnet18_triton.export import fidelity
from resnet18_triton.export.pipeline import ExportRequest, LoadedModel, load_model, stage
from resnet18_triton.export.quantize import image_files, preprocess_files, served_preprocessing
from resnet18_triton.files import image_files as images_in
from resnet18_triton.repository import variants
from resnet18_triton.repository.classifier import load_labels
from resnet18_triton.repository.configs.parser import repository_classifier
from resnet18_triton.repository.layout import ONNX_FILENAME, classifiers, version_dir
from resnet18_triton.repository.transaction import (
    install,
    install_lock,
    is_served,
    remove_stale_staging,
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
# Without labels, the share of held-out images on which the new version must pick the served
# version's top class; with labels, how much accuracy it may lose.
DEFAULT_MIN_AGREEMENT = 0.9
DEFAULT_MAX_ACCURACY_DROP = 0.01


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class GateReport:
    """The new version against the served one on the same held-out images. Accuracies are set
    when the images were labelled (a folder per label)."""

    served: int
    candidate: int
    images: int
    agreement: float
    served_accuracy: float | None = None
    candidate_accuracy: float | None = None

    def refusal(self, min_agreement: float, max_accuracy_drop: float) -> str | None:
        """Why the new version may not be published; None when it passes."""
        if self.served_accuracy is not None and self.candidate_accuracy is not None:
            if self.candidate_accuracy < self.served_accuracy - max_accuracy_drop:
                return (
                    f"accuracy {self.candidate_accuracy:.2%} on the held-out images is more than "
                    f"{max_accuracy_drop:.2%} below the served version's "
                    f"{self.served_accuracy:.2%}"
                )
            return None
        if self.agreement < min_agreement:
            return (
                f"it picks the served version's top class on {self.agreement:.2%} of the "
                f"held-out images, below {min_agreement:.2%}; give labelled images (a folder per "
                "label) to judge by accuracy instead"
            )
        return None

    def table(self) -> str:
        """A Markdown table for people."""

        def share(value: float | None) -> str:
            return "-" if value is None else f"{value:.2%}"

        rows = [
            ("held-out images", str(self.images)),
            (f"top-1 agreement v{self.candidate} / v{self.served}", share(self.agreement)),
            (f"accuracy of served v{self.served}", share(self.served_accuracy)),
            (f"accuracy of new v{self.candidate}", share(self.candidate_accuracy)),
        ]
        return fidelity.figure_table(rows)


@dataclass(frozen=True)
class HeldOut:
    """Held-out images, with the index of each one's label when they were labelled."""

    files: tuple[Path, ...]
    labels: tuple[int, ...] | None = None


def held_out_images(folder: Path, labels: Sequence[str]) -> HeldOut:
    """The images of ``folder``: labelled when it holds a folder per label (ImageFolder: each
    sub-folder named as one of ``labels``), else the images directly in it."""
    folder = Path(folder)
    by_label = {label: index for index, label in enumerate(labels)}
    labelled: list[tuple[Path, int]] = []
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            if entry.is_dir() and entry.name in by_label:
                labelled += [(path, by_label[entry.name]) for path in images_in(entry)]
    if labelled:
        return HeldOut(tuple(p for p, _ in labelled), tuple(i for _, i in labelled))
    return HeldOut(tuple(image_files(folder)))


def gate(
    repo: Path,
    names: ClassifierNames,
    served: int,
    candidate: Path,
    held_out: HeldOut,
    version: int,
) -> GateReport:
    """Compare model file ``candidate`` (to become ``version``) with that of the ``served``
    version, in this process, on ``held_out`` preprocessed by the classifier's own
    preprocessing."""
    module, transform = served_preprocessing(repo, names.preprocess)
    pixels = preprocess_files(held_out.files, module, transform)
    served_file = version_dir(repo, names.onnx, served) / ONNX_FILENAME
    old = fidelity.run_logits(fidelity.session(served_file), pixels)
    new = fidelity.run_logits(fidelity.session(candidate), pixels)
    old_top, new_top = old.argmax(1), new.argmax(1)
    accuracies: tuple[float | None, float | None] = (None, None)
    if held_out.labels is not None:
        truth = np.asarray(held_out.labels)
        accuracies = (float((old_top == truth).mean()), float((new_top == truth).mean()))
    return GateReport(
        served=served,
        candidate=version,
        images=len(held_out.files),
        agreement=float((old_top == new_top).mean()),
        served_accuracy=accuracies[0],
        candidate_accuracy=accuracies[1],
    )


@dataclass(frozen=True)
class Servers:
    """The servers of a repository: those that answered, and the URLs that did not."""

    live: tuple[AdminEndpoint, ...]
    absent: tuple[str, ...] = ()


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
    echo: Echo = _quiet,
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
class PublishRequest:
    """What to publish (``export``: weights, classifier name, repository, ...), the held-out
    images it is judged on, the servers that load it and the bar it must pass."""

    export: ExportRequest
    eval_images: Path
    endpoints: tuple[AdminEndpoint, ...] = ()
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
    force: bool = False
    keep: int = DEFAULT_KEEP
    # Above 0: start a canary with this percent of the requests instead of moving at once.
    canary_percent: int = 0


@dataclass(frozen=True)
class MoveResult:
    """A publish or rollback that went through."""

    previous: int
    version: int
    servers: Servers
    times: dict[str, float]
    gate: GateReport | None = None


def _check_labels(served: tuple[str, ...], loaded: LoadedModel, labels: Path | None) -> None:
    """PublishRefused unless the new weights can keep the ``served`` labels."""
    if loaded.num_classes != len(served):
        raise PublishRefused(
            f"the new weights have {loaded.num_classes} classes and the served classifier "
            f"{len(served)}: a different set of classes is another classifier (export --name)"
        )
    if labels is not None and tuple(load_labels(labels)) != tuple(served):
        raise PublishRefused(
            f"{labels} does not list the served classifier's labels in its order: versions of "
            "one classifier share its labels; a new label set is another classifier "
            "(export --name)"
        )


def publish(request: PublishRequest, echo: Echo = _quiet) -> MoveResult:
    """Steps 1-4 of the module docstring. Raises PublishRefused below the bar (the repository
    unchanged), ExportError, RepositoryError, ServerUnavailableError or AdminKeyError."""
    repo = Path(request.export.repository).resolve()
    names = ClassifierNames.of(request.export.name)
    check_publishable(repo, names)
    servers = find_servers(repo, request.endpoints)
    times: dict[str, float] = {}
    started = time.monotonic()
    # What answers now, and the next number: right even when a killed move is half done, which
    # is settled only once the new version has passed its gate (a refusal changes nothing).
    state = read_state(repo, names)
    version = state.next_version()
    remove_stale_staging(repo)
    loaded = load_model(request.export)
    classifier = repository_classifier(repo, names.name)
    _check_labels(classifier.labels, loaded, request.export.labels)
    with staging_directory(repo) as staging:
        echo(f"exporting v{version} of {names.name!r} ...")
        stage(request.export, loaded, staging, classifier)
        candidate = version_dir(staging, names.onnx) / ONNX_FILENAME
        times["export_s"] = time.monotonic() - started
        held_out = held_out_images(request.eval_images, classifier.labels)
        report = gate(repo, names, state.served, candidate, held_out, version)
        echo(report.table())
        why = report.refusal(request.min_agreement, request.max_accuracy_drop)
        if why and not request.force:
            raise PublishRefused(
                f"v{version} was not published: {why}. The served v{state.served} is unchanged; "
                "--force publishes anyway"
            )
        if why:
            echo(f"WARNING: published despite the gate (--force): {why}")
        settle(repo, names, servers, request.keep)
        new = NewVersion(version, candidate)
        if request.canary_percent:
            echo(f"loading v{version} as a canary beside v{state.served} ...")
            started = time.monotonic()
            on_disk = read_state(repo, names).on_disk
            canaries.start(
                repo, names, servers.live, state.served, new, on_disk, request.canary_percent
            )
            times["canary_s"] = time.monotonic() - started
            return MoveResult(state.served, version, servers, times, report)
        first, second = move_to(repo, names, servers, version, request.keep, new, echo)
    times.update(_move_times(first, second))
    return MoveResult(state.served, version, servers, times, report)


def promote(
    repo: Path,
    name: str,
    endpoints: Sequence[AdminEndpoint],
    keep: int = DEFAULT_KEEP,
    echo: Echo = _quiet,
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
    return MoveResult(state.served, version, servers, _move_times(first, second))


def rollback(
    repo: Path,
    name: str,
    endpoints: Sequence[AdminEndpoint],
    to: int | None = None,
    keep: int = DEFAULT_KEEP,
    echo: Echo = _quiet,
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
        times = _move_times(settled, None) if settled else {}
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
    return MoveResult(state.served, target, servers, _move_times(first, second))


def _move_times(first: MoveTimes, second: MoveTimes | None) -> dict[str, float]:
    times = {"install_both_s": first.install_s, "load_both_s": sum(first.load_s)}
    if second is not None:
        times.update(install_settled_s=second.install_s, load_settled_s=sum(second.load_s))
    return times
