"""Evaluation metrics for any graph task, as torchmetrics ``Metric`` s: answer metrics and graph diagnostics.

Positions are 1-based and in the order the model emits them (with ``reverse`` the goal comes first). Where
answers differ in length, ``free/pos_i`` and ``tf/pos_i`` average over the rows whose answer has a position
``i``, and the end token is never a position. Quantities that are about the graph rather than the emission
order are computed on paths read forward (start first), whatever the encoding:

- ``exact_match``: the whole answer, of the right length (for tasks whose answers are not unique, such as
  shortest paths in a DAG, any correct answer counts; per-position accuracies compare with the data's answer);
- ``decision_acc``: free-running accuracy at the answer positions whose predecessor on the path has more than
  one outgoing edge (the positions that need planning; position 2 on path-star), with ``chance``, the mean over
  those positions of one over the predecessor's out-degree; ``tf/decision_acc`` and ``tf/non_decision_acc``
  are the teacher-forced accuracies at those positions and at all others (high off-decision with the decision
  at chance is the Clever-Hans signature on any graph). On an undirected task (a maze) the out-degree counts
  the ways on from a node, not back to the one the path came from: the decisions are the branching cells;
- ``edge_follow_rate``: of all consecutive pairs of generated nodes, the fraction that are edges (either way on
  an undirected task: legal moves);
- ``valid_path_rate``: answers that start at the start and follow edges at every step;
  ``reaches_goal_rate``: valid answers that end at the goal.

All states are sums, so values are exact under DDP (torchmetrics sums them across ranks).
"""

from __future__ import annotations

from typing import Optional

import torch
from torchmetrics import Metric

from nfl.tasks.answers import ReadAnswers
from nfl.tasks.base import GraphTask


def read_answers(
    task: GraphTask,
    reverse: bool,
    prefix: torch.Tensor,
    target: torch.Tensor,
    free: torch.Tensor,
    tf: torch.Tensor,
    free_len: Optional[torch.Tensor] = None,
    well_formed: Optional[torch.Tensor] = None,
) -> ReadAnswers:
    """Align one batch: ``target`` is what the model writes in numerals (end token and IGNORE_INDEX allowed;
    with a scratchpad, only the answer after its separator is read), ``free`` and ``tf`` are node predictions
    (B, >= max_path_len) of the answer in emitted order, -1 where there is none."""
    L, N = task.max_path_len, task.num_nodes
    target = task.answer_part(target)
    length = task.answer_lengths(target)
    cols = torch.arange(L, device=target.device)
    inside = cols[None, :] < length[:, None]
    minus = torch.full_like(target[:, :L], -1)
    target = target[:, :L].where(inside, minus)
    free = free[:, :L]
    free_len = torch.full_like(length, L) if free_len is None else free_len
    free = free.where(cols[None, :] < free_len[:, None], torch.full_like(free, -1))
    tf = tf[:, :L].where(inside, minus)
    well_formed = torch.ones_like(length, dtype=torch.bool) if well_formed is None else well_formed
    if reverse:
        flip = task.reverse_answers
        fwd_target, fwd_free, fwd_tf = flip(target, length), flip(free, free_len), flip(tf, length)
    else:
        fwd_target, fwd_free, fwd_tf = target, free, tf

    parents, children = task.walkable(*task.edges_of(prefix))  # (B, E), both ways on an undirected task (B, 2E)
    real = (parents >= 0) & (parents < N)
    start, goal = task.query_of(prefix)
    pairs = cols[None, :-1] < (free_len - 1)[:, None]  # (B, L-1)
    is_edge = (
        (fwd_free[:, :-1, None] == parents[:, None, :]) & (fwd_free[:, 1:, None] == children[:, None, :]) & real[:, None, :]
    ).any(dim=2)
    rows = torch.arange(len(length), device=target.device)
    last = fwd_free[rows, (free_len - 1).clamp(min=0)]
    valid = (fwd_free[:, 0] == start) & (is_edge | ~pairs).all(dim=1) & (free_len >= 1) & well_formed
    reaches_goal = valid & (last == goal)
    if getattr(task, "any_shortest_path", False):
        exact = reaches_goal & (free_len == length)
    else:
        exact = ((free == target) | ~inside).all(dim=1) & (free_len == length) & well_formed
    out_degree = ((fwd_target[:, :, None] == parents[:, None, :]) & real[:, None, :]).sum(dim=2)  # (B, L)
    if task.undirected:  # the ways on from a node, not back to the one the path came from
        out_degree = out_degree - (cols[None, :] > 0).to(out_degree.dtype)
    decision = torch.zeros_like(inside)
    decision[:, 1:] = (out_degree[:, :-1] > 1) & inside[:, 1:]
    return ReadAnswers(
        prefix, target, length, free, free_len, tf, well_formed, fwd_target, fwd_free, fwd_tf, inside, is_edge,
        pairs, valid, reaches_goal, exact, out_degree, decision,
    )


class AnswerMetrics(Metric):
    """Exact match, per-position free-running and teacher-forced accuracy, loss, and the graph diagnostics
    of the module docstring, for any graph task."""

    full_state_update = False

    def __init__(self, task: GraphTask, reverse: bool = False) -> None:
        super().__init__()
        self.task, self.reverse = task, reverse
        L = task.max_path_len
        for name in ("free_correct", "tf_correct", "rows_with"):
            self.add_state(name, torch.zeros(L, dtype=torch.float64), dist_reduce_fx="sum")
        for name in (
            "n", "exact", "loss_sum", "loss_tokens", "edge_hits", "edge_pairs", "valid", "reaches_goal", "decisions",
            "decision_free", "decision_tf", "decision_chance", "others", "other_tf",
        ):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, batch: ReadAnswers, loss: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> None:
        """``loss``: the mean over the batch's ``tokens`` scored answer tokens (default: as many per row), so
        that ``loss`` is the mean over every scored token of the set, however it is split into batches or
        across ranks."""
        B = batch.length.shape[0]
        self.n += B
        tokens = torch.tensor(B, device=loss.device) if tokens is None else tokens
        self.loss_sum += loss.detach().double() * tokens
        self.loss_tokens += tokens
        self.exact += batch.exact.sum()
        self.rows_with += batch.inside.sum(dim=0)
        self.free_correct += ((batch.free == batch.target) & batch.inside).sum(dim=0)
        self.tf_correct += ((batch.tf == batch.target) & batch.inside).sum(dim=0)
        self.edge_hits += (batch.is_edge & batch.pairs).sum()
        self.edge_pairs += batch.pairs.sum()
        self.valid += batch.valid.sum()
        self.reaches_goal += batch.reaches_goal.sum()
        d = batch.decision
        self.decisions += d.sum()
        self.decision_free += ((batch.fwd_free == batch.fwd_target) & d).sum()
        self.decision_tf += ((batch.fwd_tf == batch.fwd_target) & d).sum()
        prev_degree = torch.ones_like(batch.out_degree)
        prev_degree[:, 1:] = batch.out_degree[:, :-1]
        self.decision_chance += (d / prev_degree.clamp(min=1)).sum()
        other = batch.inside & ~d
        self.others += other.sum()
        self.other_tf += ((batch.fwd_tf == batch.fwd_target) & other).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.n.clamp(min=1)
        rows = self.rows_with.clamp(min=1)
        free, tf = self.free_correct / rows, self.tf_correct / rows
        decisions = self.decisions.clamp(min=1)
        out = {
            "loss": self.loss_sum / self.loss_tokens.clamp(min=1),
            "exact_match": self.exact / n,
            "edge_follow_rate": self.edge_hits / self.edge_pairs.clamp(min=1),
            "valid_path_rate": self.valid / n,
            "reaches_goal_rate": self.reaches_goal / n,
        }
        if self.decisions > 0:
            out["decision_acc"] = self.decision_free / decisions
            out["chance"] = self.decision_chance / decisions
            out["tf/decision_acc"] = self.decision_tf / decisions
        if self.others > 0:
            out["tf/non_decision_acc"] = self.other_tf / self.others.clamp(min=1)
        for i in range(self.task.max_path_len):
            if self.rows_with[i] > 0:
                out[f"free/pos_{i + 1}"] = free[i]
                out[f"tf/pos_{i + 1}"] = tf[i]
        return {k: v.float() for k, v in out.items()}
