"""Publish a new version of a served classifier while it serves.

``publish(PublishRequest(...))``:

1. *stage*: export and verify the new weights in a staging directory Triton never reads, with the
   served classifier's labels and preprocessing (``pipeline.stage``);
2. *gate*: run the served version and the new one in this process on the held-out images, with
   the repository's own preprocessing code (``gate``). Below the bar it refuses, unless forced,
   and nothing has touched the repository;
3. *settle*: finish a move that a killed publish or rollback left half done (``moves.settle``);
4. *move*: make the new version answer on every server (``moves.move_to``). Older versions stay
   on disk for ``rollback`` (``keep``).

With a canary (``PublishRequest.canary_percent``), step 4 installs the canary state instead
(``export.canary``): the served version keeps answering, the new one answers the share the proxy
sends its canary ensemble, until ``moves.promote`` or ``moves.rollback`` ends it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnet18_triton.contract import ClassifierNames
from resnet18_triton.errors import PublishRefused
from resnet18_triton.export import canary as canaries
from resnet18_triton.export import fidelity
from resnet18_triton.export.moves import (
    Echo,
    MoveResult,
    check_publishable,
    find_servers,
    move_times,
    move_to,
    quiet,
    settle,
)
from resnet18_triton.export.pipeline import ExportRequest, LoadedModel, load_model, stage
from resnet18_triton.export.quantize import image_files, preprocess_files, served_preprocessing
from resnet18_triton.files import image_files as images_in
from resnet18_triton.repository.classifier import load_labels
from resnet18_triton.repository.configs.parser import repository_classifier
from resnet18_triton.repository.layout import ONNX_FILENAME, version_dir
from resnet18_triton.repository.transaction import remove_stale_staging, staging_directory
from resnet18_triton.repository.versions import DEFAULT_KEEP, NewVersion, read_state
from resnet18_triton.server.admin import AdminEndpoint

# Without labels, the share of held-out images on which the new version must pick the served
# version's top class; with labels, how much accuracy it may lose.
DEFAULT_MIN_AGREEMENT = 0.9
DEFAULT_MAX_ACCURACY_DROP = 0.01


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
class PublishResult(MoveResult):
    """A publish that went through, with the gate's report on the new version."""

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


def publish(request: PublishRequest, echo: Echo = quiet) -> PublishResult:
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
            return PublishResult(state.served, version, servers, times, report)
        first, second = move_to(repo, names, servers, version, request.keep, new, echo)
    times.update(move_times(first, second))
    return PublishResult(state.served, version, servers, times, report)
