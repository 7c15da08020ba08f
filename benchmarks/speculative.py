"""Self-speculative vs plain greedy decoding: forward passes and wall time per batch, and identical outputs.

Multi-token heads 2..k draft the next tokens and head 1 verifies them in one pass (nfl.engine.decoding); the output is
plain greedy decoding's by construction, and the pass count drops only as far as the drafts are right.

    python benchmarks/speculative.py --ckpt lightning_logs/version_0/checkpoints/last.ckpt   # e.g. quickstart_mtp
    python benchmarks/speculative.py                          # a random quickstart-size GPT with k = 5 heads

Outputs are greedy decoding's up to float32 argmax near-ties (logit gaps ~1e-6), where cached and uncached
greedy decoding already disagree; the last two columns count such rows. A batch shares one cache position, so
it accepts the fewest drafts any of its rows would: large batches gain less than batch size 1.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Optional

import numpy as np
import torch

from nfl.tasks import PathStar
from nfl.engine.decoding import greedy_decode
from nfl.models.gpt import GPT
from nfl.objectives import MultiTokenHeads
from nfl.system import PathStarSystem


def load(ckpt: Optional[str], k: int) -> tuple[PathStar, GPT, MultiTokenHeads]:
    if ckpt:
        system = PathStarSystem.load_from_checkpoint(ckpt, map_location="cpu")
        if not isinstance(system.objective, MultiTokenHeads) or system.objective.k < 2:
            raise SystemExit(f"{ckpt}: needs a MultiTokenHeads objective with k >= 2 to draft")
        return system.task, system.backbone.eval(), system.objective.eval()
    torch.manual_seed(0)
    task = PathStar(2, 5, 50)
    backbone = GPT(task.vocab_size, task.seq_len, n_layer=2, d_model=128, n_head=4).eval()  # quickstart size
    objective = MultiTokenHeads(k=k)
    objective.bind(task, backbone)
    return task, backbone, objective.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="a checkpoint trained with MultiTokenHeads; default: a random model")
    parser.add_argument("--k", type=int, default=5, help="heads of the random model")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 256])
    parser.add_argument("--batches", type=int, default=30, help="batches timed per batch size")
    parser.add_argument("--seed", type=int, default=1, help="seed of the (unseen) test graphs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier timings)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    task, backbone, objective = load(args.ckpt, args.k)
    passes: list[int] = []
    backbone.register_forward_pre_hook(lambda module, inputs: passes.append(1))
    rng = np.random.default_rng(args.seed)
    print(f"model: {args.ckpt or 'random init'}; G({task.degree},{task.path_len},{task.num_nodes}); k = {objective.k}")
    print(f"{'batch':>6} {'greedy passes':>14} {'spec passes':>12} {'greedy ms':>10} {'spec ms':>8} {'speed-up':>9}"
          f" {'exact match':>12} {'rows spec!=greedy':>18} {'rows cached!=uncached':>22}")
    for B in args.batch_sizes:
        stats = {"greedy": ([], []), "spec": ([], [])}  # (passes, seconds) per batch
        differ, reference, exact = 0, 0, []
        for _ in range(args.batches):
            prefix, target = (torch.from_numpy(a) for a in task.sample(rng, B))
            results = {}
            for name in ("greedy", "spec"):
                objective.speculative = name == "spec"
                passes.clear()
                start = time.perf_counter()
                with torch.inference_mode():
                    results[name] = objective.decode(backbone, prefix)
                stats[name][1].append(time.perf_counter() - start)
                stats[name][0].append(len(passes))
            differ += int((results["greedy"] != results["spec"]).any(dim=1).sum())
            with torch.inference_mode():  # the float32 rounding floor: the same greedy decoding without the cache
                uncached = greedy_decode(backbone, prefix, task.path_len, use_cache=False)
            reference += int((results["greedy"] != uncached).any(dim=1).sum())
            exact.append((results["spec"] == target).all(dim=1).float().mean().item())
        (gp, gt), (sp, st) = stats["greedy"], stats["spec"]
        g_ms, s_ms = 1e3 * statistics.median(gt), 1e3 * statistics.median(st)
        print(f"{B:>6} {statistics.mean(gp):>14.2f} {statistics.mean(sp):>12.2f} {g_ms:>10.2f} {s_ms:>8.2f}"
              f" {g_ms / s_ms:>8.2f}x {statistics.mean(exact):>12.3f} {differ:>18} {reference:>22}")
    print("passes: backbone forward passes per batch (mean), including the prefix pass; ms: median wall time per batch")
    print("rows that differ: speculative vs cached greedy, and cached vs uncached greedy (float32 argmax near-ties)")


if __name__ == "__main__":
    main()
