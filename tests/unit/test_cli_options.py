"""The options several subcommands share (``resnet18_triton.options``): each command that has one
gets the same flag, default and checks."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from resnet18_triton import contract
from resnet18_triton.cli import cli
from resnet18_triton.export.fidelity import DEFAULT_MIN_AGREEMENT

NAMED = ("export", "quantize", "openvino", "loadtest", "bench", "tune")
URL_FROM_THE_ENVIRONMENT = ("classify", "health", "ui", "loadtest")
URL_OR_OWN_SERVER = ("bench", "soak")
ADMIN_KEY_FILE = ("serve", "loadtest", "bench")
API_KEY_FILE = ("classify", "health", "ui")
FIDELITY_GATE = ("quantize", "openvino")


def option(command: str, flag: str) -> click.Option:
    found = cli.get_command(click.Context(cli), command)
    assert found is not None, command
    return next(p for p in found.params if isinstance(p, click.Option) and flag in p.opts)


@pytest.mark.parametrize("command", NAMED)
def test_every_name_option_defaults_to_the_default_classifier(command: str) -> None:
    assert option(command, "--name").default == contract.DEFAULT_CLASSIFIER


@pytest.mark.parametrize("command", NAMED)
def test_every_name_option_refuses_a_name_triton_cannot_serve(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--name", "a/b"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--name'" in result.output and "not allowed" in result.output


@pytest.mark.parametrize("command", URL_FROM_THE_ENVIRONMENT)
def test_a_url_option_with_a_default_reads_the_environment(command: str) -> None:
    url = option(command, "--url")
    assert (url.default, url.envvar) == (contract.DEFAULT_URL, contract.URL_ENV_VAR)


@pytest.mark.parametrize("command", URL_OR_OWN_SERVER)
def test_a_url_option_of_a_command_that_starts_its_own_server_has_no_default(
    command: str,
) -> None:
    url = option(command, "--url")
    assert url.default is None and url.envvar is None


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        *((c, "--admin-key-file") for c in ADMIN_KEY_FILE),
        *((c, "--api-key-file") for c in API_KEY_FILE),
    ],
)
def test_key_options_take_a_file_and_name_the_environment_variables(
    command: str, flag: str
) -> None:
    key = option(command, flag)
    assert isinstance(key.type, click.Path) and key.default is None
    variable = (
        contract.ADMIN_KEY_ENV_VAR if flag == "--admin-key-file" else contract.API_KEY_ENV_VAR
    )
    assert variable in (key.help or "")


@pytest.mark.parametrize("command", FIDELITY_GATE)
def test_the_fidelity_gate_is_the_same_on_every_variant_command(command: str) -> None:
    assert option(command, "--min-agreement").default == DEFAULT_MIN_AGREEMENT
    assert option(command, "--force").is_flag
    assert option(command, "--report").name == "report_path"


@pytest.mark.parametrize("command", ["loadtest", "tune"])
def test_a_malformed_concurrency_range_is_refused_showing_the_form(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--concurrency", "1-4"])
    assert result.exit_code == 2
    assert "START[:END[:STEP]]" in result.output
