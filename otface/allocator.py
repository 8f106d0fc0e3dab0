"""Keep freed memory in the process (glibc's malloc): large tensors are allocated again without
page faults.

By default glibc serves an allocation above its mmap threshold (128 KiB, rising with the blocks
freed to at most 32 MiB) from a fresh mapping and unmaps it when it is freed, and it returns the
heap's free top to the kernel above 128 KiB. A CPU training step allocates and frees the same large
tensors every step (activations, the OT loss's (P, n, m) cost, kernel and plan), so each one costs a
page fault per 4 KiB page on first touch, every step. :func:`retain_freed_memory` raises both
thresholds: allocations up to MMAP_THRESHOLD come from the heap, and freed memory stays there for the
next step. The process keeps its peak memory instead of returning it to the system; no result
changes. This is what the jemalloc / tcmalloc advice of PyTorch's CPU performance guides buys,
without a preloaded library.

Measured (benchmarks/RESULTS.md, 2-core CPU): on 64 pairs of layer1 maps (784 points), one Sinkhorn
iteration forward + backward 180-204 -> 105-112 ms (78,000 page faults per call -> 470), to
tau = 1e-3 459-460 -> 373-425 ms; the default training step 1.14x more images per second with the
OT term and without (medians of three alternating runs); smaller maps gain nothing measurable.

``otface`` commands call it at start, unless ``OTFACE_KEEP_FREED_MEMORY=0`` (glibc's default
behaviour; ``1``, the default, keeps it). It does nothing off glibc, or where the user has set
glibc's own malloc settings (USER_SETTINGS), which then apply as given; note that setting any of
glibc's thresholds also turns off its dynamic mmap threshold.
"""

from __future__ import annotations

import ctypes
import os
import sys

from otface.errors import ConfigError

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (glibc malloc.h)
MMAP_THRESHOLD = 1 << 30  # bytes: allocations up to this come from the heap, not fresh mappings
TRIM_THRESHOLD = (1 << 31) - 1  # bytes of free heap top kept (mallopt takes an int: the most it can)
SWITCH = "OTFACE_KEEP_FREED_MEMORY"  # "0": glibc's default; "1" or unset: keep freed memory
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX",
                 "GLIBC_TUNABLES")  # glibc's malloc environment: the user's choice stands


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (module docstring); True when both
    were set, False where SWITCH is "0", off Linux/glibc, or where the environment sets glibc's
    malloc itself. ConfigError for a SWITCH other than "0" or "1"."""
    switch = os.environ.get(SWITCH, "1")
    if switch not in ("0", "1"):
        raise ConfigError(f"environment variable {SWITCH} must be 0 or 1, got {switch!r}")
    if switch == "0" or not sys.platform.startswith("linux") or any(name in os.environ for name in USER_SETTINGS):
        return False
    libc = ctypes.CDLL(None)  # the symbols this process already has
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False  # another C library (musl): its malloc has no such thresholds
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
