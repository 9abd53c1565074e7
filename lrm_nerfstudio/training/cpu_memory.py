"""Keep freed memory in the process on CPU training, instead of handing it back to the kernel every step.

glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh `mmap` pages and unmaps them on free,
and trims the heap's top once more than the trim threshold is free. A CPU training step allocates and frees hundreds
of MiB of activations and gradients, so every step the kernel faults in and zeroes them again: on 2 cores the
demo's step spent about 40 % of a core in the kernel on some 100,000 page faults (0.65 s a step; 0.47 s with the
memory kept, 341 page faults a step). Turning mmap off for the heap and raising the trim threshold keeps the freed
pages for the next step. Resident memory then stays at the step's peak, which a training run reaches anyway.

Kept memory is kept per malloc arena, and glibc gives each new thread an arena of its own (up to 8 per core). The
viewer runs a render thread per connected browser and viser a pool of up to 32 message threads, each of which then
kept its own largest render or upload: 16 browsers took a training process from 1.8 to 5.8 GiB. All work that
allocates much runs one at a time under the trainer's lock anyway, so one arena (`M_ARENA_MAX` 1) loses no
parallelism and bounds the process at the largest single peak, whatever the number of threads.
"""

from __future__ import annotations

import ctypes
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_applied = False


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory (no mmap'd chunks, a 1 GiB trim threshold) in one arena shared by
    all threads (those that already have one keep it) for the rest of the process. Returns whether it applied: False
    off Linux, or with a C library without glibc's `mallopt`."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library already loaded into this process
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all([mallopt(_M_ARENA_MAX, 1), mallopt(_M_MMAP_MAX, 0), mallopt(_M_TRIM_THRESHOLD, 1 << 30)])
    return _applied
