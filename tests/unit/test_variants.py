"""The variant registry: what every variant declares, and the one transaction that installs it.

A new variant is one ``Variant`` in ``repository.variants.REGISTRY`` plus its engine code. The
first test lists what the declaration must provide; the others write every registered variant for
a second classifier through ``writer.install_variant``, once killed mid-install and once through.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from resnet18_triton import contract
from resnet18_triton.cli import LAZY_COMMANDS
from resnet18_triton.client.health import served_classifiers
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.repository import layout, variants
from resnet18_triton.repository.classifier import Classifier, default_labels
from resnet18_triton.repository.configs.parser import read_config
from resnet18_triton.repository.configs.settings import ServingSettings
from resnet18_triton.repository.writer import fill_repository
from tests.support import tree_snapshot

SECOND = ClassifierNames.of("second")
ENSEMBLE_VARIANTS = [variant for variant in variants.REGISTRY if not variant.fused]


def test_every_registered_variant_declares_what_a_new_variant_must_provide() -> None:
    keys = [variant.key for variant in variants.REGISTRY]
    suffixes = [suffix for variant in variants.REGISTRY for suffix in variant.suffixes]
    assert len(set(keys)) == len(keys) and len(set(suffixes)) == len(suffixes)
    for variant in variants.REGISTRY:
        # Its engine: one of the backends this package ships, so the embedded server runs it.
        assert variant.engine in variants.ENGINES
        assert layout.backend_source(variant.engine).is_file()
        assert variant.engine in variants.THREAD_KEYS
        # The command that writes it is a real subcommand.
        assert variant.written_by in LAZY_COMMANDS
        if variant.fused:
            # A fused variant runs the model file of a registered ensemble variant, same engine,
            # or the classifier's own FP32 ensemble on ONNX Runtime.
            base = variants.fused_source(variant)
            if base is None:
                assert variant.fuses == variants.FP32_ENSEMBLE
                assert variant.engine == "onnxruntime"
            else:
                assert not base.fused and base.engine == variant.engine
            assert len(variant.suffixes) == 1
        else:
            # An ensemble variant: its classifier model, then the ensemble clients call.
            assert len(variant.suffixes) == 2
            assert variant.model_filename.endswith(".onnx")


# The flags that decide precisions on the CPUs this project's hosts have had, as /proc/cpuinfo
# lists them (the low-precision ones and their neighbours; the chooser reads no others).
CPU_FLAG_SETS = {
    "AMD EPYC Zen 2": frozenset(["avx", "avx2", "fma", "f16c", "bmi2", "sha_ni"]),
    "AMD EPYC Zen 4": frozenset(
        ["avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "gfni"]
    ),
    "Intel Xeon with AMX": frozenset(
        ["avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"]
    ),
}


@pytest.mark.parametrize("cpu", CPU_FLAG_SETS)
def test_the_precision_chooser_serves_every_registered_variant_on_every_known_cpu(cpu) -> None:
    flags = CPU_FLAG_SETS[cpu]
    for variant in variants.REGISTRY:
        chosen = variants.precisions_on(variant, flags)
        assert chosen, f"{variant.key} has no precision to serve on {cpu}"
        assert set(chosen) <= set(variants.built_precisions(variant))
        # The form every x86-64 CPU computes is always among them: no host skips a variant.
        assert set(chosen) & {"f32", "fp32", "int8"}, (variant.key, chosen)
    openvino = variants.precisions_on(variants.OPENVINO, flags)
    assert ("bf16" in openvino) == (cpu != "AMD EPYC Zen 2")
    assert variants.precisions_on(variants.OPENVINO_FUSED, flags) == openvino
    assert variants.precisions_on(variants.INT8_FUSED, flags) == ("int8",)
    assert variants.precisions_on(variants.FP32_FUSED, flags) == ("fp32",)


def test_every_variant_model_name_maps_back_to_its_classifier_and_variant() -> None:
    for names in (ClassifierNames.of(), SECOND):
        for variant in variants.REGISTRY:
            for model in variant.models(names):
                assert variants.classifier_of(model) == (names, variant)
    assert variants.classifier_of(contract.ENSEMBLE_MODEL) is None


def test_health_of_a_variant_model_checks_its_classifier_not_one_of_that_name() -> None:
    fused = variants.INT8_FUSED.entry(SECOND)
    assert served_classifiers(None, [fused]) == [SECOND, ClassifierNames.of()]


def test_an_unknown_variant_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(KeyError, match="fp32_fused, int8, int8_fused, openvino, openvino_fused"):
        variants.by_key("fp16")


@pytest.fixture()
def repository(tmp_path: Path) -> Path:
    """The default classifier and a second one, as export writes them, with stand-in model files
    (the writer never reads them; it copies and links them)."""
    repo = tmp_path / "repo"
    settings = ServingSettings.from_core_budget(cores=2)
    for names in (ClassifierNames.of(), SECOND):
        labels = default_labels(10)
        classifier = Classifier(names, tuple(labels))
        fill_repository(repo, settings, json.dumps({"source": "random"}), labels, classifier)
        path = layout.onnx_model_path(repo, names.onnx)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"fp32 stand-in " + names.name.encode())
    return repo


def test_the_fused_fp32_model_runs_the_classifiers_own_file_by_the_fused_models_rules(
    repository: Path,
) -> None:
    from resnet18_triton.repository.configs.builders import fused_model_config
    from resnet18_triton.repository.writer import write_fused_model

    assert variants.present(repository, SECOND) == ()
    write_fused_model(repository, variants.FP32_FUSED, SECOND)
    assert variants.present(repository, SECOND) == (variants.FP32_FUSED,)
    assert variants.present(repository, ClassifierNames.of()) == ()
    linked = variants.FP32_FUSED.model_path(repository, SECOND)
    assert linked.read_bytes() == layout.onnx_model_path(repository, SECOND.onnx).read_bytes()
    # Instances and threads as every fused model: the classifier's cores, one thread each.
    classifier = read_config(repository, SECOND.onnx)
    preprocess = read_config(repository, SECOND.preprocess)
    fused = variants.FP32_FUSED.entry(SECOND)
    assert fused == "second_fp32_fused"
    assert read_config(repository, fused) == fused_model_config(classifier, preprocess, name=fused)
    assert layout.served_models(repository)[-1] == fused


# Stage the variant's model file as its writer would, then install it with its configs and its
# fused model; argv: repository, variant key, classifier name, and the function to die in.
_WRITER = """
import os, signal, sys
from pathlib import Path
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.repository import transaction, variants, writer

repo, key, name, die_in = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
if die_in and die_in != "staged":
    setattr(writer, die_in, lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
variant, names = variants.by_key(key), ClassifierNames.of(name)
transaction.remove_stale_staging(repo)
with transaction.staging_directory(repo) as staging:
    target = variant.model_path(staging, names)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"variant stand-in")
    if die_in == "staged":
        os.kill(os.getpid(), signal.SIGKILL)
    writer.install_variant(repo, staging, variant, names, {"recipe": key}, None)
"""
# Where the writer dies: after the model file is staged, while the configs are written, while
# the fused model is written, and just before the swap.
DEATHS = ("staged", "write_variant_configs", "write_fused_model", "install")


def run_writer(repo: Path, variant: variants.Variant, die_in: str = "") -> int:
    command = [sys.executable, "-c", _WRITER, str(repo), variant.key, SECOND.name, die_in]
    return subprocess.run(command, capture_output=True, timeout=120).returncode


@pytest.mark.parametrize("variant", ENSEMBLE_VARIANTS, ids=lambda variant: variant.key)
@pytest.mark.slow
def test_a_variant_writer_killed_anywhere_before_the_swap_leaves_the_repository_byte_identical(
    repository: Path, variant: variants.Variant
) -> None:
    before = tree_snapshot(repository)
    for die_in in DEATHS:
        assert run_writer(repository, variant, die_in) == -signal.SIGKILL, die_in
        assert tree_snapshot(repository) == before, die_in
    assert run_writer(repository, variant) == 0
    installed = [variant, *filter(None, [variants.fused_of(variant)])]
    assert set(variants.present(repository, SECOND)) == set(installed)
    assert variants.present(repository, ClassifierNames.of()) == ()
    assert not list(repository.parent.glob(".repo.export-*"))
    # Only the variant's own models are new; every file that was there is unchanged.
    after = tree_snapshot(repository)
    assert {path: after[path] for path in before} == before
    new_models = {Path(path).parts[0] for path in set(after) - set(before)}
    assert new_models == {model for item in installed for model in item.models(SECOND)}


@pytest.mark.parametrize("variant", ENSEMBLE_VARIANTS, ids=lambda variant: variant.key)
def test_a_variant_derives_its_configs_from_its_classifier_and_keeps_its_own_parameters(
    repository: Path, variant: variants.Variant
) -> None:
    assert run_writer(repository, variant) == 0
    fp32 = read_config(repository, SECOND.onnx)
    config = read_config(repository, variant.classifier(SECOND))
    assert config.backend == variant.engine
    assert config.parameters["recipe"].string_value == variant.key
    assert config.max_batch_size == fp32.max_batch_size
    assert config.dynamic_batching == fp32.dynamic_batching
    ensemble = read_config(repository, variant.entry(SECOND))
    steps = [step.model_name for step in ensemble.ensemble_scheduling.step]
    assert steps == [SECOND.preprocess, variant.classifier(SECOND)]
