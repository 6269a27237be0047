"""``resnet18-triton quantize``: the exported FP32 model -> a calibrated INT8 variant, if faithful.

Reads a classifier's ``<repo>/<NAME>_onnx/1/model.onnx`` (``--name``, default ``resnet18``),
calibrates on a folder of images passed through that classifier's served preprocessing, compares
INT8 with FP32 on held-out images and, unless the top-1 agreement is below ``--min-agreement``
(and ``--force`` is not given), writes ``<repo>/<NAME>_int8/1/model.onnx`` with the configs and
labels of ``<NAME>_int8``, ``<NAME>_int8_ensemble`` and ``<NAME>_int8_fused`` (the ensemble's
two steps in one Python-backend process, ``server/models/fused``). The INT8 model and configs are
built in a staging directory and swapped in together (``repository.transaction``): a refused
model, an error or an interrupted run leaves the repository untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from resnet18_triton.contract import DEFAULT_CLASSIFIER, ClassifierNames
from resnet18_triton.errors import QuantizationRefused
from resnet18_triton.export.fidelity import (
    DEFAULT_MIN_AGREEMENT,
    FidelityReport,
    measure_fidelity,
    measure_speed,
)
from resnet18_triton.export.gate_output import shown_gate
from resnet18_triton.export.quantize import (
    CALIBRATION_METHODS,
    QUANTIZATION_PARAMETER,
    PreprocessedImageReader,
    QuantizationRecipe,
    cpu_int8_flags,
    image_files,
    preprocess_files,
    quantize_model,
    served_preprocessing,
    split_holdout,
)
from resnet18_triton.options import (
    fidelity_gate_options,
    image_folder_option,
    name_option,
    repository_option,
)
from resnet18_triton.repository import variants
from resnet18_triton.repository.layout import onnx_model_path
from resnet18_triton.repository.transaction import remove_stale_staging, staging_directory
from resnet18_triton.repository.writer import held_classifier, install_variant


def held_classifier_input_size(repository: Path, names: ClassifierNames) -> int:
    """The image side classifier ``names`` takes, from its preprocess config."""
    _, transform = served_preprocessing(repository, names.preprocess)
    return int(transform.input_size)


def quantize_repository(
    repository: Path,
    calibration_files: list[Path],
    eval_files: list[Path],
    recipe: QuantizationRecipe,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    force: bool = False,
    name: str = DEFAULT_CLASSIFIER,
) -> FidelityReport:
    """Library form of the command for classifier ``name``; returns the FidelityReport. Its
    images go through that classifier's own preprocessing. Raises QuantizationRefused, or
    RepositoryError for a classifier the repository does not hold."""
    names = held_classifier(repository, name)
    preprocess, transform = served_preprocessing(repository, names.preprocess)
    fp32_path = onnx_model_path(repository, names.onnx)
    reader = PreprocessedImageReader.from_files(
        calibration_files, preprocess, recipe.calibration_batch_size, transform
    )
    held_out = preprocess_files(eval_files, preprocess, transform)
    recipe = recipe.resolved()
    repository = repository.resolve()
    remove_stale_staging(repository)
    with staging_directory(repository) as staging:
        target = variants.INT8.model_path(staging, names)
        candidate = quantize_model(fp32_path, target, reader, recipe)
        report = measure_fidelity(fp32_path, candidate, held_out)
        if not report.passes(min_agreement) and not force:
            raise QuantizationRefused(
                f"INT8 top-1 agreement with FP32 is {report.top1_agreement:.2%} on "
                f"{report.num_images} held-out images, below the required {min_agreement:.2%}; "
                "nothing was written. Try --method entropy or percentile, more calibration "
                "images, --per-channel, or --force to write it anyway.",
                report,
            )
        parameters = {QUANTIZATION_PARAMETER: recipe.to_json(), "fidelity": report.to_json()}
        install_variant(repository, staging, variants.INT8, names, parameters)
    return report


@click.command("quantize")
@repository_option("Model repository holding the exported FP32 model.")
@name_option(
    "Classifier to quantise; its INT8 models are NAME_int8, NAME_int8_ensemble and NAME_int8_fused."
)
@image_folder_option(
    "--calibration-images",
    "Folder of representative images (JPEG, PNG, ...), preprocessed exactly like "
    "the server does. Without --eval-images every 5th is held out for the report.",
    required=True,
)
@image_folder_option("--eval-images", "Separate folder of held-out images for the fidelity report.")
@click.option(
    "--max-calibration-images",
    default=64,
    show_default=True,
    type=click.IntRange(1),
    help="Use at most this many calibration images (the first by name); calibration holds "
    "~24 MB of activations per image in memory.",
)
@click.option(
    "--per-channel/--per-tensor",
    default=True,
    show_default=True,
    help="Weight scales per output channel or per tensor.",
)
@click.option(
    "--reduce-range",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="7-bit weights, recommended by ONNX Runtime on CPUs without VNNI (U8S8 can "
    "saturate there). auto: on unless this CPU has VNNI or AMX.",
)
@click.option(
    "--method",
    type=click.Choice(sorted(CALIBRATION_METHODS)),
    default="minmax",
    show_default=True,
    help="Calibration method for the activation ranges.",
)
@click.option(
    "--quantize-head/--fp32-head",
    default=False,
    show_default=True,
    help="Also quantise the final fully connected layer (by default it stays FP32: "
    "quantising it cost 9 points of top-1 agreement on a fitted model).",
)
@click.option(
    "--benchmark",
    is_flag=True,
    help="Also time FP32 and INT8 in-process (ONNX Runtime, batch 1 and 8).",
)
@fidelity_gate_options(
    "the INT8 model",
    "Write the figures (recipe, fidelity, with --benchmark the speed) as JSON to this file.",
    DEFAULT_MIN_AGREEMENT,
)
def quantize(
    repository: Path,
    name: str,
    calibration_images: Path,
    eval_images: Path | None,
    max_calibration_images: int,
    per_channel: bool,
    reduce_range: str,
    method: str,
    quantize_head: bool,
    benchmark: bool,
    min_agreement: float,
    force: bool,
    report_path: Path | None,
) -> None:
    """Quantise an exported classifier to INT8 (static, calibrated) and serve it as NAME_int8."""
    names = held_classifier(repository, name)
    files = image_files(calibration_images)
    if eval_images is None:
        calibration, held_out = split_holdout(files)
    else:
        calibration, held_out = files, image_files(eval_images)
    calibration = calibration[:max_calibration_images]
    recipe = QuantizationRecipe(
        per_channel=per_channel,
        reduce_range={"auto": None, "on": True, "off": False}[reduce_range],
        method=method,
        quantize_head=quantize_head,
    ).resolved()
    flags = ", ".join(cpu_int8_flags()) or "none"
    click.echo(
        f"quantising: {recipe.to_json()} (CPU INT8 flags: {flags}); calibrating on "
        f"{len(calibration)} images, evaluating on {len(held_out)} held-out images",
        err=True,
    )
    report = shown_gate(
        lambda: quantize_repository(
            repository, calibration, held_out, recipe, min_agreement, force, name
        ),
        min_agreement,
    )
    figures = {
        "classifier": name,
        "recipe": json.loads(recipe.to_json()),
        "fidelity": json.loads(report.to_json()),
    }
    if benchmark:
        speed = measure_speed(
            {
                "fp32": onnx_model_path(repository, names.onnx),
                "int8": variants.INT8.model_path(repository, names),
            },
            input_size=held_classifier_input_size(repository, names),
        )
        figures["speed_ms_per_image"] = [vars(figure) for figure in speed]
        click.echo("| batch | FP32 ms/img | INT8 ms/img | speed-up |\n|---|---|---|---|")
        for batch_size in sorted({f.batch_size for f in speed}):
            by_model = {f.model: f.ms_per_image for f in speed if f.batch_size == batch_size}
            click.echo(
                f"| {batch_size} | {by_model['fp32']:.1f} | {by_model['int8']:.1f} | "
                f"{by_model['fp32'] / by_model['int8']:.2f}x |"
            )
    if report_path is not None:
        report_path.write_text(json.dumps(figures, indent=2) + "\n")
    click.echo(
        f"INT8 model ready: {variants.INT8.model_path(repository, names)}; serve it with "
        f"`resnet18-triton serve` and classify with --model {variants.INT8_FUSED.entry(names)} "
        f"(the faster path) or --model {variants.INT8.entry(names)}",
        err=True,
    )
