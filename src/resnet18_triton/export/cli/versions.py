"""``versions``, ``rollback`` and ``promote``: list a served classifier's versions on disk and
move it between them (a thin layer over ``export.moves`` and ``repository.versions``). Nothing
here imports torch, so these commands start at once."""

from __future__ import annotations

import datetime
from pathlib import Path

import click

from resnet18_triton.contract import CONFIG_FILENAME, ClassifierNames
from resnet18_triton.export.moves import admin_endpoints, promote, rollback
from resnet18_triton.options import (
    keep_option,
    move_servers_options,
    name_option,
    repository_option,
)
from resnet18_triton.repository.layout import version_dir
from resnet18_triton.repository.versions import DEFAULT_KEEP, read_state


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
@keep_option(DEFAULT_KEEP)
@move_servers_options()
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
        admin_endpoints(urls, admin_key_file),
        to_version,
        keep,
        echo=lambda line: click.echo(line, err=True),
    )
    click.echo(result.describe("rolled back to"), err=True)


@click.command("promote")
@name_option("Classifier whose canary to promote.")
@repository_option("Model repository the classifier is served from.")
@keep_option(DEFAULT_KEEP)
@move_servers_options()
def promote_command(
    name: str, repository: Path, keep: int, urls: tuple[str, ...], admin_key_file: Path | None
) -> None:
    """End the canary: its version answers every request, the way publish moves."""
    result = promote(
        repository,
        name,
        admin_endpoints(urls, admin_key_file),
        keep,
        echo=lambda line: click.echo(line, err=True),
    )
    click.echo(result.describe("promoted"), err=True)
