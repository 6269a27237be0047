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

import numpy as np
from google.protobuf import json_format

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
from resnet18_triton.repository.layout import (
    backend_source,
    load_model_module,
    onnx_model_path,
    openvino_fused_name,
    openvino_model_path,
    openvino_models,
)
from resnet18_triton.repository.transaction import (
    install,
    install_lock,
    remove_stale_staging,
    staging_directory,
)
from resnet18_triton.repository.writer import (
    openvino_configs,
    write_bytes_atomically,
    write_fused_model,
    write_variant_configs,
)

_BACKEND_MODULE_NAME = "resnet18_triton_openvino_backend"


def openvino_backend() -> ModuleType:
    """The shipped ``openvino`` backend's ``model.py``, imported by path (it needs no server)."""
    return load_model_module(backend_source("openvino"), _BACKEND_MODULE_NAME)


def config_as_json(config) -> dict:
    """A ModelConfig as the JSON dict Triton hands a Python model (``args["model_config"]``)."""
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def source_model(repository: Path, precision: str, names: ClassifierNames | None = None) -> Path:
    """The ONNX file the variant of classifier ``names`` (default: the default one) serves: its
    FP32 export, or its INT8 QDQ file for ``int8``."""
    names = names or ClassifierNames.of()
    path = onnx_model_path(repository, names.int8 if precision == "int8" else names.onnx)
    if not path.is_file():
        named = "" if names.name == contract.ENSEMBLE_MODEL else f" --name {names.name}"
        step = "resnet18-triton quantize" if precision == "int8" else "resnet18-triton export"
        raise ExportError(f"{path} is missing: run `{step}{named}` first")
    return path


def openvino_logits(path: Path, model_config: dict, images: np.ndarray, batch_size: int = 8):
    """Logits of ``images`` [N, 3, S, S] (uint8) from OpenVINO compiled as the backend would."""
    backend = openvino_backend()
    request = backend.compile_model(str(path), model_config).create_infer_request()
    chunks = [
        backend.infer(
            request, {contract.ONNX_INPUT: images[i : i + batch_size]}, [contract.ONNX_OUTPUT]
        )[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks)


def build_openvino_variant(
    repository: Path,
    precision: str,
    held_out: np.ndarray,
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
    configs = openvino_configs(repository, precision, {}, names)
    candidate_logits = openvino_logits(candidate, config_as_json(configs[0]), held_out)
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
    configs = openvino_configs(repository, precision, {"fidelity": report.to_json()}, names)
    install_variant(repository, candidate, configs, names)
    return report


def install_variant(
    repository: Path, candidate: Path, configs: list, names: ClassifierNames
) -> None:
    """Stage the variant's classifier (``candidate`` copied), ensemble and fused model, then swap
    them in together: steps first, the ensemble last."""
    classifier, ensemble = openvino_models(names.name)
    repository = repository.resolve()
    remove_stale_staging(repository)
    with staging_directory(repository) as staging:
        write_bytes_atomically(openvino_model_path(staging, names.name), candidate.read_bytes())
        write_variant_configs(repository, configs, names, target=staging)
        write_fused_model(repository, names, target=staging, openvino=True)
        with install_lock(repository):
            install(staging, repository, (classifier, openvino_fused_name(names.name), ensemble))
