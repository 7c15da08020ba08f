"""Milliseconds per CPU training step (forward + backward + AdamW) of nfl's Mamba, one line per scan choice.

Compares nfl's pure-PyTorch scans (stepwise, sequential, doubling, and the autograd reference loop) with
the pure-PyTorch package mambapy (parallel scan and sequential mode) when it is installed
(``pip install mambapy``; it is only measured here, never a dependency of nfl). Every model is a 2-layer
width-64 Mamba language model with the same shapes; the variants run interleaved, round after round, and
the median is reported, so load from other processes biases none of them in particular.

    python benchmarks/mamba_scan.py                      # width 64, 2 layers, batch 64, sequence 40
    python benchmarks/mamba_scan.py --rounds 30 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

from nfl.models.mamba import Mamba


def nfl_step(scan: str, args: argparse.Namespace) -> Callable[[torch.Tensor], None]:
    model = Mamba(args.vocab, args.seq, n_layer=args.layers, d_model=args.width, kernels="torch", scan=scan)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(idx: torch.Tensor) -> None:
        logits = model.unembed(model(idx[:, :-1]))
        F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def mambapy_step(pscan: bool, args: argparse.Namespace) -> Callable[[torch.Tensor], None]:
    from mambapy.mamba import Mamba as MambaPy, MambaConfig, RMSNorm

    # mambapy's LM (embedding, Mamba, RMSNorm, tied head) rebuilt from its core module, which (unlike
    # mambapy.lm) does not need einops.
    config = MambaConfig(d_model=args.width, n_layers=args.layers, pscan=pscan)
    model = torch.nn.ModuleDict({"embedding": torch.nn.Embedding(args.vocab, args.width), "mamba": MambaPy(config),
                                 "norm_f": RMSNorm(args.width, config.rms_norm_eps)})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(idx: torch.Tensor) -> None:
        hidden = model["norm_f"](model["mamba"](model["embedding"](idx[:, :-1])))
        logits = F.linear(hidden, model["embedding"].weight)
        F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=40, help="tokens the model sees per row")
    p.add_argument("--vocab", type=int, default=54)
    p.add_argument("--rounds", type=int, default=20, help="timed steps per variant (after 3 warm-up steps)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--skip-reference", action="store_true", help="do not time the autograd reference loop")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("command:", " ".join([sys.executable.split("/")[-1]] + sys.argv))
    print(f"torch {torch.__version__}, {args.threads} threads; width {args.width}, {args.layers} layers, "
          f"batch {args.batch}, sequence {args.seq}")

    variants: dict[str, Callable[[torch.Tensor], None]] = {}
    for scan in ("stepwise", "sequential", "doubling") + (() if args.skip_reference else ("reference",)):
        variants[f"nfl scan={scan}"] = nfl_step(scan, args)
    try:
        variants["mambapy pscan=True"] = mambapy_step(True, args)
        variants["mambapy pscan=False"] = mambapy_step(False, args)
    except ImportError:
        print("mambapy not installed (pip install mambapy): skipped")

    idx = torch.randint(0, args.vocab, (args.batch, args.seq + 1))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(3 + args.rounds):
        for name, step in variants.items():
            start = time.perf_counter()
            step(idx)
            if r >= 3:
                times[name].append(1000 * (time.perf_counter() - start))

    base = statistics.median(times["mambapy pscan=True"]) if "mambapy pscan=True" in times else None
    print(f"{'variant':<24}{'median ms/step':>15}{'min':>8}" + (f"{'vs mambapy':>12}" if base else ""))
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<24}{med:>15.1f}{min(ts):>8.1f}" + (f"{base / med:>11.2f}x" if base else ""))


if __name__ == "__main__":
    main()
