"""Multi-token heads: a shared trunk and ``k`` output heads, head ``j`` predicting the token ``j`` ahead (Gloeckle et al. 2024, arXiv 2404.19737).

Reference: Gloeckle et al. 2024, "Better & Faster Large Language Models via Multi-token Prediction"
(arXiv 2404.19737). Input is teacher-forced (``prefix + target[:-1]``); decoding is greedy with head 1,
optionally self-speculative (heads 2..k draft, head 1 verifies; same tokens, fewer forward passes).

Heads. Head 1 is the backbone's own unembedding, so ``k = 1`` is exactly teacher forcing. Head ``j >= 2`` is
an MLP on the trunk's final hidden state, ``W2 gelu(W1 LN(h))``, read out by the backbone's tied unembedding.
Gloeckle et al. give every head (head 1 included) its own Transformer layer before a shared unembedding. We
keep the shared unembedding but drop the head's attention: the trunk's state at a position has already
attended to everything before it, an attention-free head works on any backbone (GPT, Mamba) without touching
its code or cache, and drafting needs only the last hidden state. Their linear-head ablation did worse, hence
an MLP. It has no residual path: head 1 has no layer of its own here, and a residual head ``h + MLP(h)``
starts as a copy of head 1 and pulls the trunk's output towards the ``j``-ahead token (on the quickstart,
head 1 reached 26% teacher-forced accuracy after 300 steps with it, 35% without).

Positions. Loss is on target positions only, for every head: the ``l`` positions ``P-1 .. P+l-2`` (the
``=`` and the answer tokens fed back), never the prefix before ``=``. Head ``j`` at position ``t`` predicts the
token at ``t + j``, so it trains on the ``l - j + 1`` positions whose ``j``-ahead token is still an answer
token: answer tokens ``j-1 .. l-1``. At ``=`` head ``j`` must produce answer token ``j-1`` without seeing the
ones before it, as in teacherless training; prefix positions whose ``j``-ahead token lies in the answer
(Gloeckle's "every position predicts the next k tokens") are deliberately left out.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric

from nfl.engine.decoding import continue_greedy, continue_speculative, greedy_decode, speculative_greedy_decode
from nfl.errors import OptionError, at_least, require
from nfl.models.base import Backbone
from nfl.tasks.base import IGNORE_INDEX, GraphTask
from nfl.objectives.base import (
    Objective,
    ObjectiveOutput,
    fed_back,
    target_cross_entropy,
    teacher_forced_and_prefill,
)


@dataclass
class MultiTokenOutput(ObjectiveOutput):
    # (B, k, l): head j's teacher-forced prediction of answer token i (made at position P-1+i-(j-1)); -1 where
    # head j has none (i < j-1)
    head_preds: Optional[torch.Tensor] = None


class LookaheadHead(nn.Module):
    """Head j >= 2: a pre-LayerNorm MLP on the trunk's hidden state (the tied unembedding follows)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)
        for linear in (self.fc, self.proj):  # GPT-2 initialisation, like the trunk
            nn.init.normal_(linear.weight, mean=0.0, std=0.02)
            nn.init.zeros_(linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        return self.proj(F.gelu(self.fc(self.ln(hidden))))


class MultiTokenHeads(Objective):
    """Multi-token prediction: head j predicts the answer token j steps ahead; decode with head 1.

    Args:
        k: number of heads, 1 (plain teacher forcing) to the path length.
        reduction: combine the per-head losses (each a mean over that head's target tokens) by ``sum``
            (Gloeckle et al.) or ``mean`` (a weighted mean, sum divided by the sum of the weights).
        head_weights: per-head loss weights ``w_1..w_k`` (default all 1).
        speculative: decode self-speculatively (heads 2..k draft, head 1 verifies): the tokens of plain
            greedy decoding, in fewer forward passes where the drafts are right (slower where they are not).
    """

    def __init__(
        self,
        k: int = 2,
        reduction: Literal["sum", "mean"] = "sum",
        head_weights: Optional[list[float]] = None,
        speculative: bool = False,
    ) -> None:
        super().__init__()
        me = type(self)
        at_least(me, "k", k, 1, "k = 1 is plain teacher forcing")
        require(reduction in ("sum", "mean"), me, "reduction", reduction, "must be sum or mean")
        if head_weights is not None:
            require(
                len(head_weights) == k, me, "head_weights", head_weights,
                f"give one weight per head, {k} for k={k} (or null for all 1)",
            )
            for i, w in enumerate(head_weights):
                at_least(me, f"head_weights[{i}]", w, 0.0, "a loss weight")
            require(
                reduction != "mean" or sum(head_weights) > 0, me, "head_weights", head_weights,
                "reduction mean divides by the sum of the weights, so at least one must be positive",
            )
        self.k, self.reduction, self.speculative = k, reduction, speculative
        self.head_weights = [1.0] * k if head_weights is None else [float(w) for w in head_weights]

    def bind(
        self, task: GraphTask, backbone: Backbone, dummy: Optional[int] = None, stop: Optional[int] = None
    ) -> None:
        super().bind(task, backbone, dummy, stop)
        if self.k > task.target_len:
            raise OptionError(
                type(self), "k", self.k,
                f"exceeds the answer length {task.target_len}; head j needs an answer token j steps past '=', so k "
                "can be at most path_len (the answer length)",
            )
        dtype = next(backbone.parameters()).dtype  # a pretrained backbone may hold bf16 weights
        self.heads = nn.ModuleList(LookaheadHead(backbone.d_model) for _ in range(self.k - 1)).to(dtype)  # heads 2..k

    def head_logits(self, backbone: Backbone, j: int, hidden: torch.Tensor) -> torch.Tensor:
        """Head ``j``'s logits (..., V) from trunk hidden states (..., D)."""
        return backbone.unembed(hidden if j == 1 else self.heads[j - 2](hidden))

    def inputs(self, prefix: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.cat([prefix, fed_back(target)], dim=1)  # (B, P + l - 1)

    def forward(self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor) -> MultiTokenOutput:
        hidden = backbone(self.inputs(prefix, target), output_from=prefix.shape[1] - 1)  # (B, l, D): '=' onwards
        return self._heads_output(backbone, hidden, target)

    def _heads_output(self, backbone: Backbone, hidden: torch.Tensor, target: torch.Tensor) -> MultiTokenOutput:
        """Every head's loss and predictions from the trunk's hidden states (B, l, D) at ``=`` and after."""
        l = target.shape[1]
        preds = target.new_full((target.shape[0], self.k, l), -1)  # (B, k, l)
        extras, weighted, logits = {}, [], None
        for j in range(1, self.k + 1):
            head = self.head_logits(backbone, j, hidden[:, : l - j + 1])  # (B, l-j+1, V): answer tokens j-1..l-1
            ahead = target[:, j - 1 :]
            # A batch whose answers are all shorter than j (variable-length tasks) gives head j nothing to learn.
            loss_j = target_cross_entropy(head, ahead) if (ahead != IGNORE_INDEX).any() else head.sum() * 0.0
            extras[f"mtp/head_{j}_loss"] = loss_j
            weighted.append(self.head_weights[j - 1] * loss_j)
            preds[:, j - 1, j - 1 :] = head.argmax(-1)
            if j == 1:
                logits = head  # (B, l, V): the system's teacher-forced metrics read head 1
        loss = torch.stack(weighted).sum()
        if self.reduction == "mean":
            loss = loss / sum(self.head_weights)
        return MultiTokenOutput(loss, logits, extras, head_preds=preds)

    def _drafters(self, backbone: Backbone) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        return [functools.partial(self.head_logits, backbone, j) for j in range(2, self.k + 1)]

    def decode(self, backbone: Backbone, prefix: torch.Tensor, steps: Optional[int] = None) -> torch.Tensor:
        steps = steps or self.task.target_len
        if not self.speculative or self.k == 1:
            return greedy_decode(backbone, prefix, steps, stop=self.stop)
        return speculative_greedy_decode(backbone, prefix, steps, self._drafters(backbone))

    @torch.no_grad()
    def evaluate(
        self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor, steps: int
    ) -> tuple[MultiTokenOutput, torch.Tensor]:
        """As teacher forcing: the teacher-forced pass doubles as the prefill of decoding, speculative where
        the cache can rewind (see :func:`~nfl.objectives.base.teacher_forced_and_prefill`)."""
        shared = teacher_forced_and_prefill(backbone, prefix, fed_back(target), steps)
        if shared is None:
            return super().evaluate(backbone, prefix, target, steps)
        hidden, cache = shared
        out = self._heads_output(backbone, hidden, target)
        P = prefix.shape[1]
        if self.speculative and self.k > 1 and backbone.rewind_cache(cache, P):
            return out, continue_speculative(backbone, cache, P, hidden[:, 0], steps, self._drafters(backbone))
        return out, continue_greedy(backbone, cache, out.logits[:, 0], steps, self.stop)

    def eval_metric(self) -> Metric:
        return HeadAccuracy(self.k)


class HeadAccuracy(Metric):
    """Teacher-forced accuracy of each head on its answer tokens: ``mtp/head_{j}_acc`` for j = 1..k.

    Subclasses for other per-head predictions set ``preds`` (the output's (B, k, l) field, -1 where a head
    predicts nothing) and ``tag`` (formatted with the 1-based head number).
    """

    full_state_update = False
    preds, tag = "head_preds", "mtp/head_{}_acc"

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.add_state("correct", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, output: ObjectiveOutput, target: torch.Tensor) -> None:
        preds = getattr(output, self.preds)  # (B, k, l)
        valid = (preds >= 0) & (target[:, None] >= 0)  # a prediction, of a scored answer token
        self.correct += ((preds == target[:, None]) & valid).sum(dim=(0, 2))
        self.count += valid.sum(dim=(0, 2))

    def compute(self) -> dict[str, torch.Tensor]:
        acc = (self.correct / self.count.clamp(min=1)).float()
        return {self.tag.format(j + 1): acc[j] for j in range(self.k)}
