"""The options of ``ServingSettings`` (``export.serving_options``): every field is set by exactly
one option of ``export`` defaulting to the field's default, or is named with the reason no option
sets it; and what the options say reaches the settings the export writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from resnet18_triton.cli import cli
from resnet18_triton.export.cli import export as export_module
from resnet18_triton.export.pipeline import ExportRequest
from resnet18_triton.export.serving_options import SETTING_OPTIONS, WITHOUT_OPTION, SettingOption
from resnet18_triton.repository.configs.settings import ServingSettings

FIELDS = [field.name for field in dataclasses.fields(ServingSettings)]


def export_options(field: str) -> list[click.Option]:
    """The options of ``export`` that reach the command as ``field``."""
    export = cli.get_command(click.Context(cli), "export")
    assert export is not None
    return [p for p in export.params if isinstance(p, click.Option) and p.name == field]


@pytest.mark.parametrize("field", FIELDS)
def test_every_settings_field_is_one_table_row_or_named_with_why_no_option_sets_it(
    field: str,
) -> None:
    rows = [row for row in SETTING_OPTIONS if row.field == field]
    if field in WITHOUT_OPTION:
        assert rows == [] and export_options(field) == [] and WITHOUT_OPTION[field]
    else:
        assert len(rows) == 1, field


def test_the_table_names_only_fields_the_settings_have() -> None:
    named = [row.field for row in SETTING_OPTIONS] + list(WITHOUT_OPTION)
    assert sorted(named) == sorted(FIELDS)


@pytest.mark.parametrize("row", SETTING_OPTIONS, ids=lambda row: row.field)
def test_every_settings_option_is_one_export_option_with_the_fields_default(
    row: SettingOption,
) -> None:
    (option,) = export_options(row.field)
    assert "/".join(option.opts + option.secondary_opts) == row.flag
    if row.derived:  # deliberately None: from_core_budget derives the field
        assert option.default is None
    else:
        assert option.default == getattr(ServingSettings(), row.field)


class Stop(Exception):
    """Raised in place of loading the weights, once the request is known."""


def exported_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str
) -> ServingSettings:
    """The settings ``export ARGS`` would write, taken from its request before any weights load."""
    requests: list[ExportRequest] = []

    def load_model(request: ExportRequest) -> None:
        requests.append(request)
        raise Stop

    monkeypatch.setattr(export_module, "load_model", load_model)
    result = CliRunner().invoke(cli, ["export", "--repo", str(tmp_path / "repo"), *args])
    assert isinstance(result.exception, Stop), result.output
    (request,) = requests
    return request.settings


def test_export_without_settings_options_asks_for_the_core_budget_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert exported_settings(tmp_path, monkeypatch) == ServingSettings.from_core_budget()


def test_every_settings_option_given_reaches_its_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = {
        "cores": 4,
        "onnx_instances": 2,
        "max_batch_size": 4,
        "max_queue_delay_us": 100,
        "max_queue_size": 7,
        "max_image_pixels": 1000,
        "preprocess_instances": 2,
        "jpeg_draft_min_size": 256,
        "response_cache": True,
        "warmup": False,
        "openvino": True,
    }
    assert sorted(given) == sorted(row.field for row in SETTING_OPTIONS)
    args = [
        *("--cores", "4", "--instances", "2", "--max-batch-size", "4"),
        *("--max-queue-delay-us", "100", "--max-queue-size", "7", "--max-image-pixels", "1000"),
        *("--preprocess-instances", "2", "--jpeg-draft-min-size", "256"),
        *("--response-cache", "--no-warmup", "--openvino"),
    ]
    settings = exported_settings(tmp_path, monkeypatch, *args)
    assert settings == ServingSettings.from_core_budget(**given)
    assert {field: getattr(settings, field) for field in given} == given
