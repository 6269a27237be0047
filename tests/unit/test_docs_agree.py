"""Statements in the docs that the code can check: the docs say what the code does."""

from __future__ import annotations

import re
from pathlib import Path

from resnet18_triton.server.embedded import ORT_BACKEND_SOURCE

REPO_ROOT = Path(__file__).resolve().parents[2]


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_the_ignored_accelerator_warning_quoted_in_the_docs_is_the_one_logged() -> None:
    source = ORT_BACKEND_SOURCE.read_text()
    logged = "".join(re.findall(r'"([^"]*)"', source[source.index("log_warn(") :][:400]))
    variants = _flat((REPO_ROOT / "docs" / "variants.md").read_text())
    assert "logs a warning" in variants and _flat(logged) in variants
    readme = _flat((REPO_ROOT / "README.md").read_text())
    assert "backend logs that it ignores it" in readme
