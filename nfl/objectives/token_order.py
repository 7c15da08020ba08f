"""Token-order prediction (TOP): teacher forcing plus a learning-to-rank loss over the upcoming answer tokens
(Zuhri, Fuadi & Aji 2025, "Predicting the Order of Upcoming Tokens Improves Language Modeling", arXiv
2508.19228, §3; star-graph code in the zaydzuhri/Next-Token-Failures fork).

Target. At answer position ``j`` (the position that predicts answer token ``j``: the ``=`` for ``j = 0``, then the
answer tokens fed back) every vocabulary token ``v`` gets a score from the distance ``d`` to its next occurrence
in the rest of the answer, ``d = min{m - j : m >= j, target[m] = v}``: the token to be predicted next has
``d = 0``, the one after it ``d = 1``, and so on. Tokens within the window (``d < window``) score
``window - d``; the others are excluded (score ``-inf``, probability 0). The softmax of these scores is the
target distribution, so the next token gets ``e`` times the weight of the token after it.

Loss. An extra unembedding (a fresh ``Linear(D, V)`` without bias, not tied to anything, as in the paper) reads
the same final hidden states as the next-token unembedding; its softmax is scored against the target
distribution by ListNet's top-1 cross-entropy, ``-sum_v softmax(scores)_v log softmax(z)_v``, averaged over
the scored answer positions. The training loss is ``next_token + weight * ranking``.

Where this follows the fork and where it departs: the score ``window - d`` with ``d`` counted from the next
token and the window holding the next ``window`` tokens is the fork's (its triton kernel; a constant offset
would not change the softmax). The fork's star-graph runs use the whole sequence as the window, which here is
the default ``window`` = the answer width, so every remaining answer token is ranked. Rows past their end
(variable-length answers: :data:`IGNORE_INDEX`) have no next token and get no ranking loss; the ``end`` token
is an answer token and is ranked like the others. ``weight`` is ours (the paper adds the two losses).

The extra head exists at training only: inference, and every evaluation tag, is plain next-token decoding as in
:class:`~nfl.objectives.TeacherForcing`. Logged: ``train/top/ranking_loss``, ``train/top/next_token_loss``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nfl.errors import at_least
from nfl.models.base import Backbone
from nfl.objectives.base import ObjectiveOutput, target_cross_entropy
from nfl.objectives.teacher_forcing import TeacherForcing
from nfl.tasks.base import IGNORE_INDEX, GraphTask


def order_scores(target: torch.Tensor, vocab_size: int, window: int) -> torch.Tensor:
    """TOP's scores (B, l, V): ``window - d`` for the tokens whose next occurrence at or after answer position
    ``j`` is ``d < window`` steps ahead, ``-inf`` for the rest (rows past the end are all ``-inf``)."""
    B, l = target.shape
    j = torch.arange(l, device=target.device)
    ahead = j[None, :] - j[:, None]  # (l, l): m - j for position j (row) and occurrence m (column)
    real = target != IGNORE_INDEX  # (B, l)
    inside = (ahead >= 0) & (ahead < window)  # (l, l)
    score = torch.where(inside[None] & real[:, None, :], (window - ahead).float(), float("-inf"))  # (B, l, l)
    index = target.clamp(min=0)[:, None, :].expand(B, l, l)  # the token at occurrence m
    out = torch.full((B, l, vocab_size), float("-inf"), device=target.device)
    return out.scatter_reduce(2, index, score, reduce="amax")  # the nearest occurrence wins


def listnet_loss(logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """ListNet top-1 cross-entropy between ``softmax(scores)`` and ``softmax(logits)``, mean over the rows
    (..., V) that have at least one finite score; 0 (with gradient) where none has."""
    scores, logits = scores.flatten(0, -2), logits.flatten(0, -2).float()
    ranked = torch.isfinite(scores).any(-1)  # (N,)
    if not ranked.any():
        return logits.sum() * 0.0
    target = F.softmax(scores[ranked], dim=-1)  # (n, V)
    return -(target * F.log_softmax(logits[ranked], dim=-1)).sum(-1).mean()


class TokenOrder(TeacherForcing):
    """Teacher forcing plus token-order prediction from an extra unembedding; decodes like teacher forcing.

    Args:
        window: how many upcoming answer tokens are ranked (the next one included); default the answer width,
            which ranks every remaining answer token.
        weight: weight of the ranking loss (0 is teacher forcing).
        use_cache: as :class:`~nfl.objectives.TeacherForcing`.
    """

    def __init__(self, window: Optional[int] = None, weight: float = 1.0, use_cache: bool = True) -> None:
        super().__init__(use_cache)
        me = type(self)
        at_least(me, "window", window, 1, "null is the answer width")
        at_least(me, "weight", weight, 0.0, "0 is teacher forcing")
        self.window, self.weight = window, weight

    def bind(
        self, task: GraphTask, backbone: Backbone, dummy: Optional[int] = None, stop: Optional[int] = None
    ) -> None:
        super().bind(task, backbone, dummy, stop)
        self.span = self.window if self.window is not None else task.target_len
        if not hasattr(self, "order_head"):
            dtype = next(backbone.parameters()).dtype  # a pretrained backbone may hold bf16 weights
            self.order_head = nn.Linear(backbone.d_model, backbone.vocab_size, bias=False).to(dtype)
            nn.init.normal_(self.order_head.weight, mean=0.0, std=0.02)

    def forward(self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor) -> ObjectiveOutput:
        hidden = backbone(self.inputs(prefix, target), output_from=prefix.shape[1] - 1)  # (B, l, D)
        logits = backbone.unembed(hidden)  # (B, l, V)
        next_token = target_cross_entropy(logits, target)
        ranking = listnet_loss(self.order_head(hidden), order_scores(target, self.order_head.out_features, self.span))
        extras = {"top/ranking_loss": ranking.detach(), "top/next_token_loss": next_token.detach()}
        return ObjectiveOutput(next_token + self.weight * ranking, logits, extras)
