"""Why tritonserver did not load a repository's models, read from its log, in words to act on.

tritonserver started with ``--load-model`` exits when one of them fails, and its own message
lists every model with the generic reason its backend gave (for a Python-based stub that crashed:
``Stub process 'NAME_0_0' is not healthy``). What a person needs is which models, what the stubs
printed before they died (their stderr shares the server's log), and what to try: this module
turns the log into that. Pure functions over text; ``EmbeddedServer`` calls ``explain``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from resnet18_triton.contract import ClassifierNames
from resnet18_triton.repository import variants

# tritonserver's summary when a model listed with --load-model did not load, one line each.
_FAILED = re.compile(r"load failed for model '(?P<model>[^']+)': (?P<reason>.*?);?\s*$")
# Lines of tritonserver's own logger (I/W/E + date), its tables, and its or the launcher's
# summaries: everything else in the log was written by a stub.
_SERVER_LINE = re.compile(r"^([IWEF]\d{4} \d|[|+]|error: |Error: |note: |load failed for model )")
_STUB_DIED = "is not healthy"
STUB_OUTPUT_LINES = 8


@dataclass(frozen=True)
class LoadFailure:
    """One model tritonserver did not load, and the reason it gave."""

    model: str
    reason: str

    @property
    def dependent(self) -> bool:
        """True for an ensemble that failed only because a model it runs did."""
        return "depends on '" in self.reason


def load_failures(log: str) -> list[LoadFailure]:
    """Every model the log says failed to load, once each, in the order it names them."""
    found: dict[str, LoadFailure] = {}
    for line in log.splitlines():
        match = _FAILED.search(line)
        if match and match["model"] not in found:
            found[match["model"]] = LoadFailure(match["model"], match["reason"].strip())
    return list(found.values())


def stub_output(log: str, count: int = STUB_OUTPUT_LINES) -> list[str]:
    """The last ``count`` lines of the log that tritonserver's logger did not write."""
    lines = [line.rstrip() for line in log.splitlines()]
    return [line for line in lines if line.strip() and not _SERVER_LINE.match(line)][-count:]


def _what_to_try(causes: list[LoadFailure], repository: Path) -> list[str]:
    steps = []
    if any(_STUB_DIED in failure.reason for failure in causes):
        steps.append(
            "a stub process died while loading its model (a crash in native code: its output "
            "is above); `resnet18-triton serve --allocator system` tells whether the preloaded "
            "malloc is involved; please report it with this log"
        )
    for failure in causes:
        owner = variants.classifier_of(failure.model)
        if owner is None:
            continue
        names, variant = owner
        models = " ".join(str(repository / model) for model in _variant_family(variant, names))
        steps.append(
            f"to serve everything else without the {variant.key} variant of {names.name}, "
            f"remove it (rm -r {models}) or write it again with `resnet18-triton "
            f"{variant.write_command} --name {names.name}`"
        )
    steps.append("`resnet18-triton serve --log-verbose 1` logs each step of the load")
    return list(dict.fromkeys(steps))


def _variant_family(variant: variants.Variant, names: ClassifierNames) -> list[str]:
    """The models of ``variant`` and of the variants fused from it or that it fuses: what one
    writer installs together, and what goes when it is removed."""
    base = variants.fused_source(variant) or variant
    family = [base, variants.fused_of(base)]
    return [model for member in family if member for model in member.models(names)]


def explain(log: str, repository: Path) -> str | None:
    """Which models failed to load, why, the stubs' last output and what to try; None when the
    log names no failed load."""
    failures = load_failures(log)
    if not failures:
        return None
    causes = [failure for failure in failures if not failure.dependent] or failures
    dependents = [failure.model for failure in failures if failure.dependent]
    lines = [f"{len(causes)} model(s) failed to load:"]
    lines += [f"  {failure.model}: {failure.reason}" for failure in causes]
    if len(causes) < len(failures):
        lines.append(f"  (so did the ensembles that run them: {', '.join(dependents)})")
    output = stub_output(log)
    if output:
        lines.append("the stubs' last output:")
        lines += [f"  {line}" for line in output]
    lines.append("what to try:")
    lines += [f"  - {step}" for step in _what_to_try(causes, repository)]
    return "\n".join(lines)
