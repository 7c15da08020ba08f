"""Masked discrete diffusion on the answer: a bidirectional denoiser that fills a masked answer in any order
(Ye et al., ICLR 2025, arXiv 2410.14157, "Beyond Autoregression: Discrete Diffusion for Complex Reasoning and
Planning", code HKUNLP/diffusion-vs-ar; the absorbing-state process of Austin et al. 2021 (D3PM), Lou et al.
2024 (SEDD) and Sahoo et al. 2024 (MDLM)).

Training. Each row draws a noise level ``r = s / timesteps`` with ``s`` uniform in ``1..timesteps``; each
*answer* token is replaced by the objective's mask token (``reserve``) with probability ``r``; the prefix is never
masked. The backbone reads ``prefix + noisy answer`` without the causal mask, and the loss is the cross-entropy
at the masked positions only, weighted and averaged over the batch's masked tokens as Ye et al. do:

- ``time_weighting``: ``linear`` (default, Ye et al.'s path-finding setting) weighs a row by ``1 - r + 1 /
  timesteps`` (cleaner rows count more), ``elbo`` by ``1 / r`` (the masked-diffusion ELBO, Ye et al.'s
  "original"), ``none`` by 1;
- ``token_reweighting`` (Ye et al.'s multi-granularity diffusion, §3.2: hard tokens count more): each token's
  cross-entropy ``ℓ`` becomes ``alpha * (1 - exp(-ℓ)) ** gamma * ℓ``, a focal loss (default on, with Ye et al.'s
  path-finding values ``alpha = 0.25``, ``gamma = 1``).

Unlike Ye et al.'s code, which reads a causal LM's shifted outputs, position ``i``'s output predicts position
``i`` itself (the usual MDLM layout). Where answers vary in length, the padding after the end token is part of
the answer the model denoises (so the length is decided by the model), and it is never masked in the prefix.

Decoding (Ye et al.'s top-k, easy first). From a fully masked answer, ``steps`` passes (default the answer
width, one token a pass): after pass ``s`` the ``ceil(l * s / steps)`` most confident positions are unmasked,
confidence being the highest token probability. A pass that would unmask nothing is skipped, so decoding fills
every position in at most ``steps`` passes. With ``remask`` (as Ye et al.'s decoding), already unmasked tokens
compete again at every pass: the positions kept are the most confident by the current pass (an unmasked token
scored by its own probability), and the others are masked again.

Tags. There is no teacher-forced pass, so no ``tf/*`` tag is logged. ``{stage}/loss`` and
``{stage}/mdm/denoise_pos_{i}`` are from one denoising pass over a fully masked answer: its cross-entropy and its
per-position accuracy (the end token and padding are not positions). ``{stage}/mdm/steps`` is the mean number
of passes decoding used. The answer-level tags (``exact_match``, ``free/pos_{i}``, ...) are read off the
decoded answer as for every objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from nfl.errors import above, at_least
from nfl.models.base import Backbone
from nfl.objectives.base import Objective, ObjectiveOutput, Reservation, target_cross_entropy
from nfl.tasks.base import IGNORE_INDEX, GraphTask


@dataclass
class DiffusionOutput(ObjectiveOutput):
    passes: Optional[torch.Tensor] = None  # (B,) denoising passes decoding used for each row


class MaskedDiffusion(Objective):
    """Masked diffusion over the answer, decoded easy-first from a fully masked answer.

    Args:
        timesteps: noise levels ``1/timesteps .. 1`` drawn at training (Ye et al. use 20 on path-finding).
        time_weighting: ``linear``, ``elbo`` or ``none`` (see the module docstring).
        token_reweighting: the focal reweighting of each masked token's loss.
        alpha, gamma: its scale and exponent.
        steps: denoising passes at decoding (default the answer width).
        remask: let unmasked tokens be masked again when others are more confident.
    """

    teacher_forced = False

    def __init__(
        self,
        timesteps: int = 20,
        time_weighting: Literal["linear", "elbo", "none"] = "linear",
        token_reweighting: bool = True,
        alpha: float = 0.25,
        gamma: float = 1.0,
        steps: Optional[int] = None,
        remask: bool = False,
    ) -> None:
        super().__init__()
        me = type(self)
        at_least(me, "timesteps", timesteps, 1)
        above(me, "alpha", alpha, 0.0, "the focal loss scale, e.g. 0.25")
        at_least(me, "gamma", gamma, 0.0)
        at_least(me, "steps", steps, 1, "null is one pass per answer token")
        self.timesteps, self.time_weighting = timesteps, time_weighting
        self.token_reweighting, self.alpha, self.gamma = token_reweighting, alpha, gamma
        self.steps, self.remask = steps, remask

    def reserve(self, task: GraphTask) -> Reservation:
        # The input is prefix + the whole answer: one position more than teacher forcing's.
        return Reservation(tokens=("mask",), extra_len=1)

    def bind(
        self, task: GraphTask, backbone: Backbone, dummy: Optional[int] = None, stop: Optional[int] = None
    ) -> None:
        super().bind(task, backbone, dummy, stop)
        backbone.require("nfl.objectives.MaskedDiffusion", attention="bidirectional")
        self.mask_id = self.token_ids["mask"]

    def clean_answer(self, target: torch.Tensor) -> torch.Tensor:
        """The answer the model denoises: padding is a token to predict (the task's pad id) where answers vary."""
        pad = self.task.pad if self.task.pad is not None else 0
        return target.masked_fill(target == IGNORE_INDEX, pad)

    def denoise(self, backbone: Backbone, prefix: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
        """Logits (B, l, V) at the answer positions of one bidirectional pass over ``prefix + answer``."""
        hidden = backbone(torch.cat([prefix, answer], dim=1), output_from=prefix.shape[1], attention="bidirectional")
        return backbone.unembed(hidden)

    def forward(self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor) -> ObjectiveOutput:
        B, L = target.shape
        clean = self.clean_answer(target)
        scored = target != IGNORE_INDEX if self.task.pad is None else torch.ones_like(target, dtype=torch.bool)
        s = torch.randint(1, self.timesteps + 1, (B, 1), device=target.device)
        rate = s.float() / self.timesteps  # (B, 1)
        masked = (torch.rand(B, L, device=target.device) < rate) & scored
        logits = self.denoise(backbone, prefix, clean.masked_fill(masked, self.mask_id))  # (B, L, V)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), clean.flatten(), reduction="none").view(B, L)
        if self.token_reweighting:
            ce = self.alpha * (1 - torch.exp(-ce)) ** self.gamma * ce
        weight = {"linear": 1 - rate + 1 / self.timesteps, "elbo": 1 / rate, "none": torch.ones_like(rate)}
        loss = (ce * weight[self.time_weighting] * masked).sum() / masked.sum().clamp(min=1)
        return ObjectiveOutput(loss, logits, {"mdm/masked_fraction": masked.float().sum() / scored.sum().clamp(min=1)})

    @torch.no_grad()
    def generate(self, backbone: Backbone, prefix: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoded answer (B, width) and the passes used (B,)."""
        B = prefix.shape[0]
        steps = self.steps or width
        x = prefix.new_full((B, width), self.mask_id)
        masked = torch.ones(B, width, dtype=torch.bool, device=prefix.device)
        passes, done = 0, 0
        for s in range(1, steps + 1):
            goal = math.ceil(width * s / steps)  # positions unmasked after this pass
            if goal == done:
                continue
            logp = self.denoise(backbone, prefix, x).float().log_softmax(-1)  # (B, width, V)
            logp[..., self.mask_id] = -math.inf  # never predict the mask itself
            passes += 1
            conf, token = logp.max(-1)  # (B, width)
            if self.remask:
                kept = logp.gather(2, x.clamp(max=logp.shape[-1] - 1)[..., None])[..., 0]
                token = token.where(masked, x)
                conf = conf.where(masked, kept)
                keep = torch.zeros_like(masked)
                keep.scatter_(1, conf.topk(goal, dim=1).indices, True)
                x = token.where(keep, torch.full_like(x, self.mask_id))
                masked = ~keep
            else:
                chosen = torch.zeros_like(masked)
                chosen.scatter_(1, conf.masked_fill(~masked, -math.inf).topk(goal - done, dim=1).indices, True)
                chosen &= masked
                x = token.where(chosen, x)
                masked &= ~chosen
            done = goal
        return x, torch.full((B,), passes, device=prefix.device)

    @torch.no_grad()
    def decode(self, backbone: Backbone, prefix: torch.Tensor, steps: Optional[int] = None) -> torch.Tensor:
        width = self.task.target_len
        x, _ = self.generate(backbone, prefix, width)
        budget = steps or width
        if budget > width:  # a longer budget than the answer: what follows it is never read
            x = torch.cat([x, x.new_full((x.shape[0], budget - width), self.stop if self.stop is not None else 0)], 1)
        return x[:, :budget]

    @torch.no_grad()
    def evaluate(
        self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor, steps: int
    ) -> tuple[ObjectiveOutput, torch.Tensor]:
        B, L = target.shape
        logits = self.denoise(backbone, prefix, target.new_full((B, L), self.mask_id))  # one pass, all masked
        x, passes = self.generate(backbone, prefix, L)
        if steps > L:
            x = torch.cat([x, x.new_full((B, steps - L), self.stop if self.stop is not None else 0)], dim=1)
        out = DiffusionOutput(target_cross_entropy(logits, target), logits, passes=passes)
        return out, x[:, :steps]

    def eval_metric(self) -> Metric:
        return DiffusionMetric(self.task)


class DiffusionMetric(Metric):
    """``mdm/denoise_pos_{i}`` (one pass from a fully masked answer, per answer position) and ``mdm/steps``."""

    full_state_update = False

    def __init__(self, task: GraphTask) -> None:
        super().__init__()
        self.end = task.end
        width = task.target_len
        self.add_state("correct", torch.zeros(width, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("rows", torch.zeros(width, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("passes", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, output: DiffusionOutput, target: torch.Tensor) -> None:
        position = target != IGNORE_INDEX
        if self.end is not None:
            position &= target != self.end
        hit = (output.logits.argmax(-1) == target) & position
        width = min(target.shape[1], self.rows.shape[0])
        self.correct[:width] += hit.sum(0)[:width]
        self.rows[:width] += position.sum(0)[:width]
        self.passes += output.passes.sum()
        self.n += target.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        out = {"mdm/steps": (self.passes / self.n.clamp(min=1)).float()}
        for i in range(self.rows.shape[0]):
            if self.rows[i] > 0:
                out[f"mdm/denoise_pos_{i + 1}"] = (self.correct[i] / self.rows[i]).float()
        return out
