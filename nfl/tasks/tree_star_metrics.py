"""``decision_acc/depth_{k}``: free-running accuracy at the k-th decision along the path (k = 1 at the start).

A decision is an answer position whose predecessor has more than one outgoing edge (see :mod:`nfl.engine.metrics`);
on a tree-star graph the k-th one is the choice at the k-th branch point, so this shows how far down the tree
a model plans correctly.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from nfl.tasks.answers import ReadAnswers


class DecisionsByDepth(Metric):
    full_state_update = False

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.depth = depth
        for name in ("count", "correct"):
            self.add_state(name, torch.zeros(depth, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, batch: ReadAnswers, loss: torch.Tensor) -> None:
        rank = batch.decision.long().cumsum(dim=1) * batch.decision  # (B, L): k at the k-th decision, else 0
        right = batch.fwd_free == batch.fwd_target
        for k in range(1, self.depth + 1):
            at = rank == k
            self.count[k - 1] += at.sum()
            self.correct[k - 1] += (at & right).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            f"decision_acc/depth_{k + 1}": (self.correct[k] / self.count[k]).float()
            for k in range(self.depth)
            if self.count[k] > 0
        }
