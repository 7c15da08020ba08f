"""A stand-in for the reference code's training and evaluation loops, to time both codebases on one machine.

The project's speed targets are the reference code's timings on this machine kind. This script re-implements
(in our own code, not theirs) the computation those loops do, so that the comparison can be rerun on the
machine at hand: separate query/key/value projections, einsum attention under a masked_fill causal mask,
tanh GELU, the unembedding over every position with cross-entropy (ignore -1) and the accuracy the reference
logs, fp32 AdamW, a map-style Dataset building each (x, y) pair in ``__getitem__`` behind a DataLoader; and
for evaluation, generation without a cache, top-k 1 sampling from the last position, 2,000 graphs in
batches of 256.

    python benchmarks/reference_loop.py --layers 2 --width 128 --heads 4 --steps 30   # quickstart size
    python benchmarks/reference_loop.py --layers 6 --width 384 --heads 6 --steps 3    # reference size

It is a stand-in: timings of the real reference code can differ.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nfl.tasks import PathStar


def tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, max_len: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.q, self.k, self.v, self.proj = (nn.Linear(width, width) for _ in range(4))
        self.register_buffer("causal", torch.tril(torch.ones(max_len, max_len)).view(1, max_len, max_len, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (f(x).view(B, T, self.heads, self.head_dim) for f in (self.q, self.k, self.v))
        scores = torch.einsum("bmhd,bnhd->bmnh", q, k).masked_fill(self.causal[:, :T, :T] == 0, float("-inf"))
        weights = F.softmax(scores / math.sqrt(self.head_dim), dim=2)
        return self.proj(torch.einsum("bmnh,bnhd->bmhd", weights, v).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, max_len: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads, max_len)
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.down(tanh_gelu(self.up(self.ln_2(x))))


class Model(nn.Module):
    def __init__(self, vocab: int, max_len: int, layers: int, width: int, heads: int) -> None:
        super().__init__()
        self.head = nn.Linear(width, vocab, bias=False)
        self.tokens = nn.Embedding(vocab, width)
        self.tokens.weight = self.head.weight  # tied
        self.positions = nn.Embedding(max_len, width)
        self.blocks = nn.ModuleList(Block(width, heads, max_len) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        x = self.tokens(idx) + self.positions(torch.arange(idx.shape[1]).unsqueeze(0))
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        if targets is None:  # generation reads the last position only
            return self.head(x[:, [-1], :]), None
        logits = self.head(x)  # every position, as the reference's training forward
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        answer = int(targets[0].eq(-1).sum())  # the accuracy the reference logs every step
        correct = logits[:, answer:].argmax(-1).eq(targets[:, answer:]).float()
        _ = correct.sum(1).eq(correct.shape[1]).float().mean(), correct.mean(0)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, steps: int) -> torch.Tensor:
        for _ in range(steps):  # no cache: the whole sequence again every step
            logits = self(idx)[0][:, -1, :]
            top = torch.topk(logits, 1).values
            logits[logits < top[:, [-1]]] = -float("inf")
            idx = torch.cat([idx, torch.multinomial(F.softmax(logits, dim=-1), 1)], dim=1)
        return idx


class Pairs(Dataset):
    """(x, y) built per example, as the reference's Dataset does."""

    def __init__(self, sequences: list[torch.Tensor], prefix_len: int) -> None:
        self.sequences, self.prefix_len = sequences, prefix_len

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int):
        seq = self.sequences[i]
        y = torch.cat([-torch.ones((self.prefix_len - 1,)), seq[self.prefix_len :].clone()])
        return seq[:-1].clone(), y.long()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    task = PathStar(2, 5, 50)
    P = task.prefix_len
    torch.manual_seed(0)
    prefix, path = task.sample(np.random.default_rng(0), 256 * (args.steps + 2))
    sequences = list(torch.from_numpy(np.concatenate([prefix, path], axis=1)))
    model = Model(task.vocab_size, P + task.path_len, args.layers, args.width, args.heads)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0)
    batches = iter(DataLoader(Pairs(sequences, P), batch_size=256, shuffle=True))

    def step() -> None:
        x, y = next(batches)
        model(x, y)[1].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    size = f"{args.layers}L/{args.width}w"
    print(f"stand-in {size}: train {1e3 * (time.perf_counter() - start) / args.steps:.1f} ms/step (batch 256)")

    model.eval()
    test = torch.from_numpy(task.sample(np.random.default_rng(1), 2000)[0])
    model.generate(test[:256], task.path_len)
    start = time.perf_counter()
    for batch in test.split(256):
        model.generate(batch, task.path_len)
    print(f"stand-in {size}: evaluate 2000 graphs {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
