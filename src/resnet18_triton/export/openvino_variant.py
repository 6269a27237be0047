"""The OpenVINO variant of the classifier: BF16, f32, or the INT8 QDQ model, run by OpenVINO.

``build_openvino_variant`` derives the configs from the FP32 ones in the repository (same
instances, batching, warm-up; threads from the same core budget), compiles the candidate
in-process exactly as the ``openvino`` backend will (its own ``compile_properties``, read from the
config about to be written), compares it with ONNX Runtime FP32 on held-out images
(``export.fidelity``: top-1 agreement, top-5 overlap, probability differences) and, unless the
agreement is below the bar and ``force`` is not set, installs the model file and the configs,
and the variant's fused model (``NAME_openvino_fused``: both ensemble steps in one stub).
The three model directories are built in a staging directory and swapped in by the repository's
transaction (``repository.transaction``), as export and quantize do: a refused variant, an error or
a killed process leaves the repository byte-identical.

The model files: ``bf16`` and ``f32`` serve the verified FP32 ``model.onnx``; ``int8`` serves the
QDQ file written by ``resnet18-triton quantize``. OpenVINO reads ONNX directly, so the file is a
byte copy (no conversion step that could change it).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from resnet18_triton import contract
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.errors import ExportError, VariantRefused
from resnet18_triton.export.fidelity import (
    DEFAULT_MIN_AGREEMENT,
    FidelityReport,
    compare_logits,
    run_logits,
    session,
)
from resnet18_triton.files import write_bytes_atomically
from resnet18_triton.repository import variants
from resnet18_triton.repository.configs.parser import as_json
from resnet18_triton.repository.layout import backend_source, load_model_module, onnx_model_path
from resnet18_triton.repository.transaction import remove_stale_staging, staging_directory
from resnet18_triton.repository.writer import install_variant, variant_model_configs

_BACKEND_MODULE_NAME = "resnet18_triton_openvino_backend"


def openvino_backend() -> ModuleType:
    """The shipped ``openvino`` backend's ``model.py``, imported by path (it needs no server)."""
    return load_model_module(backend_source("openvino"), _BACKEND_MODULE_NAME)


def source_model(repository: Path, precision: str, names: ClassifierNames | None = None) -> Path:
    """The ONNX file the variant of classifier ``names`` (default: the default one) serves: its
    FP32 export, or its INT8 QDQ file for ``int8``."""
    names = names or ClassifierNames.of()
    onnx = variants.INT8.classifier(names) if precision == "int8" else names.onnx
    path = onnx_model_path(repository, onnx)
    if not path.is_file():
        named = "" if names.name == contract.ENSEMBLE_MODEL else f" --name {names.name}"
        step = "resnet18-triton quantize" if precision == "int8" else "resnet18-triton export"
        raise ExportError(f"{path} is missing: run `{step}{named}` first")
    return path


def openvino_logits(
    path: Path, model_config: dict[str, Any], images: NDArray[np.uint8], batch_size: int = 8
) -> NDArray[np.float32]:
    """Logits of ``images`` [N, 3, S, S] (uint8) from OpenVINO compiled as the backend would."""
    backend = openvino_backend()
    request = backend.compile_model(str(path), model_config).create_infer_request()
    chunks = [
        backend.infer(
            request, {contract.ONNX_INPUT: images[i : i + batch_size]}, [contract.ONNX_OUTPUT]
        )[0]
        for i in range(0, len(images), batch_size)
    ]
    result: NDArray[np.float32] = np.concatenate(chunks)
    return result


def build_openvino_variant(
    repository: Path,
    precision: str,
    held_out: NDArray[np.uint8],
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    force: bool = False,
    names: ClassifierNames | None = None,
) -> FidelityReport:
    """Gate and write the variant of classifier ``names`` (default: the default one; see the
    module docstring); ``held_out`` is preprocessed with that classifier's own transform.
    Raises VariantRefused."""
    names = names or ClassifierNames.of()
    fp32_path = onnx_model_path(repository, names.onnx)
    candidate = source_model(repository, precision, names)
    configs = variant_model_configs(repository, variants.OPENVINO, {}, names, precision)
    candidate_logits = openvino_logits(candidate, as_json(configs[0]), held_out)
    report = compare_logits(
        run_logits(session(fp32_path), held_out),
        candidate_logits,
        fp32_path.stat().st_size,
        candidate.stat().st_size,
    )
    if not report.passes(min_agreement) and not force:
        raise VariantRefused(
            f"OpenVINO {precision} top-1 agreement with FP32 is {report.top1_agreement:.2%} on "
            f"{report.num_images} held-out images, below the required {min_agreement:.2%}; "
            "nothing was written. Try --precision f32, or --force to write it anyway.",
            report,
        )
    parameters = {"fidelity": report.to_json()}
    install_openvino(repository, candidate, names, parameters, precision)
    return report


def install_openvino(
    repository: Path,
    candidate: Path,
    names: ClassifierNames,
    parameters: dict[str, str],
    precision: str,
) -> None:
    """Stage the variant's model file (``candidate`` copied) and install it with its configs and
    fused model through the repository's transaction (``writer.install_variant``)."""
    repository = repository.resolve()
    remove_stale_staging(repository)
    with staging_directory(repository) as staging:
        target = variants.OPENVINO.model_path(staging, names)
        write_bytes_atomically(target, candidate.read_bytes())
        install_variant(repository, staging, variants.OPENVINO, names, parameters, precision)
