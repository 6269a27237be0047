"""Fill a Triton model repository: configs, labels, the Python model and the ONNX file's place.

Layout written (``<repo>`` defaults to ``layout.default_repository()``)::

    <repo>/preprocess/config.pbtxt       <repo>/preprocess/1/model.py     (Python backend)
    <repo>/resnet18_onnx/config.pbtxt    <repo>/resnet18_onnx/1/model.onnx (logits + softmax)
    <repo>/resnet18_onnx/labels.txt
    <repo>/resnet18/config.pbtxt         <repo>/resnet18/1/               (ensemble)
    <repo>/resnet18/labels.txt

The Python model ships in this package (``layout.python_model_source``) and is copied in. Other
directories in ``<repo>`` are neither removed nor loaded (the server loads exactly the models it
names).
"""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from resnet18_triton import contract
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.errors import RepositoryError
from resnet18_triton.files import link_or_copy, write_bytes_atomically, write_text_atomically
from resnet18_triton.repository import variants
from resnet18_triton.repository.classifier import Classifier, classifier_names
from resnet18_triton.repository.configs.builders import (
    OPENVINO_BACKEND,
    WARMUP_DIRNAME,
    WARMUP_IMAGE_FILENAME,
    all_model_configs,
    fused_model_config,
    openvino_variant_configs,
    variant_configs,
)
from resnet18_triton.repository.configs.parser import parse, render
from resnet18_triton.repository.configs.settings import ServingSettings
from resnet18_triton.repository.layout import (
    CONFIG_FILENAME,
    PYTHON_MODELS,
    backend_source,
    classifiers,
    onnx_model_path,
    python_model_source,
    version_dir,
)
from resnet18_triton.repository.transaction import install, install_lock
from resnet18_triton.repository.variants import Variant


def install_python_models(repo: Path, names: ClassifierNames | None = None) -> None:
    """Write the shipped preprocessing ``model.py`` (``PYTHON_MODELS``) into ``repo`` as the
    preprocess model of classifier ``names`` (default: the default classifier)."""
    names = names or ClassifierNames.of()
    for name in PYTHON_MODELS:
        source = python_model_source(name)
        if not source.is_file():
            raise RepositoryError(
                f"the Python model {source} is missing: reinstall resnet18-triton"
            )
        write_bytes_atomically(
            version_dir(repo, names.preprocess) / "model.py", source.read_bytes()
        )


def write_labels(
    repo: Path,
    categories: list[str],
    names: ClassifierNames | None = None,
    count: int | None = None,
) -> None:
    """labels.txt of the classifier and its ensemble; ``count`` (default 1000) must match."""
    names = names or ClassifierNames.of()
    expected = contract.NUM_CLASSES if count is None else count
    if len(categories) != expected:
        raise RepositoryError(f"expected {expected} class names, got {len(categories)}")
    text = "".join(f"{name}\n" for name in categories)
    for model in (names.onnx, names.ensemble):
        write_text_atomically(repo / model / contract.LABELS_FILENAME, text)


def write_configs(
    repo: Path,
    settings: ServingSettings,
    provenance_json: str,
    classifier: Classifier | None = None,
) -> list[Path]:
    """Render every model's config.pbtxt; returns the paths written."""
    settings.check()
    names = classifier.names if classifier else ClassifierNames.of()
    written = []
    for config in all_model_configs(settings, provenance_json, classifier):
        path = repo / config.name / CONFIG_FILENAME
        write_text_atomically(path, render(config))
        written.append(path)
    # The ensemble has no files of its own, but Triton needs its version directory.
    version_dir(repo, names.ensemble).mkdir(parents=True, exist_ok=True)
    if settings.warmup:
        write_warmup_data(repo, names.preprocess)
    return written


def warmup_jpeg() -> bytes:
    """A small deterministic textured JPEG (320x240: the warm-up also exercises the resize)."""
    import io

    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:240, 0:320].astype(np.float32)
    pixels = np.stack(
        [127 + 120 * np.sin(0.031 * x + 0.017 * y + phase) for phase in (0.0, 2.1, 4.2)], axis=-1
    ).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def write_warmup_data(repo: Path, preprocess: str = contract.PREPROCESS_MODEL) -> Path:
    """The preprocess model's warm-up sample: one JPEG in Triton's raw TYPE_STRING layout."""
    data = warmup_jpeg()
    path = repo / preprocess / WARMUP_DIRNAME / WARMUP_IMAGE_FILENAME
    write_bytes_atomically(path, len(data).to_bytes(4, "little") + data)
    return path


def _fp32_configs(repo: Path, names: ClassifierNames) -> dict[str, mc.ModelConfig]:
    """The FP32 classifier and ensemble configs of ``names`` already in ``repo``, by model name."""
    sources = {}
    for name in (names.onnx, names.ensemble):
        path = repo / name / CONFIG_FILENAME
        if not path.is_file():
            raise RepositoryError(f"{path} is missing: run `resnet18-triton export` first")
        sources[name] = parse(path.read_text())
    return sources


def held_classifier(repository: Path, name: str) -> ClassifierNames:
    """The names of classifier ``name``, which ``repository`` must hold (exported FP32)."""
    names = classifier_names(name)
    if not onnx_model_path(repository, names.onnx).is_file():
        held = ", ".join(item.name for item in classifiers(repository)) or "none"
        raise RepositoryError(
            f"{repository} holds no exported classifier {name!r} (classifiers: {held}); run "
            f"`resnet18-triton export --name {name}` first"
        )
    return names


def variant_model_configs(
    repo: Path,
    variant: Variant,
    parameters: dict[str, str],
    names: ClassifierNames | None = None,
    precision: str | None = None,
) -> list[mc.ModelConfig]:
    """The classifier and ensemble configs of ensemble variant ``variant`` of ``names``, derived
    from its FP32 configs in ``repo`` (same instances, threads, batching, warm-up, cache), with
    ``parameters`` added to the classifier's; not written. ``precision`` is the OpenVINO one
    (default: the variant's first)."""
    names = names or ClassifierNames.of()
    if variant.fused:
        raise RepositoryError(f"{variant.key} is a fused variant: write it with write_fused_model")
    sources = _fp32_configs(repo, names)
    classifier, ensemble = variant.models(names)
    if variant.engine == OPENVINO_BACKEND:
        return openvino_variant_configs(
            sources[names.onnx],
            sources[names.ensemble],
            onnx_name=classifier,
            ensemble_name=ensemble,
            precision=precision or variant.precisions[0],
            model_filename=variant.model_filename,
            parameters=parameters,
        )
    return variant_configs(
        sources[names.onnx],
        sources[names.ensemble],
        onnx_name=classifier,
        ensemble_name=ensemble,
        parameters=parameters,
    )


def write_variant(
    repo: Path,
    variant: Variant,
    parameters: dict[str, str],
    target: Path | None = None,
    names: ClassifierNames | None = None,
    precision: str | None = None,
) -> list[Path]:
    """Configs and labels of ensemble variant ``variant`` (``variant_model_configs``) in
    ``target`` (default: ``repo``); returns the config paths written. The model file is the
    writer's own (quantised, compiled, ...)."""
    configs = variant_model_configs(repo, variant, parameters, names, precision)
    return write_variant_configs(repo, configs, names, target)


def write_fused_model(
    repo: Path, variant: Variant, names: ClassifierNames, target: Path | None = None
) -> Path:
    """Fused variant ``variant`` of classifier ``names`` in ``target`` (default: ``repo``): its
    config (``fused_model_config``), labels, code (``server/models/fused``, the repository's
    preprocessing, the engine's Python-based backend) and a link to the model file of the
    ensemble it fuses (``Variant.fused_classifier``), whose classifier must be in ``target`` (the
    preprocess model in ``repo``). Returns the config's path."""
    target = repo if target is None else target
    if variant.fuses is None:
        raise RepositoryError(f"{variant.key} is not a fused variant")
    classifier_name = variant.fused_classifier(names)
    fused_name = variant.entry(names)
    classifier = parse((target / classifier_name / CONFIG_FILENAME).read_text())
    preprocess = parse((repo / names.preprocess / CONFIG_FILENAME).read_text())
    config = fused_model_config(classifier, preprocess, name=fused_name)
    engine = config.parameters[contract.FUSED_ENGINE_PARAMETER].string_value
    directory = target / fused_name
    version = version_dir(target, fused_name)
    sources = {
        "model.py": python_model_source("fused"),
        # The repository's own preprocessing, so the fused model and the ensemble decode alike.
        "preprocessing.py": version_dir(repo, names.preprocess) / "model.py",
        variants.fused_engine_filename(engine): backend_source(engine),
    }
    for filename, source in sources.items():
        if not source.is_file():
            raise RepositoryError(f"{source} is missing: reinstall resnet18-triton or re-export")
        write_bytes_atomically(version / filename, source.read_bytes())
    model_file = classifier.default_model_filename or "model.onnx"
    linked = version / "model.onnx"
    linked.unlink(missing_ok=True)
    link_or_copy(version_dir(target, classifier_name) / model_file, linked)
    labels = repo / names.onnx / contract.LABELS_FILENAME
    write_text_atomically(directory / contract.LABELS_FILENAME, labels.read_text())
    # Several warm-up samples (batch 1 and the largest) read the same file: copy each once.
    warmup_files = {
        tensor.input_data_file
        for sample in config.model_warmup
        for tensor in sample.inputs.values()
        if tensor.input_data_file
    }
    for filename in sorted(warmup_files):
        warmup = repo / names.preprocess / WARMUP_DIRNAME / filename
        write_bytes_atomically(directory / WARMUP_DIRNAME / filename, warmup.read_bytes())
    path = directory / CONFIG_FILENAME
    write_text_atomically(path, render(config))
    return path


def install_variant(
    repo: Path,
    staging: Path,
    variant: Variant,
    names: ClassifierNames,
    parameters: dict[str, str],
    precision: str | None = None,
) -> tuple[str, ...]:
    """Finish ensemble variant ``variant`` of ``names`` in ``staging`` (a ``staging_directory``
    of ``repo`` already holding its model file at ``variant.model_path(staging, names)``): its
    configs and labels, and the fused variant running it where one is registered; then swap them
    all into ``repo`` at once, under the repository's lock, the ensemble last. Every writer of a
    variant installs through here, so a failure or a kill at any point leaves ``repo``
    byte-identical. Returns the models installed."""
    if not variant.model_path(staging, names).is_file():
        raise RepositoryError(f"{variant.key}: the model file was not staged before the install")
    write_variant(repo, variant, parameters, staging, names, precision)
    fused = variants.fused_of(variant)
    if fused is not None:
        write_fused_model(repo, fused, names, target=staging)
    classifier, ensemble = variant.models(names)
    models = (classifier, *(fused.models(names) if fused else ()), ensemble)
    with install_lock(repo):
        install(staging, repo, models)
    return models


def write_variant_configs(
    repo: Path,
    configs: list[mc.ModelConfig],
    names: ClassifierNames | None = None,
    target: Path | None = None,
) -> list[Path]:
    """Write a variant's classifier and ensemble configs (in that order), with the labels of the
    FP32 classifier ``names`` in ``repo``, into ``target`` (default: ``repo``); returns the config
    paths written."""
    names = names or ClassifierNames.of()
    target = repo if target is None else target
    written = []
    for config, source in zip(configs, (names.onnx, names.ensemble), strict=True):
        path = target / config.name / CONFIG_FILENAME
        write_text_atomically(path, render(config))
        labels = repo / source / contract.LABELS_FILENAME
        write_text_atomically(target / config.name / contract.LABELS_FILENAME, labels.read_text())
        written.append(path)
    version_dir(target, configs[1].name).mkdir(parents=True, exist_ok=True)
    return written


def fill_repository(
    repo: Path,
    settings: ServingSettings,
    provenance_json: str,
    categories: list[str],
    classifier: Classifier | None = None,
) -> None:
    """Everything but model.onnx itself (the exporter writes that to ``onnx_model_path``)."""
    names = classifier.names if classifier else None
    install_python_models(repo, names)
    write_labels(repo, categories, names, classifier.num_classes if classifier else None)
    write_configs(repo, settings, provenance_json, classifier)
