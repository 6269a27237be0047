"""Statements in the docs that the code can check: the docs say what the code does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from resnet18_triton.cli import LAZY_COMMANDS
from resnet18_triton.repository.layout import backend_source

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_ROOT = REPO_ROOT / "src" / "resnet18_triton"
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
PAGES = [REPO_ROOT / "README.md", *DOCS]


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _page_id(page: Path) -> str:
    return str(page.relative_to(REPO_ROOT))


def test_the_ignored_accelerator_warning_quoted_in_the_docs_is_the_one_logged() -> None:
    source = backend_source("onnxruntime").read_text()
    logged = "".join(re.findall(r'"([^"]*)"', source[source.index("log_warn(") :][:400]))
    variants = _flat((REPO_ROOT / "docs" / "variants.md").read_text())
    assert "logs a warning" in variants and _flat(logged) in variants
    # Where the README used to say it: the page on where the ONNX model runs.
    serving = _flat((REPO_ROOT / "docs" / "serving.md").read_text())
    assert "backend logs that it ignores it" in serving


def test_the_readme_opens_with_the_two_commands_that_set_up_and_run_everything() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    first_block = readme.split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:]]
    assert [c for c in commands if c] == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert readme.index("bash scripts/demo.sh") < readme.index("\n## ")
    for script in ("demo.sh", "test.sh"):
        text = (REPO_ROOT / "scripts" / script).read_text()
        assert "bash scripts/setup.sh" in text, f"{script} must do the set-up itself"
    assert "bash scripts/test.sh" in (REPO_ROOT / ".ci" / "run").read_text()


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for link in _links(page):
        if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists() or (
            anchor and target.suffix == ".md" and anchor not in _anchors(target)
        ):
            broken.append(link)
    assert broken == [], f"{_page_id(page)}: broken links {broken}"


def test_the_docs_name_only_subcommands_the_cli_has() -> None:
    named: dict[str, set[str]] = {}
    for page in PAGES:
        # `resnet18-triton NAME` in code: command lines and inline commands (not the image names
        # resnet18-triton/server, not prose about the project).
        code = "\n".join(re.findall(r"```.*?```|`[^`\n]+`", page.read_text(), flags=re.S))
        # (?<!-n ): `kubectl -n resnet18-triton create` names the Kubernetes namespace.
        for name in re.findall(r"(?<!-n )resnet18-triton (\w[\w-]*)", code):
            named.setdefault(name, set()).add(_page_id(page))
    unknown = {name: pages for name, pages in named.items() if name not in LAZY_COMMANDS}
    assert unknown == {}
    assert {"export", "serve", "classify", "health"} <= set(named)


def test_the_commands_page_lists_every_subcommand_with_its_extra() -> None:
    page = (REPO_ROOT / "docs" / "commands.md").read_text()
    # Cells split on the table's pipes, not on an escaped one (`--resize-size N \| ...`).
    rows = [re.split(r"(?<!\\)\|", line) for line in page.splitlines() if line.startswith("| `")]
    for name, (_, _, extra, _) in LAZY_COMMANDS.items():
        row = next((r for r in rows if re.search(rf"`{name}[` ]", r[1])), None)
        assert row is not None, f"{name} missing from docs/commands.md"
        assert (f"`{extra}`" if extra else "—") in row[2], name


def test_the_architecture_page_draws_every_subpackage_and_root_module() -> None:
    page = (REPO_ROOT / "docs" / "architecture.md").read_text()
    subpackages = [p.name for p in PACKAGE_ROOT.iterdir() if (p / "__init__.py").exists()]
    root_modules = [p.stem for p in PACKAGE_ROOT.glob("*.py") if p.stem != "__init__"]
    assert subpackages and root_modules
    for name in subpackages:
        assert f"{name}/" in page, f"subpackage {name}/ not drawn in docs/architecture.md"
    for name in root_modules:
        assert re.search(rf"\b{name}\b", page), f"root module {name} missing"
    for module in (PACKAGE_ROOT / "repository").glob("*.py"):
        if module.stem != "__init__":
            assert f"`{module.stem}`" in page, f"repository/{module.name} missing"
    assert "benchmarks/" in page
    assert "### Adding a variant" in page and "repository/variants.py" in page
