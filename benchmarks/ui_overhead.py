"""Latency the web app adds to the thin client, measured side by side (docs/ui.md).

Start Triton and `resnet18-triton ui` first; optionally a Gradio app with the same job (the one
in docs/ui.md's comparison) for a third column, which needs `gradio_client` installed:

    python -m benchmarks.ui_overhead --triton 127.0.0.1:8000 --ui http://127.0.0.1:8080 \\
        [--gradio http://127.0.0.1:7860 --gradio-api /classify] [--rounds 100] IMAGE

Each round sends the same image once through every path, in turn, so that load from other
processes hits all paths alike; the first rounds are warm-up. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from resnet18_triton.client.api import ImageClassifier

WARMUP_ROUNDS = 5


def multipart_body(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), boundary


def paths(args: argparse.Namespace, image: Path) -> dict[str, Callable[[], object]]:
    data = image.read_bytes()
    classifier = ImageClassifier(args.triton)
    body, boundary = multipart_body(image.name, data)

    def thin_client() -> object:
        return next(classifier.classify_named([(image.name, data)], top_k=5))

    def ui_app() -> object:
        request = urllib.request.Request(
            f"{args.ui}/v1/classify",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)

    chosen: dict[str, Callable[[], object]] = {"thin client": thin_client, "ui app": ui_app}
    if args.gradio:
        from gradio_client import Client, handle_file

        gradio = Client(args.gradio, verbose=False)
        chosen["gradio app"] = lambda: gradio.predict(
            handle_file(str(image)), api_name=args.gradio_api
        )
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, help="the image every path classifies")
    parser.add_argument("--triton", default="127.0.0.1:8000")
    parser.add_argument("--ui", default="http://127.0.0.1:8080")
    parser.add_argument("--gradio")
    parser.add_argument("--gradio-api", default="/classify")
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()

    calls = paths(args, args.image)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for round_number in range(WARMUP_ROUNDS + args.rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            if round_number >= WARMUP_ROUNDS:
                samples[name].append((time.perf_counter() - started) * 1000)

    base = statistics.median(samples["thin client"])
    base_p10 = sorted(samples["thin client"])[len(samples["thin client"]) // 10]
    print(f"{args.image.name}, {args.rounds} interleaved rounds after {WARMUP_ROUNDS} warm-up\n")
    print("| path | median ms | p10 ms | added median | added p10 |\n|---|---|---|---|---|")
    for name, values in samples.items():
        median, p10 = statistics.median(values), sorted(values)[len(values) // 10]
        print(
            f"| {name} | {median:.1f} | {p10:.1f} | {median - base:+.1f} | {p10 - base_p10:+.1f} |"
        )


if __name__ == "__main__":
    main()
