"""The client reads only regular files under the size limit, and never hangs on a FIFO."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from resnet18_triton import contract
from resnet18_triton.client.inputs import expand_inputs, read_image_bytes
from resnet18_triton.errors import ImageError


def _read_in_thread(path: Path, max_bytes: int = contract.MAX_IMAGE_BYTES) -> str:
    """read_image_bytes' error, from a thread, so that a hang fails the test instead of
    blocking it."""
    outcome: list[str] = []

    def read() -> None:
        try:
            read_image_bytes(path, max_bytes)
            outcome.append("read")
        except ImageError as error:
            outcome.append(str(error))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=60)
    assert outcome, f"reading {path} hung"
    return outcome[0]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "cat.jpg"
    os.mkfifo(fifo)
    assert _read_in_thread(fifo) == "not a regular file (a FIFO); not read"


def test_a_device_is_refused() -> None:
    assert _read_in_thread(Path("/dev/zero")) == "not a regular file (a character device); not read"


def test_a_file_over_the_limit_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * 1001)
    assert _read_in_thread(big, max_bytes=1000).startswith(
        "file is 1001 bytes, over the limit of 1000 bytes"
    )
    assert read_image_bytes(big, max_bytes=1001) == b"\xff" * 1001


def test_the_default_limit_is_the_servers_byte_limit(tmp_path: Path) -> None:
    sparse = tmp_path / "huge.png"
    with open(sparse, "wb") as file:
        file.truncate(contract.MAX_IMAGE_BYTES + 1)  # sparse: no disk, no memory
    assert "over the limit of 33554432 bytes" in _read_in_thread(sparse)


def test_a_directory_lists_regular_files_only(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"jpeg")
    os.mkfifo(tmp_path / "b.jpg")
    os.symlink("/dev/zero", tmp_path / "c.png")
    (tmp_path / "d.png").symlink_to(tmp_path / "a.jpg")
    assert [p.name for p in expand_inputs([str(tmp_path)])] == ["a.jpg"]


@pytest.mark.parametrize("name", ["missing.jpg"])
def test_a_missing_file_keeps_its_short_reason(tmp_path: Path, name: str) -> None:
    assert _read_in_thread(tmp_path / name) == "no such file"
