"""Load a torchvision ResNet-18 and record where its weights came from.

Three sources, chosen with one string (the CLI's ``--weights``):

* ``"imagenet"``: torchvision's ``ResNet18_Weights.IMAGENET1K_V1``, downloaded into the torch cache
  on first use. Offline this fails within seconds with WeightsUnavailableError explaining the
  alternatives.
* ``"random"``: a seeded random initialisation. Useful to exercise the serving path on a machine
  without the weights; its predictions are meaningless, which the provenance says loudly.
* anything else: a path to a ResNet-18 checkpoint: a state dict saved with ``torch.save`` (any
  class count, from ``fc.weight``; possibly nested under ``state_dict`` or ``model``, with
  DataParallel's ``module.`` or Lightning's ``model.`` key prefixes), or a whole TorchScript module
  (``torch.jit.save``). ONNX files are taken by ``export.onnx_input``. (A file literally named
  ``random`` or ``imagenet`` must be given as ``./random``.)

Every model comes with a ``Provenance`` that is written into the ONNX metadata and the Triton
model config, so a served model can always say which weights it runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import socket
import urllib.error
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torchvision.models import ResNet18_Weights, resnet18

from resnet18_triton.errors import WeightsUnavailableError

WeightsSource = Literal["imagenet", "random", "file"]

IMAGENET_WEIGHTS = ResNet18_Weights.IMAGENET1K_V1
# urlopen in torch.hub has no timeout: without one, a network that drops packets (instead of
# refusing them) would hang the export forever. This bounds each socket operation, not the whole
# download, so a slow but progressing download still completes.
DOWNLOAD_SOCKET_TIMEOUT_S = 30.0
# How many offending state-dict keys an error message names before saying "and N more".
_MAX_NAMED_KEYS = 5
# Keys under which training scripts commonly nest the state dict in a checkpoint.
_NESTED_STATE_DICT_KEYS = ("state_dict", "model")
# Key prefixes added by wrappers: DataParallel / DistributedDataParallel, Lightning modules.
_KEY_PREFIXES = ("module.", "model.")
# A TorchScript module vs torchvision's ResNet-18 with its parameters: same ops, same order.
_TORCHSCRIPT_ATOL = 1e-4


@dataclass(frozen=True)
class Provenance:
    """Where a model's weights came from; serialised into the exported artefacts."""

    source: WeightsSource
    seed: int | None = None
    path: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if self.source not in get_args(WeightsSource):
            raise ValueError(f"unknown weights source {self.source!r}")

    @property
    def is_random(self) -> bool:
        """True when predictions are meaningless (random initialisation)."""
        return self.source == "random"

    def to_json(self) -> str:
        """Compact JSON with sorted keys: stable text for metadata and config parameters."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Provenance:
        """Inverse of ``to_json``; raises ValueError for text that is not a provenance record."""
        data = json.loads(text)
        if not isinstance(data, dict) or "source" not in data:
            raise ValueError(f"not a weights provenance record: {text!r}")
        known = {"source", "seed", "path", "sha256"}
        return cls(**{key: value for key, value in data.items() if key in known})

    def describe(self) -> str:
        """One line for people, e.g. in ``export`` output and the server's model description."""
        if self.source == "random":
            return f"RANDOM weights (seed {self.seed}): labels are meaningless"
        if self.source == "imagenet":
            return "ImageNet-1k weights (torchvision ResNet18_Weights.IMAGENET1K_V1)"
        digest = f", sha256 {self.sha256[:12]}…" if self.sha256 else ""
        return f"weights from file {self.path}{digest}"


def load_resnet18(weights: str, seed: int = 0) -> tuple[torch.nn.Module, Provenance]:
    """Return a ResNet-18 in eval mode with the requested weights, and their provenance.

    ``weights`` is ``"imagenet"``, ``"random"`` or a path to a state dict. ``seed`` only matters
    for ``"random"``. Raises WeightsUnavailableError when the weights cannot be obtained.
    """
    if weights == "imagenet":
        model, provenance = _load_imagenet()
    elif weights == "random":
        model, provenance = _load_random(seed)
    else:
        model, provenance = _load_file(Path(weights))
    return model.eval(), provenance


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names in logit order (shipped with torchvision, no download)."""
    return list(IMAGENET_WEIGHTS.meta["categories"])


def imagenet_cache_path() -> Path:
    """Where torch.hub keeps (or would keep) the downloaded ImageNet checkpoint."""
    filename: str = os.path.basename(IMAGENET_WEIGHTS.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks so large checkpoints do not fill memory."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_imagenet() -> tuple[torch.nn.Module, Provenance]:
    cache = imagenet_cache_path()
    if not cache.is_file():
        _download_imagenet(cache)
    # Loading is separate from downloading so a corrupt cached file is reported as such,
    # not as a network problem.
    return _model_from_file(cache), Provenance("imagenet", sha256=file_sha256(cache))


def _download_imagenet(cache: Path) -> None:
    """Download into the torch.hub cache (atomically: torch.hub writes a .partial file first)."""
    match = torch.hub.HASH_REGEX.search(cache.name)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with _socket_timeout(DOWNLOAD_SOCKET_TIMEOUT_S):
            torch.hub.download_url_to_file(
                IMAGENET_WEIGHTS.url,
                str(cache),
                hash_prefix=match.group(1) if match else None,
                progress=False,
            )
    # URLError (no DNS, refused, HTTP error) and socket timeouts are OSErrors; RuntimeError is
    # torch.hub's hash mismatch; HTTPException covers a connection cut mid-download.
    except (urllib.error.URLError, OSError, RuntimeError, http.client.HTTPException) as error:
        raise WeightsUnavailableError(_imagenet_unavailable_message(error)) from error


def _imagenet_unavailable_message(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    cache = imagenet_cache_path()
    return (
        f"cannot download the ImageNet ResNet-18 weights from {IMAGENET_WEIGHTS.url} "
        f"({reason}); this machine may be offline. Use `--weights random` to export a "
        f"deterministic randomly initialised model (predictions are meaningless, but it exercises "
        f"the whole serving path), or `--weights PATH` with a state dict saved by "
        f"torch.save(model.state_dict(), PATH). Alternatively download {cache.name} on a machine "
        f"with network access and copy it to {cache} (the torch cache: set TORCH_HOME to use "
        f"another directory), then run again with `--weights imagenet`."
    )


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Temporarily give sockets without an explicit timeout one (torch.hub sets none)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _load_random(seed: int) -> tuple[torch.nn.Module, Provenance]:
    # fork_rng: seed the initialisation without changing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = resnet18(weights=None)
    return model, Provenance("random", seed=seed)


def _load_file(path: Path) -> tuple[torch.nn.Module, Provenance]:
    if not path.is_file():
        raise WeightsUnavailableError(
            f"weights file {path} does not exist (or is not a file); --weights takes "
            f"'imagenet', 'random' or the path to a state dict saved by torch.save"
        )
    # The file name only: config.pbtxt is readable through the model-config API, and a host path
    # there tells a caller about the machine.
    provenance = Provenance("file", path=path.name, sha256=file_sha256(path))
    return _model_from_file(path), provenance


def _model_from_file(path: Path) -> torch.nn.Module:
    if is_torchscript_archive(path):
        return _model_from_torchscript(path)
    return resnet18_from_state_dict(_read_state_dict(path), str(path))


def resnet18_from_state_dict(state_dict: Mapping[str, Any], source: str) -> torch.nn.Module:
    """A torchvision ResNet-18 whose class count is the rows of ``fc.weight``, loaded from
    ``state_dict`` after removing DataParallel's ``module.`` and Lightning's ``model.``
    prefixes. Raises WeightsUnavailableError naming what does not fit."""
    state_dict = strip_prefixes(state_dict)
    fc_weight = state_dict.get("fc.weight")
    if not isinstance(fc_weight, torch.Tensor) or fc_weight.dim() != 2:
        raise WeightsUnavailableError(
            f"weights file {source} is not a torchvision ResNet-18: it has no 2-D fc.weight "
            f"(the classifier head){_architecture_hint(state_dict)}; found keys such as "
            f"{', '.join(list(state_dict)[:_MAX_NAMED_KEYS])}"
        )
    model: torch.nn.Module = resnet18(weights=None, num_classes=int(fc_weight.shape[0]))
    _check_compatible(model.state_dict(), state_dict, source)
    model.load_state_dict(state_dict)
    return model


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove ``module.`` (DataParallel) and ``model.`` (Lightning) prefixes shared by every key,
    in any nesting (``model.module.conv1.weight`` -> ``conv1.weight``)."""
    keys = dict(state_dict)
    while keys:
        prefix = next((p for p in _KEY_PREFIXES if all(k.startswith(p) for k in keys)), None)
        if prefix is None:
            break
        keys = {key[len(prefix) :]: value for key, value in keys.items()}
    return keys


def is_torchscript_archive(path: Path) -> bool:
    """True for a file written by ``torch.jit.save`` (a zip archive with TorchScript code)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _model_from_torchscript(path: Path) -> torch.nn.Module:
    """The ResNet-18 a TorchScript module holds, rebuilt from its parameters and checked to
    compute what the module computes (so the exported graph is torchvision's, not opaque code)."""
    try:
        # torch leaves jit.load unannotated.
        scripted = torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]
    except Exception as error:  # torch.jit.load raises RuntimeError and friends
        raise WeightsUnavailableError(f"cannot load TorchScript module {path}: {error}") from error
    model = resnet18_from_state_dict(scripted.state_dict(), str(path)).eval()
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, rebuilt = scripted(images), model(images)
    if not isinstance(expected, torch.Tensor) or expected.shape != rebuilt.shape:
        raise WeightsUnavailableError(
            f"TorchScript module {path} does not return [batch, classes] logits like a ResNet-18"
        )
    difference = float((expected - rebuilt).abs().max())
    if difference > _TORCHSCRIPT_ATOL:
        raise WeightsUnavailableError(
            f"TorchScript module {path} has ResNet-18 parameters but computes something else "
            f"(logits differ by {difference:.3g} from torchvision's ResNet-18 with them)"
        )
    return model


def _architecture_hint(state_dict: Mapping[str, Any]) -> str:
    """What the keys say the network is, when it is not a ResNet-18."""
    if any(".conv3." in key for key in state_dict):
        return " (it has bottleneck blocks: a ResNet-50 or deeper?)"
    if any(key.startswith(("layer1.2.", "layer2.2.", "layer3.2.")) for key in state_dict):
        return " (it has more than 2 blocks per stage: a ResNet-34?)"
    if not any(key.startswith("layer1.") for key in state_dict):
        return " (it has no layer1..layer4 residual stages)"
    return ""


def _read_state_dict(path: Path) -> Mapping[str, Any]:
    try:
        # weights_only: a checkpoint from elsewhere must not be able to run code when loaded.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types (UnpicklingError, RuntimeError, ...)
        raise WeightsUnavailableError(
            f"cannot read weights file {path} as a state dict ({error}). Save the weights with "
            f"torch.save(model.state_dict(), PATH), not the pickled model"
        ) from error
    for key in _NESTED_STATE_DICT_KEYS:
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
            break
    if not isinstance(loaded, Mapping):
        raise WeightsUnavailableError(
            f"weights file {path} holds a {type(loaded).__name__}, not a state dict "
            f"(a dict of tensors, possibly under a 'state_dict' or 'model' key)"
        )
    return loaded


def _check_compatible(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, Any], source: str
) -> None:
    """Raise one message listing missing, unexpected and wrongly shaped keys, not just the first."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    wrong_shape = [
        f"{key} {_shape(found[key])} (expected {tuple(expected[key].shape)})"
        for key in expected
        if key in found and _shape(found[key]) != tuple(expected[key].shape)
    ]
    problems = [
        _name_some(label, items)
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", wrong_shape),
        )
        if items
    ]
    if problems:
        classes = int(expected["fc.weight"].shape[0])
        raise WeightsUnavailableError(
            f"weights file {source} does not fit torchvision's resnet18 ({classes} classes, "
            f"from fc.weight){_architecture_hint(found)}: " + "; ".join(problems)
        )


def _shape(value: Any) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _name_some(label: str, items: list[str]) -> str:
    named = ", ".join(items[:_MAX_NAMED_KEYS])
    more = f" and {len(items) - _MAX_NAMED_KEYS} more" if len(items) > _MAX_NAMED_KEYS else ""
    return f"{len(items)} {label} ({named}{more})"
