"""Registers: teacher forcing plus register tokens that predict further ahead, dropped at inference (MuToR,
Gerontopoulos, Gidaris & Komodakis, NeurIPS 2025, arXiv 2505.10518, "Multi-Token Prediction Needs Registers",
§3; code nasosger/MuToR, ``process_input_and_labels_mutor`` in ``language_modeling/src/finetune.py``).

**Sequence.** One learnable register token (a single embedding for every offset, as MuToR's ``<reg>``) is
interleaved in the answer, one before each fed-back answer token and one after the last: teacher forcing's
input ``prefix + t_0 .. t_{l-2}`` becomes ``prefix, r, t_0, r, t_1, .., r, t_{l-2}, r`` (``l`` registers,
so ``l`` positions more). Register ``k`` follows the input whose next-token target is ``t_k`` (the ``=`` for
``k = 0``) and predicts the token ``d`` steps ahead of that, ``t_{k+d-1}``; ``d`` is drawn uniformly from
``1..max_offset`` once per sequence (per row of a batch). A register whose target lies past the answer
width, or is :data:`IGNORE_INDEX` past a row's end, gets no loss.

**Positions.** Ordinary tokens keep teacher forcing's position ids. Register ``k`` gets ``P + k + d - 2``
(``P`` the prefix length): the position of the token it follows plus ``d - 1`` (the paper's ``t + d - 1`` for
a register after ``x_t``), which is the position of the input whose next-token target is the register's
target; a ``d = 1`` register shares its predecessor's position. Ids past the last answer input are clipped to
it, as MuToR does (such registers get no loss).

**Attention** (and-ed with the backbone's causal mask): no ordinary token attends to a register, and a
register attends to the ordinary tokens before it and to itself, never to another register. So the ordinary
tokens compute teacher forcing's pass (up to float rounding), and each register sees what the ordinary token
before it sees, plus itself.

**Loss.** ``(1 - a) * next_token + a * register``, each the mean cross-entropy over its scored tokens in the
batch (MuToR pools registers over the batch rather than averaging per sequence). Logged:
``train/registers/loss`` (the register term) and ``train/registers/next_token_loss``.

**Inference** drops the registers: evaluation and decoding are plain teacher forcing (the ``tf/*`` tags are
a true teacher-forced pass without registers) and greedy decoding, which never writes the register token.

Departures from MuToR: the prefix stays causal (MuToR's fine-tuning code lets the question attend both ways,
in its baseline too; nfl's teacher forcing is causal, so this is the like-for-like comparison); ``d`` is drawn
per row as the paper says (the code, at batch size 1, draws one per batch); padding and any batch size are
handled (the code runs batch size 1 only); positions are learned absolute embeddings rather than RoPE (the
paper notes any positional scheme works). As in MuToR, registers sit in the answer only (the prefix carries no
loss) and the register's embedding is one more row of the (tied) token embedding. Needs the backbone's
``attention_mask`` and ``position_ids`` (GPT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from nfl.errors import at_least, in_range, require
from nfl.models.base import Backbone
from nfl.objectives.base import (
    ObjectiveOutput,
    Reservation,
    fed_back,
    target_cross_entropy,
)
from nfl.objectives.teacher_forcing import TeacherForcing
from nfl.tasks.base import IGNORE_INDEX, GraphTask


@dataclass
class RegisterBatch:
    """The training sequence of a batch with its registers interleaved."""

    inputs: torch.Tensor  # (B, P + 2l - 1) token ids
    position_ids: torch.Tensor  # (B, P + 2l - 1)
    attention_mask: torch.Tensor  # (P + 2l - 1, P + 2l - 1) bool, True where query i may read key j
    register_target: torch.Tensor  # (B, l): register k's target, IGNORE_INDEX where it has none


class Registers(TeacherForcing):
    """Teacher forcing plus MuToR's register tokens, each predicting ``d`` tokens ahead (training only).

    Args:
        max_offset: registers predict ``d in 1..max_offset`` steps ahead, ``d`` drawn per sequence (MuToR's
            ``d_max``, default 4 as the authors recommend); at most the answer width.
        a: weight of the register loss, ``(1 - a) * next_token + a * register`` (default 0.3, the authors'
            recommendation); 0 is teacher forcing.
        use_cache: as :class:`~nfl.objectives.TeacherForcing` (evaluation and decoding).
    """

    never_emitted = ("register",)  # greedy decoding never writes the training-only token

    def __init__(self, max_offset: int = 4, a: float = 0.3, use_cache: bool = True) -> None:
        super().__init__(use_cache)
        me = type(self)
        at_least(me, "max_offset", max_offset, 1, "1 makes every register predict the next token")
        in_range(me, "a", a, 0.0, 1.0, advice="the register loss's weight; 0 is teacher forcing")
        self.max_offset, self.a = max_offset, a

    def reserve(self, task: GraphTask) -> Reservation:
        return Reservation(tokens=("register",), extra_len=task.target_len)  # one register per answer column

    def bind(
        self, task: GraphTask, backbone: Backbone, dummy: Optional[int] = None, stop: Optional[int] = None
    ) -> None:
        super().bind(task, backbone, dummy, stop)
        backbone.require("nfl.objectives.Registers", attention_mask=True, position_ids=True)
        require(
            self.max_offset <= task.target_len, type(self), "max_offset", self.max_offset,
            f"must be at most the answer width {task.target_len} of {task.describe()} (a register predicts a token "
            "of the answer)",
        )
        self.register_id = self.token_ids["register"]

    def build(self, prefix: torch.Tensor, target: torch.Tensor, offsets: torch.Tensor) -> RegisterBatch:
        """The interleaved sequence for ``offsets`` (B,) in ``1..max_offset`` (see the module docstring)."""
        (B, P), l = prefix.shape, target.shape[1]
        device = prefix.device
        T = P + 2 * l - 1
        k = torch.arange(l, device=device)
        reg_idx = P + 2 * k  # (l,) where register k sits; t_k sits at P + 2k + 1
        inputs = prefix.new_full((B, T), self.register_id)
        inputs[:, :P] = prefix
        inputs[:, P + 1 :: 2] = fed_back(target)
        positions = torch.arange(T, device=device).expand(B, T).clone()
        positions[:, P:] = P + torch.arange(T - P, device=device) // 2  # t_k at P + k
        reg_pos = P + k[None, :] + offsets[:, None] - 2  # (B, l): the position that would predict the target
        positions[:, reg_idx] = reg_pos.clamp(max=P + l - 2)
        ahead = k[None, :] + offsets[:, None] - 1  # (B, l): the answer column register k predicts
        register_target = target.gather(1, ahead.clamp(max=l - 1)).masked_fill(ahead >= l, IGNORE_INDEX)
        is_register = torch.zeros(T, dtype=torch.bool, device=device)
        is_register[reg_idx] = True
        allowed = ~is_register[None, :] | torch.eye(T, dtype=torch.bool, device=device)  # the causal mask ands in
        return RegisterBatch(inputs, positions, allowed, register_target)

    def forward(
        self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor, offsets: Optional[torch.Tensor] = None
    ) -> ObjectiveOutput:
        """Training loss; ``offsets`` (B,) fixes each row's ``d`` (default: drawn uniformly)."""
        if offsets is None:
            offsets = torch.randint(1, self.max_offset + 1, (prefix.shape[0],), device=prefix.device)
        batch = self.build(prefix, target, offsets)
        P = prefix.shape[1]
        hidden = backbone(
            batch.inputs, output_from=P - 1, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        )  # (B, 2l, D): the l ordinary outputs at even offsets, the l registers' at odd ones
        logits = backbone.unembed(hidden[:, 0::2])  # (B, l, V): teacher forcing's logits
        register_logits = backbone.unembed(hidden[:, 1::2])  # (B, l, V)
        next_token = target_cross_entropy(logits, target)
        scored = batch.register_target != IGNORE_INDEX
        ce = torch.nn.functional.cross_entropy(
            register_logits.flatten(0, 1).float(), batch.register_target.flatten(), reduction="sum",
            ignore_index=IGNORE_INDEX,
        )
        register = ce / scored.sum().clamp(min=1)
        loss = (1 - self.a) * next_token + self.a * register
        extras = {"registers/loss": register.detach(), "registers/next_token_loss": next_token.detach()}
        return ObjectiveOutput(loss, logits, extras)
