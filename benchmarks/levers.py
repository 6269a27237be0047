"""CPU cost per image of each serving lever, before and after, measured interleaved in-process.

CPU time (``time.process_time``), not wall time: on a shared machine other processes stretch
wall time, while the CPU a step itself burns is what the served pipeline pays for it on 2 cores.
Each pair runs A, B, A, B, ... and reports medians.

- preprocess: the repository's ``preprocess/1/model.py`` of each arm on 500x375 JPEGs (the old
  one emits normalised float32, the new one uint8);
- the classifier: each arm's ``model.onnx`` (FP32, and INT8 when both repositories hold it)
  with ONNX Runtime, 2 threads, batch 1 and 8, fed what that arm's preprocessing produces, so the
  new graph's normalisation prefix is included in its figure;
- the tensor handed from one model to the next: bytes per image, and the cost of one copy.

    python -m benchmarks.levers --before REPO_A --after REPO_B --images DIR
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from resnet18_triton.repository.layout import load_model_module


def cpu_ms(step: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        step()
        times.append(1000 * (time.process_time() - start))
    return times


def interleaved(steps: dict[str, Callable[[], object]], rounds: int, repeats: int) -> dict:
    for step in steps.values():  # warm-up
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name] += cpu_ms(step, repeats)
    return {name: statistics.median(values) for name, values in times.items()}


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=6)
    options = parser.parse_args()
    repos = {"before": options.before, "after": options.after}
    images = [path.read_bytes() for path in sorted(options.images.glob("*.jpg"))]
    modules = {
        arm: load_model_module(repo / "preprocess" / "1" / "model.py", f"levers_{arm}")
        for arm, repo in repos.items()
    }

    def preprocess_all(module):
        return lambda: [module.preprocess_bytes(data) for data in images]

    per_image = len(images)
    figures = interleaved(
        {arm: preprocess_all(module) for arm, module in modules.items()}, options.rounds, 3
    )
    print("| lever | before | after | after / before |\n|---|---|---|---|")
    before, after = (figures[arm] / per_image for arm in repos)
    print(
        f"| preprocess, CPU ms/img (500x375 JPEG) | {before:.3f} | {after:.3f} | "
        f"{after / before:.2f} |"
    )
    tensors = {arm: np.stack(preprocess_all(module)()) for arm, module in modules.items()}
    sizes = {arm: tensors[arm][0].nbytes for arm in repos}
    print(
        f"| tensor between the models, bytes/img | {sizes['before']} | {sizes['after']} | "
        f"{sizes['after'] / sizes['before']:.2f} |"
    )
    copies = interleaved({arm: tensors[arm].copy for arm in repos}, options.rounds, 20)
    before, after = (copies[arm] / per_image for arm in repos)
    print(
        f"| one copy of that tensor, CPU ms/img | {before:.4f} | {after:.4f} | "
        f"{after / before:.2f} |"
    )
    for variant in ("resnet18_onnx", "resnet18_int8"):
        paths = {arm: repo / variant / "1" / "model.onnx" for arm, repo in repos.items()}
        if not all(path.is_file() for path in paths.values()):
            continue
        sessions = {arm: session(path) for arm, path in paths.items()}
        for batch in (1, 8):
            steps: dict[str, Callable[[], object]] = {
                arm: functools.partial(
                    sessions[arm].run,
                    None,
                    {sessions[arm].get_inputs()[0].name: tensors[arm][:batch]},
                )
                for arm in repos
            }
            ms = interleaved(steps, options.rounds, 5)
            before, after = (ms[arm] / batch for arm in repos)
            print(
                f"| {variant} batch {batch}, CPU ms/img | {before:.2f} | {after:.2f} | "
                f"{after / before:.3f} |"
            )


if __name__ == "__main__":
    main()
