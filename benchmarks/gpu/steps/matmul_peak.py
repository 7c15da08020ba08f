"""The dense bf16 rate this GPU reaches on a large random matrix product: the ceiling MFU is read against.

``python benchmarks/gpu/steps/matmul_peak.py --out FILE.json [--size 8192]``: the mean of ten timed
size x size x size bf16 products (CUDA events) after three warm-ups, on random data.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device; the matrix-product ceiling is measured on a GPU only", file=sys.stderr)
        return 1
    n = args.size
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(args.repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / args.repeats
    tflops = 2 * n**3 / seconds / 1e12
    print(f"bf16 matrix product {n}x{n}x{n}: {tflops:.0f} TFLOP/s (mean of {args.repeats}, random data)")
    with open(args.out, "w") as f:
        json.dump({"size": n, "repeats": args.repeats, "tflops": tflops, "device": torch.cuda.get_device_name()}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
