"""Process-level memory settings: keep large freed CPU blocks for reuse instead of handing them back to the OS.

A training step on the CPU allocates activations of tens of MB (a reference-size GPT at batch 256 has
(7936, 1536) float32 MLP activations: 48 MB). glibc's malloc serves blocks that large with a fresh ``mmap``
and returns them with ``munmap`` when freed, so every step pays for page faults and the kernel zeroing
those pages again. Raising glibc's mmap and trim thresholds to 1 GiB keeps the blocks in the heap for the
next step: 2.95 -> 2.84 s per reference-size training step on 2 CPU cores (``python -m nfl.bench``; see
docs/speed.md). The cost is that the process keeps its peak memory instead of returning it.

Set ``NFL_MALLOC_DEFAULTS=1`` to keep glibc's defaults. Other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process); returns whether they are raised."""
    if sys.platform != "linux" or os.environ.get("NFL_MALLOC_DEFAULTS"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, _THRESHOLD) == 1
    if not ok:
        log.debug("mallopt refused the thresholds; keeping glibc's defaults.")
    return ok
