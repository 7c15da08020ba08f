"""What a run ran with: the nfl checkout's commit and the versions of the packages that decide its numbers."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from typing import Any

import nfl

PACKAGES = ("nfl", "torch", "lightning")
RUN_INFO = "run_info.json"  # the file in a run's log folder that records it (nfl.callbacks.RecordRun)


def _git(*args: str) -> str:
    folder = os.path.dirname(os.path.abspath(nfl.__file__))
    done = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise OSError(done.stderr.strip())
    return done.stdout.strip()


def provenance() -> dict[str, Any]:
    """``{"commit", "dirty", "versions"}``: ``git rev-parse HEAD`` of the checkout nfl is imported from ("unknown"
    outside git, ``dirty`` then null), whether it had uncommitted changes to tracked files, and the versions of
    nfl, torch, lightning and python ("unknown" for a package without metadata)."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout (an installed wheel), or it hung
        commit, dirty = "unknown", None
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    versions["python"] = platform.python_version()
    return {"commit": commit, "dirty": dirty, "versions": versions}
