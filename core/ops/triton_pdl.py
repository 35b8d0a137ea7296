"""The device side of programmatic dependent launch (core/ops/pdl.py says when it is on).

A kernel launched with ``launch_pdl=True`` calls :func:`pdl_wait` in every program before it
touches memory another kernel writes (only reads of data no kernel writes, weights, may come
before it), and :func:`pdl_release` where the next kernel may start launching.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def pdl_release(USE_PDL: tl.constexpr):
    """Let the next kernel on the stream launch (its programs wait for this one to finish)."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def pdl_wait(USE_PDL: tl.constexpr):
    """Wait until the previous kernel on the stream has finished and its writes are visible."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit
def pdl_start(USE_PDL: tl.constexpr):
    """Both, at the top of a kernel that has nothing to load before the wait."""
    pdl_release(USE_PDL)
    pdl_wait(USE_PDL)
