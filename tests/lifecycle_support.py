"""Load and readiness while a server changes what it serves (a model version, a dead stub).

``ReadinessProbe`` samples the server's and the classifier's readiness in a thread;
``VersionedLoad`` keeps clients sending images and records, for every answer, the version the
server named and the probabilities, so a test can check each answer against the version it names.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from resnet18_triton import contract
from resnet18_triton.repository.configs.parser import read_config


def served_pins(url: str, model: str) -> tuple[list[int], dict[str, int]]:
    """The ensemble ``model`` as the server at ``url`` runs it (``GET /v2/models/M/config``): the
    versions its policy serves, and each step's model version (-1: the latest)."""
    with urllib.request.urlopen(f"http://{url}/v2/models/{model}/config", timeout=30) as reply:
        config = json.load(reply)
    policy = config.get("version_policy", {}).get("specific", {}).get("versions", [])
    steps = config["ensemble_scheduling"]["step"]
    return [int(v) for v in policy], {s["model_name"]: int(s["model_version"]) for s in steps}


def repository_pins(repo: Path, model: str) -> tuple[list[int], dict[str, int]]:
    """``served_pins`` as the repository's config of ``model`` says it should be."""
    config = read_config(repo, model)
    policy = [int(v) for v in config.version_policy.specific.versions]
    steps = config.ensemble_scheduling.step
    return policy, {step.model_name: int(step.model_version) for step in steps}


def status(url: str, path: str) -> int | None:
    """The HTTP status, or None when no answer came (slow is not "not ready" on 2 busy cores)."""
    try:
        with urllib.request.urlopen(f"http://{url}{path}", timeout=30) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


class ReadinessProbe:
    """Samples /v2/health/ready and the classifier's readiness every 0.2 s in a thread."""

    def __init__(self, url: str, model: str = contract.ENSEMBLE_MODEL) -> None:
        self.url, self.model, self.samples = url, model, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ReadinessProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append(
                (
                    time.monotonic(),
                    status(self.url, "/v2/health/ready"),
                    status(self.url, f"/v2/models/{self.model}/ready"),
                )
            )

    def not_ready(self) -> int:
        """Samples in which the server answered not ready (/v2/health/ready != 200)."""
        return sum(server not in (200, None) for _, server, _ in self.samples)

    def ensemble_not_ready(self) -> int:
        """Samples in which the classifier answered not ready."""
        return sum(model not in (200, None) for _, _, model in self.samples)


@dataclass
class Answer:
    image: int
    version: str
    probabilities: np.ndarray
    model: str = ""
    at: float = 0.0  # time.monotonic() when it came


@dataclass
class Published:
    """A classifier the lifecycle tests publish to: its repository, the server whose admin API
    ``publish`` loads through (``admin_url``, with the key in ``key_file``), the held-out images
    of its gate, checkpoints by label, and each version's reference probabilities of
    ``images``."""

    name: str
    work: Path
    repo: Path
    admin_url: str
    key_file: Path
    eval_images: Path
    checkpoints: dict[str, Path]
    references: dict[str, np.ndarray]  # version -> probabilities of ``images``
    images: list[bytes]

    def command(self, *args: str) -> list[str]:
        """``resnet18-triton ARGS`` for this classifier, repository and server."""
        servers = ["--url", self.admin_url, "--admin-key-file", str(self.key_file)]
        return [*args, "--name", self.name, "--repo", str(self.repo), *servers]

    def publish(self, weights: str, *extra: str) -> list[str]:
        """``publish`` of the checkpoint labelled ``weights``, gated on the held-out images."""
        return self.command(
            "publish", "--weights", str(self.checkpoints[weights]),
            "--eval-images", str(self.eval_images), *FAST_EXPORT, *extra,
        )  # fmt: skip


@dataclass
class VersionedLoad:
    """``clients`` threads classifying ``images`` in turn through ``model`` until stopped."""

    url: str
    images: list[bytes]
    clients: int = 6
    model: str = contract.ENSEMBLE_MODEL
    answers: list[Answer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> VersionedLoad:
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _run(self, number: int) -> None:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(self.url, network_timeout=120)
        index = number
        try:
            while not self._stop.is_set():
                image = index % len(self.images)
                data = httpclient.InferInput(contract.ENSEMBLE_INPUT, [1, 1], "BYTES")
                data.set_data_from_numpy(np.array([[self.images[image]]], dtype=object))
                try:
                    reply = client.infer(self.model, [data])
                except Exception as error:  # every failure is a finding, whatever its type
                    self.failures.append(f"{type(error).__name__}: {error}"[:300])
                else:
                    response = reply.get_response()
                    version = str(response.get("model_version"))
                    probabilities = reply.as_numpy(contract.ENSEMBLE_OUTPUT)[0]
                    model = str(response.get("model_name"))
                    self.answers.append(
                        Answer(image, version, probabilities, model, time.monotonic())
                    )
                index += self.clients
        finally:
            client.close()

    def versions(self) -> Counter[str]:
        return Counter(answer.version for answer in self.answers)

    def wait_for(self, count: int, timeout_s: float = 120) -> None:
        """Until at least ``count`` answers came (bounded)."""
        deadline = time.monotonic() + timeout_s
        while len(self.answers) < count and time.monotonic() < deadline:
            time.sleep(0.1)


def head_variant(model, scale: float = 1.0, shuffle: bool = False):
    """A "retrained" copy of ``model``: its head scaled by ``scale`` (same top-1 answers, other
    probabilities), or its rows shuffled (a model trained on shuffled labels)."""
    import torch

    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.fc.weight.mul_(scale)
        changed.fc.bias.mul_(scale)
        if shuffle:
            changed.fc.weight.copy_(torch.roll(changed.fc.weight, 1, dims=0))
            changed.fc.bias.copy_(torch.roll(changed.fc.bias, 1, dims=0))
    return changed


# The TorchScript exporter: 1.4 s for the digits model where the default (torch.export) takes
# 10 s; the export tests cover the default, the lifecycle tests the lifecycle around it.
FAST_EXPORT = ("--opset", "17")


def export_digits(work: Path, name: str, models: dict[str, object]) -> dict[str, Path]:
    """Save each of ``models`` (version name -> digits network) as a checkpoint in ``work``, and
    export the one named "1" as the 10-class digits classifier ``name`` into
    ``work/model_repository``, with its own labels and preprocessing, as the lifecycle tests
    serve it (the real command, in this process: torch is loaded already). Returns the
    checkpoints."""
    from click.testing import CliRunner

    from resnet18_triton.export.cli.export import export
    from tests import digits

    checkpoints = {
        version: digits.save_lightning_checkpoint(model, work / f"{version}.ckpt")
        for version, model in models.items()
    }
    labels = digits.write_digit_labels(work / "labels.txt")
    with warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice: FAST_EXPORT chooses it on purpose.
        warnings.simplefilter("ignore", DeprecationWarning)
        exported = CliRunner().invoke(export, [
            "--repo", str(work / "model_repository"), "--weights", str(checkpoints["1"]),
            "--name", name, "--labels", str(labels), *digits.custom_export_options(),
            *FAST_EXPORT,
        ], catch_exceptions=False)  # fmt: skip
    assert exported.exit_code == 0, exported.output
    return checkpoints


def version_references(
    models: dict[str, object], weights_of: dict[str, str], images: list[bytes]
) -> dict[str, np.ndarray]:
    """The independent PyTorch reference of ``images`` for each version, its network being
    ``models[weights_of[version]]`` under the digits classifier's own preprocessing."""
    from tests import digits
    from tests.support import TorchReference

    preprocessing = digits.custom_preprocessing()
    return {
        version: TorchReference(model=models[weights], preprocessing=preprocessing).probabilities(
            images
        )
        for version, weights in weights_of.items()
    }


def admin_key_file(work: Path, key: str) -> Path:
    """A private file in ``work`` holding the admin key ``key``, as an operator keeps it."""
    path = work / "admin.key"
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path
