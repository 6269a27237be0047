"""Where the package's click commands live, read from the source with ``ast``.

The rule (docs/architecture.md, "Where commands live"): a package's commands live in its ``cli``
module, ``cli.py``; a package with several commands too large to share one module has a ``cli/``
package instead, with one module per command named after it (a command's subcommands, or a few
commands that are one feature, such as ``versions``, ``rollback`` and ``promote``, share the
module of the first).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import PROJECT_ROOT

SOURCE_ROOT = PROJECT_ROOT / "src"
PACKAGE_ROOT = SOURCE_ROOT / "resnet18_triton"
# Decorators that make a click command of a function: @click.command, @click.group, and a
# group's own @group.command / @group.group.
COMMAND_DECORATORS = ("command", "group")


@dataclass(frozen=True)
class Command:
    """A function a click decorator makes a command: where it is, and the name it is given
    (None when not spelled as a string, e.g. a name computed at run time)."""

    module: str
    name: str | None
    function: ast.FunctionDef


def module_name(path: Path) -> str:
    """``src/pkg/sub/mod.py`` -> ``pkg.sub.mod``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(SOURCE_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_click(tree: ast.Module) -> bool:
    return any(
        isinstance(node, ast.Import) and any(alias.name == "click" for alias in node.names)
        for node in ast.walk(tree)
    )


def command_name(decorator: ast.expr) -> str | None:
    """The name a click command decorator gives, or None when ``decorator`` makes no command."""
    if not isinstance(decorator, ast.Call):
        return None
    target = decorator.func
    called = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
    if called not in COMMAND_DECORATORS:
        return None
    first = decorator.args[0] if decorator.args else None
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else ""


def commands_in(module: str, tree: ast.Module) -> Iterator[Command]:
    """Every function, at any depth, that a click decorator makes a command or group."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                name = command_name(decorator)
                if name is not None:
                    yield Command(module, name or None, node)


def package_commands() -> list[Command]:
    """The click commands defined anywhere in the package's source."""
    found = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        if imports_click(tree):
            found.extend(commands_in(module_name(path), tree))
    return found


def follows_the_rule(module: str, command_names: set[str]) -> bool:
    """Whether ``module`` may define commands named ``command_names``: it is a package's ``cli``,
    or a module of a ``cli`` package named after one of them."""
    package, _, last = module.rpartition(".")
    return last == "cli" or (package.rpartition(".")[2] == "cli" and last in command_names)


COMMANDS = package_commands()
MODULES = sorted({command.module for command in COMMANDS})


def test_the_search_finds_the_commands_groups_and_subcommands() -> None:
    names = {(command.module.rpartition(".")[2], command.name) for command in COMMANDS}
    assert {("cli", "cluster"), ("cli", "keys"), ("cli", "add"), ("quantize", "quantize")} <= names
    assert ("cli", None) in names  # the top-level group, named by its function


@pytest.mark.parametrize("module", MODULES)
def test_every_module_defining_commands_is_a_cli_module_or_named_after_its_command(
    module: str,
) -> None:
    names = {command.name for command in COMMANDS if command.module == module}
    assert follows_the_rule(module, {name for name in names if name}), (
        f"{module} defines {sorted(filter(None, names))}: move them into the package's cli.py, "
        "or into cli/<command>.py"
    )


@pytest.mark.parametrize(
    ("module", "names", "follows"),
    [
        ("resnet18_triton.cli", {"cli"}, True),
        ("resnet18_triton.perf.cli", {"loadtest", "bench", "soak"}, True),
        ("resnet18_triton.export.cli.quantize", {"quantize"}, True),
        ("resnet18_triton.export.quantize_cli", {"quantize"}, False),
        ("resnet18_triton.export.cli.helpers", {"quantize"}, False),
        ("resnet18_triton.export.commands", {"export"}, False),
    ],
)  # fmt: skip
def test_the_rule_takes_cli_modules_and_cli_package_modules_named_after_a_command(
    module: str, names: set[str], follows: bool
) -> None:
    assert follows_the_rule(module, names) is follows


# A command's function reads as its steps: parse, call the library, report. Past this many lines
# it is doing the library's work; the work goes into short functions beside it.
MAX_COMMAND_LINES = 60


def body_lines(function: ast.FunctionDef) -> int:
    """Lines from the first statement of ``function``'s body, its docstring included, to its
    last."""
    assert function.end_lineno is not None
    return function.end_lineno - function.body[0].lineno + 1


@pytest.mark.parametrize(
    "command", COMMANDS, ids=lambda command: f"{command.module}:{command.function.name}"
)
def test_no_command_function_body_is_longer_than_sixty_lines(command: Command) -> None:
    lines = body_lines(command.function)
    assert lines <= MAX_COMMAND_LINES, (
        f"{command.module}.{command.function.name} is {lines} lines long: extract its steps into "
        "short functions"
    )


def test_a_body_is_counted_from_its_docstring_to_its_last_line() -> None:
    (function,) = ast.parse('def f():\n    """Doc."""\n\n    x = 1\n    return x\n').body
    assert isinstance(function, ast.FunctionDef) and body_lines(function) == 4


def test_the_version_commands_start_without_importing_torch_or_onnx_runtime() -> None:
    # `rollback` is what an operator reaches for when a new version misbehaves: it must not wait
    # seconds for an export stack it never uses.
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from resnet18_triton.cli import cli\n"
        "for command in ('versions', 'rollback', 'promote'):\n"
        "    result = CliRunner().invoke(cli, [command, '--help'], prog_name='resnet18-triton')\n"
        "    assert result.exit_code == 0, command\n"
        "print(sorted({'torch', 'torchvision', 'onnxruntime', 'openvino'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
