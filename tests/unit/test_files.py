"""Atomic writes and the one image-suffix list (``resnet18_triton.files``), and that every part
that lists images or defines a default uses the single definition."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from resnet18_triton import files

SOURCE = Path(files.__file__).resolve().parent


def test_an_atomic_write_replaces_the_file_readable_by_everyone(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "config.pbtxt"
    files.write_text_atomically(target, "old")
    files.write_bytes_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["config.pbtxt"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "labels.txt"
    target.write_text("old")
    with pytest.raises(TypeError):
        files.write_bytes_atomically(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["labels.txt"]


def test_installing_a_file_copies_it_atomically_with_mode_0644(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(b"x" * (3 << 20))
    source.chmod(0o600)
    target = files.install_file_atomically(source, tmp_path / "repo" / "1" / "model.onnx")
    assert target.read_bytes() == source.read_bytes()
    assert target.stat().st_mode & 0o777 == 0o644


def _tree(root: Path) -> None:
    for name in ("b.JPG", "a.png", "c.tif", "e.ppm", "notes.txt", ".hidden.jpg", "sub/d.webp"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    (root / ".cache").mkdir()
    (root / ".cache" / "e.jpg").write_bytes(b"")


def test_image_files_lists_images_by_suffix_sorted_and_skips_hidden_ones(tmp_path: Path) -> None:
    _tree(tmp_path)
    names = [p.relative_to(tmp_path).as_posix() for p in files.image_files(tmp_path)]
    assert names == ["a.png", "b.JPG", "c.tif"]
    deep = [p.relative_to(tmp_path).as_posix() for p in files.image_files(tmp_path, True)]
    assert deep == ["a.png", "b.JPG", "c.tif", "sub/d.webp"]
    assert files.is_image_file(Path("photo.TIFF")) and not files.is_image_file(Path("x.svg"))


def test_image_files_skips_a_fifo_that_carries_an_image_name(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "stream.jpg")
    (tmp_path / "real.jpg").write_bytes(b"")
    assert files.image_files(tmp_path) == [tmp_path / "real.jpg"]


def test_classify_quantize_and_the_benchmarks_pick_the_same_images(tmp_path: Path) -> None:
    from resnet18_triton.client.inputs import expand_inputs
    from resnet18_triton.export.quantize import image_files as calibration_images
    from resnet18_triton.perf.images import read_folder

    _tree(tmp_path)
    expected = files.image_files(tmp_path)
    assert expand_inputs([str(tmp_path)]) == expected
    assert calibration_images(tmp_path) == expected
    assert read_folder(tmp_path) == expected


# Defaults and limits that contract.py defines; any other assignment of them is a second copy.
# The Triton-side model.py files cannot import the package (tests/unit/test_security_defaults.py
# checks that their fallbacks equal the exported values).
_DUPLICATE = re.compile(
    r"(=|default=)\s*(40_000_000|40000000|32 \* 1024 \* 1024|33554432|800[012]|180(\.0)?)\b"
)


def test_defaults_and_limits_are_defined_only_in_the_contract() -> None:
    triton_side = {SOURCE / "server" / "models", SOURCE / "server" / "backends"}
    offenders = [
        f"{path.relative_to(SOURCE)}:{number}: {line.strip()}"
        for path in sorted(SOURCE.rglob("*.py"))
        if path.name != "contract.py" and not any(root in path.parents for root in triton_side)
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _DUPLICATE.search(line)
    ]
    assert offenders == []
