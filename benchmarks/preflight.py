"""The pre-flight memory estimate (nfl.run.preflight) against the peak memory a short run really takes, at two sizes.

Each run is a fresh ``python -m nfl fit`` process (a few training steps, one validation batch); its peak resident
memory comes from ``getrusage(RUSAGE_CHILDREN)`` after it exits, less the peak of a process that only parses the
same config (``--print_config``: Python, torch and Lightning imported, nothing built). CPU only.

    python benchmarks/preflight.py
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
SIZES = {  # name: options on top of the quickstart config
    "quickstart GPT 2 x 128, batch 256": [],
    "GPT 6 x 384, batch 256": ["--model.backbone.init_args.n_layer=6", "--model.backbone.init_args.d_model=384",
                               "--model.backbone.init_args.n_head=6"],
}
RUN = ["--trainer.max_steps=3", "--trainer.limit_val_batches=1", "--test_after_fit=false",
       "--trainer.enable_progress_bar=false", "--data.init_args.n_test=512"]


def peak_rss(args: list[str], cwd: str) -> tuple[int, str]:
    """Peak resident bytes of ``python -m nfl <args>`` in a fresh process (it must be the only child so far)."""
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([sys.executable, "-m", "nfl", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, done.stderr + done.stdout


def measure(extra: list[str]) -> tuple[int, int]:
    """(estimate, measured peak above the baseline) for the quickstart with ``extra`` options, each in a fresh
    interpreter so that RUSAGE_CHILDREN holds that run's peak alone."""
    code = (
        "import sys; sys.path.insert(0, %r); from benchmarks.preflight import peak_rss; import tempfile;"
        "d = tempfile.mkdtemp(); peak, text = peak_rss(sys.argv[1:], d); print(peak); print(text)"
    ) % ROOT
    config = ["fit", "--config", os.path.join(ROOT, "configs", "quickstart.yaml"), *extra]
    base = subprocess.run([sys.executable, "-c", code, *config, "--print_config"], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    run = subprocess.run([sys.executable, "-c", code, *config, *RUN], capture_output=True, text=True, cwd=ROOT,
                         check=True)
    match = re.search(r"memory estimate: ([\d.]+) (\w+)", run.stdout)
    if match is None:
        raise SystemExit("no memory estimate logged:\n" + run.stdout[-2000:])
    estimate = float(match.group(1)) * UNITS[match.group(2)]
    return int(estimate), int(run.stdout.split("\n", 1)[0]) - int(base.stdout.split("\n", 1)[0])


def main() -> None:
    print(f"{'size':<36} {'estimate':>10} {'measured':>10} {'ratio':>6}")
    for name, extra in SIZES.items():
        estimate, measured = measure(extra)
        print(f"{name:<36} {estimate / 2**20:>7.0f} MiB {measured / 2**20:>7.0f} MiB {estimate / measured:>6.2f}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
