"""The command-line options of ``ServingSettings``, from one table.

``SETTING_OPTIONS`` gives each option its field of ``repository.configs.ServingSettings``, its
spelling, help and type; its default is the field's default, except where a row says why it is
None. ``WITHOUT_OPTION`` names every other field and why no option sets it, so the two together
cover every field once (a unit test holds them to that). ``serving_options`` applies the options;
``serving_settings`` turns their values into the settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from resnet18_triton.repository.configs.settings import ServingSettings

F = TypeVar("F", bound=Callable[..., object])

_DEFAULTS = ServingSettings()


@dataclass(frozen=True)
class SettingOption:
    """The option that sets ``ServingSettings`` field ``field``.

    ``flag``: the spelling; ``--x/--no-x`` makes a switch, and a lone flag on a bool field an
    on-only flag. ``derived``: not empty when the option's default is None rather than the
    field's: the settings then derive the field (``ServingSettings.from_core_budget``), and
    ``derived`` says from what.
    """

    field: str
    flag: str
    help: str | None = None
    type: click.IntRange | None = None
    derived: str = ""

    @property
    def default(self) -> object:
        """What the command gets when the option is not given."""
        return None if self.derived else getattr(_DEFAULTS, self.field)

    def option(self) -> Callable[[F], F]:
        """The click option, reaching the command under the field's name."""
        if isinstance(self.default, bool) and "/" not in self.flag:
            return click.option(
                self.flag, self.field, is_flag=True, default=self.default, help=self.help
            )
        return click.option(
            self.flag,
            self.field,
            default=self.default,
            show_default=self.default is not None,
            type=self.type,
            help=self.help,
        )


# In the order `export --help` lists them.
SETTING_OPTIONS = (
    SettingOption(
        "cores",
        "--cores",
        "Cores given to inference (default: the cores this process may use).",
        click.IntRange(1),
        derived="the cores this process may run on",
    ),
    SettingOption(
        "onnx_instances",
        "--instances",
        "ONNX Runtime model instances; intra-op threads = cores // instances.",
        click.IntRange(1),
    ),
    SettingOption("max_batch_size", "--max-batch-size", type=click.IntRange(1, 256)),
    SettingOption(
        "max_queue_delay_us",
        "--max-queue-delay-us",
        "Dynamic batching: how long a request may wait for others to join its batch.",
        click.IntRange(0),
    ),
    SettingOption(
        "max_queue_size",
        "--max-queue-size",
        "Requests each batching model queues before refusing more at once (503, 'Exceeds "
        "maximum queue size'). Default: about 2 s of work for the core budget; 0: unbounded, "
        "so a flood queues until clients time out.",
        click.IntRange(0),
        derived="the core budget (repository.configs.queue_bound)",
    ),
    SettingOption(
        "max_image_pixels",
        "--max-image-pixels",
        "Preprocessing refuses images with more pixels (decompression bombs).",
        click.IntRange(1),
    ),
    SettingOption(
        "preprocess_instances",
        "--preprocess-instances",
        "Python preprocessing instances (one core each while decoding). 2 pays for "
        "large photos, whose decode dominates (12-MP JPEGs: 1.3x with --jpeg-draft-min-size "
        "256); no gain for ~500x375 images, +50 MB (docs/performance.md).",
        click.IntRange(1),
    ),
    SettingOption(
        "jpeg_draft_min_size",
        "--jpeg-draft-min-size",
        "Decode JPEGs at least twice this size per side at 1/2..1/8 scale in the DCT "
        "domain (Image.draft); 256 makes 12-MP JPEGs ~3x cheaper but moves their "
        "probabilities by up to ~1e-4, so 0 (off, exact torchvision preprocessing) is the "
        "default.",
        click.IntRange(0),
    ),
    SettingOption(
        "response_cache",
        "--response-cache/--no-response-cache",
        "Mark the ensemble and classifier configs `response_cache { enable: true }`. "
        "Triton then answers a repeated request from its cache, but only when the "
        "server runs with a cache (serve --response-cache-bytes N); harmless without.",
    ),
    SettingOption(
        "warmup",
        "--warmup/--no-warmup",
        "Add model_warmup samples (a generated JPEG for preprocess, zeros for the "
        "classifier) so the server is ready only once the models are warm.",
    ),
    SettingOption(
        "openvino",
        "--openvino",
        "Container only: ask the native ONNX Runtime backend for its OpenVINO "
        "accelerator. The embedded server's Python-based backend ignores it.",
    ),
)

# The fields no option sets: field -> why. They keep their defaults, or the derived value.
WITHOUT_OPTION = {
    "intra_op_threads": "derived from --cores // --instances (the core budget rule)",
    "inter_op_threads": "the graph is a chain: parallel execution buys nothing",
    "queue_timeout_us": "derived from the queue budget (repository.configs.queue_timeout_us)",
    "preferred_batch_sizes": "none preferred: Triton batches what is queued; the library sets it",
    "max_image_bytes": "the contract's limit (contract.MAX_IMAGE_BYTES); the library sets it",
    "max_aspect_ratio": "the contract's limit (contract.MAX_ASPECT_RATIO); the library sets it",
    "allowed_formats": "the contract's formats (contract.ALLOWED_FORMATS); the library sets it",
    "intra_op_spinning": "off as measured (docs/performance.md); the library sets it for A/Bs",
    "ort_memory_arena": "off as measured (docs/performance.md); the library sets it for A/Bs",
}


def serving_options(command: F) -> F:
    """The options of ``SETTING_OPTIONS``, listed by ``--help`` in that order; each reaches the
    command as a keyword argument named after its field."""
    for row in reversed(SETTING_OPTIONS):
        command = row.option()(command)
    return command


def serving_settings(values: Mapping[str, Any]) -> ServingSettings:
    """The settings the options' ``values`` (field -> value) ask for, checked against the core
    budget. ``ServingSettings.from_core_budget`` gives every other field, and every field whose
    value is None (a derived option not given), its derived value or its default."""
    given = {field: value for field, value in values.items() if value is not None}
    return ServingSettings.from_core_budget(**given)
