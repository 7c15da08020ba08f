"""Which lookups a masked-diffusion checkpoint has learned: per-position accuracy with some answer positions given.

``python benchmarks/diffusion_lookups.py --config CONFIG --ckpt CKPT [overrides]`` builds the config's model,
loads the checkpoint's weights, and runs one denoising pass over 2,000 held-out graphs with every answer
position masked except the given ones (1-based sets below). Position 3 given positions 1-2 is the one-hop
lookup teacher forcing learns first (follow the edge out of the previous node); position 4 given position 5 is
the one-hop lookup reversed targets learn first (the goal's parent). Positions that are given are never
training targets, so their own accuracy is not meaningful.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from nfl.lab.bench import build_or_report

GIVEN = [(), (5,), (1, 5), (4, 5), (1,), (1, 2)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--graphs", type=int, default=2000)
    args, overrides = parser.parse_known_args()
    built = build_or_report(args.config, overrides)
    if built is None:
        return 2
    system, _ = built
    objective = system.objective
    if not hasattr(objective, "denoise"):
        print(f"error: --config: {type(objective).__name__} is not a masked-diffusion objective", file=sys.stderr)
        return 2
    system.load_state_dict(torch.load(args.ckpt, map_location="cpu", weights_only=False)["state_dict"])
    system.eval()
    prefix, target = (torch.from_numpy(a) for a in system.task.sample(np.random.default_rng(7), args.graphs))
    width = target.shape[1]
    print(f"{args.ckpt}: accuracy per answer position, one pass, {args.graphs} graphs")
    with torch.no_grad():
        for given in GIVEN:
            keep = torch.zeros(width, dtype=torch.bool)
            keep[[g - 1 for g in given]] = True
            answer = target.masked_fill(~keep, objective.mask_id)
            accuracy = (objective.denoise(system.backbone, prefix, answer).argmax(-1) == target).float().mean(0)
            shown = "  ".join(f"{a:.3f}" + ("*" if keep[i] else " ") for i, a in enumerate(accuracy.tolist()))
            print(f"given {str(list(given)):>8}: {shown}")
    print("(* given)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
