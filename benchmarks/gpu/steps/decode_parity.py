"""Cached against uncached greedy decoding of a trained checkpoint: do the two give the same tokens?

``python benchmarks/gpu/steps/decode_parity.py --config CONFIG --ckpt last.ckpt --out FILE.json [overrides]``
builds the config's model (with the given CLI overrides, as the checkpoint's run had them), loads the
checkpoint's weights, decodes held-out graphs both ways in fp32 and under bf16 autocast (on CUDA), and counts
the answers whose tokens differ. Exit status 1 when fp32 decoding differs anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

import numpy as np
import torch

from nfl.lab.bench import build_or_report


def decode_all(system, batches, use_cache: bool, autocast) -> torch.Tensor:
    objective, codec = system.objective, system.codec
    objective.use_cache = use_cache
    out = []
    with torch.no_grad(), autocast():
        for prefix, target in batches:
            batch = codec.encode(prefix, target)
            out.append(objective.decode(system.backbone, batch.prefix, codec.decode_steps(batch)))
    return torch.cat(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--graphs", type=int, default=2000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True)
    args, overrides = parser.parse_known_args()
    built = build_or_report(args.config, overrides)
    if built is None:
        return 2
    system, data = built
    if not hasattr(system.objective, "use_cache"):
        print(f"error: {type(system.objective).__name__} has no cached decoding to compare", file=sys.stderr)
        return 2
    state = torch.load(args.ckpt, map_location="cpu", weights_only=False)["state_dict"]
    system.load_state_dict(state)
    device = torch.device(args.device)
    system.to(device).eval()
    prefix, target = system.task.sample(np.random.default_rng(12345), args.graphs)
    graphs = [torch.from_numpy(a).to(device) for a in (prefix, target)]
    batches = list(zip(*(g.split(data.eval_batch_size) for g in graphs)))
    modes = {"fp32": contextlib.nullcontext}
    if device.type == "cuda":
        modes["bf16"] = lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    result = {"graphs": args.graphs, "ckpt": args.ckpt, "device": str(device)}
    for name, autocast in modes.items():
        cached = decode_all(system, batches, True, autocast)
        plain = decode_all(system, batches, False, autocast)
        differ = int((cached != plain).any(dim=1).sum())
        result[name] = {"answers_differing": differ, "tokens_differing": int((cached != plain).sum())}
        print(f"{name}: cached vs uncached decoding of {args.graphs} graphs: {differ} answers differ")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 1 if result["fp32"]["answers_differing"] else 0


if __name__ == "__main__":
    sys.exit(main())
