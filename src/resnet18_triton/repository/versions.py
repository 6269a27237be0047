"""The versions of a classifier's ONNX model: which are on disk, which one answers, and the
repository states that a publish or a rollback moves through.

A classifier answers with one version of its ONNX model at a time, and every answer names it:
the ensemble's classifier step is pinned to that version, and the ensemble itself serves the
same version number (an empty version directory per version; its ``version_policy`` serves only
the pinned one). So the ``model_version`` of each answer is the version of the ONNX model that
produced it.

Moving the classifier from version S to version N takes two states. Each is one transaction on
the repository (``transaction.install``: the ONNX model's and the ensemble's directories swapped
in together) and one load of the ONNX model through the admin API; Triton then reloads the
ensemble that depends on it:

1. *both*: the ONNX model serves S and N, and the ensemble is pinned to N. Requests already in
   the old ensemble finish on S; new ones are answered by N.
2. *settled*: the ONNX model serves N only. S stays on disk for a rollback until retention
   (``retained``) removes it.

A canary runs beside the settled state S and touches none of its models: the ONNX model's
directory gains N on disk (its config still serves S only, so nothing reloads), and two models of
the canary's own answer with N, ``NAME_onnx_canary`` (N only) and ``NAME_canary``, the same
preprocessing followed by it (``ClassifierNames.canary_models``). The proxy sends the canary
ensemble the share of requests its config parameter ``canary_percent`` names. Ending it sets that
share to 0, then unloads and removes the canary's two models; promoting N first sends every
request to the canary, then moves as above while the ensemble has no traffic, then ends it.

Whichever state a killed publish leaves on disk, a server (re)started on the repository, or a
model the watchdog reloads, answers with one version only and names it: S until state 1 is
installed, N from then on. ``read_state`` tells a half-done move (``settled`` is False) so the
next publish or rollback can finish it first.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from resnet18_triton.contract import CANARY_PERCENT_PARAMETER, CONFIG_FILENAME, ClassifierNames
from resnet18_triton.files import link_or_copy, write_text_atomically
from resnet18_triton.repository.configs.parser import read_config, read_config_file, render
from resnet18_triton.repository.layout import (
    ONNX_FILENAME,
    onnx_versions,
    served_version,
    version_dir,
)

# Versions kept on disk after a publish, the served one included: the served one, and the two
# before it to roll back to.
DEFAULT_KEEP = 3


@dataclass(frozen=True)
class Canary:
    """A canary of a classifier: its ensemble ``model`` answers with ``version`` and the proxy
    sends it ``percent`` of the requests to ``stable_model``."""

    model: str
    stable_model: str
    version: int
    percent: int


def read_canary(repo: Path, names: ClassifierNames) -> Canary | None:
    """The classifier's canary in ``repo``; None when it has none."""
    config = read_config_file(repo / names.canary / CONFIG_FILENAME)
    if config is None:
        return None
    version = next(
        (int(step.model_version) for step in config.ensemble_scheduling.step if step.model_name
         == names.canary_onnx and step.model_version > 0),
        None,
    )  # fmt: skip
    if version is None:
        return None
    parameter = config.parameters.get(CANARY_PERCENT_PARAMETER)
    percent = int(parameter.string_value) if parameter and parameter.string_value.isdigit() else 0
    return Canary(names.canary, names.ensemble, version, percent)


@dataclass(frozen=True)
class VersionState:
    """Where classifier ``names`` stands: ``served`` answers (the ensemble's pin), ``loaded`` is
    what its ONNX model's config serves, ``on_disk`` every version with a model file."""

    names: ClassifierNames
    served: int
    loaded: tuple[int, ...]
    on_disk: tuple[int, ...]
    pinned: bool
    canary: Canary | None = None

    @property
    def settled(self) -> bool:
        """True unless a publish or rollback stopped between its two states."""
        return self.loaded == (self.served,) and self.pinned

    def previous(self) -> int | None:
        """The newest version on disk older than the served one: what a rollback goes back to."""
        older = [version for version in self.on_disk if version < self.served]
        return older[-1] if older else None

    def next_version(self) -> int:
        """The number a newly published version gets: one above every version on disk, so a
        number never comes back with other weights."""
        return max((*self.on_disk, self.served)) + 1


def serving_policy(config: mc.ModelConfig) -> tuple[int, ...] | None:
    """The versions a ``specific`` version policy names; None for Triton's default (latest)."""
    if config.version_policy.WhichOneof("policy_choice") != "specific":
        return None
    return tuple(sorted(int(v) for v in config.version_policy.specific.versions))


def read_state(repo: Path, names: ClassifierNames) -> VersionState:
    """The versions of classifier ``names`` in ``repo``; RepositoryError when it was never
    exported."""
    onnx = read_config(repo, names.onnx)
    ensemble = read_config(repo, names.ensemble)
    served = served_version(repo, names)
    pinned = any(
        step.model_name == names.onnx and step.model_version > 0
        for step in ensemble.ensemble_scheduling.step
    )
    return VersionState(
        names=names,
        served=served,
        loaded=serving_policy(onnx) or (served,),
        on_disk=onnx_versions(repo, names.onnx),
        pinned=pinned,
        canary=read_canary(repo, names),
    )


def retained(on_disk: tuple[int, ...], needed: tuple[int, ...], keep: int) -> tuple[int, ...]:
    """The versions to keep on disk: every ``needed`` one, then the newest others up to ``keep``
    in all."""
    kept = set(needed)
    for version in sorted(on_disk, reverse=True):
        if len(kept) >= keep:
            break
        kept.add(version)
    return tuple(sorted(kept))


def pin(ensemble: mc.ModelConfig, onnx_model: str, version: int) -> mc.ModelConfig:
    """``ensemble`` with its ``onnx_model`` step pinned to ``version``, which it also serves as
    its own version."""
    pinned = mc.ModelConfig()
    pinned.CopyFrom(ensemble)
    for step in pinned.ensemble_scheduling.step:
        if step.model_name == onnx_model:
            step.model_version = version
    serve_only(pinned, (version,))
    return pinned


def serve_only(config: mc.ModelConfig, versions: tuple[int, ...]) -> mc.ModelConfig:
    """Set ``config``'s version policy to exactly ``versions``; returns it."""
    config.version_policy.specific.ClearField("versions")
    config.version_policy.specific.versions.extend(sorted(versions))
    return config


def carry_over(repo: Path, names: ClassifierNames, configs: list[mc.ModelConfig]) -> None:
    """Give freshly rendered configs of classifier ``names`` the version state its configs in
    ``repo`` have (which versions its ONNX model serves, the ensemble's pin), so re-rendering
    them (``tune``) never changes which version answers."""
    state = read_state(repo, names)
    for config in configs:
        if config.name == names.onnx and state.pinned:
            serve_only(config, state.loaded)
        elif config.name == names.ensemble and state.pinned:
            config.CopyFrom(pin(config, names.onnx, state.served))


@dataclass(frozen=True)
class NewVersion:
    """A model file to add as ``version`` of the classifier's ONNX model."""

    version: int
    model_file: Path


def stage_state(
    repo: Path,
    staging: Path,
    names: ClassifierNames,
    serve: tuple[int, ...],
    answer_with: int,
    keep: tuple[int, ...],
    new: NewVersion | None = None,
) -> tuple[str, str]:
    """Build in ``staging`` the classifier's ONNX model and ensemble directories as they are in
    ``repo``, but serving ``serve``, answering with ``answer_with``, holding the versions ``keep``
    (plus ``new``, added). Model files are hard links where the filesystem allows. Returns the
    two model names, in install order (the ONNX model, then the ensemble)."""
    onnx_dir, ensemble_dir = staging / names.onnx, staging / names.ensemble
    _copy_without_versions(repo / names.onnx, onnx_dir, keep)
    if new is not None:
        target = version_dir(staging, names.onnx, new.version)
        target.mkdir(parents=True)
        link_or_copy(new.model_file, target / ONNX_FILENAME)
    _copy_without_versions(repo / names.ensemble, ensemble_dir, ())
    for version in (*keep, *((new.version,) if new else ())):
        version_dir(staging, names.ensemble, version).mkdir(exist_ok=True)
    onnx = serve_only(read_config(repo, names.onnx), serve)
    ensemble = pin(read_config(repo, names.ensemble), names.onnx, answer_with)
    for directory, config in ((onnx_dir, onnx), (ensemble_dir, ensemble)):
        write_text_atomically(directory / CONFIG_FILENAME, render(config))
    return names.onnx, names.ensemble


def stage_canary(
    repo: Path, staging: Path, names: ClassifierNames, version: int, percent: int
) -> tuple[str, str]:
    """Build in ``staging`` the canary of classifier ``names`` (``ClassifierNames.canary_models``)
    from its models in ``repo`` (which may be ``staging`` itself): its ONNX model serving only
    ``version`` (a hard link to that version's file in the classifier's ONNX model), and its
    ensemble, the classifier's with that model in place of the served one,
    pinned to ``version`` and sending it ``percent``. Returns the two names in install order."""
    onnx = serve_only(read_config(repo, names.onnx), (version,))
    onnx.name = names.canary_onnx
    _copy_without_versions(repo / names.onnx, staging / names.canary_onnx, (version,))
    write_text_atomically(staging / names.canary_onnx / CONFIG_FILENAME, render(onnx))
    ensemble = read_config(repo, names.ensemble)
    for step in ensemble.ensemble_scheduling.step:
        if step.model_name == names.onnx:
            step.model_name = names.canary_onnx
    canary = pin(ensemble, names.canary_onnx, version)
    canary.name = names.canary
    canary.parameters[CANARY_PERCENT_PARAMETER].string_value = str(percent)
    # The ensemble's other files too (its labels, which its output names).
    _copy_without_versions(repo / names.ensemble, staging / names.canary, ())
    version_dir(staging, names.canary, version).mkdir()
    write_text_atomically(staging / names.canary / CONFIG_FILENAME, render(canary))
    return names.canary_models


def stage_canary_share(repo: Path, staging: Path, names: ClassifierNames, percent: int) -> str:
    """Build in ``staging`` the running canary's ensemble as it is in ``repo``, sending it
    ``percent``: the proxy reads the share, Triton does not. Returns its name."""
    canary = read_config(repo, names.canary)
    canary.parameters[CANARY_PERCENT_PARAMETER].string_value = str(percent)
    shutil.copytree(repo / names.canary, staging / names.canary, copy_function=link_or_copy)
    write_text_atomically(staging / names.canary / CONFIG_FILENAME, render(canary))
    return names.canary


def _copy_without_versions(source: Path, target: Path, keep: tuple[int, ...]) -> None:
    """Copy model directory ``source`` to ``target`` (hard links), leaving out every version
    directory not in ``keep``."""
    kept = {str(version) for version in keep}

    def ignore(directory: str, entries: list[str]) -> list[str]:
        if os.path.samefile(directory, source):
            return [e for e in entries if e.isdigit() and e not in kept]
        return []

    shutil.copytree(source, target, copy_function=link_or_copy, ignore=ignore)
