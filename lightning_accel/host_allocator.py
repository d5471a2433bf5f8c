"""How the C allocator of the process treats freed host memory during CPU training.

glibc's malloc serves large blocks from fresh ``mmap`` regions and returns freed memory at
the top of its heap to the operating system. A training step allocates and frees the same
activation buffers every step, so on a CPU each step faults the same pages in again and the
kernel zeroes them: on the default recipe about 5,000 page faults per step and several per
cent of its time. Raising both thresholds keeps freed memory in the heap for the next step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from functools import cache

# mallopt parameters of glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

HEAP_BLOCK_LIMIT = 256 << 20
"""Blocks up to this size are served from the heap and reused after they are freed."""
TRIM_THRESHOLD = 1 << 30
"""Free memory at the top of the heap kept for reuse before any is returned."""


@cache
def keep_freed_host_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (blocks up to
    :data:`HEAP_BLOCK_LIMIT`, up to :data:`TRIM_THRESHOLD` of free heap) instead of
    returning it to the operating system. Once per process, for the rest of it (glibc's
    dynamic thresholds, its default, cannot be set back); whether it applies (False off
    glibc, where the allocator's defaults stay)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return bool(
        libc.mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_LIMIT)
        and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def keeps_freed_host_memory() -> bool:
    """Whether :func:`keep_freed_host_memory` has changed this process's allocator."""
    return keep_freed_host_memory.cache_info().currsize > 0 and keep_freed_host_memory()
