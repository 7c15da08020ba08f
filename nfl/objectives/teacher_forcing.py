"""Teacher forcing: next-token prediction on the answer, with the true previous tokens as input (Bachmann & Nagarajan 2024, §2).

Input ``prefix + target[:-1]``; cross-entropy on the ``l`` target positions only (the prefix is never a
loss target). Decoding is greedy and autoregressive. This is the objective whose failure on path-star
graphs (the Clever-Hans cheat) the paper describes.
"""

from __future__ import annotations

from typing import Optional

import torch

from nfl.decoding import continue_greedy, greedy_decode
from nfl.models.base import Backbone
from nfl.objectives.base import (
    Objective,
    ObjectiveOutput,
    fed_back,
    target_cross_entropy,
    teacher_forced_and_prefill,
)


class TeacherForcing(Objective):
    """Next-token prediction with teacher forcing.

    Args:
        use_cache: decode with the backbone's cache (KV cache / recurrent state) instead of re-running the
            whole sequence at every step; both give identical tokens.
    """

    def __init__(self, use_cache: bool = True) -> None:
        super().__init__()
        self.use_cache = use_cache

    def inputs(self, prefix: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.cat([prefix, fed_back(target)], dim=1)  # (B, P + l - 1)

    def forward(self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor) -> ObjectiveOutput:
        logits = self.target_logits(backbone, self.inputs(prefix, target), prefix.shape[1])
        return ObjectiveOutput(target_cross_entropy(logits, target), logits)

    def decode(self, backbone: Backbone, prefix: torch.Tensor, steps: Optional[int] = None) -> torch.Tensor:
        return greedy_decode(backbone, prefix, steps or self.task.target_len, self.use_cache, self.stop)

    @torch.no_grad()
    def evaluate(
        self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor, steps: int
    ) -> tuple[ObjectiveOutput, torch.Tensor]:
        """The teacher-forced pass doubles as the prefill of greedy decoding (see
        :func:`~nfl.objectives.base.teacher_forced_and_prefill`).

        The first free-running token is then the argmax of the teacher-forced logits at ``=``, and decoding
        costs ``steps - 1`` one-token passes on top of the pass that teacher-forced metrics need anyway.
        """
        shared = teacher_forced_and_prefill(backbone, prefix, fed_back(target), steps) if self.use_cache else None
        if shared is None:
            return super().evaluate(backbone, prefix, target, steps)
        hidden, cache = shared
        logits = backbone.unembed(hidden)  # (B, l, V)
        generated = continue_greedy(backbone, cache, logits[:, 0], steps, self.stop)
        return ObjectiveOutput(target_cross_entropy(logits, target), logits), generated
