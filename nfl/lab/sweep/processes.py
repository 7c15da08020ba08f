"""A sweep's training processes: each run's GPUs, CPU threads and DDP port, and the signals forwarded to them.

The first SIGINT/SIGTERM is forwarded once to every running child, which saves its last.ckpt and exits; the sweep
waits for them (up to a timeout) before it stops.
"""

from __future__ import annotations

import socket
import subprocess
import time
from typing import IO, Any, Mapping, Optional


def visible_gpus(environ: Mapping[str, str]) -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` as listed (up to an invalid entry, as CUDA reads
    it), else the NVIDIA GPUs ``nvidia-smi -L`` lists (none without it; torch is not imported for this)."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        try:
            done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return []
        return [str(i) for i in range(sum(line.startswith("GPU ") for line in done.stdout.splitlines()))]
    gpus = []
    for entry in (e.strip() for e in listed.split(",")):
        if not entry or entry.startswith("-"):
            break
        gpus.append(entry)
    return gpus


def slot_environments(parallel: int, gpus_per_run: int, gpus: list[str], cores: int) -> list[dict[str, str]]:
    """The environment each of ``parallel`` concurrent runs gets on top of the sweep's: ``gpus_per_run`` GPUs of
    its own in ``CUDA_VISIBLE_DEVICES`` (handed out round-robin, so that more runs than GPUs share them evenly),
    and ``cores // parallel`` CPU threads. One run at a time changes nothing."""
    if parallel == 1:
        return [{}]
    threads = str(max(1, cores // parallel))
    slots = [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(parallel)]
    for i, slot in enumerate(slots):
        if gpus:
            mine = [gpus[(i * gpus_per_run + j) % len(gpus)] for j in range(gpus_per_run)]
            slot["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    return slots


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Signals:
    """SIGINT and SIGTERM while the sweep runs: the first is forwarded once to every running child, then the sweep
    stops starting runs and waits for them.

    The children run in their own sessions so that a terminal's Ctrl-C reaches only the sweep; a second signal
    is not forwarded, since it could cut a child's save of ``last.ckpt`` short.
    """

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.at = 0.0  # when it was received (time.monotonic)
        self.children: set[subprocess.Popen] = set()

    def __call__(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received, self.at = signum, time.monotonic()
            for child in list(self.children):
                if child.poll() is None:
                    child.send_signal(signum)

    def start(self, cmd: list[str], out: IO, env: Optional[dict[str, str]] = None) -> subprocess.Popen:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.children.add(child)
        if self.received is not None:  # arrived between the sweep's last check and the child's start
            child.send_signal(self.received)
        return child


def wait_for(children: list[subprocess.Popen], signals: Signals, save_timeout: float, until_all: bool = True) -> dict:
    """Wait for ``children`` (all, or the first to end), killing any still running ``save_timeout`` seconds after a
    signal; their exit codes by child."""
    while True:
        ended = {c: c.poll() for c in children if c.poll() is not None}
        if ended and (not until_all or len(ended) == len(children)):
            signals.children.difference_update(ended)
            return ended
        if signals.received is not None and time.monotonic() > signals.at + save_timeout:
            for child in children:
                if child.poll() is None:
                    child.kill()
        try:
            next(c for c in children if c.poll() is None).wait(timeout=0.5 if len(children) > 1 else 1.0)
        except (subprocess.TimeoutExpired, StopIteration):
            pass

