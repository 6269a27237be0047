"""``publish``, ``rollback`` and ``versions``: a classifier's versions while it serves (a thin
layer over ``export.publish`` and ``repository.versions``)."""

from __future__ import annotations

import datetime
from pathlib import Path

import click

from resnet18_triton import contract
from resnet18_triton.contract import CONFIG_FILENAME, ClassifierNames
from resnet18_triton.export.canary import MAX_PERCENT
from resnet18_triton.export.pipeline import ExportRequest, default_of
from resnet18_triton.export.publish import (
    DEFAULT_MAX_ACCURACY_DROP,
    DEFAULT_MIN_AGREEMENT,
    MoveResult,
    PublishRequest,
    promote,
    publish,
    rollback,
)
from resnet18_triton.keys import admin_key_from
from resnet18_triton.options import (
    admin_key_file_option,
    image_folder_option,
    labels_option,
    name_option,
    repository_option,
)
from resnet18_triton.repository.layout import version_dir
from resnet18_triton.repository.versions import DEFAULT_KEEP, read_state
from resnet18_triton.server.admin import AdminEndpoint


def _servers(fn: click.decorators.FC) -> click.decorators.FC:
    """``--url`` (repeatable) and ``--admin-key-file``: the servers that load the move."""
    fn = admin_key_file_option(
        "File (mode 0600) holding the admin key the servers were started with (serve "
        "--admin-key-file, cluster --admin-key-file)."
    )(fn)
    return click.option(
        "--url",
        "urls",
        multiple=True,
        default=(contract.DEFAULT_URL,),
        show_default=True,
        help="HTTP endpoint (host:port) of a server of this repository; repeat it for each "
        "replica. One that does not answer is skipped: it serves the new version when it starts.",
    )(fn)


def _keep(fn: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--keep",
        default=DEFAULT_KEEP,
        show_default=True,
        type=click.IntRange(2),
        help="Versions kept on disk, the one answering included (the others: to roll back to).",
    )(fn)


def _endpoints(urls: tuple[str, ...], admin_key_file: Path | None) -> tuple[AdminEndpoint, ...]:
    key = admin_key_from(admin_key_file)
    return tuple(AdminEndpoint(url, key) for url in urls)


def _report(result: MoveResult, verb: str) -> None:
    served = ", ".join(endpoint.url for endpoint in result.servers.live) or "no running server"
    timing = ", ".join(
        f"{name.removesuffix('_s')} {value:.1f} s" for name, value in result.times.items()
    )
    click.echo(
        f"{verb} v{result.version} (was v{result.previous}); loaded on {served}; {timing}", err=True
    )
    for url in result.servers.absent:
        click.echo(
            f"note: nothing answered at {url}; it serves v{result.version} when it starts", err=True
        )


@click.command("publish")
@click.option(
    "--weights",
    required=True,
    metavar="PATH",
    help="The retrained classifier: a checkpoint, TorchScript module or ONNX file, as export "
    "takes (or 'random' with --seed, for trying the command out).",
)
@name_option("Classifier to publish a new version of.")
@image_folder_option(
    "--eval-images",
    "Held-out images the new version is judged on against the served one: a folder per "
    "label (accuracy, and agreement), or images directly in it (agreement only).",
    required=True,
)
@labels_option(
    "The new weights' labels, checked to be the served classifier's (a version keeps them)."
)
@click.option(
    "--min-agreement",
    default=DEFAULT_MIN_AGREEMENT,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Without labelled images: refuse below this top-1 agreement with the served version.",
)
@click.option(
    "--max-accuracy-drop",
    default=DEFAULT_MAX_ACCURACY_DROP,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="With labelled images: refuse when accuracy falls by more than this (0.01 = 1 point).",
)
@click.option("--force", is_flag=True, help="Publish even below the bar (the report still shows).")
@click.option(
    "--canary",
    "canary_percent",
    type=click.IntRange(1, MAX_PERCENT),
    default=None,
    help="Start a canary instead: the served version keeps answering, and the proxy in front "
    "(resnet18-triton cluster) sends this percent of the requests to the new one, until "
    "`promote` or `rollback`.",
)
@click.option("--seed", default=default_of(ExportRequest, "seed"), show_default=True, type=int)
@click.option("--opset", default=default_of(ExportRequest, "opset"), show_default=True, type=int)
@click.option("--atol", default=default_of(ExportRequest, "atol"), show_default=True, type=float)
@repository_option("Model repository the classifier is served from.")
@_keep
@_servers
def publish_command(
    weights: str,
    name: str,
    eval_images: Path,
    labels: Path | None,
    min_agreement: float,
    max_accuracy_drop: float,
    force: bool,
    canary_percent: int | None,
    seed: int,
    opset: int,
    atol: float,
    repository: Path,
    keep: int,
    urls: tuple[str, ...],
    admin_key_file: Path | None,
) -> None:
    """Publish new weights as the next version of a served classifier, with no failed request.

    Exports and verifies them where Triton cannot see them, compares them with the served
    version on held-out images, then loads them on every server beside the served version
    and unloads that one. The previous versions stay on disk: `rollback` goes back.
    """
    request = PublishRequest(
        export=ExportRequest(
            repository=repository,
            weights=weights,
            seed=seed,
            opset=opset,
            atol=atol,
            name=name,
            labels=labels,
        ),
        eval_images=eval_images,
        endpoints=_endpoints(urls, admin_key_file),
        min_agreement=min_agreement,
        max_accuracy_drop=max_accuracy_drop,
        force=force,
        keep=keep,
        canary_percent=canary_percent or 0,
    )
    result = publish(request, echo=lambda line: click.echo(line, err=True))
    _report(result, f"a {canary_percent} % canary of" if canary_percent else "published")


@click.command("rollback")
@name_option("Classifier to roll back.")
@click.option(
    "--to",
    "to_version",
    type=click.IntRange(1),
    default=None,
    help="Version to answer with (default: the newest one older than the served one).",
)
@repository_option("Model repository the classifier is served from.")
@_keep
@_servers
def rollback_command(
    name: str,
    to_version: int | None,
    repository: Path,
    keep: int,
    urls: tuple[str, ...],
    admin_key_file: Path | None,
) -> None:
    """Answer with the previous version again, the way publish moves: no failed request."""
    result = rollback(
        repository,
        name,
        _endpoints(urls, admin_key_file),
        to_version,
        keep,
        echo=lambda line: click.echo(line, err=True),
    )
    _report(result, "rolled back to")


@click.command("promote")
@name_option("Classifier whose canary to promote.")
@repository_option("Model repository the classifier is served from.")
@_keep
@_servers
def promote_command(
    name: str, repository: Path, keep: int, urls: tuple[str, ...], admin_key_file: Path | None
) -> None:
    """End the canary: its version answers every request, the way publish moves."""
    result = promote(
        repository,
        name,
        _endpoints(urls, admin_key_file),
        keep,
        echo=lambda line: click.echo(line, err=True),
    )
    _report(result, "promoted")


def _utc(path: Path) -> str:
    """When ``path`` was last written, in UTC."""
    when = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S")


@click.command("versions")
@name_option("Classifier to list the versions of.")
@repository_option("Model repository the classifier is served from.")
def versions_command(name: str, repository: Path) -> None:
    """List the versions on disk: which one answers and since when, which ones are kept."""
    names = ClassifierNames.of(name)
    state = read_state(repository, names)
    click.echo(f"{'version':>7}  {'written (UTC)':<19}  state")
    for version in reversed(state.on_disk):
        written = _utc(version_dir(repository, names.onnx, version))
        if version == state.served:
            # The ensemble's config is rewritten exactly when it is pinned to another version.
            marks = [f"answers since {_utc(repository / names.ensemble / CONFIG_FILENAME)} UTC"]
        else:
            marks = ["kept"]
        if state.canary is not None and version == state.canary.version:
            marks = [
                f"canary, {state.canary.percent} % of the requests (promote or rollback ends it)"
            ]
        elif version in state.loaded and version != state.served:
            marks = ["loaded (a move is unfinished: publish or rollback settles it)"]
        click.echo(f"{version:>7}  {written:<19}  {' '.join(marks)}")
