"""``resnet18-triton export``: weights -> ONNX -> verification -> a filled model repository.

A thin layer over ``export.pipeline``: every option's default comes from ``ExportRequest``,
``Preprocessing`` or ``ServingSettings`` (whose options come from ``export.serving_options``),
and the repository changes only once the export is verified.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from resnet18_triton.export.onnx_export import MIN_OPSET
from resnet18_triton.export.pipeline import (
    ExportRequest,
    check_name_free,
    check_not_served,
    export_repository,
    load_model,
)
from resnet18_triton.export.serving_options import serving_options, serving_settings
from resnet18_triton.options import default_of, labels_option, name_option, repository_option
from resnet18_triton.repository import variants
from resnet18_triton.repository.classifier import (
    INTERPOLATIONS,
    RESIZE_STRAIGHT,
    Preprocessing,
    classifier_names,
)
from resnet18_triton.repository.configs.settings import (
    ServingSettings,
    describe_queue,
)


def _request_default(name: str) -> object:
    return default_of(ExportRequest, name)


def _preprocessing_default(name: str) -> Any:
    return default_of(Preprocessing, name)


def _triple_text(values: tuple[float, ...]) -> str:
    return ",".join(f"{value:g}" for value in values)


def _parse_triple(text: str, option: str) -> tuple[float, float, float]:
    """``"0.5,0.5,0.5"`` -> (0.5, 0.5, 0.5); one value is used for all three channels."""
    try:
        values = tuple(float(item) for item in text.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not 1 or 3 comma-separated numbers", param_hint=option
        ) from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise click.BadParameter(f"{text!r} needs 1 or 3 values (R,G,B)", param_hint=option)
    return values


F = TypeVar("F", bound=Callable[..., object])


def _per_channel_option(field: str, help: str) -> Callable[[F], F]:
    """``--FIELD`` (``R,G,B``) as text, which ``_parse_triple`` reads: the per-channel values of
    ``Preprocessing`` field ``field``, by default that field's."""
    return click.option(
        f"--{field}",
        default=_triple_text(_preprocessing_default(field)),
        show_default=True,
        metavar="R,G,B",
        help=help,
    )


def _preprocessing(
    input_size: int, resize_size: int, mean: str, std: str, interpolation: str
) -> Preprocessing:
    """The preprocessing the options ask for; ``mean`` and ``std`` as ``--mean`` and ``--std``
    spell them (a usage error when malformed)."""
    return Preprocessing(
        resize_size=resize_size,
        input_size=input_size,
        mean=_parse_triple(mean, "--mean"),
        std=_parse_triple(std, "--std"),
        interpolation=interpolation,
    )


def _repository_ready(repository: Path, settings: ServingSettings) -> str:
    """The line saying the repository is ready, with the core budget and queues it serves with."""
    return (
        f"model repository ready: {repository} ({settings.onnx_instances} ONNX Runtime "
        f"instance(s) x {settings.intra_op_threads} intra-op threads on a {settings.cores}-core "
        f"budget; {describe_queue(settings)})"
    )


@click.command("export")
@click.option(
    "--weights",
    default=_request_default("weights"),
    show_default=True,
    metavar="{imagenet,random,PATH}",
    help="Pretrained ImageNet weights (downloaded once), seeded random weights, or a local "
    "ResNet-18 checkpoint: a state dict (any class count; nested under state_dict/model; "
    "module./model. prefixes), a TorchScript module, or an ONNX file with an [N,3,S,S] input.",
)
@name_option(
    "Classifier name: its ensemble is NAME, its other models NAME_preprocess and NAME_onnx "
    "(the default name keeps preprocess and resnet18_onnx). Other classifiers in the repository "
    "are left as they are."
)
@labels_option(
    "Class labels: one per line, a JSON list, or an ImageFolder class_to_idx JSON mapping; "
    "exactly one per class. Default: ImageNet's for 1000 classes, else class_0..class_N-1."
)
@click.option(
    "--input-size",
    default=_preprocessing_default("input_size"),
    show_default=True,
    type=click.IntRange(8, 4096),
    help="Side of the square image the model takes (and the crop size).",
)
@click.option(
    "--resize-size",
    default=_preprocessing_default("resize_size"),
    show_default=True,
    type=click.IntRange(1),
    help="Resize the shorter side to this, then centre-crop --input-size.",
)
@click.option(
    "--resize-straight",
    is_flag=True,
    help="Resize the whole image straight to --input-size x --input-size instead (no crop, "
    "aspect ratio not kept).",
)
@_per_channel_option("mean", "Per-channel mean subtracted after scaling pixels to [0, 1].")
@_per_channel_option("std", "Per-channel standard deviation divided by after subtracting the mean.")
@click.option(
    "--interpolation",
    type=click.Choice(INTERPOLATIONS),
    default=_preprocessing_default("interpolation"),
    show_default=True,
)
@click.option(
    "--seed",
    default=_request_default("seed"),
    show_default=True,
    type=int,
    help="Seed for --weights random.",
)
@repository_option("Model repository to fill.")
@click.option(
    "--opset",
    default=_request_default("opset"),
    show_default=True,
    type=click.IntRange(MIN_OPSET),
    help="ONNX opset (the dynamo exporter starts at 18; 17 uses the TorchScript exporter).",
)
@click.option(
    "--atol",
    default=_request_default("atol"),
    show_default=True,
    type=click.FloatRange(0, 1e-3),
    help="Largest absolute logit difference ONNX Runtime may show against PyTorch.",
)
@serving_options
@click.option(
    "--fused",
    is_flag=True,
    help="Also write NAME_fp32_fused: the ensemble's two steps (decode and preprocess, then "
    "ONNX Runtime FP32) in one Python-backend model, beside the ensemble, with the "
    "classifier's cores as that many one-thread instances (docs/variants.md).",
)
def export(
    weights: str,
    name: str,
    labels: Path | None,
    input_size: int,
    resize_size: int,
    resize_straight: bool,
    mean: str,
    std: str,
    interpolation: str,
    seed: int,
    repository: Path,
    opset: int,
    atol: float,
    fused: bool,
    **setting_values: Any,
) -> None:
    """Export a ResNet-18 classifier to ONNX, check it and add it to the Triton model repository.

    Re-exporting a classifier replaces only its own models; the others stay byte-identical.
    """
    settings = serving_settings(setting_values)
    preprocessing = _preprocessing(
        input_size, RESIZE_STRAIGHT if resize_straight else resize_size, mean, std, interpolation
    )
    request = ExportRequest(
        repository=repository,
        weights=weights,
        seed=seed,
        opset=opset,
        atol=atol,
        settings=settings,
        name=name,
        labels=labels,
        preprocessing=preprocessing,
        fused=fused,
    )
    check_name_free(repository.resolve(), classifier_names(name))
    check_not_served(repository.resolve(), classifier_names(name))
    loaded = load_model(request)
    click.echo(f"weights: {loaded.provenance.describe()}", err=True)
    result = export_repository(request, loaded)
    classifier = result.classifier
    click.echo(f"verified: {result.verification.summary()}", err=True)
    click.echo(
        f"classifier {classifier.names.name!r}: {classifier.num_classes} classes, "
        f"{preprocessing.describe()}",
        err=True,
    )
    if result.default_labels:
        click.secho(
            f"WARNING: no --labels: the {classifier.num_classes} classes are labelled class_0.."
            f"class_{classifier.num_classes - 1}",
            err=True,
            fg="yellow",
        )
    click.echo(_repository_ready(result.repository, settings), err=True)
    if fused:
        fused_model = variants.FP32_FUSED.entry(classifier.names)
        click.echo(
            f"fused FP32 model ready: {fused_model} (classify --model {fused_model})", err=True
        )
    if loaded.provenance.is_random:
        click.secho(
            "WARNING: random weights - served labels are meaningless (use --weights imagenet "
            "or --weights PATH for real predictions)",
            err=True,
            fg="yellow",
            bold=True,
        )
