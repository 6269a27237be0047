"""Every registered variant, written by its real command and checked as served, on any CPU.

``serving_matrix(flags)`` pairs each variant of ``repository.variants.REGISTRY`` with every
precision this CPU serves it at (``variants.precisions_on``): OpenVINO at f32 everywhere and at
bf16 where it is native, INT8 with or without VNNI. Each precision gets a classifier of its own,
the digits model of ``tests.digits`` exported as ``<precision>digits``, and the commands that
write its variants run on it (``WRITERS``), so one repository and one server hold the whole
matrix. A variant declared in the registry and written by a command listed here is served and
checked with no code of its own.

The reference for a served answer is the variant's engine run in this process on the variant's
model file, compiled from its written config, fed torchvision's resize and crop
(``TorchReference.pixels``), not the server's preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from resnet18_triton import contract, cpu_flags
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.repository import variants
from resnet18_triton.repository.variants import Variant
from tests.digits import digits_model, export_repository, write_images

# Held-out digits each writer's fidelity gate compares with FP32: the gates themselves are
# tested on 100 (tests/unit/test_quantize.py, test_openvino.py); here they only have to pass.
GATE_IMAGES = 48
GATE_MIN_AGREEMENT = "0.9"


@dataclass(frozen=True)
class ServedVariant:
    """One cell of the matrix: ``variant`` at ``precision``, as classifier ``names`` serves it."""

    variant: Variant
    precision: str
    names: ClassifierNames

    @property
    def id(self) -> str:
        return f"{self.variant.key}-{self.precision}"

    @property
    def models(self) -> tuple[str, ...]:
        return self.variant.models(self.names)

    @property
    def entry(self) -> str:
        return self.variant.entry(self.names)


def classifier_for(precision: str) -> ClassifierNames:
    """``int8digits``, ``f32digits``, ...: a name no variant suffix ends (``digits_int8`` would
    read as the INT8 variant of a classifier ``digits``)."""
    return ClassifierNames.of(f"{precision}digits")


def serving_matrix(flags: frozenset[str]) -> list[ServedVariant]:
    """Every registered variant at every precision a CPU with ``flags`` serves it at."""
    return [
        ServedVariant(variant, precision, classifier_for(precision))
        for variant in variants.REGISTRY
        for precision in variants.precisions_on(variant, flags)
    ]


def one_precision_each(names: ClassifierNames, flags: frozenset[str]) -> list[ServedVariant]:
    """Every registered variant once, as classifier ``names`` serves it, at the precision a
    writer picks by default on this CPU (``cpu_flags.default_precision`` where the variant can
    be built at it: bf16 where native, else f32; INT8's own otherwise)."""
    preferred = cpu_flags.default_precision(flags)
    cells = []
    for variant in variants.REGISTRY:
        served = variants.precisions_on(variant, flags)
        cells.append(ServedVariant(variant, preferred if preferred in served else served[0], names))
    return cells


def _invoke(command, args: list[str]) -> None:
    result = CliRunner().invoke(command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _write_int8(repo: Path, names: ClassifierNames, precision: str, images: Path) -> None:
    from resnet18_triton.export.cli.quantize import quantize

    _invoke(quantize, ["--repo", str(repo), "--name", names.name,
                       "--calibration-images", str(images), "--eval-images", str(images),
                       "--min-agreement", GATE_MIN_AGREEMENT])  # fmt: skip


def _write_openvino(repo: Path, names: ClassifierNames, precision: str, images: Path) -> None:
    from resnet18_triton.export.cli.openvino import openvino

    _invoke(openvino, ["--repo", str(repo), "--name", names.name, "--precision", precision,
                       "--eval-images", str(images),
                       "--min-agreement", GATE_MIN_AGREEMENT])  # fmt: skip


def _write_fused_export(repo: Path, names: ClassifierNames, precision: str, images: Path) -> None:
    """``export --fused`` of the digits model (the command's library form: the model is in
    memory, not a checkpoint file)."""
    export_repository(digits_model()[0], repo, name=names.name, fused=True)


# The command that writes a variant -> how the tests run it on one classifier at one precision.
WRITERS: dict[str, Callable[[Path, ClassifierNames, str, Path], None]] = {
    "export": _write_fused_export,
    "quantize": _write_int8,
    "openvino": _write_openvino,
}


def write_matrix(repo: Path, matrix: list[ServedVariant], work: Path) -> Path:
    """Export the digits classifier of each cell of ``matrix`` into ``repo``, unless ``repo``
    holds it, and run, in registry order (INT8 before an OpenVINO int8 that reads its file),
    each command writing its cells' variants, unless ``repo`` holds them all."""
    from resnet18_triton.repository.layout import classifiers

    model, splits, _ = digits_model()
    images = write_images(work / "gate_images", splits["held_out"][0][:GATE_IMAGES])
    for names in dict.fromkeys(cell.names for cell in matrix):
        cells = [cell for cell in matrix if cell.names == names]
        if names not in classifiers(repo):
            # One export writes the classifier and, when a cell needs it, its fused model.
            fused = any(cell.variant.written_by == "export" for cell in cells)
            export_repository(model, repo, name=names.name, fused=fused)
        for command in dict.fromkeys(cell.variant.written_by for cell in cells):
            written = [cell for cell in cells if cell.variant.written_by == command]
            if not all(cell.variant in variants.present(repo, names) for cell in written):
                WRITERS[command](repo, names, written[0].precision, images)
    return repo


def classifier_config(repo: Path, cell: ServedVariant) -> dict:
    """The written config (JSON form) of the model that runs ``cell``'s model file."""
    from resnet18_triton.repository.configs.parser import as_json, read_config

    return as_json(read_config(repo, cell.variant.classifier(cell.names)))


def in_process_probabilities(repo: Path, cell: ServedVariant, pixels: np.ndarray) -> np.ndarray:
    """PROBABILITIES of ``cell``'s model file for uint8 ``pixels`` [N, 3, S, S], one image per
    run (as the tests send them), on the variant's engine in this process."""
    path = cell.variant.model_path(repo, cell.names)
    if cell.variant.engine == "openvino":
        from resnet18_triton.export.openvino_variant import openvino_backend

        backend = openvino_backend()
        request = backend.compile_model(str(path), classifier_config(repo, cell))
        infer = request.create_infer_request()
        run = lambda image: backend.infer(  # noqa: E731
            infer, {contract.ONNX_INPUT: image}, [contract.ONNX_PROBABILITIES]
        )[0]
    else:
        from resnet18_triton.export.fidelity import session

        ort = session(path)
        run = lambda image: ort.run([contract.ONNX_PROBABILITIES], {contract.ONNX_INPUT: image})[0]  # noqa: E731
    return np.concatenate([run(image[None]) for image in pixels])
