"""What ``quantize`` and ``openvino`` print about the fidelity gate a variant is written behind."""

from __future__ import annotations

from collections.abc import Callable

import click

from resnet18_triton.errors import FidelityRefused
from resnet18_triton.export.fidelity import FidelityReport


def shown_gate(build: Callable[[], FidelityReport], min_agreement: float) -> FidelityReport:
    """The report of ``build()``, which writes a variant behind the fidelity gate, after printing
    its table on stdout, also when the gate refused (the refusal then goes on up), and, when the
    variant was forced below ``min_agreement``, the warning on stderr."""
    try:
        report = build()
    except FidelityRefused as refused:
        click.echo(refused.report.table())
        raise
    click.echo(report.table())
    warning = report.forced_warning(min_agreement)
    if warning:
        click.secho(warning, err=True, fg="yellow", bold=True)
    return report
