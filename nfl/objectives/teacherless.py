"""Teacherless training: every answer position sees the dummy token ``$`` instead of the answer (Bachmann & Nagarajan 2024, §4.1).

Bachmann & Nagarajan's remedy: without the true previous tokens as input the model cannot use the
Clever-Hans shortcut and must plan the whole path from the prefix. All ``l`` target tokens are predicted in
one forward pass, at training and at inference.
"""

from __future__ import annotations

from typing import Optional

import torch

from nfl.models.base import Backbone
from nfl.objectives.base import Objective, ObjectiveOutput, target_cross_entropy


class Teacherless(Objective):
    """Predict the whole path in one pass from ``prefix + [$] * (l - 1)``.

    With a pretrained tokenizer the answer is several tokens per node; every answer token is then a dummy in
    the input (as in the reference code), and decoding reads a fixed token budget in one pass.

    Its logits never see the answer, so there is no teacher-forced pass: the ``tf/*`` tags are not logged
    (they would repeat ``free/*``), and ``{stage}/loss`` is the cross-entropy of its one-pass prediction.
    """

    teacher_forced = False

    def inputs(self, prefix: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.with_dummies(prefix, target.shape[1])  # the answer's values are never read

    def with_dummies(self, prefix: torch.Tensor, answer_len: int) -> torch.Tensor:
        dummies = prefix.new_full((prefix.shape[0], answer_len - 1), self.dummy)
        return torch.cat([prefix, dummies], dim=1)  # (B, P + answer_len - 1)

    def forward(self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor) -> ObjectiveOutput:
        logits = self.target_logits(backbone, self.inputs(prefix, target), prefix.shape[1])
        return ObjectiveOutput(target_cross_entropy(logits, target), logits)

    @torch.no_grad()
    def decode(self, backbone: Backbone, prefix: torch.Tensor, steps: Optional[int] = None) -> torch.Tensor:
        steps = steps or self.task.target_len
        return self.target_logits(backbone, self.with_dummies(prefix, steps), prefix.shape[1]).argmax(-1)  # (B, steps)

    @torch.no_grad()
    def evaluate(
        self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor, steps: int
    ) -> tuple[ObjectiveOutput, torch.Tensor]:
        """One pass for both: with dummies for input, the teacher-forced pass *is* free-running decoding. A
        decode budget longer than the answer only appends dummies, which positions before them never see."""
        L = target.shape[1]
        logits = self.target_logits(backbone, self.with_dummies(prefix, max(L, steps)), prefix.shape[1])
        return ObjectiveOutput(target_cross_entropy(logits[:, :L], target), logits[:, :L]), logits[:, :steps].argmax(-1)
