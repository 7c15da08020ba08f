"""Path-star's own diagnostics (Bachmann & Nagarajan 2024, §3.2): the Clever-Hans signature and wrong arms.

- ``tf/pos_ge3``: teacher-forced accuracy on forward path positions 3 and later, high when the model has
  learned the Clever-Hans shortcut of following the edge out of the given previous node;
- ``wrong_arm_rate``: the fraction of answers that are a valid path from the start along the edges but down an
  arm other than the goal's (the model followed edges correctly after a wrong decision).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from nfl.tasks.answers import ReadAnswers
from nfl.tasks.base import GraphTask


class PathStarDiagnostics(Metric):
    full_state_update = False

    def __init__(self, task: GraphTask, reverse: bool = False) -> None:
        super().__init__()
        self.task = task
        for name in ("n", "wrong_arm", "late", "late_tf"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, batch: ReadAnswers, loss: torch.Tensor) -> None:
        self.n += batch.length.shape[0]
        off_arm = batch.fwd_free[:, 1] != batch.fwd_target[:, 1]  # the first step leaves the goal's arm
        self.wrong_arm += (batch.valid & (batch.free_len >= 2) & off_arm).sum()
        late = batch.inside.clone()
        late[:, :2] = False  # forward positions 3.. (0-based 2..)
        self.late += late.sum()
        self.late_tf += ((batch.fwd_tf == batch.fwd_target) & late).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        out = {"wrong_arm_rate": (self.wrong_arm / self.n.clamp(min=1)).float()}
        if self.late > 0:
            out["tf/pos_ge3"] = (self.late_tf / self.late).float()
        return out
