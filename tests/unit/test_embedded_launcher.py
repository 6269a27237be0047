"""The launcher's own checks: an incomplete Triton install and the backend directory it lays out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("pytriton")
from resnet18_triton.errors import ServerStartError
from resnet18_triton.server.embedded import (
    ORT_BACKEND_SOURCE,
    TritonInstall,
    build_backend_directory,
    server_environment,
)


def test_missing_binary_is_named_with_the_fix(tmp_path: Path) -> None:
    install = replace(TritonInstall.locate(), server_binary=tmp_path / "bin" / "tritonserver")
    with pytest.raises(ServerStartError) as caught:
        install.check()
    message = str(caught.value)
    assert str(tmp_path / "bin" / "tritonserver") in message
    assert "pip install --force-reinstall 'resnet18-triton[server]'" in message


def test_backend_directory_holds_real_files_not_links(tmp_path: Path) -> None:
    # Triton refuses a backend library whose real path escapes the backend directory.
    backends = build_backend_directory(TritonInstall.locate(), tmp_path / "backends")
    for path in (
        "python/libtriton_python.so",
        "python/triton_python_backend_stub",
        "python/triton_python_backend_utils.py",
        "onnxruntime/model.py",
        "openvino/model.py",
    ):
        assert (backends / path).is_file() and not (backends / path).is_symlink(), path
    assert (backends / "onnxruntime/model.py").read_bytes() == ORT_BACKEND_SOURCE.read_bytes()


def test_server_environment_finds_libraries_and_this_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setenv("LD_LIBRARY_PATH", "/somewhere")
    install = TritonInstall.locate()
    env = server_environment(install)
    assert env["LD_LIBRARY_PATH"].split(":") == [str(install.library_dir), "/somewhere"]
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_stub_model_reads_the_model_from_a_stub_command_line() -> None:
    from resnet18_triton.layout import stub_model

    stub = "/tmp/backends/python/triton_python_backend_stub"
    assert (
        stub_model([stub, "/repo/preprocess/1/model.py", "triton_python_backend_shm"])
        == "preprocess"
    )
    assert stub_model([stub, "/repo/resnet18_onnx/1/model.onnx"]) == "resnet18_onnx"
    assert stub_model(["/usr/bin/tritonserver", "/repo/preprocess/1/model.py"]) is None
    assert stub_model([stub]) is None


def test_every_python_based_backend_gets_shared_memory_for_a_full_pixel_batch(
    tmp_path: Path,
) -> None:
    from resnet18_triton import contract
    from resnet18_triton.server.embedded import ServerOptions, server_arguments

    install = TritonInstall.locate()
    arguments = server_arguments(ServerOptions(repository=tmp_path), install, tmp_path)
    settings = [
        argument.removeprefix("--backend-config=").rpartition("=")
        for argument in arguments
        if argument.startswith("--backend-config=")
    ]
    sizes = {key: int(value) for key, _, value in settings}
    batch_bytes = contract.MAX_BATCH_SIZE * contract.CHANNELS * contract.IMAGE_SIZE**2
    from resnet18_triton.layout import shipped_backends

    assert {"onnxruntime", "openvino"} <= set(shipped_backends())
    for backend in ("python", *shipped_backends()):
        default = sizes[f"{backend},shm-default-byte-size"]
        growth = sizes[f"{backend},shm-growth-byte-size"]
        assert default >= 2 * batch_bytes and default % 2**20 == 0
        assert growth >= batch_bytes
