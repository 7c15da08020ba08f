"""Wall time of ``python -m nfl.data generate`` writing path-star G(2,5,50) graphs as text, JSON lines and parquet.

Each format runs as a subprocess (start-up included) with ``PYTHONPATH`` set to this repository, one after the
other, a few times; the script prints the median seconds, the ratio to text and the bytes written. Text writes
``--n`` graphs to one file; jsonl and parquet write a dataset folder with ``--n`` training graphs and a held-out
split of ``--n-test`` graphs (plus its validation subset), so they also draw and write the held-out set.

    python benchmarks/dataset_formats.py                 # 1,000,000 graphs, 3 repeats
    python benchmarks/dataset_formats.py --n 100000 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def folder_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="training graphs")
    parser.add_argument("--n-test", type=int, default=2000, help="held-out graphs (jsonl and parquet)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": ROOT}
    base = [sys.executable, "-m", "nfl.data", "generate", "--degree", "2", "--path-len", "5", "--num-nodes", "50",
            "--n", str(args.n), "--seed", "0"]
    times: dict[str, list[float]] = {"text": [], "jsonl": [], "parquet": []}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for fmt in times:
                out = os.path.join(tmp, "graphs.txt" if fmt == "text" else fmt)
                extra = ["--format", fmt] + ([] if fmt == "text" else ["--n-test", str(args.n_test)])
                start = time.perf_counter()
                subprocess.run([*base, *extra, "--out", out], env=env, check=True, stdout=subprocess.DEVNULL)
                times[fmt].append(time.perf_counter() - start)
                sizes[fmt] = folder_bytes(out)
    text = statistics.median(times["text"])
    print(f"path-star G(2,5,50), {args.n:,} graphs (jsonl/parquet: + {args.n_test:,} held-out), "
          f"median of {args.repeats}")
    print(f"{'format':<8} {'seconds':>8} {'x text':>7} {'MB':>8}")
    for fmt, ts in times.items():
        t = statistics.median(ts)
        print(f"{fmt:<8} {t:8.2f} {t / text:7.2f} {sizes[fmt] / 1e6:8.1f}")


if __name__ == "__main__":
    main()
