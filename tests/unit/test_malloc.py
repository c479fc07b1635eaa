"""tasks.malloc: a worker reuses its freed image buffers instead of mapping fresh pages each job."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# In a fresh interpreter: optionally tune, then ten rounds of what a stage does to the heap (a dozen
# image-sized buffers, each written, then all freed); print the page faults of the last nine rounds
# and what tune() answered.
_PROBE = """
import json, resource, sys
import numpy as np
from tasks import malloc
tuned = malloc.tune() if sys.argv[1] == "tune" else None
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffers = [np.empty(900 * 1024, np.uint8) for _ in range(12)]
    for buffer in buffers:
        buffer.fill(1)
    del buffers, buffer
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"tuned": tuned, "faults": sum(faults[1:])}))
"""


def _probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=ROOT, env={**clean, **env},
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return json.loads(out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_process_reuses_large_buffers():
    pages = 9 * 12 * 900 * 1024 // 4096
    untuned, tuned = _probe("plain"), _probe("tune")
    assert untuned["faults"] > pages // 2  # glibc hands the freed heap back: its pages fault in again
    assert tuned["tuned"] is True
    assert tuned["faults"] < pages // 20  # the same buffer comes back from the heap, already mapped


def test_the_environment_wins():
    assert _probe("tune", MALLOC_TRIM_THRESHOLD_="1000000")["tuned"] is False
    assert _probe("tune", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=100000")["tuned"] is False
