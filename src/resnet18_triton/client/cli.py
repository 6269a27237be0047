"""The ``classify`` and ``health`` subcommands (imported lazily by ``cli.py``).

Output goes to stdout (a table, or one JSON object per line with ``--json``) so that it can be
piped; progress, warnings and summaries go to stderr. Exit status: 0 all fine, 1 some images
failed or some model is not ready, 2 usage error or server unreachable (see ``cli.main``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from resnet18_triton import contract
from resnet18_triton.client import probe as probe_module
from resnet18_triton.client.api import ImageClassifier
from resnet18_triton.client.error_map import OVERLOAD_ERROR_PREFIX
from resnet18_triton.client.inputs import expand_inputs
from resnet18_triton.client.policies import OverloadPolicy
from resnet18_triton.client.results import ClassificationResult, HealthReport, result_to_json
from resnet18_triton.errors import ExitCode, NoImagesError, ResNet18TritonError
from resnet18_triton.keys import admin_key_from, api_key_from
from resnet18_triton.options import (
    answer_timeout_option,
    api_key_file_option,
    ca_file_option,
    client_concurrency_option,
    url_option,
)

# A health check is a few small requests: a server slower than this is not healthy.
HEALTH_TIMEOUT = 10.0
# Below this many images the results themselves show the progress.
PROGRESS_MIN_IMAGES = 10


@click.command("classify")
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE_OR_DIR_OR_GLOB...")
@url_option()
@click.option("--model", default=contract.ENSEMBLE_MODEL, show_default=True, help="Model to ask.")
@click.option(
    "--top-k",
    type=click.IntRange(1, contract.NUM_CLASSES),
    default=contract.DEFAULT_TOP_K,
    show_default=True,
    help="Classes to show per image.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Images per request.  [default and maximum: the model's max_batch_size]",
)
@client_concurrency_option(
    "--concurrency", contract.CLIENT_CONCURRENCY, "Requests in flight at once."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image and line.")
@answer_timeout_option(
    contract.REQUEST_TIMEOUT_S, "Seconds to wait for each answer before giving up."
)
@click.option(
    "--overload-retries",
    type=click.IntRange(0, 10),
    default=contract.CLIENT_OVERLOAD_RETRIES,
    show_default=True,
    help="Times to resend a request the server refused as overloaded (HTTP 429, or 503 from a "
    "full queue), after a random wait that doubles each time and honours Retry-After; 0 disables.",
)
@api_key_file_option()
@ca_file_option()
@click.option("-r", "--recursive", is_flag=True, help="Also take images from subdirectories.")
@click.option("--no-progress", is_flag=True, help="Never show a progress bar.")
@click.option(
    "--max-file-bytes",
    type=click.IntRange(min=1),
    default=contract.MAX_IMAGE_BYTES,
    show_default=True,
    help="Larger files are reported as errors and not read (default: the server's byte limit).",
)
@click.pass_context
def classify(
    ctx: click.Context,
    inputs: tuple[str, ...],
    url: str,
    model: str,
    top_k: int,
    batch_size: int | None,
    concurrency: int,
    as_json: bool,
    timeout: float,
    recursive: bool,
    no_progress: bool,
    max_file_bytes: int = contract.MAX_IMAGE_BYTES,
    overload_retries: int = contract.CLIENT_OVERLOAD_RETRIES,
    api_key_file: Path | None = None,
    ca_file: Path | None = None,
) -> None:
    """Classify images given as files, directories or (quoted) globs like 'photos/*.jpg'.

    Directories contribute their regular jpg, jpeg, png, bmp, gif, webp, tif and tiff files.
    Only regular files up to --max-file-bytes are read; others are reported per file.

    A request the server refuses as overloaded is sent again up to --overload-retries times;
    an image whose request is still refused gets an error line saying so (then lower
    --concurrency, or add replicas). With --json, an image that needed retries says how many
    ("retries": N). Image and model errors (4xx) are never retried. A 401 stops the run with
    what key to set.

    Exit status: 0 all classified, 1 some images failed, 2 usage error, server unreachable or
    API key missing or refused.
    """
    paths = _expand(inputs, recursive)
    with ImageClassifier(
        url,
        model,
        connection_timeout=min(timeout, contract.CONNECT_TIMEOUT_S),
        network_timeout=timeout,
        concurrency=concurrency,
        overload=OverloadPolicy(retries=overload_retries),
        api_key=api_key_from(api_key_file),
        ca_file=ca_file,
    ) as classifier:
        classifier.ensure_ready()
        _note_batch_size_cap(batch_size, classifier.max_batch_size)
        _warn_if_random_weights(classifier)
        results = classifier.classify_files(
            paths, top_k=top_k, batch_size=batch_size, max_file_bytes=max_file_bytes
        )
        show_progress = not (no_progress or as_json) and _wants_progress(len(paths))
        failed, overloaded = _print_results(results, len(paths), as_json, show_progress)
    if failed:
        click.echo(f"{failed} of {len(paths)} images failed", err=True)
        if overloaded:
            click.echo(overload_summary(overloaded), err=True)
        ctx.exit(ExitCode.SOME_FAILED)


@click.command("health")
@url_option()
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option(
    "--model",
    "classifiers",
    multiple=True,
    help="Also report this classifier (repeatable). All are found without it when the admin key "
    f"is in ${contract.ADMIN_KEY_ENV_VAR} or ${contract.ADMIN_KEY_FILE_ENV_VAR} (the repository "
    "index is an admin API).",
)
@click.option(
    "--probe",
    is_flag=True,
    help="Liveness probe: classify a tiny embedded JPEG through the ensemble (exit 0 or 1).",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=probe_module.DEFAULT_TIMEOUT_S,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds the --probe inference may take.",
)
@api_key_file_option()
@ca_file_option()
@click.pass_context
def health(
    ctx: click.Context,
    url: str,
    as_json: bool,
    classifiers: tuple[str, ...] = (),
    probe: bool = False,
    timeout_s: float = probe_module.DEFAULT_TIMEOUT_S,
    api_key_file: Path | None = None,
    ca_file: Path | None = None,
) -> None:
    """Show server liveness and readiness, each model's state, and each classifier's classes,
    input size, preprocessing and weights provenance.

    Exit status: 0 everything ready, 1 reachable but something not ready, 2 unreachable.
    With --probe: 0 when a real inference through the ensemble succeeded, 1 otherwise.
    Every request carries the inference API key when one is set (--api-key-file or the
    environment).
    """
    if probe:
        _run_probe(ctx, url, as_json, timeout_s, api_key_file, ca_file)
        return
    for name in classifiers:
        try:
            contract.check_classifier_name(name)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--model") from None
    with ImageClassifier(
        url,
        connection_timeout=contract.CONNECT_TIMEOUT_S,
        network_timeout=HEALTH_TIMEOUT,
        api_key=api_key_from(api_key_file),
        ca_file=ca_file,
    ) as classifier:
        report = classifier.health(admin_key=admin_key_from(None), classifiers=classifiers)
    if as_json:
        click.echo(json.dumps(health_to_json(report)))
        if report.random_weights:
            click.echo(random_weights_warning(), err=True)
    else:
        click.echo(format_health(report))
    if not report.all_ready:
        ctx.exit(ExitCode.SOME_FAILED)


def _run_probe(
    ctx: click.Context,
    url: str,
    as_json: bool,
    timeout_s: float,
    api_key_file: Path | None,
    ca_file: Path | None = None,
) -> None:
    try:
        api_key = api_key_from(api_key_file)
    except ResNet18TritonError as error:
        # A probe reports every failure the same way (exit 1), an unsafe key file included.
        result = probe_module.ProbeResult(False, f"{type(error).__name__}: {error}", 0.0)
    else:
        result = probe_module.probe(url, timeout_s=timeout_s, api_key=api_key, ca_file=ca_file)
    if as_json:
        record = {"live": result.ok, "detail": result.detail, "seconds": round(result.seconds, 3)}
        click.echo(json.dumps(record))
    else:
        state = "live" if result.ok else "NOT LIVE"
        click.echo(f"{state}: {result.detail} ({result.seconds * 1000:.0f} ms, {url})")
    if not result.ok:
        ctx.exit(ExitCode.SOME_FAILED)


# --- formatting (pure functions, tested directly) -------------------------------------------


def format_json_line(result: ClassificationResult) -> str:
    """One line of ``result_to_json``: ``{"image": PATH, "top": [...]}`` or with ``error``."""
    return json.dumps(result_to_json(result), ensure_ascii=False)


def format_table(result: ClassificationResult) -> str:
    """The path (with ``(N retries)`` when its request was resent), then one aligned row per
    class: rank, probability, class index, label; or the error."""
    heading = result.path
    if result.retries:
        heading += f"  ({result.retries} {'retry' if result.retries == 1 else 'retries'})"
    if not result.ok:
        return f"{heading}\n  error: {result.error}"
    rank_width = len(str(len(result.predictions)))
    rows = [
        f"  {rank:>{rank_width}}  {p.probability:6.4f}  {p.index:>3}  {p.label}"
        for rank, p in enumerate(result.predictions, start=1)
    ]
    return "\n".join([heading, *rows])


def overload_summary(overloaded: int) -> str:
    """The stderr line after a run in which the server refused ``overloaded`` images."""
    return (
        f"{overloaded} of them refused as overloaded after retries: lower --concurrency, raise "
        "--overload-retries, or add replicas (resnet18-triton cluster --replicas N)"
    )


def format_health(report: HealthReport) -> str:
    """A few lines a person can read at a glance; the random-weights warning is the last."""
    lines = [f"Triton {report.url}  live: {_yes_no(report.live)}  ready: {_yes_no(report.ready)}"]
    name_width = max((len(model.name) for model in report.models), default=0)
    for model in report.models:
        state = "ready" if model.ready else "NOT READY"
        detail = f"versions: {', '.join(model.versions)}" if model.ready else model.detail
        if model.ready and model.precision:
            detail += f"  precision: {model.precision}"
        if model.ready and model.serving:
            detail += "  " + ", ".join(f"{key}: {value}" for key, value in model.serving)
        lines.append(f"  {model.name:<{name_width}}  {state:<9}  {detail}".rstrip())
    for item in report.classifiers:
        settings = item.preprocessing
        resize = (
            "resize straight"
            if settings.get("resize_size") == "0"
            else f"resize {settings.get('resize_size', '?')}, crop {item.input_size}"
        )
        lines.append(
            f"classifier {item.name}: {item.classes} classes, input {item.input_size}x"
            f"{item.input_size} ({resize}, {settings.get('interpolation', '?')}, mean "
            f"{settings.get('mean', '?')}, std {settings.get('std', '?')}), weights "
            f"{describe_provenance(item.provenance) if item.provenance else 'unknown'}"
        )
    if report.provenance is not None:
        lines.append(f"weights: {describe_provenance(report.provenance)}")
    else:
        lines.append(f"weights: unknown ({report.provenance_error})")
    if report.random_weights:
        lines.append(random_weights_warning())
    return "\n".join(lines)


def health_to_json(report: HealthReport) -> dict[str, Any]:
    """The report as plain JSON types, for ``health --json``."""
    return {
        "url": report.url,
        "live": report.live,
        "ready": report.ready,
        "all_ready": report.all_ready,
        "models": [
            {
                "name": m.name,
                "ready": m.ready,
                "versions": list(m.versions),
                "detail": m.detail,
                "precision": m.precision,
                "serving": dict(m.serving),
            }
            for m in report.models
        ],
        "classifiers": [
            {
                "name": item.name,
                "classes": item.classes,
                "input_size": item.input_size,
                "preprocessing": item.preprocessing,
                "provenance": item.provenance,
            }
            for item in report.classifiers
        ],
        "weights_provenance": report.provenance,
        "weights_provenance_error": report.provenance_error,
        "random_weights": report.random_weights,
    }


def describe_provenance(provenance: dict[str, Any]) -> str:
    """``source=random, seed=0``: source first, then every other field that has a value, so
    fields added later show up without a code change."""
    ordered = sorted(provenance.items(), key=lambda item: item[0] != "source")
    return ", ".join(f"{key}={value}" for key, value in ordered if value is not None)


def random_weights_warning() -> str:
    return (
        "WARNING: the served model has RANDOM weights: predictions and labels are meaningless "
        "(export real weights with `resnet18-triton export`)"
    )


# --- helpers --------------------------------------------------------------------------------


def _expand(inputs: Sequence[str], recursive: bool) -> list[Path]:
    try:
        paths = expand_inputs(inputs, recursive=recursive)
    except NoImagesError as error:
        raise click.UsageError(str(error)) from None
    if not paths:
        raise click.UsageError("no images given")
    return paths


def _note_batch_size_cap(requested: int | None, maximum: int) -> None:
    if requested is not None and requested > maximum:
        click.echo(
            f"note: --batch-size {requested} exceeds the model's max_batch_size; using {maximum}",
            err=True,
        )


def _warn_if_random_weights(classifier: ImageClassifier) -> None:
    """Classifying with random weights is legitimate for testing, but should never go unnoticed."""
    try:
        provenance = classifier.weights_provenance()
    except ResNet18TritonError:
        return  # Unknown provenance is shown by `health`; it is no reason to stop classifying.
    if provenance.get("source") == "random":
        click.echo(random_weights_warning(), err=True)


def _wants_progress(total: int) -> bool:
    return total > PROGRESS_MIN_IMAGES and sys.stderr.isatty()


def _print_results(
    results: Iterable[ClassificationResult], total: int, as_json: bool, show_progress: bool
) -> tuple[int, int]:
    """Print each result as it arrives; returns how many images failed, and how many of those
    the server refused as overloaded."""
    # tqdm.write clears the bar before writing, so results and bar share one terminal cleanly.
    emit = tqdm.write if show_progress else click.echo
    failed = overloaded = 0
    with tqdm(total=total, unit="image", file=sys.stderr, disable=not show_progress) as bar:
        for result in results:
            emit(format_json_line(result) if as_json else format_table(result))
            failed += not result.ok
            overloaded += (result.error or "").startswith(OVERLOAD_ERROR_PREFIX)
            bar.update()
    return failed, overloaded


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "NO"
