"""Masked teacher forcing: some fed-back answer tokens are replaced by a mask token, labels unchanged (Frydenlund,
ACL 2025, arXiv 2503.10542, "Language Models, Graph Searching, and Supervision Adulteration", its token-masking
solution).

Frydenlund's diagnosis: under teacher forcing the true previous node makes every later node a single-edge
lookup (the Clever-Hans cheat), and that shortcut absorbs the supervision the hard step needs. Hiding some of
the previous answer tokens from the input breaks the lookup where they are hidden: to predict the token after
a masked one the model must find it from further back (ultimately from the goal), which is the sub-task
arm reconstruction is made of. The labels are the plain next-token targets, so the loss is teacher forcing's
cross-entropy on a corrupted input.

What is corrupted. Only the answer tokens fed back as input (``target[:-1]``), and of those only the ones whose
output is scored (never the prefix, the ``=``, an end token or padding). ``n`` below is a row's count of them.

- ``span: false`` (the paper's uniform sampling): each of them independently, with probability ``rate``;
- ``span: true`` (the paper's span sampling): one contiguous run per row of ``rate * n`` of them (rounded
  stochastically, so the expected corrupted fraction is ``rate`` in both modes), starting at a uniformly
  random position where it fits.

A corrupted position holds the mask token (``reserve``), or, with probability ``replace``, a uniformly random
node instead (the paper's mixed dropout and replacement). ``rate = 0`` is teacher forcing exactly (no random
draw is made). Evaluation is a true teacher-forced pass without masking, so the ``tf/*`` tags hold; decoding is
greedy over every token but the mask, which is a training-only input and never emitted. Logged:
``train/masked_tf/masked_fraction`` (corrupted positions over maskable ones in the batch).
"""

from __future__ import annotations

from typing import Optional

import torch

from nfl.errors import in_range
from nfl.models.base import Backbone
from nfl.objectives.base import (
    ObjectiveOutput,
    Reservation,
    fed_back,
    target_cross_entropy,
)
from nfl.objectives.teacher_forcing import TeacherForcing
from nfl.tasks.base import IGNORE_INDEX, GraphTask


class MaskedTeacherForcing(TeacherForcing):
    """Teacher forcing on an input whose fed-back answer tokens are partly masked; decodes greedily.

    Args:
        rate: expected fraction of a row's fed-back answer tokens that are corrupted (0 is teacher forcing).
        span: corrupt one contiguous span per row instead of independent positions.
        replace: probability that a corrupted position holds a random node rather than the mask token.
        use_cache: as :class:`~nfl.objectives.TeacherForcing`.
    """

    never_emitted = ("mask",)  # greedy decoding never writes the training-only token

    def __init__(self, rate: float = 0.5, span: bool = False, replace: float = 0.0, use_cache: bool = True) -> None:
        super().__init__(use_cache)
        me = type(self)
        in_range(me, "rate", rate, 0.0, 1.0, advice="the expected fraction of fed-back answer tokens masked")
        in_range(me, "replace", replace, 0.0, 1.0, advice="0 always uses the mask token")
        self.rate, self.span, self.replace = float(rate), span, float(replace)

    def reserve(self, task: GraphTask) -> Reservation:
        return Reservation(tokens=("mask",))

    def bind(
        self, task: GraphTask, backbone: Backbone, dummy: Optional[int] = None, stop: Optional[int] = None
    ) -> None:
        super().bind(task, backbone, dummy, stop)
        self.mask_id = self.token_ids["mask"]

    def corruption(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which fed-back positions (B, l-1) are corrupted, and which of them may be (those scored)."""
        maskable = target[:, 1:] != IGNORE_INDEX  # the input predicts a scored token: a real answer node
        B, F = maskable.shape
        if self.rate == 0 or F == 0:
            return torch.zeros_like(maskable), maskable
        if not self.span:
            return (torch.rand(B, F, device=target.device) < self.rate) & maskable, maskable
        n = maskable.sum(1)  # (B,) maskable positions come first in a row
        k = (self.rate * n + torch.rand(B, device=target.device)).floor().long().clamp(max=n)  # E[k] = rate * n
        start = (torch.rand(B, device=target.device) * (n - k + 1)).floor().long().clamp(max=n - k)
        cols = torch.arange(F, device=target.device)
        chosen = (cols[None, :] >= start[:, None]) & (cols[None, :] < (start + k)[:, None])
        return chosen & maskable, maskable

    def corrupted_inputs(self, prefix: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``prefix + corrupted target[:-1]`` (B, P + l - 1) and the corrupted fraction of maskable positions."""
        fed = fed_back(target)
        chosen, maskable = self.corruption(target)
        if chosen.any():
            fill = torch.full_like(fed, self.mask_id)
            if self.replace > 0:
                nodes = torch.randint(0, self.task.num_nodes, fed.shape, device=fed.device)
                fill = torch.where(torch.rand(fed.shape, device=fed.device) < self.replace, nodes, fill)
            fed = torch.where(chosen, fill, fed)
        fraction = chosen.sum() / maskable.sum().clamp(min=1)
        return torch.cat([prefix, fed], dim=1), fraction.float()

    def forward(self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor) -> ObjectiveOutput:
        if not self.training:  # evaluation mode: the true teacher-forced pass
            return super().forward(backbone, prefix, target)
        inputs, fraction = self.corrupted_inputs(prefix, target)
        logits = self.target_logits(backbone, inputs, prefix.shape[1])
        return ObjectiveOutput(target_cross_entropy(logits, target), logits, {"masked_tf/masked_fraction": fraction})
