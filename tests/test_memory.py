"""The allocator setting python -m nfl applies: glibc accepts it, and NFL_MALLOC_DEFAULTS turns it off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nfl.run.malloc import keep_freed_memory

PROBE = "from nfl.run.malloc import keep_freed_memory; print(keep_freed_memory())"


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_glibc_accepts_the_thresholds_and_the_opt_out_is_honoured():
    # A fresh process each, so the setting under test is the only one applied.
    on = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    off = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
        env={**os.environ, "NFL_MALLOC_DEFAULTS": "1"},
    )
    assert on.stdout.strip() == "True" and off.stdout.strip() == "False"


def test_it_is_safe_to_apply_twice():
    assert keep_freed_memory() == keep_freed_memory()
