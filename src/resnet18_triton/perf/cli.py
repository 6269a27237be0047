"""``resnet18-triton loadtest``, ``bench`` and ``soak`` (the ``perf`` extra)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import click

from resnet18_triton import contract
from resnet18_triton.errors import SoakFailedError
from resnet18_triton.options import (
    admin_key_file_option,
    check_range,
    concurrency_range_option,
    default_of,
    field_option,
    image_count_option,
    images_option,
    max_images_option,
    max_trials_option,
    measurement_interval_option,
    name_option,
    out_option,
    output_file_option,
    served_repository_option,
    stability_option,
    url_option,
)
from resnet18_triton.perf.perf_analyzer import SweepSettings


def _default_out(kind: str) -> Path:
    return Path("reports") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def _strip_scheme(url: str) -> str:
    return re.sub(r"^https?://", "", url).rstrip("/")


F = TypeVar("F", bound=Callable[..., object])


def _sweep_option(
    flag: str, field: str, type: click.ParamType[Any], help: str | None = None
) -> Callable[[F], F]:
    """``flag`` as the parameter ``field``: sets that ``SweepSettings`` field, by default the
    field's own default."""
    return field_option(SweepSettings, flag, field, type, help)


def _load_seconds_option(
    flag: str, default: float, help: str, *, may_be_zero: bool = False
) -> Callable[[F], F]:
    """``flag``: how long a phase of the soak's load lasts, in seconds: more than 0, or also 0
    when ``may_be_zero`` (a phase that may be left out)."""
    return click.option(
        flag,
        default=default,
        show_default=True,
        type=click.FloatRange(min=0, min_open=not may_be_zero),
        help=help,
    )


@click.command("loadtest")
@url_option("Server to load (the embedded server or the container).")
@_sweep_option("--protocol", "protocol", click.Choice(["http", "grpc"]))
@click.option(
    "--model",
    "targets",
    type=click.Choice(["ensemble", "raw", "both"]),
    default="both",
    show_default=True,
    help="ensemble: JPEG bytes in (resnet18); raw: uint8 pixel tensors in (resnet18_onnx).",
)
@name_option("Classifier to load: its ensemble NAME and its ONNX model NAME_onnx.", "classifier")
@images_option("Folder of images sent to the ensemble (default: generated 500x375 JPEGs).")
@max_images_option(32)
@concurrency_range_option(
    default_of(SweepSettings, "concurrency"), "Concurrency sweep START:END:STEP."
)
@click.option(
    "--request-rate",
    default=None,
    callback=check_range,
    help="Request-rate sweep START:END:STEP (requests/s) instead of concurrency.",
)
@measurement_interval_option(
    default_of(SweepSettings, "measurement_interval_ms"), "perf_analyzer window (ms)."
)
@stability_option("perf_analyzer stability percentage (a shared, noisy machine needs a wide one).")
@max_trials_option(default_of(SweepSettings, "max_trials"))
@click.option(
    "--stats-url",
    default=None,
    help="HTTP address for the failed-request count when --protocol grpc (host:port).",
)
@_sweep_option(
    "--batch-size",
    "batch_size",
    click.IntRange(1),
    f"Images per request (at most the model's max_batch_size, {contract.MAX_BATCH_SIZE} "
    "unless exported otherwise).",
)
@_sweep_option(
    "--shared-memory",
    "shared_memory",
    click.Choice(["none", "system"]),
    "system: send tensors through POSIX shared memory instead of the HTTP body "
    "(perf_analyzer on the server's host; the container needs ipc: host).",
)
@admin_key_file_option(
    "File (mode 0600) with the server's admin key: registering shared memory is a restricted "
    "API on `resnet18-triton serve`."
)
@out_option("Output folder (default reports/loadtest-<time>).")
def loadtest(
    url: str,
    protocol: str,
    targets: str,
    classifier: str,
    images: Path | None,
    max_images: int,
    concurrency: str,
    request_rate: str | None,
    interval_ms: int,
    stability: int,
    max_trials: int,
    stats_url: str | None,
    batch_size: int,
    shared_memory: str,
    admin_key_file: Path | None,
    out: Path | None,
) -> None:
    """Sweep a running server with perf_analyzer: CSV, markdown summary and PNG plot."""
    from resnet18_triton.keys import admin_key_from
    from resnet18_triton.perf import images as image_sets
    from resnet18_triton.perf.loadtest import LoadTestPlan, run_loadtest

    admin_key = admin_key_from(admin_key_file)
    if shared_memory != "none" and admin_key and protocol == "grpc":
        raise click.BadParameter(
            "perf_analyzer sends the admin key only over HTTP: use "
            "--protocol http with --shared-memory",
            param_hint="--protocol",
        )
    out = out or _default_out("loadtest")
    chosen = ("ensemble", "raw") if targets == "both" else (targets,)
    label = "500x375"
    if "ensemble" in chosen:
        if images is None:
            files = image_sets.jpeg_set(
                Path("reports") / "images" / "500x375", image_sets.TYPICAL_SIZE, min(max_images, 16)
            )
        else:
            files = image_sets.read_folder(images, max_images)
            label = images.name
            if not files:
                raise click.BadParameter(f"no images in {images}", param_hint="--images")
    else:
        files = []
    settings = SweepSettings(
        concurrency=concurrency,
        request_rate=request_rate,
        measurement_interval_ms=interval_ms,
        stability_percentage=stability,
        max_trials=max_trials,
        batch_size=batch_size,
        shared_memory=shared_memory,
        protocol=protocol,
        admin_key=admin_key,
    )
    plan = LoadTestPlan(
        url=_strip_scheme(url),
        out=out,
        settings=settings,
        targets=chosen,
        images=tuple(files),
        stats_url=stats_url,
        image_label=label,
        classifier=classifier,
    )
    results = run_loadtest(plan, echo=lambda text: click.echo(text, err=True))
    click.echo(
        f"report: {out / 'loadtest.md'} (CSV {out / 'loadtest.csv'}, plot {out / 'loadtest.png'})"
    )
    failed = sum(result.failed_requests or 0 for result in results)
    if failed:
        raise click.ClickException(f"{failed} requests failed during the load test")


@click.command("bench")
@served_repository_option(
    "Model repository to serve and time (default: export one with "
    "random weights into the output folder)."
)
@name_option(
    "Classifier to time: its ensemble, its ONNX model and each of its variants the repository "
    "holds.",
    "classifier",
)
@url_option(
    "Benchmark this running server instead of starting one "
    "(its repository must hold the same model as --repo).",
    optional=True,
)
@click.option(
    "--server-pid",
    default=None,
    type=int,
    help="With --url: the tritonserver pid, to measure the stack's RSS.",
)
@admin_key_file_option(
    "With --url: file (mode 0600) with the server's admin key, to also time the raw model with "
    "tensors in shared memory."
)
@click.option(
    "--threads",
    default=None,
    type=click.IntRange(1),
    help="Threads per in-process engine (default: the cores this process may use).",
)
@click.option(
    "--seconds",
    default=10.0,
    show_default=True,
    type=click.FloatRange(1),
    help="Timed seconds per in-process engine.",
)
@image_count_option("typical_count", 16, "500x375 JPEGs generated.")
@click.option(
    "--large-images",
    "large_count",
    default=4,
    show_default=True,
    type=click.IntRange(1),
    help="12-megapixel JPEGs generated.",
)
@concurrency_range_option("1:4:1")
@measurement_interval_option(5000)
@stability_option()
@out_option("Output folder (default reports/bench-<time>).")
@click.option(
    "--openvino",
    "openvino_precision",
    type=click.Choice(["bf16", "f32", "int8"]),
    default=None,
    help="Also time the OpenVINO variant (built with this precision, gate forced, when the "
    "repository lacks one) against ONNX Runtime FP32, in-process and served. Default: only when "
    "the repository holds the variant.",
)
def bench(
    repository: Path | None,
    classifier: str,
    url: str | None,
    server_pid: int | None,
    admin_key_file: Path | None,
    threads: int | None,
    seconds: float,
    typical_count: int,
    large_count: int,
    concurrency: str,
    interval_ms: int,
    stability: int,
    out: Path | None,
    openvino_precision: str | None = None,
) -> None:
    """PyTorch eager, TorchScript, ORT in-process and the served paths, side by side.

    Times classifier --name: its ensemble, its ONNX model (in-process and served) and the
    variants of it the repository holds. The OpenVINO comparison covers the default classifier.
    """
    from resnet18_triton.extras import require

    require("torch", "export")
    from resnet18_triton.keys import admin_key_from
    from resnet18_triton.perf.bench import BenchPlan, run_bench

    if url and repository is None:
        raise click.BadParameter(
            "--url needs --repo (the in-process engines time its model.onnx)", param_hint="--repo"
        )
    if openvino_precision and classifier != contract.DEFAULT_CLASSIFIER:
        raise click.BadParameter(
            f"--openvino builds and times the {contract.DEFAULT_CLASSIFIER} classifier's variant "
            f"only, not {classifier!r}",
            param_hint="--openvino",
        )
    settings = SweepSettings(
        concurrency=concurrency,
        measurement_interval_ms=interval_ms,
        stability_percentage=stability,
        admin_key=admin_key_from(admin_key_file),
    )
    plan = BenchPlan(
        out=out or _default_out("bench"),
        name=classifier,
        repo=repository.resolve() if repository else None,
        url=_strip_scheme(url) if url else None,
        server_pid=server_pid,
        settings=settings,
        threads=threads or len(os.sched_getaffinity(0)),
        seconds=seconds,
        typical_count=typical_count,
        large_count=large_count,
        openvino=openvino_precision,
    )
    run_bench(plan, echo=lambda text: click.echo(text, err=True))
    click.echo(f"report: {plan.out / 'bench.md'}")


@click.command("soak")
@_load_seconds_option("--duration", 300.0, "Seconds of load after the warm-up.")
@_load_seconds_option(
    "--warmup", 20.0, "Seconds of load before the RSS baseline.", may_be_zero=True
)
@click.option("--concurrency", default=64, show_default=True, type=click.IntRange(1))
@image_count_option("image_count", 64, "Distinct images sent in turn.")
@url_option("Soak this running server (needs --server-pid) instead of starting one.", optional=True)
@click.option(
    "--server-pid",
    default=None,
    type=click.IntRange(1),
    help="With --url: the tritonserver pid, to watch its processes' RSS.",
)
@served_repository_option(
    "Without --url: serve this repository (default: export one with random weights)."
)
@click.option(
    "--max-rss-growth",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Percent any server process may grow after the warm-up.",
)
@output_file_option("--json-out", "Also write the JSON summary here.")
def soak(
    duration: float,
    warmup: float,
    concurrency: int,
    image_count: int,
    url: str | None,
    server_pid: int | None,
    repository: Path | None,
    max_rss_growth: float,
    json_out: Path | None,
) -> None:
    """High-concurrency load for minutes: every answer checked, every server process's RSS
    watched. Exits 1 when a request failed, an answer changed or a process grew or restarted."""
    from contextlib import AbstractContextManager, nullcontext

    from resnet18_triton.extras import require
    from resnet18_triton.perf import harness
    from resnet18_triton.perf import soak as soaking

    if url and server_pid is None:
        raise click.BadParameter(
            "--url needs --server-pid (the soak watches the server's memory)",
            param_hint="--server-pid",
        )
    if url is None and repository is None:
        require("torch", "export")
    images = soaking.distinct_images(image_count)
    server: AbstractContextManager[tuple[str, int]]
    if url and server_pid:
        server = nullcontext((_strip_scheme(url), server_pid))
    else:
        server = soaking.own_server(repository)
    with server as (target, pid):
        click.echo(f"soaking {target}: {warmup:g} s warm-up, then {duration:g} s ...", err=True)
        summary = soaking.run_soak(target, pid, duration, concurrency, warmup, images=images)
    text = json.dumps({**asdict(summary), "machine": asdict(harness.machine())}, indent=2)
    click.echo(text)
    click.echo()
    click.echo(soaking.markdown(summary))
    if json_out:
        json_out.write_text(text + "\n")
    failures = soaking.verdict(summary, max_rss_growth)
    if failures:
        raise SoakFailedError("soak failed: " + "; ".join(failures))
