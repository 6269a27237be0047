"""``resnet18-triton openvino``: serve a classifier with OpenVINO (bf16, f32, int8) if faithful.

Writes ``NAME_openvino`` and ``NAME_openvino_ensemble`` (``resnet18_openvino`` and
``resnet18_openvino_ensemble`` for the default classifier) into the repository after the fidelity
gate of ``export.openvino_variant``. BF16 is offered only on CPUs with native bfloat16.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from resnet18_triton.cpu_flags import (
    BF16_FLAGS,
    INT8_FLAGS,
    PRECISIONS,
    check_precision,
    cpu_flags,
    default_precision,
    has_fast_int8,
    present,
)
from resnet18_triton.export.fidelity import DEFAULT_MIN_AGREEMENT
from resnet18_triton.export.gate_output import shown_gate
from resnet18_triton.export.openvino_variant import build_openvino_variant
from resnet18_triton.export.quantize import (
    image_files,
    preprocess_files,
    served_preprocessing,
)
from resnet18_triton.options import (
    fidelity_gate_options,
    image_folder_option,
    name_option,
    repository_option,
)
from resnet18_triton.repository import variants
from resnet18_triton.repository.writer import held_classifier


def choose_precision(requested: str, flags: frozenset[str]) -> tuple[str, str | None]:
    """The precision to build and a note for the user (None when nothing needs saying).

    ``auto`` picks bf16 where the CPU has native bfloat16, else f32; an explicit ``bf16`` on a
    CPU without it is refused (PrecisionUnavailableError).
    """
    if requested == "auto":
        chosen = default_precision(flags)
        if chosen != "bf16":
            return chosen, (
                f"this CPU has no native bfloat16 ({' or '.join(BF16_FLAGS)}); "
                f"building the {chosen} variant instead"
            )
        return chosen, None
    check_precision(requested, flags)
    if requested == "int8" and not has_fast_int8(flags):
        return requested, (
            f"this CPU has none of {', '.join(INT8_FLAGS)}: INT8 may not be faster than f32 here"
        )
    return requested, None


@click.command("openvino")
@repository_option(
    "Model repository holding the exported FP32 model (and, for int8, the INT8 one)."
)
@name_option(
    "Classifier to serve with OpenVINO; its models are NAME_openvino and NAME_openvino_ensemble."
)
@click.option(
    "--precision",
    type=click.Choice(["auto", *PRECISIONS]),
    default="auto",
    show_default=True,
    help="bf16 (needs avx512_bf16 or amx_bf16), f32, or int8 (the QDQ model of "
    "`resnet18-triton quantize`). auto: bf16 where the CPU has it, else f32.",
)
@image_folder_option(
    "--eval-images",
    "Folder of held-out images (JPEG, PNG, ...) for the fidelity report against FP32.",
    required=True,
)
@fidelity_gate_options(
    "the variant",
    "Write the figures (precision, fidelity) as JSON to this file.",
    DEFAULT_MIN_AGREEMENT,
)
def openvino(
    repository: Path,
    name: str,
    precision: str,
    eval_images: Path,
    min_agreement: float,
    force: bool,
    report_path: Path | None,
) -> None:
    """Serve a classifier with OpenVINO (NAME_openvino), beside ONNX Runtime."""
    flags = cpu_flags()
    chosen, note = choose_precision(precision, flags)
    if note:
        click.secho(f"note: {note}", err=True, fg="yellow")
    found = ", ".join(present(BF16_FLAGS + INT8_FLAGS, flags)) or "none"
    names = held_classifier(repository, name)
    preprocess, transform = served_preprocessing(repository, names.preprocess)
    held_out = preprocess_files(image_files(eval_images), preprocess, transform)
    click.echo(
        f"OpenVINO {chosen}: comparing with FP32 on {len(held_out)} held-out images "
        f"(CPU flags: {found})",
        err=True,
    )
    report = shown_gate(
        lambda: build_openvino_variant(
            repository, chosen, held_out, min_agreement, force, names=names
        ),
        min_agreement,
    )
    if report_path is not None:
        figures = {"precision": chosen, "fidelity": json.loads(report.to_json())}
        report_path.write_text(json.dumps(figures, indent=2) + "\n")
    click.echo(
        f"OpenVINO {chosen} model ready: {variants.OPENVINO.model_path(repository, names)}; "
        f"serve it with `resnet18-triton serve` and classify with --model "
        f"{variants.OPENVINO_FUSED.entry(names)} (the faster path) or --model "
        f"{variants.OPENVINO.entry(names)}",
        err=True,
    )
