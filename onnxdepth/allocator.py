"""Freed memory kept for reuse while a model trains on the CPU (glibc only).

A training step allocates and frees the same large tensors every time (logits of [batch, seq, vocabulary],
activations, gradients). glibc serves any block over its mmap threshold (at most 32 MiB) with a fresh mmap and
unmaps it on free, so each step faults gigabytes of new zero pages in again: on SmolLM2 at 4 x 128 tokens that
was 75,000 page faults a second and a third of the CPU time spent in the kernel. No library sets this for a
process it does not own (jemalloc / tcmalloc must be preloaded before Python starts), so `mallopt` is called
here through ctypes: mmap off and a high trim threshold for the length of the run, glibc's defaults back and
the free memory returned (`malloc_trim`) after it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import sys

__all__ = ["reuse_freed_memory"]

logger = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
# glibc's defaults (malloc/malloc.c: DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_THRESHOLD, DEFAULT_MMAP_MAX).
_DEFAULTS = ((_M_TRIM_THRESHOLD, 128 * 1024), (_M_MMAP_THRESHOLD, 128 * 1024), (_M_MMAP_MAX, 65536))
#: Free memory at the top of the heap kept while training (returned to the system only beyond this).
KEPT_BYTES = 1 << 30


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None
    except OSError:
        return None


@contextlib.contextmanager
def reuse_freed_memory(enabled: bool = True):
    """Within the block, freed blocks stay in the heap for the next allocation (see the module doc); yields
    whether that was set (False off glibc or when not ENABLED)."""
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, KEPT_BYTES)
    try:
        yield True
    finally:
        for parameter, value in _DEFAULTS:
            libc.mallopt(parameter, value)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
