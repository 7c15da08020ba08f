"""Path-star evaluation as a torchmetrics ``Metric``: exact match, per-position accuracy and the Clever-Hans signature.

Positions are 1-based and in the order the model emits them (with ``reverse`` the goal comes first).
Quantities that are about the graph rather than the emission order are computed on the path read forward
(start first), whatever the encoding:

- ``decision_acc``: free-running accuracy on the node right after the start, the only one that needs
  planning (position 2 forward, position ``l-1`` reversed); ``chance`` = ``1/d`` next to it.
- ``tf/pos_ge3``: teacher-forced accuracy on forward positions 3..l, high when the model has learned the
  Clever-Hans shortcut of following edges from the given previous node.
- ``edge_follow_rate``: of all consecutive pairs the model generated, the fraction that are edges.
- ``wrong_arm_rate``: the fraction of predictions that are a valid start-to-leaf path along the edges
  but end on a leaf other than the goal (the model followed edges correctly down the wrong arm).

All states are sums, so values are exact under DDP (torchmetrics sums them across ranks).
"""

from __future__ import annotations

from typing import Optional

import torch
from torchmetrics import Metric

from nfl.data.vocab import PathStarTask


class PathStarMetrics(Metric):
    """Accumulates free-running and teacher-forced predictions of path-star answers."""

    full_state_update = False

    def __init__(self, task: PathStarTask, reverse: bool = False) -> None:
        super().__init__()
        self.task, self.reverse = task, reverse
        l = task.path_len
        for name, shape in (("free_correct", (l,)), ("tf_correct", (l,))):
            self.add_state(name, torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("n", "exact", "edge_hits", "edge_pairs", "wrong_arm", "loss_sum"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        prefix: torch.Tensor,
        target: torch.Tensor,
        free_pred: torch.Tensor,
        tf_pred: torch.Tensor,
        loss: torch.Tensor,
        well_formed: Optional[torch.Tensor] = None,
    ) -> None:
        """Args: prefix (B, P); target, free_pred, tf_pred (B, l) in emitted order (-1: no node there); loss:
        mean over the batch; well_formed (B,): whether each generated answer parsed as exactly ``l`` nodes
        (text-generating models), None when every answer is ``l`` node tokens by construction."""
        B = target.shape[0]
        free_ok = free_pred == target  # (B, l)
        self.n += B
        exact = free_ok.all(dim=1)
        self.exact += (exact if well_formed is None else exact & well_formed).sum()
        self.free_correct += free_ok.sum(dim=0)
        self.tf_correct += (tf_pred == target).sum(dim=0)
        self.loss_sum += loss.detach().double() * B

        e = self.task.num_edges
        parents, children = prefix[:, 0 : 3 * e : 3], prefix[:, 1 : 3 * e : 3]  # (B, E)
        start, goal = prefix[:, 3 * e], prefix[:, 3 * e + 1]  # (B,)
        path = free_pred.flip(1) if self.reverse else free_pred  # (B, l), start first
        is_edge = (
            (path[:, :-1, None] == parents[:, None, :]) & (path[:, 1:, None] == children[:, None, :])
        ).any(dim=2)  # (B, l-1)
        self.edge_hits += is_edge.sum()
        self.edge_pairs += is_edge.numel()
        valid = (path[:, 0] == start) & is_edge.all(dim=1)
        self.wrong_arm += (valid & (path[:, -1] != goal)).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.n.clamp(min=1)
        free, tf = self.free_correct / n, self.tf_correct / n
        decision = self.task.path_len - 2 if self.reverse else 1  # 0-based index of the node after the start
        out = {
            "loss": self.loss_sum / n,
            "exact_match": self.exact / n,
            "decision_acc": free[decision],
            "chance": torch.tensor(self.task.chance, dtype=torch.float64),
            "edge_follow_rate": self.edge_hits / self.edge_pairs.clamp(min=1),
            "wrong_arm_rate": self.wrong_arm / n,
        }
        if self.task.path_len >= 3:  # the Clever-Hans signature: teacher-forced accuracy past the decision
            out["tf/pos_ge3"] = (tf.flip(0) if self.reverse else tf)[2:].mean()  # forward positions 3..l
        for i in range(self.task.path_len):
            out[f"free/pos_{i + 1}"] = free[i]
            out[f"tf/pos_{i + 1}"] = tf[i]
        return {k: v.float() for k, v in out.items()}
