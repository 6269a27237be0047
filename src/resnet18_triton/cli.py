"""The ``resnet18-triton`` command: a thin layer over the client, export and server libraries.

Subcommands that need an optional extra (export: torch; serve: the Triton binary) are imported
only when they run, so the base install (the thin client) stays small and a missing extra fails
with a one-line hint instead of an ImportError traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from resnet18_triton.errors import ExitCode, MissingExtraError, ResNet18TritonError

# name -> (module, attribute, extra that provides its dependencies, short help)
LAZY_COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "classify": ("resnet18_triton.client.cli", "classify", "", "Classify image files."),
    "health": ("resnet18_triton.client.cli", "health", "", "Show server and model health."),
    "export": (
        "resnet18_triton.export.cli.export",
        "export",
        "export",
        "Export ResNet-18 to ONNX.",
    ),
    "serve": ("resnet18_triton.server.cli", "serve", "server", "Run the embedded Triton server."),
    "cluster": (
        "resnet18_triton.deploy.cli",
        "cluster",
        "server",
        "Run N serve replicas behind nginx.",
    ),
    "publish": (
        "resnet18_triton.export.cli.publish",
        "publish_command",
        "export",
        "Publish a new version of a served classifier, gated, with no failed request.",
    ),
    "rollback": (
        "resnet18_triton.export.cli.versions",
        "rollback_command",
        "export",
        "Answer with the previous version of a classifier again, or end its canary.",
    ),
    "promote": (
        "resnet18_triton.export.cli.versions",
        "promote_command",
        "export",
        "End a classifier's canary: its version answers every request.",
    ),
    "versions": (
        "resnet18_triton.export.cli.versions",
        "versions_command",
        "export",
        "List a classifier's versions: which answers, which are kept.",
    ),
    "quantize": (
        "resnet18_triton.export.cli.quantize",
        "quantize",
        "export",
        "Quantise the exported model to INT8 (static, calibrated).",
    ),
    "ui": (
        "resnet18_triton.ui.cli",
        "ui",
        "ui",
        "Web page and curl endpoint (POST /v1/classify) for uploads.",
    ),
    "openvino": (
        "resnet18_triton.export.cli.openvino",
        "openvino",
        "export",
        "Serve the classifier with OpenVINO too (bf16, f32, int8), if faithful.",
    ),
    "loadtest": (
        "resnet18_triton.perf.cli",
        "loadtest",
        "perf",
        "Load-test a server with perf_analyzer.",
    ),
    "bench": (
        "resnet18_triton.perf.cli",
        "bench",
        "perf",
        "Benchmark engines and the served paths.",
    ),
    "tune": (
        "resnet18_triton.perf.tune.cli",
        "tune",
        "perf",
        "Find the best instances x threads x batching x variant for this machine.",
    ),
    "soak": (
        "resnet18_triton.perf.cli",
        "soak",
        "perf",
        "Soak a server: minutes of load, every answer checked.",
    ),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(LAZY_COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help lists the short texts from the registry: importing every subcommand (and so
        # torch) just to print --help would take seconds.
        rows = [(name, LAZY_COMMANDS[name][3]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in LAZY_COMMANDS:
            return None
        module_name, attribute, extra, short_help = LAZY_COMMANDS[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            hint = MissingExtraError(extra or "base", (error.name or module_name))
            return _failing_command(name, short_help, str(hint))
        command: click.Command = getattr(module, attribute)
        return command


def _failing_command(name: str, short_help: str, message: str) -> click.Command:
    @click.command(
        name,
        short_help=f"{short_help} (not installed)",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )
    def command() -> None:
        raise click.ClickException(message)

    return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="resnet18-triton")
def cli() -> None:
    """Serve a torchvision ResNet-18 classifier on CPUs with NVIDIA Triton Inference Server."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: turns library errors into one-line messages and documented exit codes."""
    try:
        # With standalone_mode=False click returns ctx.exit()'s code instead of exiting.
        result = cli.main(args=argv, prog_name="resnet18-triton", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except click.ClickException as error:
        error.show()
        # click's own ClickException exits 1, which here means "some images failed".
        sys.exit(ExitCode.USAGE_OR_UNREACHABLE)
    except ResNet18TritonError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    sys.exit(result if isinstance(result, int) else ExitCode.OK)


if __name__ == "__main__":
    main()
