"""What the container tests' fixtures hand their tests: the engine, the repository the containers
mount, and the second classifier's name and seed (tests/container/conftest.py makes them)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SECOND_CLASSIFIER = "second"
SECOND_SEED = 3


@dataclass
class Engine:
    """How to reach the engine, and the tag this session's images carry."""

    env: dict[str, str]
    tag: str

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        result = subprocess.run(
            ["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result.stdout


@dataclass(frozen=True)
class Repository:
    """The exported repository the containers mount, and what it was made from. ``exported``:
    its files' digests as exported (a publish test adds versions to it later)."""

    path: Path
    digits_model: object
    held_out: list[bytes]
    exported: dict[str, str]
