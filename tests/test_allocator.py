"""`allocator.reuse_freed_memory`: within it, a large block freed and allocated again is served from the heap
without faulting its pages in anew (what made a SmolLM2 healing step 1.8x slower); outside, glibc maps it afresh."""

from __future__ import annotations

import resource
import sys

import numpy as np
import pytest

from onnxdepth.allocator import _glibc, reuse_freed_memory

SIZE = 64 * 1024 * 1024  # bytes: above glibc's largest mmap threshold (32 MiB), so mapped by default


def _faults_of_second_fill() -> int:
    """Minor page faults while a SIZE block is allocated and written a second time, after one was freed."""
    block = np.ones(SIZE, dtype=np.uint8)
    del block
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.ones(SIZE, dtype=np.uint8)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del block
    return faults


@pytest.mark.skipif(not sys.platform.startswith("linux") or _glibc() is None, reason="glibc only")
def test_freed_blocks_are_reused_inside_and_mapped_afresh_outside():
    with reuse_freed_memory() as active:
        assert active
        inside = _faults_of_second_fill()
    outside = _faults_of_second_fill()  # the defaults are back
    # Outside, every page (or huge page, with transparent huge pages) of the new mapping faults in again.
    assert outside >= SIZE // (2 * 1024 * 1024)
    assert inside * 4 < outside


def test_disabled_is_a_no_op():
    with reuse_freed_memory(False) as active:
        assert active is False
