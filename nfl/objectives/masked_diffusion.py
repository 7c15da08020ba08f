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

Readout. By default position ``i``'s output predicts position ``i`` itself (the usual MDLM layout). With
``shift`` it is read as Ye et al.'s code reads a causal LM turned bidirectional: the output at the input position
just before answer position ``i`` predicts it, so the ``=`` ending the prefix predicts answer token 1 and answer
position ``i - 1`` predicts token ``i``; the last answer position is still read as input but its output is not
used. The training loss, the one-pass tags and decoding all use the same readout. Where answers vary in length,
the padding after the end token is part of the answer the model denoises (so the length is decided by the model),
and it is never masked in the prefix.

Decoding (Ye et al.'s top-k, easy first). From a fully masked answer, ``steps`` passes (default the answer
width, one token a pass): after pass ``s`` the ``ceil(l * s / steps)`` most confident positions are unmasked,
confidence being the highest log-probability of a token other than the mask. A pass that would unmask nothing
is skipped, so decoding fills every position in at most ``steps`` passes. With ``remask``, already unmasked
tokens compete again at every pass: the positions kept are the most confident by the current pass (an unmasked
token scored by its own probability), and the others are masked again. ``repredict`` (with ``remask``) is Ye et
al.'s exact rule: every answer position, masked or not, takes this pass's most probable token and is scored by
it, and every one of the ``steps`` passes runs (a pass that unmasks nothing more can still change tokens).

``noise`` is Ye et al.'s ``stochastic<noise>`` top-k: the confidences are ranked after adding Gumbel noise
``-log(-log(u + 1e-8) + 1e-8)`` (``u`` uniform) scaled by ``noise * (steps - s) / steps`` at pass ``s`` (their
``noise_scale * t / T`` with ``t = T - s``): ``noise * (steps - 1) / steps`` at the first pass, falling linearly
to 0 at the last, which keeps every position anyway. Without ``remask`` only the still masked positions compete.
The noise comes from a generator seeded with ``noise_seed`` at every decoding call, so decoding a batch is
reproducible, and the global random state that training draws from is left alone.

``shift: true, remask: true, repredict: true, steps: 20, noise: 0.5`` is the decoding of Ye et al.'s path-finding
script (``--diffusion_steps 20 --topk_decoding True --decoding_strategy stochastic0.5-linear``). Differences from
their code that remain:

- what is denoised: theirs is everything after ``[SEP]`` up to the cut-off length (the answer, ``[EOS]`` and
  padding to 75 tokens, all maskable and scored), nfl's the task's answer width (with the end token and padding
  only where answers vary);
- the loss scale: their ``linear`` weight ``T - t`` is ``timesteps`` times nfl's and their ``original``
  (``1 / (t + 1)``) is nfl's ``elbo`` divided by ``timesteps``: a constant factor on the loss (which gradient
  clipping and AdamW's epsilon see);
- the mask token: their decoding suppresses ids from ``tokenizer.vocab_size`` on, which with their character
  tokenizer is none (its size counts ``[MASK]``), so their model may decode ``[MASK]``; nfl never does;
- ties: theirs masks the positions scoring strictly below the ``k + 1``-th lowest (fewer than ``k`` on a tie),
  nfl keeps exactly the ``ceil(l * s / steps)`` best (``topk``);
- the noise's random numbers: theirs come from the global generator, nfl's from its own seeded one;
- not offered: their ``cosine`` unmasking schedule and their non-top-k decoding (D3PM's random unmasking).

Tags. There is no teacher-forced pass, so no ``tf/*`` tag is logged. ``{stage}/loss`` and
``{stage}/mdm/denoise_pos_{i}`` are from one denoising pass over a fully masked answer: its cross-entropy and its
per-position accuracy (the end token and padding are not positions); Ye et al.'s evaluation loss is the training
loss on a random masking instead. ``{stage}/mdm/steps`` is the mean number of passes decoding used. The
answer-level tags (``exact_match``, ``free/pos_{i}``, ...) are read off the decoded answer as for every objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from nfl.errors import above, at_least, in_range, require
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
        shift: read answer token ``i`` off the position just before it, as Ye et al.'s code does.
        repredict: with ``remask``, Ye et al.'s rule: unmasked positions take each pass's prediction afresh,
            and every pass runs.
        noise: scale of the Gumbel noise added to the confidences at decoding, annealed linearly to 0 over
            the passes (Ye et al. use 0.5; 0 ranks by confidence alone).
        noise_seed: seed of the noise's generator, reset at every decoding call.
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
        shift: bool = False,
        repredict: bool = False,
        noise: float = 0.0,
        noise_seed: int = 0,
    ) -> None:
        super().__init__()
        me = type(self)
        at_least(me, "timesteps", timesteps, 1)
        above(me, "alpha", alpha, 0.0, "the focal loss scale, e.g. 0.25")
        at_least(me, "gamma", gamma, 0.0)
        at_least(me, "steps", steps, 1, "null is one pass per answer token")
        require(remask or not repredict, me, "repredict", repredict,
                "re-predicting unmasked tokens is a way of remasking; set remask: true as well")
        require(math.isfinite(noise) and noise >= 0, me, "noise", noise,
                "must be a finite number >= 0 (the Gumbel noise scale at decoding; Ye et al. use 0.5, 0 is none)")
        in_range(me, "noise_seed", noise_seed, 0, 2**63 - 1)
        self.timesteps, self.time_weighting = timesteps, time_weighting
        self.token_reweighting, self.alpha, self.gamma = token_reweighting, alpha, gamma
        self.steps, self.remask, self.repredict = steps, remask, repredict
        self.shift, self.noise, self.noise_seed = shift, noise, noise_seed

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
        """Logits (B, l, V) predicting the answer positions, from one bidirectional pass over ``prefix + answer``."""
        P = prefix.shape[1]
        inputs = torch.cat([prefix, answer], dim=1)  # (B, P + l)
        if self.shift:  # positions P-1 .. P+l-2 predict the answer; the last one's output is not read
            hidden = backbone(inputs, output_from=P - 1, attention="bidirectional")[:, :-1]
        else:
            hidden = backbone(inputs, output_from=P, attention="bidirectional")
        return backbone.unembed(hidden)  # (B, l, V)

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
        generator = None
        if self.noise > 0:  # the same draws at every call: decoding a batch twice gives the same answers
            generator = torch.Generator(device=prefix.device).manual_seed(self.noise_seed)
        passes, done = 0, 0
        for s in range(1, steps + 1):
            goal = math.ceil(width * s / steps)  # positions unmasked after this pass
            if goal == done and not self.repredict:
                continue
            logp = self.denoise(backbone, prefix, x).float().log_softmax(-1)  # (B, width, V)
            logp[..., self.mask_id] = -math.inf  # never predict the mask itself
            passes += 1
            conf, token = logp.max(-1)  # (B, width)
            if self.remask and not self.repredict:  # an unmasked token keeps its token, scored by it
                kept = logp.gather(2, x.clamp(max=logp.shape[-1] - 1)[..., None])[..., 0]
                token = token.where(masked, x)
                conf = conf.where(masked, kept)
            scale = self.noise * (steps - s) / steps  # Ye et al.'s noise_scale * t / T, t = T - s
            if scale > 0:
                u = torch.rand(conf.shape, generator=generator, device=conf.device)
                conf = conf + scale * -torch.log(-torch.log(u + 1e-8) + 1e-8)  # Gumbel noise
            if self.remask:
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
