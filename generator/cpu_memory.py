"""Keep freed memory in the process, so that a step on the CPU does not wait on the kernel to hand out pages.

torch allocates CPU tensors with malloc. glibc serves large requests with fresh mmap'd pages, unmaps them when
they are freed and trims its heap's free top, so every step of BigSleep had the kernel fault in and zero its
activations again: 145 MB of page faults and a third of a tiny-model step at 256 px, 2 to 3 GB and 1.5 to 2 s of
kernel time in a real-size step at 512 px (2-core AVX2 machine). With the settings below a step reuses the
blocks the previous one freed: no mmap (every block comes from the heap), no trimming, and one heap for all
threads (glibc's per-thread heaps are at most 64 MB each and could not hold a real-size activation).
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt's parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# Give the heap's free top back to the kernel only past 2 GiB (mallopt takes an int).
TRIM_THRESHOLD = 2**31 - 1
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, 1))


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse; False (and nothing changed) without glibc."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(parameter, value) == 1 for parameter, value in SETTINGS)
