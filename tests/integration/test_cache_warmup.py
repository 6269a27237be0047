"""Response cache and model warm-up on the real Triton server (each test its own server).

Each repository is a fresh export through the pipeline (random weights, seed 0: the answers do
not matter here, only that they are identical and where they come from) with the settings of the
feature under test.
"""

from __future__ import annotations

import io
import re
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from resnet18_triton import contract
from resnet18_triton.perf import harness
from resnet18_triton.server.embedded import EmbeddedServer
from tests.support import encode, gradient_image

CACHE_BYTES = 32 * 1024 * 1024


def _repository(target: Path, **settings: object) -> Path:
    from resnet18_triton.export.pipeline import ExportRequest, export_repository
    from resnet18_triton.repository.configs.settings import ServingSettings

    request = ExportRequest(
        repository=target, weights="random", seed=0, settings=ServingSettings(**settings)
    )
    return export_repository(request).repository


def _server(repo: Path, cache_bytes: int, log: io.StringIO | None = None) -> EmbeddedServer:
    """log_verbose=1: Triton logs each warm-up sample it runs (kept whole in ``log``)."""
    options = harness.local_options(
        repo, response_cache_bytes=cache_bytes, exit_timeout_s=5, log_verbose=1
    )
    return EmbeddedServer(options, log_stream=log)


def _image(seed: int) -> bytes:
    return encode(gradient_image(640, 480, seed=seed), "JPEG", quality=90)


def _infer(client, data: bytes) -> tuple[float, np.ndarray]:
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput(contract.ENSEMBLE_INPUT, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[data]], dtype=object))
    start = time.perf_counter()
    result = client.infer(contract.ENSEMBLE_MODEL, [tensor])
    return time.perf_counter() - start, result.as_numpy(contract.ENSEMBLE_OUTPUT)


def _cache_stats(client, model: str = contract.ENSEMBLE_MODEL) -> tuple[int, int]:
    stats = client.get_inference_statistics(model)["model_stats"][0]["inference_stats"]
    return stats["cache_hit"]["count"], stats["cache_miss"]["count"]


@pytest.fixture()
def client_for():
    import tritonclient.http as httpclient

    clients = []

    def make(url: str):
        clients.append(httpclient.InferenceServerClient(url, network_timeout=120.0))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture(scope="module")
def cached_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    repo = _repository(tmp_path_factory.mktemp("cached"), response_cache=True)
    with _server(repo, CACHE_BYTES) as running:
        yield running


def test_repeated_image_is_answered_from_the_cache(cached_server, client_for) -> None:
    client = client_for(cached_server.url)
    hits_before, misses_before = _cache_stats(client)
    image = _image(seed=501)
    miss_s, first = _infer(client, image)
    repeats = [_infer(client, image) for _ in range(5)]
    hits, misses = _cache_stats(client)
    assert misses - misses_before == 1
    assert hits - hits_before == 5  # Triton's statistics show the hits
    # Only the ensemble and the classifier cache; the preprocessing never stores 602 KB tensors.
    assert _cache_stats(client, contract.PREPROCESS_MODEL) == (0, 0)
    for _, answer in repeats:
        np.testing.assert_array_equal(answer, first)  # the identical answer
    hit_s = statistics.median(seconds for seconds, _ in repeats)
    # A figure, not a check: the hit and miss counts above are what proves the cache works.
    print(f"\ncache: miss {miss_s * 1e3:.1f} ms, hit {hit_s * 1e3:.2f} ms (median of 5)")
    # A different image is a miss and gets its own answer.
    _, other = _infer(client, _image(seed=502))
    assert _cache_stats(client)[1] - misses == 1
    assert not np.array_equal(other, first)


def test_cache_flags_in_configs_are_harmless_without_a_server_cache(
    tmp_path: Path, client_for
) -> None:
    """Checked on the real server: configs with response_cache enabled load without
    --cache-config; Triton then simply caches nothing."""
    repo = _repository(tmp_path / "repo", response_cache=True, warmup=False)
    log = io.StringIO()
    with _server(repo, 0, log) as server:
        client = client_for(server.url)
        image = _image(seed=503)
        _, first = _infer(client, image)
        _, second = _infer(client, image)
        np.testing.assert_array_equal(first, second)
        assert _cache_stats(client) == (0, 0)
        assert re.search(r"cache_enabled\s+\|\s+0", log.getvalue())


def test_server_is_ready_only_after_warm_up(tmp_path: Path, client_for) -> None:
    repo = _repository(tmp_path / "repo", warmup=True)
    stream = io.StringIO()
    with _server(repo, 0, stream) as server:
        # The log thread may still be catching up with what the server wrote before "ready".
        patterns = [
            f"model '{model}' instance \\S+ is running warmup sample"
            for model in (contract.PREPROCESS_MODEL, contract.ONNX_MODEL)
        ]
        log = _log_with(stream, patterns)
        for pattern in patterns:
            assert re.search(pattern, log), pattern
        assert "failed to run warmup sample" not in log
        client = client_for(server.url)
        first_s, _ = _infer(client, _image(seed=600))
        rest = [_infer(client, _image(seed=601 + i))[0] for i in range(6)]
        # A figure, not a check: on a loaded 2-core machine one slow answer says nothing.
        print(
            f"\nwarm server: first request {first_s * 1e3:.1f} ms, then median "
            f"{statistics.median(rest) * 1e3:.1f} ms"
        )


def _log_with(stream: io.StringIO, patterns: list[str], deadline_s: float = 120.0) -> str:
    """The log once every pattern is in it, or as it is at the deadline."""
    end = time.monotonic() + deadline_s
    log = stream.getvalue()
    while time.monotonic() < end and not all(re.search(p, log) for p in patterns):
        time.sleep(0.2)
        log = stream.getvalue()
    return log
