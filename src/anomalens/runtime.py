"""Process-level settings that make CPU inference fast.

glibc's ``malloc`` serves large blocks (feature maps of a few MB) with ``mmap`` and gives freed
heap back to the system as soon as its top exceeds a small, self-adjusting threshold. A network
that allocates and frees such blocks on every batch then pays page faults on every batch, and
its speed depends on what ran before. :func:`keep_freed_memory` raises both thresholds so freed
blocks are reused (measurements: docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

#: Blocks up to this size come from the heap rather than from ``mmap`` (glibc's maximum).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Freed memory at the top of the heap is kept up to this size instead of returned at once.
TRIM_THRESHOLD = 256 * 1024 * 1024
#: Set to ``0`` to leave the allocator alone.
ENV_SWITCH = "ANOMALENS_MALLOC_TUNING"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc to reuse freed blocks instead of returning them to the system (once per process).

    Returns True when the setting is in effect; False on other C libraries (macOS, Windows,
    musl), when ``ANOMALENS_MALLOC_TUNING=0``, or when ``mallopt`` refuses. The cost is that the
    process keeps up to ``TRIM_THRESHOLD`` of freed memory for reuse.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV_SWITCH, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _applied


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_isa() -> str:
    """The CPU's fastest bf16 path: ``AMX``, ``AVX512-BF16``, else torch's CPU capability
    (e.g. ``AVX2``, which has no native bf16: bf16 work is emulated and many times slower)."""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def native_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    return cpu_isa() in ("AMX", "AVX512-BF16")
