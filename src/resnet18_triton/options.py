"""Click options that several subcommands share, each defined once.

Every option here is a decorator factory: the command passes what differs (its help text, the
parameter's name) and gets the same flag, type, default and checks as every other command that
has it. No CLI module imports another; what two of them share lives here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from resnet18_triton import contract
from resnet18_triton.repository.layout import DEFAULT_REPOSITORY_DIRNAME, default_repository

F = TypeVar("F", bound=Callable[..., object])
T = TypeVar("T")

# Where a parameter took the value it has when nobody gave one.
_DEFAULT = ParameterSource.DEFAULT

# perf_analyzer's range syntax: START[:END[:STEP]].
RANGE = re.compile(r"^\d+(\.\d+)?(:\d+(\.\d+)?(:\d+(\.\d+)?)?)?$")


def _compose(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """One decorator applying ``decorators`` so that ``--help`` lists them in the given order."""

    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def default_of(cls: type[Any], name: str) -> Any:
    """The declared default of dataclass field ``name`` (so option defaults have one source)."""
    for item in dataclasses.fields(cls):
        if item.name == name:
            if item.default is not dataclasses.MISSING:
                return item.default
            if item.default_factory is not dataclasses.MISSING:
                return item.default_factory()
    raise KeyError(f"{cls.__name__} has no field {name!r} with a default")


def field_option(
    cls: type[Any], flag: str, field: str, type: click.ParamType[Any], help: str | None = None
) -> Callable[[F], F]:
    """``flag`` as the parameter ``field``: sets that field of dataclass ``cls``, by default the
    field's own default (``default_of``), shown in ``--help``."""
    return click.option(
        flag,
        field,
        default=default_of(cls, field),
        show_default=True,
        type=type,
        help=help,
    )


def repository_option(help: str) -> Callable[[F], F]:
    """``--repo`` as the ``repository`` parameter: a folder, by default
    ``$RESNET18_TRITON_REPO`` or ``./model_repository`` (read when the command runs)."""
    return click.option(
        "--repo",
        "repository",
        type=click.Path(file_okay=False, path_type=Path),
        default=default_repository,
        show_default=f"./{DEFAULT_REPOSITORY_DIRNAME}",
        help=help,
    )


def check_classifier_name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """A ``--name`` Triton can serve, or a usage error naming the rule."""
    try:
        contract.check_classifier_name(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    return value


def name_option(help: str, parameter: str = "name") -> Callable[[F], F]:
    """``--name``: the classifier a command works on (default ``resnet18``), checked to be a
    name Triton can serve; passed as ``parameter``."""
    return click.option(
        "--name",
        parameter,
        default=contract.DEFAULT_CLASSIFIER,
        show_default=True,
        callback=check_classifier_name,
        help=help,
    )


URL_HELP = "Triton HTTP endpoint, host:port."


def url_option(help: str = URL_HELP, *, optional: bool = False) -> Callable[[F], F]:
    """``--url``: the server to talk to, by default ``$RESNET18_TRITON_URL`` or 127.0.0.1:8000.

    ``optional``: no default and no environment variable; a command given none starts its own
    server (``bench``, ``soak``).
    """
    if optional:
        return click.option("--url", default=None, help=help)
    return click.option(
        "--url",
        envvar=contract.URL_ENV_VAR,
        show_envvar=True,
        default=contract.DEFAULT_URL,
        show_default=True,
        help=help,
    )


def answer_timeout_option(default: float, help: str) -> Callable[[F], F]:
    """``--timeout``: the seconds a client of Triton waits for an answer, more than 0."""
    return click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=default,
        show_default=True,
        help=help,
    )


def client_concurrency_option(flag: str, default: int, help: str) -> Callable[[F], F]:
    """``flag``: how many requests a client of Triton keeps in flight at once, 1 to 64."""
    return click.option(
        flag, type=click.IntRange(1, 64), default=default, show_default=True, help=help
    )


API_KEY_FILE_HELP = (
    "File (mode 0600) holding the inference API key, sent as 'Authorization: Bearer' with every "
    f"request to a proxy that asks for one. Or set ${contract.API_KEY_ENV_VAR} (or "
    f"${contract.API_KEY_FILE_ENV_VAR}). There is no option for the key itself: other users can "
    "read command lines."
)


def api_key_file_option(help: str = API_KEY_FILE_HELP) -> Callable[[F], F]:
    """``--api-key-file`` as the ``api_key_file`` parameter (a path; ``keys.api_key_from`` reads
    it, or the environment, when the command runs)."""
    return click.option(
        "--api-key-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=help,
    )


def ca_file_option() -> Callable[[F], F]:
    """``--ca-file`` as the ``ca_file`` parameter: PEM CA certificates trusted for an https://
    URL beside the system's (None: ``$RESNET18_TRITON_CA_FILE``, read by the client)."""
    return click.option(
        "--ca-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="PEM file of the CA certificate(s) to trust for an https:// URL, beside the system's "
        f"(e.g. the proxy's self-signed certificate). Or set {contract.CA_FILE_ENV_VAR}.",
    )


def admin_key_file_option(help: str, unset: str = "") -> Callable[[F], F]:
    """``--admin-key-file`` as the ``admin_key_file`` parameter (a path; ``keys.admin_key_from``
    reads it, or the environment, when the command runs). ``help`` says what the key is for;
    where else the key may come from is appended, then ``unset``: what happens without one."""
    environment = f"Or set {contract.ADMIN_KEY_ENV_VAR} (or {contract.ADMIN_KEY_FILE_ENV_VAR})."
    return click.option(
        "--admin-key-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=" ".join(filter(None, (help, environment, unset))),
    )


def move_servers_options() -> Callable[[F], F]:
    """``--url`` (repeatable, as ``urls``) and ``--admin-key-file``: the servers that load a
    version move (publish, promote, rollback)."""
    return _compose(
        click.option(
            "--url",
            "urls",
            multiple=True,
            default=(contract.DEFAULT_URL,),
            show_default=True,
            help="HTTP endpoint (host:port) of a server of this repository; repeat it for each "
            "replica. One that does not answer is skipped: it serves the new version when it "
            "starts.",
        ),
        admin_key_file_option(
            "File (mode 0600) holding the admin key the servers were started with (serve "
            "--admin-key-file, cluster --admin-key-file)."
        ),
    )


def keep_option(default: int) -> Callable[[F], F]:
    """``--keep``: how many versions a move leaves on disk."""
    return click.option(
        "--keep",
        default=default,
        show_default=True,
        type=click.IntRange(2),
        help="Versions kept on disk, the one answering included (the others: to roll back to).",
    )


def image_folder_option(flag: str, help: str, *, required: bool = False) -> Callable[[F], F]:
    """``flag`` (e.g. ``--eval-images``): an existing folder of images, a usage error when it is
    missing; None when not given, unless ``required``."""
    return click.option(
        flag,
        required=required,
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        default=None,
        help=help,
    )


def images_option(help: str) -> Callable[[F], F]:
    """``--images``: a folder of images to send (default: generated ones, as ``help`` says)."""
    return image_folder_option("--images", help)


def labels_option(help: str) -> Callable[[F], F]:
    """``--labels``: a file of class labels (a path, read when the command runs), or None."""
    return click.option(
        "--labels", type=click.Path(dir_okay=False, path_type=Path), default=None, help=help
    )


def image_count_option(parameter: str, default: int, help: str) -> Callable[[F], F]:
    """``--images`` where a command generates its images: how many, passed as ``parameter``."""
    return click.option(
        "--images",
        parameter,
        default=default,
        show_default=True,
        type=click.IntRange(1),
        help=help,
    )


def check_range(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A perf_analyzer range (``START[:END[:STEP]]``), or a usage error showing the form."""
    if value is not None and not RANGE.match(value):
        raise click.BadParameter("expected START[:END[:STEP]], e.g. 1:4:1")
    return value


def fidelity_gate_options(what: str, report_help: str, min_agreement: float) -> Callable[[F], F]:
    """The gate of a variant checked against FP32: ``--min-agreement`` (the top-1 agreement
    below which ``what`` is refused; default ``min_agreement``, export.fidelity's), ``--force``
    (write ``what`` anyway) and ``--report`` (the figures as JSON, passed as ``report_path``)."""
    return _compose(
        click.option(
            "--min-agreement",
            default=min_agreement,
            show_default=True,
            type=click.FloatRange(0, 1),
            help=f"Refuse {what} below this top-1 agreement with FP32 (0.99 = 99%).",
        ),
        click.option("--force", is_flag=True, help=f"Write {what} even below --min-agreement."),
        output_file_option("--report", report_help, "report_path"),
    )


def deprecated_spelling(new: str) -> Callable[[click.Context, click.Parameter, T], T]:
    """The callback of an option kept for one release after a subcommand replaced it: when the
    option is given, it warns on stderr that it is deprecated and names ``new``, the spelling to
    use; the value passes through unchanged, so the old spelling still works."""

    def warn(ctx: click.Context, param: click.Parameter, value: T) -> T:
        if param.name and ctx.get_parameter_source(param.name) is not _DEFAULT:
            old = param.opts[0]
            click.echo(
                f"warning: {old} is deprecated and goes in the next release; use `{new}`",
                err=True,
            )
        return value

    return warn


def deprecated_option(
    flag: str, subcommand: str, new: str, *, metavar: str | None = None
) -> Callable[[F], F]:
    """``flag``, hidden from ``--help``: the old spelling of ``subcommand`` (e.g. ``tune revert``),
    kept for one release. Given, it warns and names ``new``, the command line to use
    (``deprecated_spelling``). A switch; with ``metavar``, an option taking a value (None when
    not given)."""
    # A switch gets click's own default (False); only the option with a value defaults to None.
    takes: dict[str, Any] = (
        {"is_flag": True} if metavar is None else {"metavar": metavar, "default": None}
    )
    return click.option(
        flag,
        hidden=True,
        callback=deprecated_spelling(new),
        help=f"Deprecated spelling of `{subcommand}`.",
        **takes,
    )


def given_here_or_above(ctx: click.Context, name: str) -> object:
    """Parameter ``name`` of a subcommand as given to it, else as given to the nearest group
    above it that took it (``tune --repo X revert`` means X, as ``tune revert --repo X`` does),
    else the subcommand's own default."""
    above = ctx.parent
    while ctx.get_parameter_source(name) is _DEFAULT and above is not None:
        if above.get_parameter_source(name) not in (None, _DEFAULT):
            return above.params[name]
        above = above.parent
    return ctx.params[name]


def served_repository_option(help: str) -> Callable[[F], F]:
    """``--repo`` as the ``repository`` parameter of a command that can make its own repository:
    an existing folder, or None (no default, no environment variable)."""
    return click.option(
        "--repo",
        "repository",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        default=None,
        help=help,
    )


def output_folder_option(flag: str, help: str) -> Callable[[F], F]:
    """``flag``: a folder the command writes into, made when missing (None when not given:
    ``help`` says where the command writes then)."""
    return click.option(
        flag,
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help=help,
    )


def output_file_option(flag: str, help: str, parameter: str | None = None) -> Callable[[F], F]:
    """``flag``, passed as ``parameter`` when given: a file the command also writes its result
    to (None when not given: not written)."""
    return click.option(
        *filter(None, (flag, parameter)),
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=help,
    )


def out_option(help: str) -> Callable[[F], F]:
    """``--out``: the folder a report goes to (None: the command picks a dated one, as ``help``
    says)."""
    return output_folder_option("--out", help)


def concurrency_range_option(default: str, help: str | None = None) -> Callable[[F], F]:
    """``--concurrency``: perf_analyzer's concurrency levels as a range ``START[:END[:STEP]]``,
    checked by ``check_range``."""
    return click.option(
        "--concurrency", default=default, show_default=True, callback=check_range, help=help
    )


def measurement_interval_option(default: int, help: str | None = None) -> Callable[[F], F]:
    """``--measurement-interval`` as the ``interval_ms`` parameter: perf_analyzer's window in
    milliseconds, at least 100."""
    return click.option(
        "--measurement-interval",
        "interval_ms",
        default=default,
        show_default=True,
        type=click.IntRange(100),
        help=help,
    )


def stability_option(help: str | None = None) -> Callable[[F], F]:
    """``--stability``: perf_analyzer's stability percentage, 1 to 100 (default 50)."""
    return click.option(
        "--stability", default=50, show_default=True, type=click.IntRange(1, 100), help=help
    )


def max_trials_option(default: int) -> Callable[[F], F]:
    """``--max-trials``: the most windows perf_analyzer measures per level, at least 1."""
    return click.option("--max-trials", default=default, show_default=True, type=click.IntRange(1))


def max_images_option(default: int) -> Callable[[F], F]:
    """``--max-images``: the most images of a folder (``--images``) a command reads, at least 1."""
    return click.option("--max-images", default=default, show_default=True, type=click.IntRange(1))


def host_option(default: str, help: str) -> Callable[[F], F]:
    """``--host``: the address a command listens on (default ``default``)."""
    return click.option("--host", default=default, show_default=True, help=help)


def port_option(
    flag: str, default: int, help: str | None = None, *, lowest: int = 1
) -> Callable[[F], F]:
    """A port to listen on, ``flag`` (e.g. ``--http-port``): a whole number from ``lowest`` (0
    where 0 means "none") to 65535, by default ``default``."""
    return click.option(
        flag, default=default, show_default=True, type=click.IntRange(lowest, 65535), help=help
    )
