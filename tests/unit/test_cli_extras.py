"""A subcommand whose extra is not installed fails with a one-line hint naming the extra."""

from __future__ import annotations

import pytest

from resnet18_triton import cli
from resnet18_triton.errors import ExitCode, MissingExtraError
from resnet18_triton.extras import require


def test_require_names_the_extra() -> None:
    with pytest.raises(MissingExtraError) as caught:
        require("no_such_module_for_tests", "export")
    assert str(caught.value) == (
        "this needs the 'export' extra (missing module 'no_such_module_for_tests'): "
        "pip install 'resnet18-triton[export]'"
    )


def test_lazy_command_with_missing_dependency_prints_one_line_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(
        cli.LAZY_COMMANDS, "fancy", ("no_such_module_for_tests.cli", "fancy", "perf", "Fancy.")
    )
    with pytest.raises(SystemExit) as exited:
        cli.main(["fancy", "--some-option", "x"])
    assert exited.value.code == ExitCode.USAGE_OR_UNREACHABLE
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert error_lines == [
        "Error: this needs the 'perf' extra (missing module 'no_such_module_for_tests'): "
        "pip install 'resnet18-triton[perf]'"
    ]


def test_help_lists_every_subcommand_without_importing_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name in ("export", "serve", "classify", "health", "quantize", "loadtest", "bench", "soak"):
        assert f"  {name} " in out
