"""The launcher's own checks: an incomplete Triton install and the backend directory it lays out,
either per start or prepared ahead of time (as a container image does) and then only read."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("pytriton")
from resnet18_triton.errors import ServerStartError
from resnet18_triton.perf import harness
from resnet18_triton.repository.layout import backend_source
from resnet18_triton.server import embedded
from resnet18_triton.server.embedded import (
    EmbeddedServer,
    ServerOptions,
    TritonInstall,
    backend_directory_files,
    build_backend_directory,
    check_backend_directory,
    prepare_backend_directory,
    server_environment,
)
from tests.support import tree_snapshot


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
    assert (backends / "onnxruntime/model.py").read_bytes() == backend_source(
        "onnxruntime"
    ).read_bytes()


def test_server_environment_finds_libraries_and_this_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setenv("LD_LIBRARY_PATH", "/somewhere")
    install = TritonInstall.locate()
    env = server_environment(install)
    assert env["LD_LIBRARY_PATH"].split(":") == [str(install.library_dir), "/somewhere"]
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_tcmalloc_is_preloaded_first_when_installed_and_never_with_the_system_allocator(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from resnet18_triton.server.embedded import TCMALLOC_LIBRARY, allocator_library

    assert allocator_library("tcmalloc", (str(tmp_path),)) is None  # not installed: glibc
    (tmp_path / TCMALLOC_LIBRARY).write_bytes(b"")
    library = allocator_library("tcmalloc", (str(tmp_path),))
    assert library == tmp_path / TCMALLOC_LIBRARY
    assert allocator_library("system", (str(tmp_path),)) is None
    monkeypatch.setenv("LD_PRELOAD", "/other.so")
    env = server_environment(TritonInstall.locate(), library)
    assert env["LD_PRELOAD"] == f"{library} /other.so"
    assert env["TBB_ENABLE_SANITIZERS"] == "1"  # OpenVINO's tbbbind loads without DEEPBIND
    assert "TBB_ENABLE_SANITIZERS" not in server_environment(TritonInstall.locate(), None)
    with pytest.raises(ServerStartError, match="unknown allocator 'hoard'"):
        allocator_library("hoard")


OPENVINO_COMPILE = """
import numpy as np, openvino as ov
x = ov.opset13.parameter([1, 3, 8, 8], np.float32)
conv = ov.opset13.convolution(x, ov.opset13.constant(np.ones((4, 3, 3, 3), np.float32)),
                              [1, 1], [0, 0], [0, 0], [1, 1])
compiled = ov.Core().compile_model(ov.Model([conv], [x]), "CPU")
print(float(compiled(np.ones((1, 3, 8, 8), np.float32))[0].sum()))
"""


@pytest.mark.slow
def test_openvino_compiles_under_the_preloaded_tcmalloc_of_the_server_environment() -> None:
    """What an OpenVINO stub does first, in a process with the stubs' environment: with tcmalloc
    preloaded and tbbbind deep-bound, hwloc freed a tcmalloc pointer with glibc (SIGSEGV)."""
    import subprocess
    import sys

    from resnet18_triton.server.embedded import allocator_library

    pytest.importorskip("openvino")
    library = allocator_library("tcmalloc")
    if library is None:
        pytest.skip("libtcmalloc-minimal4 is not installed (scripts/setup.sh installs it)")
    env = server_environment(TritonInstall.locate(), library)
    result = subprocess.run(
        [sys.executable, "-c", OPENVINO_COMPILE], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert float(result.stdout) == 4 * 6 * 6 * 27.0


def test_stub_model_reads_the_model_from_a_stub_command_line() -> None:
    from resnet18_triton.repository.layout import stub_model

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
    from resnet18_triton.repository.layout import shipped_backends

    assert {"onnxruntime", "openvino"} <= set(shipped_backends())
    for backend in ("python", *shipped_backends()):
        default = sizes[f"{backend},shm-default-byte-size"]
        growth = sizes[f"{backend},shm-growth-byte-size"]
        assert default >= 2 * batch_bytes and default % 2**20 == 0
        assert growth >= batch_bytes


def _loopback_options(repository: Path, backend_dir: Path) -> ServerOptions:
    return harness.local_options(repository, exit_timeout_s=2, backend_dir=backend_dir)


def test_a_prepared_backend_directory_holds_every_installed_file_and_passes_the_check(
    tmp_path: Path,
) -> None:
    install = TritonInstall.locate()
    target = tmp_path / "backends"
    target.mkdir()  # an existing empty directory is as good as a new one
    assert prepare_backend_directory(target) == target
    check_backend_directory(install, target)
    files = backend_directory_files(install)
    assert {"python/triton_python_backend_stub", "onnxruntime/model.py"} <= set(files)
    for relative, source in files.items():
        assert (target / relative).read_bytes() == source.read_bytes(), relative


def test_a_backend_directory_missing_a_file_is_refused_with_its_name(tmp_path: Path) -> None:
    target = prepare_backend_directory(tmp_path / "backends")
    (target / "python" / "triton_python_backend_stub").unlink()
    with pytest.raises(ServerStartError, match="triton_python_backend_stub is missing") as caught:
        check_backend_directory(TritonInstall.locate(), target)
    assert f"python -m resnet18_triton.server.embedded {target}" in str(caught.value)


def test_a_stale_copy_of_a_different_size_is_refused_with_its_name(tmp_path: Path) -> None:
    # Another release's backend left in an image layer would serve code the package lacks.
    target = prepare_backend_directory(tmp_path / "backends")
    with open(target / "onnxruntime" / "model.py", "a") as stale:
        stale.write("# another release\n")
    with pytest.raises(
        ServerStartError, match=re.escape("onnxruntime/model.py differs from the installed package")
    ):
        check_backend_directory(TritonInstall.locate(), target)


def test_a_stale_copy_of_the_same_size_is_refused_too(tmp_path: Path) -> None:
    target = prepare_backend_directory(tmp_path / "backends")
    model = target / "openvino" / "model.py"
    text = model.read_text()
    model.write_text(text[:-1] + ("#" if text[-1] != "#" else " "))  # one byte changed
    assert model.stat().st_size == len(text.encode())
    with pytest.raises(ServerStartError, match=re.escape("openvino/model.py differs")):
        check_backend_directory(TritonInstall.locate(), target)


def test_preparing_refuses_a_directory_that_is_not_empty_and_leaves_it_alone(
    tmp_path: Path,
) -> None:
    target = tmp_path / "backends"
    target.mkdir()
    (target / "notes.txt").write_text("kept\n")
    before = tree_snapshot(target)
    with pytest.raises(ServerStartError, match="is not empty"):
        prepare_backend_directory(target)
    assert tree_snapshot(target) == before


def test_the_module_prepares_a_directory_and_refuses_to_prepare_it_twice(tmp_path: Path) -> None:
    target = tmp_path / "backends"
    command = [sys.executable, "-m", "resnet18_triton.server.embedded", str(target)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and first.stdout.strip() == str(target), first.stderr
    check_backend_directory(TritonInstall.locate(), target)
    second = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert second.returncode != 0 and "is not empty" in second.stderr, second.stderr


class _Launched(Exception):
    """Raised instead of starting tritonserver, carrying its command line."""

    def __init__(self, arguments: list[str]) -> None:
        super().__init__("tritonserver not started by this test")
        self.arguments = arguments


def _placeholder_repository(root: Path) -> Path:
    """Empty files wherever start() looks before launching: enough to reach the launch."""
    from resnet18_triton.contract import ClassifierNames
    from resnet18_triton.repository.layout import classifier_files

    for path in classifier_files(root, ClassifierNames.of()):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    return root


def test_a_server_given_a_prepared_directory_launches_on_it_and_copies_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = prepare_backend_directory(tmp_path / "backends")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    def launch(arguments: list[str], **_: object) -> None:
        raise _Launched(arguments)

    monkeypatch.setattr(embedded.subprocess, "Popen", launch)
    options = _loopback_options(_placeholder_repository(tmp_path / "repo"), prepared)
    with pytest.raises(_Launched) as launched:
        EmbeddedServer(options).start()
    assert f"--backend-directory={prepared}" in launched.value.arguments
    assert not list(scratch.iterdir())  # no private copy in the temporary directory


def test_a_server_refuses_a_stale_prepared_directory_before_launching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = prepare_backend_directory(tmp_path / "backends")
    (prepared / "python" / "triton_python_backend_stub").unlink()

    def launch(arguments: list[str], **_: object) -> None:
        raise AssertionError(f"tritonserver launched on a stale directory: {arguments}")

    monkeypatch.setattr(embedded.subprocess, "Popen", launch)
    options = _loopback_options(_placeholder_repository(tmp_path / "repo"), prepared)
    with pytest.raises(ServerStartError, match="triton_python_backend_stub is missing"):
        EmbeddedServer(options).start()


def test_free_port_never_gives_this_process_the_same_port_twice() -> None:
    # The OS may hand back a port it returned a moment ago; three per replica must differ.
    ports = [embedded.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
