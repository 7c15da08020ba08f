"""Train Bachmann & Nagarajan's own GPT (gregorbachmann/Next-Token-Failures) on the graphs an nfl run sees.

The authors' code is imported from their checkout (``--repo``), never copied: their numeral tokenizer, their
``Graphs`` dataset reading the reference text format, their GPT with its loss (teacher forcing, ``--teacherless``
or ``--reverse`` as their flags do), their learning-rate function and their ``evaluate`` (greedy, top-k 1). What
this script adds is only the plumbing their ``train.py`` does with files and epochs: it writes nfl's training
stream (PathStarDataModule with the same seed: the same graphs in the same order as ``python -m nfl fit
--data.init_args.seed S``) and nfl's held-out graphs to text files, trains one pass over them in order, and
evaluates every ``--eval-every`` steps. Their ``train.py`` settings are kept: AdamW with weight decay 0 and
betas 0.9/0.999, their warmup of 100 steps and their cosine horizon counted in samples x epochs (so a flat rate),
no clipping. Left different: fp32 on this CPU (their CUDA runs use fp16 with a GradScaler), batches in nfl's
stream order rather than their shuffled epochs of a fixed file.

Example (the curve docs/fixes.md sets beside nfl's)::

    python benchmarks/authors/next_token_failures.py --repo ~/Next-Token-Failures --teacherless \\
        --n-layer 4 --n-embd 128 --n-head 4 --steps 4000 --eval-every 250 --out docs/fixes/authors/teacherless_d4

writes ``curve.csv`` (step, graphs seen, test exact match and per-token accuracy, seconds) into ``--out``. Their
code imports pandas (for their chess data), tqdm and transformers: install those beside nfl.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch
from torch.utils.data import DataLoader

from nfl.data import PathStarDataModule


def write_graphs(data: PathStarDataModule, steps: int, folder: str) -> tuple[str, str]:
    """nfl's first ``steps`` training batches and its held-out graphs, in the reference text format."""
    data.setup("fit")
    stream = data.train_batches()
    graphs = [stream.graphs_of(b) for b in range(steps)]
    train = os.path.join(folder, "train.txt")
    data.task.write_file(train, np.concatenate([g[0] for g in graphs]), np.concatenate([g[1] for g in graphs]))
    test = os.path.join(folder, "test.txt")
    data.task.write_file(test, *data.test_graphs)
    return train, test


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="a checkout of gregorbachmann/Next-Token-Failures")
    parser.add_argument("--out", required=True, help="folder for curve.csv")
    parser.add_argument("--teacherless", action="store_true")
    parser.add_argument("--reverse", action="store_true")
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--degree", type=int, default=2)
    parser.add_argument("--path-len", type=int, default=5)
    parser.add_argument("--num-nodes", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="nfl's data seed and the torch seed of their model")
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.repo, "models", "gpt.py")):
        print(f"error: --repo {args.repo!r} is not a checkout of gregorbachmann/Next-Token-Failures "
              "(no models/gpt.py there)", file=sys.stderr)
        return 2
    for name in ("steps", "eval_every", "batch_size", "n_test"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    sys.path.insert(0, os.path.abspath(args.repo))
    from data.graphs import Graphs  # their code, from their checkout
    from evaluate import evaluate
    from models import get_model
    from tokenizing import get_tokenizer
    from utils.training_utils import get_lr

    torch.manual_seed(args.seed)
    data = PathStarDataModule(degree=args.degree, path_len=args.path_len, num_nodes=args.num_nodes,
                              batch_size=args.batch_size, n_test=args.n_test, seed=args.seed)
    their = SimpleNamespace(model="gpt", num_nodes=args.num_nodes, n_layer=args.n_layer, n_head=args.n_head,
                            n_embd=args.n_embd, use_flash=False, teacherless=args.teacherless)
    tokenizer = get_tokenizer(their)
    teacherless_token = tokenizer.encode("$")[0] if args.teacherless else None
    with tempfile.TemporaryDirectory() as folder:
        train_file, test_file = write_graphs(data, args.steps, folder)
        train = Graphs(tokenizer, args.steps * args.batch_size, train_file, "cpu", teacherless_token=teacherless_token,
                       reverse=args.reverse)
        test = Graphs(tokenizer, args.n_test, test_file, "cpu", teacherless_token=teacherless_token,
                      reverse=args.reverse)
    their.block_size, their.vocab_size, their.teacherless_token = train.num_tokens, tokenizer.vocab_size, teacherless_token
    model = get_model(their)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.999))
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=False)  # nfl's stream order
    test_loader = DataLoader(test, batch_size=args.batch_size, shuffle=False)
    os.makedirs(args.out, exist_ok=True)
    fields = ["step", "graphs_seen", "exact_match", *[f"token_{i + 1}" for i in range(test.num_target_tokens)],
              "seconds"]
    with open(os.path.join(args.out, "curve.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        start = time.perf_counter()
        horizon = len(train) * 1  # their lr_decay_iters: samples x epochs (one pass here)
        for step, (x, y) in enumerate(train_loader, start=1):
            for group in optimizer.param_groups:
                group["lr"] = get_lr(step - 1, args.lr, 100, horizon, 1e-5)
            _, loss, _ = model(x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step % args.eval_every == 0 or step == args.steps:
                results = evaluate(model, test_loader, ctx=contextlib.nullcontext(), temperature=0.8, top_k=1,
                                   results={}, mode="test")
                row = {"step": step, "graphs_seen": step * args.batch_size,
                       "exact_match": results["test/accuracy"] / 100,
                       **{f"token_{i + 1}": results[f"test/token_{i + 1}"] / 100 for i in range(test.num_target_tokens)},
                       "seconds": round(time.perf_counter() - start, 1)}
                writer.writerow(row)
                f.flush()
                print(f"step {step}: loss {loss.item():.4f}, test exact match {row['exact_match']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
