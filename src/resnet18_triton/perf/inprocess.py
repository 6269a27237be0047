"""In-process engines, each timed in a fresh Python process so its peak RSS is its own.

``measure(spec)`` starts ``python -m resnet18_triton.perf.inprocess '<json spec>'`` and reads one
JSON result line. Engines:

* ``eager``: torchvision ResNet-18 in PyTorch eager mode (``torch.inference_mode``);
* ``torchscript``: the same model traced and frozen (``torch.jit.trace`` + ``torch.jit.freeze``);
* ``ort``: ONNX Runtime FP32 on the served ``model.onnx`` (CPU provider, sequential execution);
* ``pipeline``: what a single in-process service does per image: decode the JPEG + preprocess with
  the served ``preprocess/1/model.py`` code + ONNX Runtime (batch 1 only);
* ``openvino``: OpenVINO on ``onnx_path`` compiled with a variant's config (``openvino_config``,
  the shipped backend's ``compile_model``), as the served OpenVINO variant runs it.

``measure_interleaved(specs)`` times several engines in one fresh process, alternated (A, B, C,
A, B, C, ...), so that load from other processes hits them alike and their ratios hold even on a
busy machine; their ``peak_rss_mb`` is that shared process's.

Tensor engines run on already-decoded random tensors (speed does not depend on values). Timings
are per batch; ``ms_per_image`` = median batch time / batch size, ``images_per_s`` = images / total
time. ``peak_rss_mb`` is the process's RSS high-water mark (VmHWM) after the run.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# The engines timed in-process (see the module docstring). Not the serving engines of
# ``repository.variants.Engine`` (the backends Triton runs a classifier model on).
InProcessEngine = Literal["eager", "torchscript", "ort", "pipeline", "openvino"]
ENGINES: tuple[InProcessEngine, ...] = get_args(InProcessEngine)


@dataclass
class EngineSpec:
    """One engine run: ``batch`` images per call on ``threads`` threads for at least
    ``seconds`` and ``min_iterations`` calls after ``warmup`` untimed ones."""

    engine: InProcessEngine
    batch: int = 1
    threads: int = 2
    seconds: float = 10.0
    min_iterations: int = 10
    warmup: int = 3
    onnx_path: str | None = None
    preprocess_path: str | None = None  # the repository's preprocess/1/model.py
    images: list[str] = field(default_factory=list)  # JPEG files for the pipeline
    seed: int = 0
    allow_spinning: bool = True
    # The openvino engine's model config as JSON (``repository.configs.parser.as_json``).
    openvino_config: dict[str, Any] | None = None


@dataclass
class EngineResult:
    """An engine run's timings; ``extra`` holds the pipeline's median split
    (``preprocess_ms_median``, ``inference_ms_median``)."""

    engine: InProcessEngine
    batch: int
    threads: int
    iterations: int
    ms_per_batch_median: float
    ms_per_image: float
    images_per_s: float
    peak_rss_mb: float
    extra: dict[str, float] = field(default_factory=dict)


def measure(spec: EngineSpec, python: str | None = None, timeout_s: float = 900.0) -> EngineResult:
    """Run ``spec`` in a fresh interpreter and return its result."""
    (result,) = _run_child([spec], python, timeout_s)
    return result


def measure_interleaved(
    specs: list[EngineSpec], python: str | None = None, timeout_s: float = 900.0
) -> list[EngineResult]:
    """Run ``specs`` alternated in one fresh interpreter (``run_interleaved``); one result per
    spec, in order."""
    return _run_child(specs, python, timeout_s, interleaved=True)


def _run_child(
    specs: list[EngineSpec], python: str | None, timeout_s: float, interleaved: bool = False
) -> list[EngineResult]:
    env = dict(os.environ)
    # One engine's threads must not be multiplied by another library's default pool.
    env.setdefault("OMP_NUM_THREADS", str(max(spec.threads for spec in specs)))
    argument = json.dumps([asdict(spec) for spec in specs] if interleaved else asdict(specs[0]))
    result = subprocess.run(
        [python or sys.executable, "-m", "resnet18_triton.perf.inprocess", argument],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith(("{", "["))]
    if result.returncode != 0 or not lines:
        names = ", ".join(f"{spec.engine} (batch {spec.batch})" for spec in specs)
        raise RuntimeError(f"engine {names} failed:\n{result.stderr[-3000:]}")
    parsed = json.loads(lines[-1])
    return [EngineResult(**fields) for fields in (parsed if interleaved else [parsed])]


def _peak_rss_mb() -> float:
    """This process's RSS high-water mark (VmHWM).

    Not ``ru_maxrss``: Linux keeps that across fork + exec, so a child of a parent that imported
    torch would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time_loop(step: Callable[[int], None], spec: EngineSpec) -> tuple[list[float], float]:
    for _ in range(spec.warmup):
        step(0)
    times: list[float] = []
    start = time.perf_counter()
    index = 0
    while len(times) < spec.min_iterations or time.perf_counter() - start < spec.seconds:
        begin = time.perf_counter()
        step(index)
        times.append(time.perf_counter() - begin)
        index += 1
    return times, time.perf_counter() - start


def _torch_model(spec: EngineSpec) -> tuple[ModuleType, Any]:
    """torch (the ``export`` extra) and a random-weight ResNet-18 in eval mode."""
    from resnet18_triton.extras import require

    torch = require("torch", "export")
    from resnet18_triton.export.weights import load_resnet18

    torch.set_num_threads(spec.threads)
    torch.set_num_interop_threads(1)
    model, _ = load_resnet18("random", seed=spec.seed)
    return torch, model.eval()


def _ort_session(spec: EngineSpec) -> Any:
    """An ONNX Runtime CPU session on ``spec.onnx_path`` with ``spec``'s threads and spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = spec.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spec.allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        spec.onnx_path, sess_options=options, providers=["CPUExecutionProvider"]
    )


def _load_preprocess(path: str) -> ModuleType:
    from resnet18_triton.repository.layout import load_model_module

    return load_model_module(Path(path), "bench_preprocess_model")


def random_input(session: Any, shape: tuple[int, ...], seed: int) -> npt.NDArray[np.generic]:
    """Random data of the session's first input type: uint8 pixels for this project's graphs
    (normalised inside), standard normal float32 for a float-input graph."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if session.get_inputs()[0].type == "tensor(uint8)":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape, dtype=np.float32)


Step = Callable[[int], None]
# The pipeline's per-call split: preprocess and inference seconds.
Split = dict[str, list[float]]


def _step(spec: EngineSpec) -> tuple[Step, Split | None]:
    """One call of ``spec``'s engine (its argument: the call's index), ready to time, and the
    pipeline's split it appends to (None for other engines)."""
    split: Split | None = None
    shape = (spec.batch, 3, 224, 224)
    if spec.engine in ("eager", "torchscript"):
        torch, model = _torch_model(spec)
        example = torch.randn(*shape, generator=torch.Generator().manual_seed(spec.seed))
        if spec.engine == "torchscript":
            with torch.inference_mode():
                model = torch.jit.freeze(torch.jit.trace(model, example))

        def step(_index: int) -> None:
            with torch.inference_mode():
                model(example)

    elif spec.engine == "ort":
        session = _ort_session(spec)
        feed = {session.get_inputs()[0].name: random_input(session, shape, spec.seed)}

        def step(_index: int) -> None:
            session.run(None, feed)

    elif spec.engine == "pipeline":
        if spec.batch != 1:
            raise ValueError("the pipeline engine runs batch 1")
        session = _ort_session(spec)
        name = session.get_inputs()[0].name
        if spec.preprocess_path is None:
            raise ValueError("the pipeline engine needs the repository's preprocess model.py")
        preprocess = _load_preprocess(spec.preprocess_path)
        payloads = [Path(path).read_bytes() for path in spec.images]
        parts: Split = {"preprocess": [], "inference": []}
        split = parts

        def step(index: int) -> None:  # type: ignore[misc]  # each engine defines its own step
            begin = time.perf_counter()
            tensor = preprocess.preprocess_bytes(payloads[index % len(payloads)])[None]
            middle = time.perf_counter()
            session.run(None, {name: tensor})
            parts["preprocess"].append(middle - begin)
            parts["inference"].append(time.perf_counter() - middle)

    elif spec.engine == "openvino":
        import numpy as np

        from resnet18_triton import contract
        from resnet18_triton.export.openvino_variant import openvino_backend

        backend = openvino_backend()
        request = backend.compile_model(spec.onnx_path, spec.openvino_config).create_infer_request()
        rng = np.random.default_rng(spec.seed)
        pixels = {contract.ONNX_INPUT: rng.integers(0, 256, shape, dtype=np.uint8)}

        def step(_index: int) -> None:
            backend.infer(request, pixels, [contract.ONNX_OUTPUT])

    else:
        raise ValueError(f"unknown engine {spec.engine!r}; choose from {ENGINES}")
    return step, split


def run_engine(spec: EngineSpec) -> EngineResult:
    """Time ``spec`` in this process."""
    step, split = _step(spec)
    times, total = _time_loop(step, spec)
    return _result(spec, times, total, split)


def run_interleaved(specs: list[EngineSpec]) -> list[EngineResult]:
    """Time ``specs`` in this process, alternated call by call (A, B, C, A, B, C, ...) after each
    one's warm-up, until together they ran for the sum of their ``seconds`` and each made its
    ``min_iterations``; ``images_per_s`` is over each engine's own timed calls."""
    steps = [_step(spec) for spec in specs]
    for spec, (step, _) in zip(specs, steps, strict=True):
        for _ in range(spec.warmup):
            step(0)
    times: list[list[float]] = [[] for _ in specs]
    deadline = time.perf_counter() + sum(spec.seconds for spec in specs)
    index = 0
    while time.perf_counter() < deadline or any(
        len(done) < spec.min_iterations for done, spec in zip(times, specs, strict=True)
    ):
        for (step, _), done in zip(steps, times, strict=True):
            begin = time.perf_counter()
            step(index)
            done.append(time.perf_counter() - begin)
        index += 1
    return [
        _result(spec, done, sum(done), split)
        for spec, done, (_, split) in zip(specs, times, steps, strict=True)
    ]


def _result(
    spec: EngineSpec, times: list[float], total: float, split: Split | None
) -> EngineResult:
    extra: dict[str, float] = {}
    if split is not None:
        measured = len(times)
        extra = {
            f"{key}_ms_median": 1000 * statistics.median(values[-measured:])
            for key, values in split.items()
        }
    median_ms = 1000 * statistics.median(times)
    return EngineResult(
        engine=spec.engine,
        batch=spec.batch,
        threads=spec.threads,
        iterations=len(times),
        ms_per_batch_median=median_ms,
        ms_per_image=median_ms / spec.batch,
        images_per_s=spec.batch * len(times) / total,
        peak_rss_mb=_peak_rss_mb(),
        extra=extra,
    )


def main(argv: list[str]) -> None:
    """Time the spec (a JSON object) or the specs alternated (a JSON list) of ``argv[0]``; print
    the result(s) as one JSON line."""
    parsed = json.loads(argv[0])
    if isinstance(parsed, list):
        results = run_interleaved([EngineSpec(**fields) for fields in parsed])
        print(json.dumps([asdict(result) for result in results]), flush=True)
    else:
        print(json.dumps(asdict(run_engine(EngineSpec(**parsed)))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
