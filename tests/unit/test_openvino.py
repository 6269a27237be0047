"""The OpenVINO variant without a server: CPU flag detection (faked cpuinfo), the backend's
reading of the native OpenVINO backend's config keys, the rendered configs, and the fidelity
gate refusing a model that disagrees with FP32."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("openvino")
pytest.importorskip("tritonclient.grpc")

from resnet18_triton import contract, cpu_flags
from resnet18_triton.contract import ClassifierNames
from resnet18_triton.errors import PrecisionUnavailableError
from resnet18_triton.export.cli.openvino import choose_precision
from resnet18_triton.export.openvino_variant import openvino_backend
from resnet18_triton.repository import layout, variants
from resnet18_triton.repository.configs.builders import all_model_configs, openvino_variant_configs
from resnet18_triton.repository.configs.parser import as_json
from resnet18_triton.repository.configs.settings import ServingSettings
from tests.support import tree_snapshot

DEFAULT = ClassifierNames.of()

# /proc/cpuinfo excerpts (one processor each; real files repeat the block per CPU).
ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni avx512bw
bugs\t\t: sysret_ss_attrs
"""
SAPPHIRE_RAPIDS = "flags\t: avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8 amx_tile\n"
ZEN1 = "model name\t: AMD EPYC 7551\nflags\t\t: fpu sse2 avx avx2 fma\n"
# The native backend's documented parameters (openvino_backend README), plus this project's
# precision key and its labels, which the native backend ignores.
NATIVE_KEYS = {
    "PERFORMANCE_HINT",
    "CPU_EXTENSION_PATH",
    "INFERENCE_NUM_THREADS",
    "COMPILATION_NUM_THREADS",
    "HINT_BF16",
    "NUM_STREAMS",
    "SKIP_OV_DYNAMIC_BATCHSIZE",
    "ENABLE_BATCH_PADDING",
    "RESHAPE_IO_LAYERS",
}
OWN_KEYS = {
    "INFERENCE_PRECISION_HINT",
    "ENABLE_CPU_PINNING",
    contract.PRECISION_PARAMETER,
    contract.PROVENANCE_PARAMETER,
}


def params(**values: str) -> dict:
    return {"parameters": {key: {"string_value": value} for key, value in values.items()}}


# --- CPU flags


def test_flags_are_read_from_the_first_flags_line() -> None:
    flags = cpu_flags.parse_flags(ZEN4)
    assert {"avx512_bf16", "avx512_vnni", "avx2"} <= flags
    assert "sysret_ss_attrs" not in flags
    assert cpu_flags.parse_flags("processor : 0\n") == frozenset()


def test_a_zen4_cpu_offers_bf16_and_fast_int8() -> None:
    flags = cpu_flags.parse_flags(ZEN4)
    assert cpu_flags.present(cpu_flags.BF16_FLAGS, flags) == ("avx512_bf16",)
    assert cpu_flags.default_precision(flags) == "bf16"
    assert cpu_flags.has_fast_int8(flags)
    assert choose_precision("auto", flags) == ("bf16", None)


def test_amx_counts_as_native_bf16_and_int8() -> None:
    flags = cpu_flags.parse_flags(SAPPHIRE_RAPIDS)
    assert cpu_flags.present(cpu_flags.BF16_FLAGS, flags) == ("avx512_bf16", "amx_bf16")
    assert cpu_flags.present(cpu_flags.INT8_FLAGS, flags) == ("avx512_vnni", "amx_int8")


def test_a_cpu_without_bf16_falls_back_to_f32_with_a_note() -> None:
    flags = cpu_flags.parse_flags(ZEN1)
    precision, note = choose_precision("auto", flags)
    assert precision == "f32" and "no native bfloat16" in note
    with pytest.raises(PrecisionUnavailableError, match="--precision f32"):
        choose_precision("bf16", flags)
    assert choose_precision("f32", flags) == ("f32", None)
    assert "may not be faster" in choose_precision("int8", flags)[1]


def test_an_unreadable_cpuinfo_means_no_flags(tmp_path: Path) -> None:
    assert cpu_flags.cpu_flags(tmp_path / "missing") == frozenset()
    (tmp_path / "cpuinfo").write_text(ZEN4)
    assert "avx512_bf16" in cpu_flags.cpu_flags(tmp_path / "cpuinfo")


# --- the backend reads the native backend's keys


def test_backend_maps_the_native_keys_to_openvino_properties() -> None:
    backend = openvino_backend()
    config = params(
        INFERENCE_NUM_THREADS="2",
        NUM_STREAMS="auto",
        PERFORMANCE_HINT="latency",
        HINT_BF16="yes",
        ENABLE_BATCH_PADDING="YES",
    )
    assert backend.compile_properties(config) == {
        "INFERENCE_NUM_THREADS": "2",
        "NUM_STREAMS": "AUTO",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "bf16",
    }
    assert backend.compile_properties(params(INFERENCE_PRECISION_HINT="F32")) == {
        "INFERENCE_PRECISION_HINT": "f32"
    }
    assert backend.compile_properties(params(ENABLE_CPU_PINNING="no")) == {
        "ENABLE_CPU_PINNING": "NO"
    }
    assert backend.compile_properties({}) == {}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"HINT_BF16": "NO"}, "'HINT_BF16' to be YES, got no"),
        ({"INFERENCE_NUM_THREADS": "-1"}, "non-negative number"),
        ({"NUM_STREAMS": "many"}, "NUM_STREAMS"),
        ({"PERFORMANCE_HINT": "fast"}, "LATENCY/THROUGHPUT"),
        ({"INFERENCE_PRECISION_HINT": "f16"}, "bf16, f32"),
        ({"HINT_BF16": "YES", "INFERENCE_PRECISION_HINT": "f32"}, "contradicts"),
        ({"CPU_EXTENSION_PATH": "/tmp/x.so"}, "not supported by the embedded"),
        ({"ENABLE_CPU_PINNING": "sometimes"}, "YES or NO"),
    ],
)
def test_backend_rejects_what_the_native_backend_rejects(values: dict, message: str) -> None:
    backend = openvino_backend()
    with pytest.raises(backend.ConfigError, match=message):
        backend.compile_properties(params(**values))


def test_backend_reads_model_xml_unless_the_config_names_a_file() -> None:
    backend = openvino_backend()
    args = {"model_repository": "/repo/m", "model_version": "1"}
    assert backend.model_path(args, {}) == "/repo/m/1/model.xml"
    named = {"default_model_filename": "model.onnx"}
    assert backend.model_path(args, named) == "/repo/m/1/model.onnx"


# --- configs


def _variant(precision: str, settings: ServingSettings):
    fp32 = {c.name: c for c in all_model_configs(settings, '{"source":"random"}')}
    return openvino_variant_configs(
        fp32[contract.ONNX_MODEL],
        fp32[contract.ENSEMBLE_MODEL],
        onnx_name=variants.OPENVINO.classifier(DEFAULT),
        ensemble_name=variants.OPENVINO.entry(DEFAULT),
        precision=precision,
        model_filename=variants.OPENVINO.model_filename,
    )


def test_the_fused_openvino_model_spends_the_core_budget_as_single_thread_instances() -> None:
    from resnet18_triton.errors import RepositoryError
    from resnet18_triton.repository.configs.builders import fused_model_config

    settings = ServingSettings.from_core_budget(cores=4, onnx_instances=2)
    model, ensemble = _variant("bf16", settings)
    preprocess = next(
        c for c in all_model_configs(settings, "{}") if c.name == contract.PREPROCESS_MODEL
    )
    fused = fused_model_config(model, preprocess, name=variants.OPENVINO_FUSED.entry(DEFAULT))
    values = {key: value.string_value for key, value in fused.parameters.items()}
    assert fused.instance_group[0].count == 4  # 2 instances x 2 threads
    assert values["INFERENCE_NUM_THREADS"] == "1" and values["engine"] == "openvino"
    assert values["HINT_BF16"] == "YES" and values["ENABLE_CPU_PINNING"] == "NO"
    assert "inter_op_thread_count" not in values and "intra_op_thread_count" not in values
    assert list(fused.output) == list(ensemble.output)
    properties = openvino_backend().compile_properties(as_json(fused))
    assert properties["INFERENCE_NUM_THREADS"] == "1"
    model.backend = "tensorrt"
    with pytest.raises(RepositoryError, match="no fused model for the 'tensorrt' backend"):
        fused_model_config(model, preprocess, name="x")


def test_variant_names_derive_from_the_classifier_name() -> None:
    assert variants.OPENVINO.models(DEFAULT) == (
        "resnet18_openvino",
        "resnet18_openvino_ensemble",
    )
    assert variants.OPENVINO.models(ClassifierNames.of("digits")) == (
        "digits_openvino",
        "digits_openvino_ensemble",
    )
    assert variants.OPENVINO_FUSED.entry(ClassifierNames.of("digits")) == "digits_openvino_fused"
    assert layout.shipped_backends() == ("onnxruntime", "openvino")


def test_bf16_config_uses_only_documented_native_keys_and_the_core_budget() -> None:
    settings = ServingSettings.from_core_budget(cores=4, onnx_instances=2)
    model, ensemble = _variant("bf16", settings)
    assert model.backend == "openvino" and model.default_model_filename == "model.onnx"
    assert set(model.parameters) <= NATIVE_KEYS | OWN_KEYS
    values = {key: value.string_value for key, value in model.parameters.items()}
    assert values["HINT_BF16"] == "YES" and values["INFERENCE_PRECISION_HINT"] == "bf16"
    assert values["INFERENCE_NUM_THREADS"] == "2" and values["NUM_STREAMS"] == "1"
    assert model.instance_group[0].count == 2
    assert not model.HasField("optimization")
    steps = [step.model_name for step in ensemble.ensemble_scheduling.step]
    assert steps == [contract.PREPROCESS_MODEL, "resnet18_openvino"]
    properties = openvino_backend().compile_properties(as_json(model))
    assert properties["INFERENCE_PRECISION_HINT"] == "bf16"
    assert properties["ENABLE_CPU_PINNING"] == "NO"  # 2 instances must not share a core


def test_f32_and_int8_configs_pin_f32_without_the_bf16_hint() -> None:
    for precision in ("f32", "int8"):
        model, _ = _variant(precision, ServingSettings())
        values = {key: value.string_value for key, value in model.parameters.items()}
        assert "HINT_BF16" not in values
        assert values["INFERENCE_PRECISION_HINT"] == "f32"
        assert values[contract.PRECISION_PARAMETER] == precision


# --- the fidelity gate


@pytest.mark.slow
def test_the_gate_refuses_a_model_that_disagrees_with_fp32(tmp_path: Path) -> None:
    """A random-weight network put where the INT8 model belongs: OpenVINO runs it fine, but its
    answers are not the fitted model's, so the gate must refuse it and write nothing."""
    pytest.importorskip("sklearn")
    from click.testing import CliRunner

    from resnet18_triton.errors import ExportError
    from resnet18_triton.export.cli.openvino import openvino
    from resnet18_triton.export.onnx_export import export_onnx
    from resnet18_triton.export.weights import load_resnet18
    from tests.digits import digits_model, export_repository, write_images

    model, splits, _ = digits_model()
    repo = export_repository(model, tmp_path / "repo")
    wrong, provenance = load_resnet18("random", seed=1)
    export_onnx(wrong, layout.onnx_model_path(repo, contract.INT8_MODEL), provenance=provenance)
    images = write_images(tmp_path / "held_out", splits["held_out"][0][:40])
    arguments = ["--repo", str(repo), "--precision", "int8", "--eval-images", str(images)]
    result = CliRunner().invoke(openvino, arguments)
    assert isinstance(result.exception, ExportError), result.output
    assert "below the required 99.00%" in str(result.exception)
    assert "top-1 agreement" in result.output  # the report is shown
    assert not any(path.exists() for path in variants.OPENVINO.required_files(repo, DEFAULT))
    forced = CliRunner().invoke(openvino, [*arguments, "--force"])
    assert forced.exit_code == 0, forced.output
    assert variants.holds(repo, variants.OPENVINO) and "WARNING" in forced.output


# Kills the build the moment its fused model is about to be staged: the model file and the
# configs are written by then, so a build that wrote into the live repository would leave them.
_KILLED_BUILD = """
import os, signal, sys
from resnet18_triton.export import openvino_variant
openvino_variant.install_variant = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
from resnet18_triton.export.cli.openvino import openvino
openvino.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_an_openvino_build_killed_before_its_install_leaves_the_repository_byte_identical(
    tmp_path: Path,
) -> None:
    """The variant's classifier, fused model and ensemble are staged and swapped in together, as
    export and quantize do; the next build removes the killed one's staging and installs all."""
    pytest.importorskip("sklearn")
    import signal
    import subprocess
    import sys

    from click.testing import CliRunner

    from resnet18_triton.export.cli.openvino import openvino
    from tests.digits import digits_model, export_repository, write_images

    model, splits, _ = digits_model()
    repo = export_repository(model, tmp_path / "repo")
    images = write_images(tmp_path / "held_out", splits["held_out"][0][:20])
    arguments = ["--repo", str(repo), "--precision", "f32", "--eval-images", str(images)]
    before = tree_snapshot(repo)
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_BUILD, *arguments], capture_output=True, timeout=600
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert tree_snapshot(repo) == before
    staged = list(tmp_path.glob(".repo.export-*"))
    assert staged and (staged[0] / variants.OPENVINO.classifier(DEFAULT)).is_dir()

    result = CliRunner().invoke(openvino, arguments)
    assert result.exit_code == 0, result.output
    assert not list(tmp_path.glob(".repo.export-*"))
    assert variants.holds(repo, variants.OPENVINO)
    assert all(path.exists() for path in variants.OPENVINO.required_files(repo, DEFAULT))


def test_a_classifier_the_repository_lacks_is_refused_by_name(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from resnet18_triton.errors import ExportError, RepositoryError
    from resnet18_triton.export.cli.openvino import openvino
    from resnet18_triton.export.openvino_variant import source_model

    (tmp_path / "held_out").mkdir()
    arguments = ["--repo", str(tmp_path), "--name", "digits", "--eval-images"]
    result = CliRunner().invoke(openvino, [*arguments, str(tmp_path / "held_out")])
    assert isinstance(result.exception, RepositoryError), result.output
    assert "no exported classifier 'digits'" in str(result.exception)
    assert "resnet18-triton export --name digits" in str(result.exception)
    names = contract.ClassifierNames.of("digits")
    with pytest.raises(ExportError, match="run `resnet18-triton quantize --name digits` first"):
        source_model(tmp_path, "int8", names)


# --- bench rows


def test_bench_sets_each_openvino_path_against_its_engine_and_the_fp32_ensemble() -> None:
    from resnet18_triton.perf.bench import comparison_section, results_json
    from resnet18_triton.perf.measurements import (
        BackToBack,
        BenchResults,
        EngineRow,
        InProcessSpec,
        ServedSpec,
        ServedSweep,
    )
    from resnet18_triton.perf.perf_analyzer import Row

    def row(throughput: float, load: int) -> Row:
        latency = 1000 / throughput
        return Row("m", "l", load, "concurrency", throughput, *[latency] * 5, 0.0, 0.0)

    fp32 = ServedSpec("ensemble", images="500x375")
    ensemble = ServedSpec("ensemble", variant=variants.OPENVINO.key, images="500x375")
    fused = ServedSpec("ensemble", variant=variants.OPENVINO_FUSED.key, images="500x375")
    served = (
        ServedSweep(fp32, (row(10.0, 1), row(11.0, 2))),
        ServedSweep(ensemble, (row(18.0, 1), row(22.0, 2))),
        ServedSweep(fused, (row(33.0, 8),)),
    )

    def engine(spec: InProcessSpec, images_per_s: float) -> EngineRow:
        return EngineRow(spec, 1000 / images_per_s, images_per_s, 300.0)

    side_by_side = (
        engine(InProcessSpec("ort", 1, spinning=False), 58.5),
        engine(InProcessSpec("openvino", 1, variants.OPENVINO.key, precision="bf16"), 125.0),
        engine(InProcessSpec("openvino", 1, variants.OPENVINO.key, precision="f32"), 250.0),
    )
    back_to_back = BackToBack(fp32, ensemble, 2, (10.0, 10.0, 10.0), (15.0, 21.0, 19.0))
    environment = {"openvino": "2026.4", "openvino_precision": "bf16", "cpu_flags": "avx512_bf16"}
    results = BenchResults(
        served=served,
        environment=environment,
        side_by_side=side_by_side,
        back_to_back=(back_to_back,),
    )
    text = "\n".join(comparison_section(results))
    assert "| ort-nospin | 1 | 17.1 | 58.5 |" in text
    assert "| openvino-bf16 | 1 | 8.0 | 125.0 |" in text
    assert "**openvino ensemble 500x375 / ensemble 500x375: 2.00x**" in text
    assert "**openvino fused 500x375 / ensemble 500x375: 3.00x**" in text
    # Each served path against its own engine at the variant's precision: never the f32 row.
    assert "| ensemble 500x375 / ort-nospin | 11.0 | 58.5 | 0.19x |" in text
    assert "| openvino ensemble 500x375 / openvino-bf16 | 22.0 | 125.0 | 0.18x |" in text
    assert "/ openvino-f32 |" not in text
    assert "median ratio **1.90x** (range 1.50-2.10x, 3 rounds)" in text
    # The figures are bench.json's, each with its label.
    figures = results_json(results)
    assert figures["side_by_side"][1]["label"] == "openvino-bf16"
    assert figures["back_to_back"][0]["second_images_per_s"] == (15.0, 21.0, 19.0)
    assert figures["back_to_back"][0]["label"] == "openvino ensemble 500x375 / ensemble 500x375"
    assert comparison_section(BenchResults(served=served)) == []
