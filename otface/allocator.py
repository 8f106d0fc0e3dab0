"""Keep freed memory in the process (glibc's malloc): large tensors are allocated again without
page faults.

By default glibc serves an allocation above its mmap threshold (128 KiB, rising with the blocks
freed to at most 32 MiB) from a fresh mapping and unmaps it when it is freed, and it returns the
heap's free top to the kernel above 128 KiB. A CPU training step allocates and frees the same large
tensors every step (activations, the OT loss's (P, n, m) cost, kernel and plan), so each one costs a
page fault per 4 KiB page on first touch, every step. :func:`retain_freed_memory` raises both
thresholds: allocations up to MMAP_THRESHOLD (older glibc refuses more than 32 MiB: then that) come
from the main thread's heap, and freed memory stays there for the next step. Other threads'
arenas are heaps of at most 64 MiB, so their larger tensors are still fresh mappings. The process
keeps its peak memory instead of returning it to the system, and so does each DataLoader worker
it forks; no result changes. This is what the jemalloc / tcmalloc advice of PyTorch's CPU
performance guides buys, without a preloaded library.

Measured (benchmarks/RESULTS.md, 2-core CPU): on 64 pairs of layer1 maps (784 points), one Sinkhorn
iteration forward + backward 180-204 -> 105-112 ms (78,000 page faults per call -> 470), to
tau = 1e-3 459-460 -> 373-425 ms; the default training step 1.14-1.15x more images per second
(ArcFace alone, with the OT term; medians of three alternating runs); smaller maps gain nothing
measurable.

``otface`` commands call it at start, unless ``OTFACE_KEEP_FREED_MEMORY=0`` (glibc's default
behaviour; ``1``, the default, keeps it). It does nothing off glibc, under a preloaded allocator
(jemalloc, tcmalloc, ...: ``LD_PRELOAD``), or where the user has set glibc's own malloc settings
(a ``MALLOC_*`` variable, or ``glibc.malloc.*`` in ``GLIBC_TUNABLES``), which then apply as given;
note that setting any of glibc's thresholds also turns off its dynamic mmap threshold.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Mapping

from otface.errors import ConfigError

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (glibc malloc.h)
MMAP_THRESHOLDS = (1 << 30, 32 << 20)  # bytes from the heap, not fresh mappings: the first glibc accepts
TRIM_THRESHOLD = (1 << 31) - 1  # bytes of free heap top kept (mallopt takes an int: the most it can)
SWITCH = "OTFACE_KEEP_FREED_MEMORY"  # "0": glibc's default; "1" or unset: keep freed memory


def users_malloc(environ: Mapping[str, str]) -> bool:
    """Whether the environment chooses the allocator or sets glibc's malloc itself."""
    return (any(name.startswith("MALLOC_") for name in environ) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")
            or "malloc" in environ.get("LD_PRELOAD", ""))


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (module docstring); True when both
    were set, False where SWITCH is "0", off Linux/glibc, or where the environment chooses the
    allocator (:func:`users_malloc`). ConfigError for a SWITCH other than "0" or "1"."""
    switch = os.environ.get(SWITCH, "1")
    if switch not in ("0", "1"):
        raise ConfigError(f"environment variable {SWITCH} must be 0 or 1, got {switch!r}")
    if switch == "0" or not sys.platform.startswith("linux") or users_malloc(os.environ):
        return False
    libc = ctypes.CDLL(None)  # the symbols this process already has
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False  # another C library (musl): its malloc has no such thresholds
    mmap = any(libc.mallopt(M_MMAP_THRESHOLD, size) for size in MMAP_THRESHOLDS)
    trim = bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return mmap and trim
