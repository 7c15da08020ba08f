"""Ranking into the future (RITF): teacher forcing plus a pairwise hinge loss that orders the logits of the answer
tokens still to come (Frydenlund, ACL 2025, arXiv 2503.10542, "Language Models, Graph Searching, and Supervision
Adulteration", its ranking-into-the-future solution).

At answer position ``i`` (the one predicting ``x_i``, input ``x_{<i}``), with ``s_i[v]`` the logit of token ``v``:

- order: ``x_i > x_{i+1} > ... > x_m``, every pair ``(j, k)``, ``i <= j < k <= m``, scored
  ``max(0, margin - (s_i[x_j] - s_i[x_k]))`` (the paper's L_B): the next node first, then the rest of the
  answer in the order it is still to be written;
- off path (``off_path``, the paper's constraint that the correct arm ranks above the other arms): every
  remaining answer node ``x_j``, ``j >= i``, above every node of the graph that is not on the answer,
  ``max(0, margin - (s_i[x_j] - s_i[o]))``.

On path-star the nodes off the answer are the nodes of the other arms (and, with a goal inside its arm, the
goal arm's nodes past it); for any task they are read from
the prefix (``task.edges_of``) as "nodes of the graph not in this row's answer", so the same loss works on
tree-star and DAG search (on DAG search it ranks the data's shortest path, one of possibly several). Only
answer nodes are ranked: an end token is trained by the cross-entropy alone, and nodes already written are on
neither side. Loss: ``next_token + weight * hinge``. ``reduction: mean`` (default) averages the hinge over every
pair of the batch, so it is on the scale of one pair and of the cross-entropy whatever the degree and length;
``reduction: sum`` is the paper's form, L_B summed over positions and pairs (both kinds) of a row, averaged over
rows.
Departure: the paper trains RITF with the ranking as its loss over the future; here it is added to next-token
cross-entropy, which keeps the next token above every token the ranking leaves out (separators, the end token)
for greedy decoding, and makes ``weight: 0`` teacher forcing exactly.

Evaluation and decoding are teacher forcing's (a true teacher-forced pass, greedy decoding). Logged:
``train/ritf/hinge_loss`` (before ``weight``), ``train/ritf/next_token_loss``. The ranked tokens are node ids,
so the backbone must read numeral tokens (GPT, Mamba); a pretrained tokenizer spells a node as text and is
refused.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch

from nfl.errors import UserInputError, at_least, require
from nfl.models.base import Backbone
from nfl.objectives.base import ObjectiveOutput, target_cross_entropy
from nfl.objectives.teacher_forcing import TeacherForcing
from nfl.tasks.base import GraphTask
from nfl.tasks.codec import NumeralCodec


class RankIntoFuture(TeacherForcing):
    """Next-token cross-entropy plus a hinge ranking of the remaining answer nodes; decodes greedily.

    Args:
        margin: the hinge's margin between two ranked logits (the paper's 1).
        weight: weight of the hinge loss (0 is teacher forcing).
        off_path: also rank every remaining answer node above every graph node off the answer.
        reduction: ``mean`` over all pairs of the batch, or ``sum`` over a row's pairs (the paper's L_B),
            averaged over rows.
        use_cache: as :class:`~nfl.objectives.TeacherForcing`.
    """

    def __init__(
        self,
        margin: float = 1.0,
        weight: float = 1.0,
        off_path: bool = True,
        reduction: Literal["mean", "sum"] = "mean",
        use_cache: bool = True,
    ) -> None:
        super().__init__(use_cache)
        me = type(self)
        at_least(me, "margin", margin, 0.0, "the hinge's margin, e.g. 1")
        at_least(me, "weight", weight, 0.0, "0 is teacher forcing")
        require(reduction in ("mean", "sum"), me, "reduction", reduction, "must be mean or sum")
        self.margin, self.weight, self.off_path, self.reduction = float(margin), float(weight), off_path, reduction

    def bind(
        self, task: GraphTask, backbone: Backbone, dummy: Optional[int] = None, stop: Optional[int] = None
    ) -> None:
        super().bind(task, backbone, dummy, stop)
        if not isinstance(backbone.codec(task), NumeralCodec):
            raise UserInputError(
                f"nfl.objectives.RankIntoFuture ranks node tokens, which {type(backbone).__name__}'s tokenizer "
                "spells as text (a node may be several tokens); use nfl.models.GPT or nfl.models.Mamba."
            )

    def off_path_nodes(self, prefix: torch.Tensor, nodes: torch.Tensor, is_node: torch.Tensor) -> torch.Tensor:
        """(B, N) bool: nodes in a row's graph (its edges in the prefix) that are not among its answer ``nodes``."""
        N = self.task.num_nodes
        parents, children = self.task.edges_of(prefix)
        ends = torch.cat([parents, children], dim=1)  # (B, 2E); pad (unused slots) is >= N
        graph = torch.zeros(prefix.shape[0], N + 1, dtype=torch.bool, device=prefix.device)
        graph.scatter_(1, ends.where(ends < N, torch.full_like(ends, N)), True)
        graph.scatter_(1, nodes.where(is_node, torch.full_like(nodes, N)), False)
        return graph[:, :N]

    def hinge(self, logits: torch.Tensor, prefix: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The ranking loss of teacher-forced logits (B, l, V) against the answer ``target`` (B, l)."""
        B, L, _ = logits.shape
        scores = logits.float()
        is_node = (target >= 0) & (target < self.task.num_nodes)  # (B, l): answer nodes, not end or padding
        nodes = target.clamp(min=0)
        ahead = scores.gather(2, nodes[:, None, :].expand(B, L, L))  # (B, i, j): s_i[x_j]
        pos = torch.arange(L, device=target.device)
        rank = is_node[:, :, None] & is_node[:, None, :] & (pos[None, :, None] <= pos[None, None, :])  # (B, i, j)
        # order: s_i[x_j] above s_i[x_k] for i <= j < k
        order = rank[:, :, :, None] & rank[:, :, None, :] & (pos[:, None] < pos[None, :])  # (B, i, j, k)
        gaps = (self.margin - (ahead[:, :, :, None] - ahead[:, :, None, :])).clamp(min=0)
        total = (gaps * order).sum((1, 2, 3))  # (B,)
        count = order.sum((1, 2, 3))
        if self.off_path:
            off = self.off_path_nodes(prefix, nodes, is_node)  # (B, N)
            # Each row's off-path nodes first, in K = the batch's most columns (a graph's size, not the vocabulary's).
            order_off = off.int().argsort(dim=1, descending=True, stable=True)[:, : max(int(off.sum(1).max()), 1)]
            valid = off.gather(1, order_off)  # (B, K)
            others = scores.gather(2, order_off[:, None, :].expand(B, L, -1))  # (B, i, K): s_i[o]
            gaps = (self.margin - (ahead[:, :, :, None] - others[:, :, None, :])).clamp(min=0)  # (B, i, j, K)
            pairs = rank[:, :, :, None] & valid[:, None, None, :]
            total = total + (gaps * pairs).sum((1, 2, 3))
            count = count + pairs.sum((1, 2, 3))
        if self.reduction == "sum":
            return total.mean()
        return total.sum() / count.sum().clamp(min=1)

    def forward(self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor) -> ObjectiveOutput:
        logits = self.target_logits(backbone, self.inputs(prefix, target), prefix.shape[1])  # (B, l, V)
        next_token = target_cross_entropy(logits, target)
        if self.weight > 0:
            hinge = self.hinge(logits, prefix, target)
            loss = next_token + self.weight * hinge
        else:  # teacher forcing exactly; the hinge is only reported
            with torch.no_grad():
                hinge = self.hinge(logits, prefix, target)
            loss = next_token
        extras = {"ritf/hinge_loss": hinge.detach(), "ritf/next_token_loss": next_token.detach()}
        return ObjectiveOutput(loss, logits, extras)
