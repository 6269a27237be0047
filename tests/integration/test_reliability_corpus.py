"""Bad input: every class of the corpus (tests/corpus.py) against the session server.

Good-but-unusual images (1x1, 16-bit, LA, CMYK, animated GIF, WebP, EXIF-rotated, ...) must be
answered like the PyTorch reference; bad ones must get HTTP 400 with a message naming the problem,
no traceback, and no backend process may die. While the whole corpus is fired, concurrent good
requests keep succeeding with the right answers and the server stays ready.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from resnet18_triton import contract
from resnet18_triton.perf import harness, soak
from tests.corpus import TOO_MANY_BYTES, build_corpus, oversized_image, write_corpus
from tests.support import PROBABILITY_ATOL, encode, gradient_image

CORPUS = build_corpus()
BAD = [case for case in CORPUS if not case.good]
UNUSUAL_GOOD = [case for case in CORPUS if case.good]
GOOD_IMAGE = encode(gradient_image(320, 240, seed=9), "JPEG")
MAX_IMAGE_BYTES = contract.MAX_IMAGE_BYTES  # as exported by conftest (ServingSettings default)


def infer(client, images: list[bytes], model: str = contract.ENSEMBLE_MODEL):
    data = httpclient.InferInput(contract.ENSEMBLE_INPUT, [len(images), 1], "BYTES")
    data.set_data_from_numpy(np.array([[image] for image in images], dtype=object).reshape(-1, 1))
    return client.infer(model, [data]).as_numpy(contract.ENSEMBLE_OUTPUT)


def assert_clean_400(error: InferenceServerException, pattern: str) -> None:
    message = error.message()
    assert error.status() == "400", f"status {error.status()}: {message}"
    assert re.search(pattern, message), f"{message!r} does not match {pattern!r}"
    assert "Traceback" not in message and 'File "' not in message, message


@pytest.fixture(scope="module")
def stub_pids(server) -> dict[str, int]:
    return {role: p.pid for role, p in harness.stack_processes(server.process.pid).items()}


@pytest.mark.parametrize("case", BAD, ids=[case.name for case in BAD])
def test_bad_input_is_refused_with_its_reason(http_client, case) -> None:
    with pytest.raises(InferenceServerException) as caught:
        infer(http_client, [case.data])
    assert_clean_400(caught.value, case.expect)


def test_unusual_good_images_match_the_reference(http_client, reference) -> None:
    served = np.concatenate([infer(http_client, [case.data]) for case in UNUSUAL_GOOD])
    expected = reference.probabilities([case.data for case in UNUSUAL_GOOD])
    distances = np.abs(served - expected).max(axis=1)
    wrong = [
        case.name for case, d in zip(UNUSUAL_GOOD, distances, strict=True) if d > PROBABILITY_ATOL
    ]
    assert not wrong, f"differ from the PyTorch reference: {wrong}"


def test_exif_orientation_is_honoured() -> None:
    """An EXIF-6 JPEG is classified upright: same tensor as the pixels physically rotated."""
    from PIL import Image

    from tests.support import preprocess_module

    preprocess = preprocess_module()
    case = next(c for c in CORPUS if c.name == "exif_orientation_6.jpg")
    upright = Image.open(__import__("io").BytesIO(case.data)).transpose(Image.Transpose.ROTATE_270)
    decoded = preprocess.decode_image(case.data)
    assert decoded.size == (200, 320)
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(upright.convert("RGB")))


def test_sixteen_bit_png_is_not_clipped_to_white() -> None:
    from tests.support import preprocess_module

    preprocess = preprocess_module()
    case = next(c for c in CORPUS if c.kind == "16-bit PNG")
    pixels = np.asarray(preprocess.decode_image(case.data))
    assert pixels.std() > 30 and pixels.mean() < 200


def test_oversized_image_is_refused_by_the_byte_limit(http_client) -> None:
    """Triton 2.51 has no HTTP body limit; the per-image byte limit refuses it
    (docs/reliability.md)."""
    with pytest.raises(InferenceServerException) as caught:
        infer(http_client, [oversized_image(MAX_IMAGE_BYTES)])
    assert_clean_400(caught.value, TOO_MANY_BYTES)
    assert http_client.is_server_ready()


def test_one_bad_image_in_a_batch_fails_that_request_naming_its_position(http_client) -> None:
    bad = next(c for c in BAD if c.kind == "truncated JPEG" and "truncated" in c.expect)
    with pytest.raises(InferenceServerException) as caught:
        infer(http_client, [GOOD_IMAGE, GOOD_IMAGE, bad.data, GOOD_IMAGE])
    assert_clean_400(caught.value, r"image 3 of 4: ")


def _raw(name: str, shape: list[int], dtype: str, value: np.ndarray):
    data = httpclient.InferInput(name, shape, dtype)
    data.set_data_from_numpy(value)
    return data


WRONG_TENSORS = {
    "raw dtype": (
        contract.ONNX_MODEL,
        lambda: _raw(
            contract.ONNX_INPUT, [1, 3, 224, 224], "INT32", np.zeros((1, 3, 224, 224), np.int32)
        ),
        r"INT32",
    ),
    "raw shape": (
        contract.ONNX_MODEL,
        lambda: _raw(
            contract.ONNX_INPUT, [1, 3, 100, 100], "UINT8", np.zeros((1, 3, 100, 100), np.uint8)
        ),
        r"shape",
    ),
    "raw name": (
        contract.ONNX_MODEL,
        lambda: _raw("pixels", [1, 3, 224, 224], "UINT8", np.zeros((1, 3, 224, 224), np.uint8)),
        r"pixels",
    ),
    "raw batch too big": (
        contract.ONNX_MODEL,
        lambda: _raw(
            contract.ONNX_INPUT, [64, 3, 224, 224], "UINT8", np.zeros((64, 3, 224, 224), np.uint8)
        ),
        r"batch.size|max",
    ),
    "ensemble dtype": (
        contract.ENSEMBLE_MODEL,
        lambda: _raw(contract.ENSEMBLE_INPUT, [1, 1], "FP32", np.zeros((1, 1), np.float32)),
        r"FP32",
    ),
    "ensemble shape": (
        contract.ENSEMBLE_MODEL,
        lambda: _raw(
            contract.ENSEMBLE_INPUT,
            [1, 2],
            "BYTES",
            np.array([[GOOD_IMAGE, GOOD_IMAGE]], dtype=object),
        ),
        r"shape",
    ),
    "ensemble name": (
        contract.ENSEMBLE_MODEL,
        lambda: _raw("not_the_input", [1, 1], "BYTES", np.array([[GOOD_IMAGE]], dtype=object)),
        r"not_the_input",
    ),
}


@pytest.mark.parametrize("what", sorted(WRONG_TENSORS))
def test_wrong_tensors_are_refused_by_name(http_client, what: str) -> None:
    model, make, pattern = WRONG_TENSORS[what]
    with pytest.raises(InferenceServerException) as caught:
        http_client.infer(model, [make()])
    assert_clean_400(caught.value, pattern)


def tree_threads(server_pid: int) -> int:
    """Threads of tritonserver and its stubs (what a container's pids limit counts)."""
    total = 0
    for process in harness.stack_processes(server_pid).values():
        try:
            total += process.num_threads()
        except Exception:  # a process that just ended has no threads to count
            continue
    return total


def test_corpus_under_concurrent_good_load(server, url, stub_pids, reference) -> None:
    """Fire the whole corpus (hostile shapes and formats included) 3 times while 4 clients send
    good images: each input is answered or refused by name, nothing good is lost, the process
    tree grows by less than 300 MB and no backend process restarts."""
    images = soak.distinct_images(8, seed=3000)
    expected = reference.probabilities(images)
    baseline_mb = sum(harness.tree_rss_mb(server.process.pid).values())
    load = soak.LoadGenerator(url, images, expected, concurrency=4, max_s=300).start()
    not_ready: list[str] = []
    peak_mb = [baseline_mb]
    threads = [tree_threads(server.process.pid)]
    stop = threading.Event()

    def watch() -> None:
        # A slow answer on a loaded 2-core machine is not "not ready": only an answer counts.
        probe = httpclient.InferenceServerClient(url, network_timeout=60.0)
        try:
            while not stop.is_set():
                peak_mb.append(sum(harness.tree_rss_mb(server.process.pid).values()))
                threads.append(tree_threads(server.process.pid))
                try:
                    if not probe.is_server_ready():
                        not_ready.append("answered not ready")
                except InferenceServerException as error:
                    not_ready.append(str(error))
                stop.wait(0.1)
        finally:
            probe.close()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    client = httpclient.InferenceServerClient(url, network_timeout=120.0)
    refused = answered = 0
    try:
        for _ in range(3):
            for case in CORPUS:
                try:
                    infer(client, [case.data])
                    answered += 1
                except InferenceServerException as error:
                    assert not case.good, f"{case.name}: {error}"
                    assert_clean_400(error, case.expect)
                    refused += 1
    finally:
        client.close()
        stats = load.stop()
        stop.set()
        watcher.join(timeout=120)
    growth_mb = max(peak_mb) - baseline_mb
    print(
        "FIGURE "
        + json.dumps(
            {
                "corpus_rounds": 3,
                "corpus_inputs": len(CORPUS),
                "refused": refused,
                "answered": answered,
                "good_load_ok": stats.ok,
                "good_load_failed": stats.failed,
                "good_load_wrong": stats.wrong,
                "not_ready_answers": len(not_ready),
                "tree_rss_baseline_mb": round(baseline_mb, 1),
                "tree_rss_peak_growth_mb": round(growth_mb, 1),
                "rss_samples": len(peak_mb),
                "tree_threads_max": max(threads),
            }
        )
    )
    assert refused == 3 * len(BAD) and answered == 3 * len(UNUSUAL_GOOD)
    assert stats.failed == 0 and stats.wrong == 0, stats.errors
    assert stats.ok > 0
    assert not not_ready, f"server not ready: {not_ready[:3]}"
    assert growth_mb < 300, f"process tree grew by {growth_mb:.0f} MB"
    after = {role: p.pid for role, p in harness.stack_processes(server.process.pid).items()}
    assert after == stub_pids, "a backend process died or was restarted"


def test_client_reports_each_bad_file_and_goes_on(url, tmp_path) -> None:
    paths = write_corpus(tmp_path / "corpus")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "resnet18_triton.cli",
            "classify",
            "--url",
            url,
            "--json",
            "--top-k",
            "1",
            "--timeout",
            "120",
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in records] == [str(p) for p in paths]
    by_name = {case.name: case for case in CORPUS}
    for record in records:
        case = by_name[record["image"].rsplit("/", 1)[-1]]
        if case.good:
            assert "top" in record, record
        else:
            assert "error" in record and "Traceback" not in record["error"], record
            # Empty files are refused by the client itself before sending.
            pattern = "file is empty" if not case.data else case.expect
            assert re.search(pattern, record["error"]), record
    assert f"{len(BAD)} of {len(paths)} images failed" in result.stderr


def test_server_still_answers_after_the_corpus(http_client, reference) -> None:
    served = infer(http_client, [GOOD_IMAGE])
    assert np.abs(served - reference.probabilities([GOOD_IMAGE])).max() <= PROBABILITY_ATOL
    assert http_client.is_server_ready()
