"""The registry of variants: every other way a repository serves one classifier, declared once.

A classifier is exported in FP32 (``ClassifierNames``: its preprocess step, ONNX classifier and
ensemble). A *variant* serves the same classifier with another model file or engine, beside it:

==================  ===================  ============  ======================================
variant             written by           engine        models of classifier ``NAME``
==================  ===================  ============  ======================================
``fp32_fused``      ``export --fused``   onnxruntime   ``NAME_fp32_fused``
``int8``            ``quantize``         onnxruntime   ``NAME_int8``, ``NAME_int8_ensemble``
``int8_fused``      ``quantize``         onnxruntime   ``NAME_int8_fused``
``openvino``        ``openvino``         openvino      ``NAME_openvino``,
                                                       ``NAME_openvino_ensemble``
``openvino_fused``  ``openvino``         openvino      ``NAME_openvino_fused``
==================  ===================  ============  ======================================

An *ensemble* variant is a classifier model (the variant's model file, configs derived from the
FP32 classifier's) and an ensemble running it after the classifier's own preprocess step. A
*fused* variant is one Python-backend model running both steps of the ensemble it ``fuses``
(``server/models/fused``), with that ensemble's model file and engine: an ensemble variant's, or
(``fuses=FP32_ENSEMBLE``) the classifier's own FP32 ensemble.

Adding a variant is one ``Variant`` in ``REGISTRY`` plus its engine code: the names, the files it
needs, discovery, serving order, ownership, ``health`` and ``tune`` follow from the declaration.
Standard library only (the thin client imports it for the names).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from resnet18_triton import contract, cpu_flags
from resnet18_triton.contract import CONFIG_FILENAME, VERSION, ClassifierNames

# The engines a classifier model runs on: the backends' names in a config (the embedded server's
# Python-based ones, the official container's native ones).
Engine = Literal["onnxruntime", "openvino"]
ENGINES: tuple[Engine, ...] = get_args(Engine)
# Each engine's config parameter holding one instance's threads: the keys of Triton's native
# backends, which the Python-based backends shipped here read too.
INTRA_OP_THREADS = "intra_op_thread_count"
INTER_OP_THREADS = "inter_op_thread_count"
OPENVINO_THREADS = "INFERENCE_NUM_THREADS"
THREAD_KEYS: dict[Engine, str] = {"onnxruntime": INTRA_OP_THREADS, "openvino": OPENVINO_THREADS}
# The key that names a classifier's own FP32 models (``ClassifierNames``: its ONNX classifier and
# ensemble) where a variant's key could stand: no ``Variant`` declares them, every classifier has
# them.
FP32_ENSEMBLE = "fp32"
# Numeric precisions an OpenVINO variant is compiled at (``contract.PRECISION_PARAMETER``).
OpenVinoPrecision = Literal["f32", "bf16", "int8"]
OPENVINO_PRECISIONS: tuple[OpenVinoPrecision, ...] = get_args(OpenVinoPrecision)
# A fused model's version directory: its code, the repository's preprocessing and the model file,
# plus its engine's Python-based backend (``fused_engine_filename``).
FUSED_MODEL_FILES = ("model.py", "preprocessing.py", "model.onnx")


def fused_engine_filename(engine: str) -> str:
    """The engine's copy in a fused model's version directory, e.g. ``onnxruntime_engine.py``."""
    return f"{engine}_engine.py"


@dataclass(frozen=True)
class Variant:
    """One variant, declared once (see the module docstring).

    ``key`` names it on the command line and in reports; ``suffixes`` name its models after the
    classifier's name, in load order (classifier, then ensemble; one model when fused);
    ``written_by`` is the command that writes it, ``written_with`` the options of that command
    writing it (empty: the command always writes it); ``fuses`` is the key of the ensemble a
    fused one runs (a registered ensemble variant's, or ``FP32_ENSEMBLE``); ``model_filename``
    is the classifier model's file in its version directory;
    ``precisions`` are the precisions it can be built at (the first is the default; a
    ``precision`` parameter of its configs says which), ``fixed_precision`` the one its model
    file has when it has no choice (a fused variant has those of the variant it fuses);
    ``served_atol`` is how far a served probability may be from the variant's engine run in
    this process on the same pixels (``precisions_on``, the tests that serve every variant).
    """

    key: str
    engine: Engine
    suffixes: tuple[str, ...]
    written_by: str
    written_with: str = ""
    fuses: str | None = None
    model_filename: str = "model.onnx"
    precisions: tuple[str, ...] = ()
    fixed_precision: str = "fp32"
    served_atol: float = 1e-6

    @property
    def fused(self) -> bool:
        return self.fuses is not None

    @property
    def write_command(self) -> str:
        """The ``resnet18-triton`` subcommand and options writing it, e.g. ``quantize``."""
        return " ".join(filter(None, (self.written_by, self.written_with)))

    def fused_classifier(self, names: ClassifierNames) -> str:
        """The classifier model of ``names`` whose config and model file fused variant ``self``
        runs: that of the variant it fuses, or the classifier's own ONNX model."""
        source = fused_source(self)
        return source.classifier(names) if source else names.onnx

    def models(self, names: ClassifierNames) -> tuple[str, ...]:
        """The variant's models of classifier ``names``, in load order."""
        return tuple(f"{names.name}{suffix}" for suffix in self.suffixes)

    def classifier(self, names: ClassifierNames) -> str:
        """The model that runs the variant's model file (the fused model, when fused)."""
        return self.models(names)[0]

    def entry(self, names: ClassifierNames) -> str:
        """The model a client calls: encoded image in, probabilities out."""
        return self.models(names)[-1]

    def model_path(self, repo: Path, names: ClassifierNames) -> Path:
        """The variant's model file (for a fused variant, its link to the fused one's)."""
        filename = "model.onnx" if self.fused else self.model_filename
        return repo / self.classifier(names) / VERSION / filename

    def required_files(self, repo: Path, names: ClassifierNames) -> list[Path]:
        """Every file serving the variant of ``names`` needs in ``repo``."""
        files = [self.model_path(repo, names)]
        for model in self.models(names):
            files += [repo / model / CONFIG_FILENAME, repo / model / contract.LABELS_FILENAME]
        if self.fused:
            version = repo / self.classifier(names) / VERSION
            filenames = (*FUSED_MODEL_FILES, fused_engine_filename(self.engine))
            files += [version / filename for filename in filenames]
        return list(dict.fromkeys(files))

    def is_complete(self, repo: Path, names: ClassifierNames) -> bool:
        """True when ``repo`` holds every file of the variant of ``names``."""
        return all(path.is_file() for path in self.required_files(repo, names))


FP32_FUSED = Variant(
    key="fp32_fused",
    engine="onnxruntime",
    # Not ``_fused``: ``NAME_int8_fused`` would then also read as the FP32 fused model of a
    # classifier ``NAME_int8``.
    suffixes=("_fp32_fused",),
    written_by="export",
    # Writing it again exports the classifier again: from the weights it was exported from.
    written_with="--fused --weights WEIGHTS",
    fuses=FP32_ENSEMBLE,
)
INT8 = Variant(
    key="int8",
    engine="onnxruntime",
    suffixes=("_int8", "_int8_ensemble"),
    written_by="quantize",
    fixed_precision="int8",
    # ONNX Runtime's INT8 kernels requantise each layer: the same file on the same pixels moves
    # by a few quantisation steps between runs that tile the work differently.
    served_atol=1e-4,
)
INT8_FUSED = Variant(
    key="int8_fused",
    engine="onnxruntime",
    suffixes=("_int8_fused",),
    written_by="quantize",
    fuses="int8",
    fixed_precision="int8",
    served_atol=1e-4,
)
OPENVINO = Variant(
    key="openvino",
    engine="openvino",
    suffixes=("_openvino", "_openvino_ensemble"),
    written_by="openvino",
    precisions=OPENVINO_PRECISIONS,
)
OPENVINO_FUSED = Variant(
    key="openvino_fused",
    engine="openvino",
    suffixes=("_openvino_fused",),
    written_by="openvino",
    fuses="openvino",
)
# Serving order: each ensemble (the classifier's own FP32 one first), then the fused model running
# it.
REGISTRY: tuple[Variant, ...] = (FP32_FUSED, INT8, INT8_FUSED, OPENVINO, OPENVINO_FUSED)


def by_key(key: str) -> Variant:
    """The registered variant named ``key``; raises KeyError naming the known ones."""
    for variant in REGISTRY:
        if variant.key == key:
            return variant
    known = ", ".join(variant.key for variant in REGISTRY)
    raise KeyError(f"unknown variant {key!r}: expected one of {known}")


def fused_source(variant: Variant) -> Variant | None:
    """The ensemble variant ``variant`` fuses; None when it fuses none (not fused, or fusing the
    classifier's own FP32 ensemble)."""
    if variant.fuses is None or variant.fuses == FP32_ENSEMBLE:
        return None
    return by_key(variant.fuses)


def built_precisions(variant: Variant) -> tuple[str, ...]:
    """Every precision ``variant`` can be built at: its own, or those of the variant it fuses."""
    source = fused_source(variant) or variant
    return source.precisions or (source.fixed_precision,)


def precisions_on(variant: Variant, flags: frozenset[str]) -> tuple[str, ...]:
    """The precisions ``variant`` is served at on a CPU with ``flags`` (``cpu_flags.serves``):
    never empty, since every variant has a form every x86-64 CPU computes."""
    return tuple(p for p in built_precisions(variant) if cpu_flags.serves(p, flags))


def written_by(command: str) -> tuple[Variant, ...]:
    """The variants one command writes, ensemble variant first."""
    return tuple(variant for variant in REGISTRY if variant.written_by == command)


def fused_of(variant: Variant) -> Variant | None:
    """The fused variant running ensemble variant ``variant``, if one is registered."""
    return next((other for other in REGISTRY if other.fuses == variant.key), None)


def variant_model_names(names: ClassifierNames) -> tuple[str, ...]:
    """Every variant model classifier ``names`` may have beside its FP32 ones, in serving order."""
    return tuple(model for variant in REGISTRY for model in variant.models(names))


def present(repo: Path, names: ClassifierNames) -> tuple[Variant, ...]:
    """The variants of ``names`` that ``repo`` holds completely; a fused variant counts only with
    the ensemble variant it fuses (the classifier's own FP32 one counts as held)."""
    found = [variant for variant in REGISTRY if variant.is_complete(repo, names)]
    keys = {FP32_ENSEMBLE, *(variant.key for variant in found)}
    return tuple(variant for variant in found if variant.fuses is None or variant.fuses in keys)


def owner(
    model: str, classifiers: Sequence[ClassifierNames]
) -> tuple[ClassifierNames, Variant | None] | None:
    """Which classifier (and which variant, None for its FP32 models) serves ``model``."""
    for names in classifiers:
        if model in names.served:
            return names, None
        for variant in REGISTRY:
            if model in variant.models(names):
                return names, variant
    return None


def classifier_of(model: str) -> tuple[ClassifierNames, Variant] | None:
    """The classifier and variant whose model ``model`` is, by its name; None for a name no
    variant derives (a classifier's own models included)."""
    for variant in REGISTRY:
        for suffix in variant.suffixes:
            base = model.removesuffix(suffix)
            if base != model and contract.CLASSIFIER_NAME_PATTERN.fullmatch(base):
                return ClassifierNames.of(base), variant
    return None


def holds(repo: Path, variant: Variant, names: ClassifierNames | None = None) -> bool:
    """True when ``repo`` serves ``variant`` of ``names`` (default: the default classifier)."""
    return variant in present(repo, names or ClassifierNames.of())
