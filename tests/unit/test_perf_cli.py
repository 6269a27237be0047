"""The loadtest / bench / soak commands' argument handling and the soak verdict (nothing is run)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from click.testing import CliRunner

from resnet18_triton import contract
from resnet18_triton.cli import cli
from resnet18_triton.perf import soak as soaking
from resnet18_triton.perf.cli import bench, loadtest


def test_loadtest_rejects_a_malformed_range() -> None:
    result = CliRunner().invoke(loadtest, ["--concurrency", "1-4"])
    assert result.exit_code == 2
    assert "START[:END[:STEP]]" in result.output


def test_bench_with_url_needs_the_repository() -> None:
    result = CliRunner().invoke(bench, ["--url", "127.0.0.1:9"])
    assert result.exit_code == 2
    assert "--repo" in result.output


def test_help_mentions_the_container_url() -> None:
    result = CliRunner().invoke(loadtest, ["--help"])
    assert result.exit_code == 0
    assert "--url" in result.output and "--request-rate" in result.output


def test_loadtest_refuses_shared_memory_with_admin_key_over_grpc() -> None:
    # perf_analyzer sends headers over HTTP only: the registration would be refused mid-run.
    result = CliRunner().invoke(
        loadtest,
        ["--protocol", "grpc", "--shared-memory", "system"],
        env={contract.ADMIN_KEY_ENV_VAR: "k"},
    )
    assert result.exit_code == 2
    assert "--protocol http" in result.output


def test_soak_help_lists_its_options() -> None:
    result = CliRunner().invoke(cli, ["soak", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--duration", "--warmup", "--concurrency", "--url", "--server-pid"):
        assert option in result.output
    assert "--max-rss-growth" in result.output and "--json-out" in result.output


def test_soak_with_url_needs_the_server_pid() -> None:
    result = CliRunner().invoke(cli, ["soak", "--url", "127.0.0.1:9"])
    assert result.exit_code == 2
    assert "--server-pid" in result.output


def test_soak_refuses_a_zero_duration() -> None:
    result = CliRunner().invoke(cli, ["soak", "--duration", "0"])
    assert result.exit_code == 2
    assert "--duration" in result.output


def _summary(**changes: Any) -> soaking.SoakSummary:
    clean = soaking.SoakSummary(
        url="127.0.0.1:8000",
        concurrency=4,
        warmup_s=1.0,
        duration_s=3.0,
        distinct_images=8,
        requests_ok=100,
        requests_failed=0,
        answers_wrong=0,
        requests_per_s_after_warmup=30.0,
        errors=(),
        rss_mb_start={"tritonserver": 100.0},
        rss_mb_after_warmup={"tritonserver": 110.0},
        rss_mb_end={"tritonserver": 110.4},
        rss_growth_percent_after_warmup={"tritonserver": 0.4},
        max_rss_growth_percent=0.4,
        answers_after_soak_equal=True,
        max_difference_from_reference=None,
        processes_alive_at_end=True,
        pids_unchanged=True,
    )
    return replace(clean, **changes)


def test_soak_verdict_passes_a_clean_summary() -> None:
    assert soaking.verdict(_summary(), max_rss_growth_percent=10.0) == []


def test_soak_verdict_names_each_failure() -> None:
    failures = soaking.verdict(
        _summary(requests_failed=3, max_rss_growth_percent=12.5, pids_unchanged=False),
        max_rss_growth_percent=10.0,
    )
    assert len(failures) == 3
    assert "3 requests failed" in failures[0]
    assert "12.5 %" in failures[1] and "10 %" in failures[1]
    assert "replaced" in failures[2]
    far = soaking.verdict(_summary(max_difference_from_reference=1e-3), 10.0)
    assert len(far) == 1 and "reference" in far[0]


def test_soak_markdown_has_a_row_per_process() -> None:
    text = soaking.markdown(_summary())
    assert "concurrency 4, 8 distinct images" in text
    assert "| tritonserver | 100.0 | 110.0 | 110.4 | 0.4 % |" in text
