"""Teacherless training: every answer position sees the dummy token ``$`` instead of the answer (SPEC §2).

Bachmann & Nagarajan's remedy: without the true previous tokens as input the model cannot use the
Clever-Hans shortcut and must plan the whole path from the prefix. All ``l`` target tokens are predicted in
one forward pass, at training and at inference.
"""

from __future__ import annotations

import torch

from nfl.models.base import Backbone
from nfl.objectives.base import Objective, ObjectiveOutput, target_cross_entropy


class Teacherless(Objective):
    """Predict the whole path in one pass from ``prefix + [$] * (l - 1)``."""

    def inputs(self, prefix: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        dummies = prefix.new_full((prefix.shape[0], self.task.target_len - 1), self.task.dummy)
        return torch.cat([prefix, dummies], dim=1)  # (B, P + l - 1)

    def forward(self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor) -> ObjectiveOutput:
        logits = self.target_logits(backbone, self.inputs(prefix))
        return ObjectiveOutput(target_cross_entropy(logits, target), logits)

    @torch.no_grad()
    def decode(self, backbone: Backbone, prefix: torch.Tensor) -> torch.Tensor:
        return self.target_logits(backbone, self.inputs(prefix)).argmax(-1)  # (B, l)
