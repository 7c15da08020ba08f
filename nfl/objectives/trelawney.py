"""TRELAWNEY: teacher forcing on answers into which a future span, between two new delimiters, is inserted
(Thankaraj, Jiang, Kolter & Bisk, arXiv 2504.11336, "Looking beyond the next token").

The paper changes the data, not the model (its §3): a sequence ``y_1 .. y_T`` becomes
``y_1 .. y_d <T> z </T> y_{d+1} .. y_T``, where ``z`` is a copy of later tokens ``y_s .. y_{s+k-1}`` (``s > d``);
training mixes the augmented sequences with the original ones, and the prediction of ``<T>`` itself gets no
loss, as its place is random. At inference the prompt may end with ``<T>`` (the paper's "<T>-generation"): the
model writes a future span first, closes it, and then writes the sequence with that span in its context.

Here, on graph answers (the prefix is never touched):

- with probability ``p`` a row gets one span; the insertion point ``d`` is uniform over the answer's nodes
  (the span goes right before node ``d``, 0-based, so ``d = 0`` is right after ``=``, where goal-first decoding
  opens its span);
- the span length ``k`` is uniform in ``1 .. min(max_span, n - d)`` (``n`` the row's node count), so the span
  always lies at or after the insertion point;
- ``span: goal`` (default) copies the answer's last ``k`` nodes, which end at the goal (the start under
  ``reverse``), as in the paper's Figure 1, where the inserted tokens are the sequence's last ones; ``span:
  random`` copies ``k`` consecutive nodes starting anywhere from ``d`` on (the general copying schema of §3);
- the delimiters are two tokens of the objective's own (``reserve``); the end token of variable-length
  answers is never part of a span.

The loss is the cross-entropy over every token of the modified answer (the original nodes, the span and
``</T>``) except the one predicting ``<T>``, averaged over those tokens. Rows without a span are plain teacher
forcing; a batch in which no row drew one (always, at ``p = 0``) runs exactly teacher forcing's pass.
Departures: the paper does not pin ``d``, ``k`` and ``s`` for every task; the draws above are ours (documented
in the options). Logged: ``train/trelawney/span_rate`` (rows with a span), ``train/trelawney/span_len`` (mean
length of the inserted spans), ``train/trelawney/answer_loss`` (the cross-entropy on the original answer tokens
only, comparable with teacher forcing's loss) and, when some row has a span, ``train/trelawney/span_loss``
(on the span and ``</T>``).

Evaluation. The logits, and so ``val/loss`` and every ``tf/*`` tag, are the plain teacher-forced pass over the
data's answer (no span inserted). Free-running tokens come from ``inference``: ``greedy`` is teacher forcing's
greedy decoding; ``goal_first`` appends ``<T>`` to the prefix, decodes the span greedily until the model writes
``</T>`` (forced after ``max_span`` tokens), then decodes the answer; the delimiters and the span are stripped,
so the answer metrics read the path only. The span never contains ``<T>``, and the answer neither delimiter
(their logits are masked). In goal-first mode ``{stage}/trelawney/span_exact`` (the written span is a span of
the kind trained: the answer's last nodes, or for ``span: random`` consecutive answer nodes),
``{stage}/trelawney/span_len`` and ``{stage}/trelawney/span_closed`` (the model closed the span itself) are
logged too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from nfl.errors import OptionError, at_least, in_range, require
from nfl.models.base import Backbone
from nfl.objectives.base import ObjectiveOutput, Reservation, fed_back, target_cross_entropy, teacher_forced_and_prefill
from nfl.objectives.teacher_forcing import TeacherForcing
from nfl.tasks.base import IGNORE_INDEX, GraphTask


@dataclass
class Augmented:
    """A batch's modified answers: ``answer`` (B, W) with the delimiters (what is fed back), ``target`` (B, W)
    (``answer`` with IGNORE_INDEX on ``<T>``), and per row whether it has a span, ``d``, ``s`` and ``k``."""

    answer: torch.Tensor
    target: torch.Tensor
    has: torch.Tensor
    d: torch.Tensor
    s: torch.Tensor
    k: torch.Tensor


@dataclass
class GoalFirstOutput(ObjectiveOutput):
    span: Optional[torch.Tensor] = None  # (B, max_span) the span written between the delimiters, padded with -1
    span_len: Optional[torch.Tensor] = None  # (B,) its length
    closed: Optional[torch.Tensor] = None  # (B,) the model wrote </T> itself (not forced at max_span)


class Trelawney(TeacherForcing):
    """Teacher forcing with a future span of the answer, between ``<T>`` and ``</T>``, inserted into some rows.

    Args:
        p: probability that a row gets a span (0 is teacher forcing).
        span: ``goal`` (the answer's last nodes) or ``random`` (consecutive nodes from the insertion point on).
        max_span: the longest span (default the longest answer).
        inference: ``goal_first`` (open a span after ``=``, let the model write it, strip it) or ``greedy``.
    """

    def __init__(
        self,
        p: float = 0.5,
        span: Literal["goal", "random"] = "goal",
        max_span: Optional[int] = None,
        inference: Literal["goal_first", "greedy"] = "goal_first",
    ) -> None:
        super().__init__()
        me = type(self)
        in_range(me, "p", p, 0.0, 1.0, advice="the probability that a row gets a span; 0 is teacher forcing")
        require(span in ("goal", "random"), me, "span", span, "must be goal or random")
        at_least(me, "max_span", max_span, 1, "null is the longest answer")
        require(inference in ("goal_first", "greedy"), me, "inference", inference, "must be goal_first or greedy")
        self.p, self.span, self.max_span, self.inference = p, span, max_span, inference

    def reserve(self, task: GraphTask) -> Reservation:
        if self.max_span is not None and self.max_span > task.max_path_len:
            raise OptionError(
                type(self), "max_span", self.max_span,
                f"exceeds the longest answer of {task.describe()} ({task.max_path_len} nodes); a span copies its nodes",
            )
        self.width = self.max_span or task.max_path_len  # K: the longest span
        return Reservation(tokens=("open", "close"), extra_len=self.width + 2)

    def bind(
        self, task: GraphTask, backbone: Backbone, dummy: Optional[int] = None, stop: Optional[int] = None
    ) -> None:
        super().bind(task, backbone, dummy, stop)
        self.open, self.close = self.token_ids["open"], self.token_ids["close"]

    # --- training ----------------------------------------------------------------------------------------
    def draw(
        self, target: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each row's span (see the module docstring): whether it has one, ``d``, ``s`` and ``k``, each (B,)."""
        B, dev = target.shape[0], target.device
        u = torch.rand(4, B, generator=generator, device=dev)  # has, d, k, s; floor(u * r) is uniform in 0..r-1
        n = self.task.answer_lengths(target)  # (B,) nodes in each row
        has = (u[0] < self.p) & (n > 0)
        last = (n - 1).clamp(min=0)
        d = (u[1] * n).floor().long().clamp(max=last)
        most = (n - d).clamp(min=1, max=self.width)  # the longest span that fits at or after d
        k = 1 + (u[2] * most).floor().long().clamp(max=most - 1)
        if self.span == "goal":
            return has, d, n - k, k
        room = (n - k - d + 1).clamp(min=1)  # starts d .. n - k
        return has, d, d + (u[3] * room).floor().long().clamp(max=room - 1), k

    def insert(
        self, target: torch.Tensor, has: torch.Tensor, d: torch.Tensor, s: torch.Tensor, k: torch.Tensor
    ) -> Augmented:
        """The modified answers of all rows at once, (B, L) -> (B, L + max_span + 2): answer tokens ``0 .. d-1``,
        ``<T>``, tokens ``s .. s+k-1``, ``</T>``, tokens ``d ..``, then IGNORE_INDEX; rows without a span unchanged."""
        B, L = target.shape
        W = L + self.width + 2
        d = torch.where(has, d, torch.full_like(d, W))  # no span: column j is answer token j
        j = torch.arange(W, device=target.device)[None, :]  # (1, W)
        d_, s_, k_ = d[:, None], s[:, None], k[:, None]
        src = torch.where(j < d_, j, torch.where(j <= d_ + k_, s_ + j - d_ - 1, j - k_ - 2))  # (B, W)
        padded = torch.cat([target, target.new_full((B, W - L), IGNORE_INDEX)], dim=1)  # (B, W)
        answer = padded.gather(1, src.clamp(0, W - 1))
        answer = answer.masked_fill(j == d_, self.open).masked_fill(j == d_ + k_ + 1, self.close)
        return Augmented(answer, answer.masked_fill(j == d_, IGNORE_INDEX), has, d, s, k)

    def forward(self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor) -> ObjectiveOutput:
        aug = self.insert(target, *self.draw(target))
        if not bool(aug.has.any()):  # teacher forcing's very pass (always so at p = 0)
            out = super().forward(backbone, prefix, target)
            zero = torch.zeros((), device=target.device)  # no row has a span
            out.extras = {
                "trelawney/span_rate": zero, "trelawney/span_len": zero, "trelawney/answer_loss": out.loss.detach(),
            }
            return out
        P = prefix.shape[1]
        logits = self.target_logits(backbone, torch.cat([prefix, fed_back(aug.answer)], dim=1), P)  # (B, W, V)
        loss = target_cross_entropy(logits, aug.target)
        L = target.shape[1]
        i = torch.arange(L, device=target.device)[None, :]
        moved = aug.has[:, None] & (i >= aug.d[:, None])  # answer token i sits k + 2 columns later
        at = i + moved * (aug.k[:, None] + 2)  # (B, L): the column predicting answer token i
        answer_logits = logits.gather(1, at[..., None].expand(-1, -1, logits.shape[-1]))  # (B, L, V)
        with torch.no_grad():
            ce = F.cross_entropy(logits.detach().flatten(0, 1).float(), aug.target.flatten(), reduction="none",
                                 ignore_index=IGNORE_INDEX).view(aug.target.shape)
            scored = aug.target != IGNORE_INDEX
            j = torch.arange(aug.target.shape[1], device=target.device)[None, :]
            inserted = (j > aug.d[:, None]) & (j <= aug.d[:, None] + aug.k[:, None] + 1) & scored
            original = scored & ~inserted
            extras = {
                "trelawney/span_rate": aug.has.float().mean(),
                "trelawney/span_len": aug.k[aug.has].float().mean(),
                "trelawney/answer_loss": (ce * original).sum() / original.sum().clamp(min=1),
                "trelawney/span_loss": (ce * inserted).sum() / inserted.sum().clamp(min=1),
            }
        return ObjectiveOutput(loss, answer_logits, extras)

    # --- inference ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def goal_first(
        self, backbone: Backbone, cache: Any, prefix: torch.Tensor, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """From a cache holding ``prefix`` (B, P): feed ``<T>``, write the span, close it, then ``steps`` answer tokens.

        Returns the answer (B, steps) without the delimiters and the span, the span (B, max_span) padded with
        -1, its length (B,) and whether the model closed it itself (B,). Rows write in lockstep; a row that
        closes early simply starts its answer earlier.
        """
        K = self.width
        B = prefix.shape[0]
        logits = backbone.unembed(backbone(prefix.new_full((B, 1), self.open), cache)[:, -1])  # (B, V)
        total = K + 1 + steps
        out = logits.new_full((B, total), self.stop if self.stop is not None else 0, dtype=torch.long)
        closed = torch.zeros(B, dtype=torch.bool, device=logits.device)
        ended = torch.zeros_like(closed)  # closed, then wrote the end token
        close_at = torch.full((B,), K, dtype=torch.long, device=logits.device)
        by_model = torch.zeros_like(closed)
        for t in range(total):
            lg = logits.float()
            lg[:, self.open] = -math.inf  # no span inside a span, and none in the answer
            lg[:, self.close] = lg[:, self.close].masked_fill(closed, -math.inf)  # the answer is nodes only
            token = lg.argmax(-1)
            wrote = ~closed & (token == self.close)
            forced = ~closed & ~wrote & (t == K)
            token = token.masked_fill(forced, self.close)
            by_model |= wrote
            close_at = torch.where(wrote | forced, torch.full_like(close_at, t), close_at)
            if self.stop is not None:
                ended |= closed & (token == self.stop)
            closed |= wrote | forced
            out[:, t] = token
            done = closed & (ended | (t - close_at >= steps))
            if bool(done.all()) or t + 1 == total:
                break
            logits = backbone.unembed(backbone(token[:, None], cache)[:, -1])
        cols = torch.arange(steps, device=out.device)[None, :]
        answer = out.gather(1, (close_at[:, None] + 1 + cols).clamp(max=total - 1))
        written = torch.arange(K, device=out.device)[None, :] < close_at[:, None]
        span = out[:, :K].masked_fill(~written, -1)
        return answer, span, close_at, by_model

    def decode(self, backbone: Backbone, prefix: torch.Tensor, steps: Optional[int] = None) -> torch.Tensor:
        steps = steps or self.task.target_len
        if self.inference == "greedy":
            return super().decode(backbone, prefix, steps)
        return self._goal_first_from_prefix(backbone, prefix, steps)[0]

    @torch.no_grad()
    def _goal_first_from_prefix(self, backbone: Backbone, prefix: torch.Tensor, steps: int):
        B, P = prefix.shape
        cache = backbone.new_cache(B, P + self.width + 1 + steps)
        backbone(prefix, cache, output_from=P - 1)
        return self.goal_first(backbone, cache, prefix, steps)

    @torch.no_grad()
    def evaluate(
        self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor, steps: int
    ) -> tuple[ObjectiveOutput, torch.Tensor]:
        """The plain teacher-forced pass over the data's answer, and the free-running answer of ``inference``;
        in goal-first mode the teacher-forced pass doubles as the prefill of decoding where the cache allows."""
        if self.inference == "greedy":
            return super().evaluate(backbone, prefix, target, steps)
        # Room for the prefix, <T>, the span, </T> and the answer (the function sizes its cache from steps).
        shared = teacher_forced_and_prefill(backbone, prefix, fed_back(target), steps + self.width + 2)
        if shared is None:
            tf = self.teacher_forced_pass(backbone, prefix, target)
            logits = tf.logits
            answer, span, span_len, closed = self._goal_first_from_prefix(backbone, prefix, steps)
        else:
            hidden, cache = shared
            logits = backbone.unembed(hidden)  # (B, l, V)
            answer, span, span_len, closed = self.goal_first(backbone, cache, prefix, steps)
        out = GoalFirstOutput(target_cross_entropy(logits, target), logits, span=span, span_len=span_len, closed=closed)
        return out, answer

    def eval_metric(self) -> Optional[Metric]:
        return SpanMetric(self.task, self.span) if self.inference == "goal_first" else None


def span_is_right(
    span: torch.Tensor, length: torch.Tensor, target: torch.Tensor, num_nodes: int, suffix: bool
) -> torch.Tensor:
    """(B,) whether each written span (B, K) of ``length`` (B,) tokens is ``length >= 1`` consecutive nodes of
    the row's answer: its last ones where ``suffix``, anywhere otherwise."""
    B, L = target.shape
    K = span.shape[1]
    nodes = (target >= 0) & (target < num_nodes)
    n = nodes.sum(1)  # (B,)
    start = torch.arange(L, device=target.device)[None, :, None]  # (1, L, 1)
    i = torch.arange(K, device=target.device)[None, None, :]  # (1, 1, K)
    window = target.gather(1, (start + i).clamp(max=L - 1).expand(B, L, K).reshape(B, L * K)).view(B, L, K)
    agree = ((window == span[:, None, :]) | (i >= length[:, None, None])).all(-1)  # (B, L)
    fits = start[..., 0] + length[:, None] <= n[:, None]  # (B, L)
    if suffix:
        fits &= start[..., 0] == (n - length)[:, None]
    return (agree & fits).any(1) & (length >= 1)


class SpanMetric(Metric):
    """Goal-first decoding's span: ``trelawney/span_exact``, ``trelawney/span_len``, ``trelawney/span_closed``."""

    full_state_update = False

    def __init__(self, task: GraphTask, span: str) -> None:
        super().__init__()
        self.num_nodes, self.suffix = task.num_nodes, span == "goal"
        for name in ("right", "length", "closed", "n"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, output: GoalFirstOutput, target: torch.Tensor) -> None:
        self.right += span_is_right(output.span, output.span_len, target, self.num_nodes, self.suffix).sum()
        self.length += output.span_len.sum()
        self.closed += output.closed.sum()
        self.n += target.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.n.clamp(min=1)
        return {"trelawney/span_exact": (self.right / n).float(), "trelawney/span_len": (self.length / n).float(),
                "trelawney/span_closed": (self.closed / n).float()}
