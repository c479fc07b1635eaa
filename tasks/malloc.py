"""Keep a worker's freed memory for its next job instead of handing it back to the kernel.

glibc's malloc maps large blocks afresh (above a threshold it raises as it goes, up to 32 MiB) and
trims the heap's free top once it passes twice that threshold, so a stage's image buffers (half a
megabyte to tens of megabytes each, a dozen at a time) go back to the kernel when the stage ends and
come back as new zeroed pages, page fault by page fault, in the next job. Measured here: ~800 page
faults in each cartoon restyle at 384 px inside the worker, where the same call in a process that
had run it before took none (bench/pipeline_overhead.py with timers around ``apply_style``);
tests/unit/test_malloc.py shows the pattern: 24,000 faults in nine rounds of twelve 900 KiB
buffers, none once tuned.

``tune()`` fixes the thresholds at a worker's start: blocks up to 64 MiB from the heap (a 2048²
float32 RGB buffer is 48 MiB), and up to 256 MiB of free heap kept. A worker's memory then stays at
its high-water mark rather than shrinking between jobs. A ``MALLOC_*`` variable in the environment
(glibc's own tunables) wins: nothing is changed then. Anything but glibc (musl, macOS) is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# mallopt(3) parameters
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 64 * 1024 * 1024
TRIM_THRESHOLD = 256 * 1024 * 1024
TOP_PAD = 16 * 1024 * 1024
_OWN = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def tune() -> bool:
    """Set the thresholds above in this process; False when it did not (not glibc, or the
    environment sets them)."""
    if any(name in os.environ for name in _OWN) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
    if not done:
        log.warning("mallopt refused the worker's malloc thresholds; leaving them as they are")
    return done
