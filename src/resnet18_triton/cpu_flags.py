"""Which low-precision instructions this CPU has, read from Linux ``/proc/cpuinfo`` (stdlib only).

The flags decide which OpenVINO precisions are offered: BF16 runs natively only with
``avx512_bf16`` or ``amx_bf16`` (elsewhere OpenVINO would emulate it slowly or fall back to f32),
and INT8 matrix products are fast and exact with ``avx512_vnni``, ``avx_vnni`` or ``amx_int8``.
"""

from __future__ import annotations

from pathlib import Path

from resnet18_triton.errors import PrecisionUnavailableError

CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
PRECISIONS = ("bf16", "f32", "int8")
FALLBACK_PRECISION = "f32"


def parse_flags(cpuinfo_text: str) -> frozenset[str]:
    """The ``flags`` of the first processor in ``/proc/cpuinfo`` text (empty when absent)."""
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """This CPU's flags; empty when unknown (not Linux, no /proc)."""
    try:
        return parse_flags(cpuinfo.read_text())
    except OSError:
        return frozenset()


def present(wanted: tuple[str, ...], flags: frozenset[str]) -> tuple[str, ...]:
    """Which of ``wanted`` are in ``flags``, in ``wanted``'s order."""
    return tuple(flag for flag in wanted if flag in flags)


def has_native_bf16(flags: frozenset[str]) -> bool:
    return bool(present(BF16_FLAGS, flags))


def has_fast_int8(flags: frozenset[str]) -> bool:
    return bool(present(INT8_FLAGS, flags))


def serves(precision: str, flags: frozenset[str]) -> bool:
    """Whether a CPU with ``flags`` serves ``precision`` (one of ``PRECISIONS``, or ``fp32``).

    ``bf16`` only natively (``check_precision`` refuses it elsewhere); ``f32``/``fp32`` and
    ``int8`` on every x86-64 CPU (INT8 without VNNI is slower, not wrong).
    """
    return precision != "bf16" or has_native_bf16(flags)


def default_precision(flags: frozenset[str]) -> str:
    """``bf16`` where the CPU computes it natively, else ``f32``."""
    return "bf16" if has_native_bf16(flags) else FALLBACK_PRECISION


def check_precision(precision: str, flags: frozenset[str]) -> None:
    """Refuse ``bf16`` on a CPU without native bfloat16, naming the fallback."""
    if precision not in PRECISIONS:
        raise PrecisionUnavailableError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
        )
    if not serves(precision, flags):
        raise PrecisionUnavailableError(
            f"this CPU has no native bfloat16 ({' or '.join(BF16_FLAGS)} missing from its "
            f"flags), so BF16 would not be faster; use --precision {FALLBACK_PRECISION} "
            "(or int8 after `resnet18-triton quantize` on a CPU with VNNI)"
        )
