"""Click options that several subcommands share, each defined once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from resnet18_triton.repository.layout import DEFAULT_REPOSITORY_DIRNAME, default_repository

F = TypeVar("F", bound=Callable[..., object])


def repository_option(help: str) -> Callable[[F], F]:
    """``--repo`` as the ``repository`` parameter: a folder, by default
    ``$RESNET18_TRITON_REPO`` or ``./model_repository`` (read when the command runs)."""
    return click.option(
        "--repo",
        "repository",
        type=click.Path(file_okay=False, path_type=Path),
        default=default_repository,
        show_default=f"./{DEFAULT_REPOSITORY_DIRNAME}",
        help=help,
    )
