"""A new version published, then rolled back, while 8 clients send: failures, readiness, times.

``python -m benchmarks.lifecycle [--clients 8] [--seconds-between 5]``

Exports a random-weights classifier (seed 0) into a scratch repository, starts ``serve`` on it
with an admin key, and keeps ``--clients`` clients classifying photos through the ensemble. Then
``publish`` (the library call behind the command) makes seed 1's weights version 2, forced
past the gate (random weights agree on nothing), and ``rollback`` goes back to version 1. Reports
every request that failed, the answers per version, how often the server's and the classifier's
readiness said not ready (sampled every 0.2 s), and the seconds each step of each move took.
Prints markdown; figures belong in docs/own-model.md and the closing notes.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from resnet18_triton import contract
from resnet18_triton.export.moves import MoveResult, rollback
from resnet18_triton.export.pipeline import ExportRequest
from resnet18_triton.export.publish import PublishRequest, publish
from resnet18_triton.perf import harness
from resnet18_triton.perf.images import distinct_jpegs
from resnet18_triton.server.admin import AdminEndpoint

ADMIN_KEY = "lifecycle-benchmark-key"


def _ready(url: str, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{url}{path}", timeout=30) as reply:
            return bool(reply.status == 200)
    except urllib.error.HTTPError:
        return False
    except OSError:
        return True  # no answer in time on 2 busy cores is not "not ready"


class Traffic:
    """Clients sending in closed loops, and a readiness sampler, until ``stop``."""

    def __init__(self, url: str, images: list[bytes], clients: int) -> None:
        self.url, self.images = url, images
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self.not_ready: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(n,)) for n in range(clients)]
        self._threads.append(threading.Thread(target=self._probe))

    def start(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _send(self, number: int) -> None:
        classifier = harness.measuring_classifier(self.url)
        index = number
        try:
            while not self._stop.is_set():
                try:
                    classifier.probabilities([self.images[index % len(self.images)]])
                    self.versions[classifier.answered_version or "?"] += 1
                except Exception as error:  # every failure is a finding
                    self.failures.append(f"{type(error).__name__}: {error}"[:200])
                index += 1
        finally:
            classifier.close()

    def _probe(self) -> None:
        paths = {
            "server": "/v2/health/ready",
            "classifier": f"/v2/models/{contract.ENSEMBLE_MODEL}/ready",
        }
        while not self._stop.wait(0.2):
            for name, path in paths.items():
                self.not_ready[name] += not _ready(self.url, path)


def _row(step: str, result: MoveResult, traffic: Traffic) -> str:
    times = ", ".join(
        f"{name.removesuffix('_s')} {value:.1f} s" for name, value in result.times.items()
    )
    return (
        f"| {step} v{result.previous} -> v{result.version} | {sum(traffic.versions.values())} | "
        f"{len(traffic.failures)} | {dict(traffic.versions)} | {traffic.not_ready['server']} | "
        f"{traffic.not_ready['classifier']} | {times} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds-between", type=float, default=5.0)
    args = parser.parse_args()
    print(f"machine: {harness.machine()}")
    print(
        "| step | answers | failed | answers by version | server not ready (samples) | "
        "classifier not ready | seconds per step |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="lifecycle-") as scratch:
        repo = harness.export_random(Path(scratch) / "repo")
        photos = distinct_jpegs(16)
        held_out = Path(scratch) / "held-out"
        held_out.mkdir()
        for index, data in enumerate(photos[:8]):
            (held_out / f"{index}.jpg").write_bytes(data)
        options = harness.local_options(repo, admin_key=ADMIN_KEY)
        with harness.local_server(options, Path(scratch) / "server.log") as server:
            endpoints = (AdminEndpoint(server.url, ADMIN_KEY),)
            moves = (
                (
                    "publish",
                    lambda: publish(
                        PublishRequest(
                            ExportRequest(repository=repo, weights="random", seed=1),
                            held_out,
                            endpoints,
                            force=True,
                        )
                    ),
                ),
                ("rollback", lambda: rollback(repo, contract.DEFAULT_CLASSIFIER, endpoints)),
            )
            for step, move in moves:
                traffic = Traffic(server.url, photos, args.clients).start()
                time.sleep(args.seconds_between)
                result = move()
                time.sleep(args.seconds_between)
                traffic.stop()
                print(_row(step, result, traffic))
                for failure in traffic.failures[:3]:
                    print(f"  failure: {failure}")


if __name__ == "__main__":
    main()
