"""``resnet18-triton tune`` (the ``perf`` extra): search serving plans, report, apply; and
``tune revert``, which puts back the configs an ``--apply`` replaced.

``tune`` is a click group that runs its own search when no subcommand follows
(``invoke_without_command``), so ``resnet18-triton tune [OPTIONS]`` works as it always did while
``revert``, which shares none of the search's options, is a subcommand of its own. ``tune
--revert``, its old spelling, still works for one release and warns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from resnet18_triton import options
from resnet18_triton.repository import variants as registry
from resnet18_triton.repository.layout import missing_files

if TYPE_CHECKING:
    from resnet18_triton.perf.tune.space import Candidate

REVERT_COMMAND = "resnet18-triton tune revert"
# What --variants accepts: the classifier's own FP32 models or a registered variant's key.
VARIANT_KEYS = (registry.FP32_ENSEMBLE, *(variant.key for variant in registry.REGISTRY))
# The most finalists a search re-measures, and the most rounds it measures them (or --compare's
# plans) in.
MAX_REMEASURED = 20

F = TypeVar("F", bound=Callable[..., object])


def _int_list(_ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...]:
    if value is None:
        return ()
    try:
        numbers = tuple(sorted({int(part) for part in value.split(",") if part.strip()}))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not numbers or min(numbers) < 0:
        raise click.BadParameter("expected one or more non-negative integers, e.g. 1,4,8")
    return numbers


def _remeasure_option(flag: str, default: int, help: str, *, lowest: int) -> Callable[[F], F]:
    """``flag``: how much is measured again side by side after a search (its best plans, or
    rounds of them), from ``lowest`` to ``MAX_REMEASURED``."""
    return click.option(
        flag,
        default=default,
        show_default=True,
        type=click.IntRange(lowest, MAX_REMEASURED),
        help=help,
    )


@click.group("tune", invoke_without_command=True, subcommand_metavar="[revert]")
@options.repository_option("Model repository to tune.")
@options.name_option("Classifier (ensemble) of the repository to tune.")
@click.option(
    "--cores",
    type=click.IntRange(1, 1024),
    default=None,
    help="Cores the server may use: ONNX Runtime instances x threads never exceed it. "
    "[default: the cores this process may run on]",
)
@click.option(
    "--max-p99-ms",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Latency limit: the best throughput among load levels with p99 within it.",
)
@click.option(
    "--exhaustive", is_flag=True, help="Measure the full grid instead of the quick search."
)
@click.option(
    "--compare",
    multiple=True,
    metavar="PLAN",
    help="Instead of searching, measure these plans side by side, interleaved (repeatable; "
    "labels as in the report, e.g. 'fp32 i1xt2 p1 b8 q0').",
)
@_remeasure_option(
    "--rounds",
    2,
    "Interleaved rounds for --compare, and for re-measuring a search's finalists "
    "(0: trust one measurement each); the best median wins.",
    lowest=0,
)
@_remeasure_option(
    "--finalists", 3, "How many of a search's best plans are re-measured side by side.", lowest=1
)
@click.option("--apply", "apply_winner", is_flag=True, help="Write the winner into the repository.")
@options.deprecated_option("--revert", "tune revert", REVERT_COMMAND)
@click.option(
    "--variants",
    default=None,
    help=f"Comma-separated variants to try ({', '.join(VARIANT_KEYS)}). [default: every one the "
    "repository has]",
)
@click.option(
    "--preprocess-instances",
    "preprocess",
    callback=_int_list,
    default=None,
    help="Preprocessing instance counts to try, e.g. 1,2. [default: 1 and 2 (up to --cores)]",
)
@click.option(
    "--batch-sizes",
    callback=_int_list,
    default="1,4,8",
    show_default=True,
    help="Max batch sizes to try.",
)
@click.option(
    "--queue-delays-us",
    callback=_int_list,
    default="0,2000",
    show_default=True,
    help="Dynamic-batching queue delays to try (microseconds).",
)
@options.concurrency_range_option(
    "2:8:6", "perf_analyzer concurrency levels START:END:STEP, the same for every plan."
)
@options.measurement_interval_option(2000, "perf_analyzer window (ms).")
@options.max_trials_option(6)
@options.images_option("Folder of images sent to the ensemble (default: generated 500x375 JPEGs).")
@options.max_images_option(8)
@options.out_option("Report folder (default reports/tune-<time>).")
def tune(
    repository: Path,
    name: str,
    cores: int | None,
    max_p99_ms: float | None,
    exhaustive: bool,
    compare: tuple[str, ...],
    rounds: int,
    finalists: int,
    apply_winner: bool,
    revert: bool,
    variants: str | None,
    preprocess: tuple[int, ...],
    batch_sizes: tuple[int, ...],
    queue_delays_us: tuple[int, ...],
    concurrency: str,
    interval_ms: int,
    max_trials: int,
    images: Path | None,
    max_images: int,
    out: Path | None,
) -> None:
    """Measure serving plans of a classifier on this machine and report the best.

    Each plan (ONNX Runtime instances x intra-op threads, preprocessing instances, max batch
    size, queue delay, variant) runs in its own embedded server on a scratch copy of the
    repository, under a perf_analyzer sweep of the model clients call with real JPEGs. The
    repository is
    changed only by --apply (atomically, with a backup that `tune revert` restores).
    """
    if click.get_current_context().invoked_subcommand is not None:
        return  # `tune revert`: the search's options do not apply
    if revert:
        _revert(repository)
        return
    from resnet18_triton.perf.perf_analyzer import SweepSettings
    from resnet18_triton.perf.tune.repository import (
        available_variants,
    )
    from resnet18_triton.perf.tune.search import TunePlan, run_tune
    from resnet18_triton.perf.tune.space import SearchSpace, parse_label
    from resnet18_triton.repository.configs.settings import available_cores

    _check_ready(repository)
    cores = cores or available_cores()
    present = available_variants(repository, name)
    plans = tuple(parse_label(label) for label in compare)
    space = SearchSpace(
        cores=cores,
        variants=_chosen_variants(variants, plans, present, repository),
        preprocess_instances=preprocess or tuple(range(1, min(2, cores) + 1)),
        max_batch_sizes=batch_sizes,
        queue_delays_us=queue_delays_us,
    )
    plan = TunePlan(
        repository=repository,
        out=out or Path("reports") / f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
        space=space,
        images=_images(images, max_images),
        sweep=SweepSettings(
            concurrency=concurrency, measurement_interval_ms=interval_ms, max_trials=max_trials
        ),
        max_p99_ms=max_p99_ms,
        exhaustive=exhaustive,
        name=name,
        compare=plans,
        rounds=rounds,
        finalists=finalists,
    )
    result = run_tune(plan, echo=lambda text: click.echo(text, err=True))
    winner = result.winner
    click.echo(
        f"winner: {winner.candidate.label} ({result.winner_score:.1f} img/s); "
        f"{len(result.measurements)} plans in {result.seconds / 60:.1f} min; "
        f"report: {result.report}"
    )
    if apply_winner:
        _apply(repository, winner.candidate, cores, name)


def _check_ready(repository: Path) -> None:
    """Refuse a repository nothing was exported into, and a machine without tritonserver, before
    the first plan: each plan runs in its own server, so fail now, not once per plan."""
    from resnet18_triton.errors import TuneError
    from resnet18_triton.server.embedded import TritonInstall

    missing = missing_files(repository)
    if missing:
        raise TuneError(
            f"the model repository {repository} is not ready ({missing[0]} is missing): run "
            "`resnet18-triton export` first"
        )
    TritonInstall.locate()


def _chosen_variants(
    requested: str | None,
    plans: tuple[Candidate, ...],
    present: tuple[str, ...],
    repository: Path,
) -> tuple[str, ...]:
    """The variants to measure: those of the ``--compare`` plans, else the comma-separated
    ``--variants``, else every one the repository has (``present``). One the repository lacks is
    a usage error naming the commands that write each variant."""
    chosen = tuple(v.strip() for v in requested.split(",")) if requested else present
    if plans:
        chosen = tuple(dict.fromkeys(plan.variant for plan in plans))
    absent = [v for v in chosen if v not in present]
    if absent:
        raise click.BadParameter(
            f"{', '.join(absent)} not in {repository} (it has {', '.join(present)}); "
            + "; ".join(
                f"`resnet18-triton {variant.write_command}` writes {variant.key}"
                for variant in registry.REGISTRY
            ),
            param_hint="--variants",
        )
    return chosen


def _images(folder: Path | None, max_images: int) -> tuple[Path, ...]:
    """The images every plan is measured with: up to ``max_images`` from ``folder`` (a usage
    error when it has none), else that many generated 500x375 JPEGs."""
    from resnet18_triton.perf import images as image_sets

    if folder is None:
        generated = Path("reports") / "images" / "500x375"
        return tuple(image_sets.jpeg_set(generated, image_sets.TYPICAL_SIZE, max_images))
    files = image_sets.read_folder(folder, max_images)
    if not files:
        raise click.BadParameter(f"no images in {folder}", param_hint="--images")
    return tuple(files)


def _apply(repository: Path, winner: Candidate, cores: int, name: str) -> None:
    """Write the winning plan into the repository and say what clients and operators do next."""
    from resnet18_triton.perf.tune.repository import apply_plan, variant_models
    from resnet18_triton.repository.configs.parser import repository_settings
    from resnet18_triton.repository.configs.settings import describe_queue

    backup = apply_plan(repository, winner, cores, name)
    click.echo(
        f"applied to {repository} (previous configs kept in {backup}; "
        f"`{REVERT_COMMAND}` restores them); restart the server"
    )
    click.echo(f"serving with {describe_queue(repository_settings(repository, cores, name))}")
    ensemble = variant_models(name, winner.variant).ensemble
    if ensemble != name:
        click.echo(f"the winner is the {winner.variant} variant: clients ask {ensemble}")


@tune.command("revert")
@options.repository_option("Model repository an earlier `tune --apply` changed.")
def revert_command(repository: Path) -> None:
    """Restore the configs an earlier `tune --apply` replaced.

    Byte for byte, from the backup --apply kept, which is then deleted; restart the server to
    serve them.
    """
    chosen = options.given_here_or_above(click.get_current_context(), "repository")
    assert isinstance(chosen, Path)
    _revert(chosen)


def _revert(repository: Path) -> None:
    """Put back the configs ``tune --apply`` replaced in ``repository`` and say which."""
    from resnet18_triton.perf.tune.repository import revert

    restored = revert(repository)
    click.echo(f"restored {', '.join(restored)} in {repository} (restart the server)")
