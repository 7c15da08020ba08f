"""Teacher forcing: next-token prediction on the answer, with the true previous tokens as input (Bachmann & Nagarajan 2024, §2).

Input ``prefix + target[:-1]``; cross-entropy on the ``l`` target positions only (the prefix is never a
loss target). Decoding is greedy and autoregressive. This is the objective whose failure on path-star
graphs (the Clever-Hans cheat) the paper describes.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from nfl.engine.decoding import continue_greedy, greedy_decode
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

    def teacher_forced_pass(self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor) -> ObjectiveOutput:
        """The plain teacher-forced pass over the data's answer. Evaluation reports this pass for teacher forcing
        and for every objective built on it, whatever extra inputs or losses the objective trains with."""
        logits = self.target_logits(backbone, self.inputs(prefix, target), prefix.shape[1])
        return ObjectiveOutput(target_cross_entropy(logits, target), logits)

    def forward(self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor) -> ObjectiveOutput:
        return self.teacher_forced_pass(backbone, prefix, target)

    never_emitted: tuple[str, ...] = ()  # reserved tokens (names) that exist at training only: never decoded

    def readout(self, backbone: Backbone) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """How decoding turns hidden states into logits: the backbone's unembedding (None), with the logits of
        :attr:`never_emitted` tokens at -inf where an objective has training-only tokens."""
        if not self.never_emitted:
            return None
        ids = torch.tensor([self.token_ids[name] for name in self.never_emitted])

        def readout(hidden: torch.Tensor) -> torch.Tensor:
            return backbone.unembed(hidden).index_fill(-1, ids.to(hidden.device), float("-inf"))

        return readout

    def decode(self, backbone: Backbone, prefix: torch.Tensor, steps: Optional[int] = None) -> torch.Tensor:
        steps = steps or self.task.target_len
        return greedy_decode(backbone, prefix, steps, self.use_cache, self.stop, self.readout(backbone))

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
            return self.teacher_forced_pass(backbone, prefix, target), self.decode(backbone, prefix, steps)
        hidden, cache = shared
        logits = backbone.unembed(hidden)  # (B, l, V)
        readout = self.readout(backbone)
        first = logits[:, 0] if readout is None else readout(hidden[:, 0])
        generated = continue_greedy(backbone, cache, first, steps, self.stop, readout)
        return ObjectiveOutput(target_cross_entropy(logits, target), logits), generated
