"""``publish``: a new version of a served classifier, gated, with no failed request (a thin
layer over ``export.publish``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from resnet18_triton.export.canary import MAX_PERCENT
from resnet18_triton.export.moves import admin_endpoints
from resnet18_triton.export.pipeline import ExportRequest
from resnet18_triton.export.publish import PublishRequest, publish
from resnet18_triton.options import (
    default_of,
    image_folder_option,
    keep_option,
    labels_option,
    move_servers_options,
    name_option,
    repository_option,
)
from resnet18_triton.repository.versions import DEFAULT_KEEP

F = TypeVar("F", bound=Callable[..., object])


def _field_of(flag: str) -> str:
    """The parameter click makes of ``flag`` (``--max-accuracy-drop``: ``max_accuracy_drop``),
    which is also the name of the request field the option sets."""
    return flag.removeprefix("--").replace("-", "_")


def _bar_option(flag: str, help: str) -> Callable[[F], F]:
    """``flag``: a bar of the gate, a share from 0 to 1; it sets the ``PublishRequest`` field
    the flag names and takes that field's default."""
    return click.option(
        flag,
        default=default_of(PublishRequest, _field_of(flag)),
        show_default=True,
        type=click.FloatRange(0, 1),
        help=help,
    )


def _export_option(flag: str, type: type[int | float]) -> Callable[[F], F]:
    """``flag``: how the new version is exported, the ``ExportRequest`` field the flag names,
    by default that field's; ``publish_command`` passes it to the export as it is."""
    return click.option(
        flag, default=default_of(ExportRequest, _field_of(flag)), show_default=True, type=type
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
@_bar_option(
    "--min-agreement",
    "Without labelled images: refuse below this top-1 agreement with the served version.",
)
@_bar_option(
    "--max-accuracy-drop",
    "With labelled images: refuse when accuracy falls by more than this (0.01 = 1 point).",
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
@_export_option("--seed", int)
@_export_option("--opset", int)
@_export_option("--atol", float)
@repository_option("Model repository the classifier is served from.")
@keep_option(DEFAULT_KEEP)
@move_servers_options()
def publish_command(
    weights: str,
    name: str,
    eval_images: Path,
    labels: Path | None,
    min_agreement: float,
    max_accuracy_drop: float,
    force: bool,
    canary_percent: int | None,
    repository: Path,
    keep: int,
    urls: tuple[str, ...],
    admin_key_file: Path | None,
    **export_fields: Any,
) -> None:
    """Publish new weights as the next version of a served classifier, with no failed request.

    Exports and verifies them where Triton cannot see them, compares them with the served
    version on held-out images, then loads them on every server beside the served version
    and unloads that one. The previous versions stay on disk: `rollback` goes back.
    """
    request = PublishRequest(
        export=ExportRequest(
            repository=repository, weights=weights, name=name, labels=labels, **export_fields
        ),
        eval_images=eval_images,
        endpoints=admin_endpoints(urls, admin_key_file),
        min_agreement=min_agreement,
        max_accuracy_drop=max_accuracy_drop,
        force=force,
        keep=keep,
        canary_percent=canary_percent or 0,
    )
    result = publish(request, echo=lambda line: click.echo(line, err=True))
    verb = f"a {canary_percent} % canary of" if canary_percent else "published"
    click.echo(result.describe(verb), err=True)
