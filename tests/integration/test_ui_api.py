"""POST /v1/classify on the real ui app in front of the real server, driven by the curl binary."""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from tests.support import PROBABILITY_ATOL, SAMPLE_FILES, TorchReference, encode, gradient_image
from tests.ui_support import (
    CurlAnswer,
    classify_json,
    curl,
    curl_command,
    parse_curl_output,
    running_ui,
)

CONCURRENT_UPLOADS = 32
NOT_AN_IMAGE = b"these are notes, not a photo\n" * 20


def write_bad_file(directory: Path) -> Path:
    bad = directory / "notes.jpg"
    bad.write_bytes(NOT_AN_IMAGE)
    return bad


def probability_vector(top: list[dict[str, object]]) -> np.ndarray:
    """The 1000 probabilities from a top-1000 answer, by class index."""
    vector = np.full(1000, np.nan)
    for entry in top:
        vector[int(str(entry["index"]))] = float(str(entry["probability"]))
    return vector


def test_curl_gets_exactly_the_objects_classify_json_prints(url: str, ui_url: str) -> None:
    answer = curl(ui_url, SAMPLE_FILES, "?top_k=5")
    assert answer.status == 200, answer.body
    assert answer.body["results"] == classify_json(url, SAMPLE_FILES, "--top-k", "5")
    assert (answer.body["model"], answer.body["model_version"]) == ("resnet18", "1")


def test_a_bad_file_gets_a_400_with_the_servers_message_and_the_good_one_its_answer(
    url: str, ui_url: str, tmp_path: Path
) -> None:
    good = tmp_path / SAMPLE_FILES[0].name
    good.write_bytes(SAMPLE_FILES[0].read_bytes())
    bad = write_bad_file(tmp_path)
    answer = curl(ui_url, [good, bad])
    assert answer.status == 400
    assert "application/json" in answer.headers
    expected = classify_json(url, [good, bad])
    assert answer.body["results"] == expected
    assert expected[1]["error"].startswith("cannot identify an image in 580 bytes")
    assert (
        answer.body["error"] == f"1 of 2 images not classified; notes.jpg: {expected[1]['error']}"
    )


def test_32_concurrent_curl_uploads_of_distinct_images_each_get_their_own_answer(
    ui_url: str, reference: TorchReference, tmp_path: Path
) -> None:
    images = {
        f"distinct_{seed:02d}.jpg": encode(gradient_image(320, 240, seed=100 + seed), "JPEG")
        for seed in range(CONCURRENT_UPLOADS)
    }
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
    expected = dict(zip(images, reference.probabilities(list(images.values())), strict=True))
    # The answers could only be told apart if the images' probabilities differ: they do, by far.
    closest = min(np.abs(a - b).max() for a, b in itertools.combinations(expected.values(), 2))
    assert closest > 100 * PROBABILITY_ATOL
    bad = write_bad_file(tmp_path)

    paths = [tmp_path / name for name in images] + [bad]
    curls = [
        subprocess.Popen(curl_command(ui_url, [path], "?top_k=1000"), stdout=subprocess.PIPE)
        for path in paths
    ]
    answers = {
        path.name: parse_curl_output(process.communicate(timeout=300)[0])
        for path, process in zip(paths, curls, strict=True)
    }

    for name, probabilities in expected.items():
        answer = answers[name]
        assert answer.status == 200, answer.body
        (result,) = answer.body["results"]
        assert result["image"] == name
        served = probability_vector(result["top"])
        assert np.abs(served - probabilities).max() <= PROBABILITY_ATOL, name
    refused = answers[bad.name]
    assert refused.status == 400
    assert refused.body["results"][0]["error"].startswith("cannot identify an image")


def test_models_lists_the_ready_classifier_with_its_version(ui_url: str) -> None:
    with urllib.request.urlopen(f"{ui_url}/v1/models", timeout=30) as response:
        info = json.load(response)
    # The session server serves no INT8 variant: the app offers only what is ready.
    assert info["models"] == [{"name": "resnet18", "versions": ["1"]}]
    assert info["random_weights"] is True
    assert info["limits"]["max_file_bytes"] == 10 * 1024 * 1024


def test_requests_beyond_the_in_flight_limit_get_503_and_the_app_recovers(url: str) -> None:
    with running_ui(url, "--max-in-flight", "1") as base:
        # A client that sends headers and half a body holds the only slot until it hangs up.
        with _held_upload(base):
            busy = _poll_curl(base, lambda answer: answer.status == 503)
            assert busy.body["error"] == (
                "busy: 1 requests in flight, the limit is 1; retry in a moment"
            )
            assert "retry-after: 1" in busy.headers.lower()
        recovered = _poll_curl(base, lambda answer: answer.status == 200)
        assert recovered.body["results"][0]["image"] == SAMPLE_FILES[0].name


@contextlib.contextmanager
def _held_upload(base: str) -> Iterator[None]:
    """A raw client that starts a 1 MB upload, sends only its first bytes, then hangs up."""
    address = urlsplit(base)
    assert address.hostname is not None and address.port is not None
    with socket.create_connection((address.hostname, address.port), timeout=10) as client:
        client.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: ui\r\nContent-Length: 1048576\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
        )
        yield


def _poll_curl(base: str, done: Callable[[CurlAnswer], bool], seconds: float = 20.0) -> CurlAnswer:
    """Upload a sample until ``done`` holds for the answer (or time is up): the app sees the
    held request a moment after the socket sent it."""
    deadline = time.monotonic() + seconds
    while True:
        answer = curl(base, [SAMPLE_FILES[0]])
        if done(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)
