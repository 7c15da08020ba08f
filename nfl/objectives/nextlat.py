"""NextLat: teacher forcing plus next-latent prediction through a learned latent dynamics model (Teoh et al.,
arXiv 2511.05963, "Next-Latent Prediction Transformers Learn Compact World Models"). The options name which
choices are the paper's and which are those of the public re-implementation in shoaibahmed/Next-Token-Failures
(``models/next_lat_gpt.py``, ``train.py``, ``train_next_lat.sh``); the authors' own code was not read.

The backbone's hidden states ``h_t`` (after its final norm, the states the unembedding reads) are asked to be
a belief state: a small dynamics model must be able to roll them forward given the next tokens. It reads the
last ``K = history`` states, concatenated oldest first, and the next token's embedding,

    ĥ_{t+1} = h_t + MLP(LN([h_{t-K+1}; ...; h_t; Emb(x_{t+1})])),

with ``Emb`` the backbone's own token embedding and the MLP three linear layers with GELUs between them
((K+1)D -> D -> D -> D). From every position ``t`` with ``K - 1`` states before it the model is rolled out
``horizon`` steps on the true tokens, its window sliding over its own predictions (step ``k`` reads whatever
of ``h_{t-K+1..t}`` is left and ``ĥ_{t+1..t+k-1}``), and each step is scored against the backbone's ``h_{t+k}``:

- ``latent_loss``: smooth L1 between ``ĥ_{t+k}`` and the stop-gradient ``h_{t+k}`` (the target latents get no
  gradient, so the backbone is not pulled towards what the dynamics model predicts);
- ``kl``: KL(p(. | h_{t+k}) || p(. | ĥ_{t+k})) between the next-token distributions of the true and the
  predicted latent, both through the backbone's unembedding, which is frozen inside this term (the true
  distribution is a stop-gradient target, and the predicted one passes gradient into ``ĥ`` only).

Each is the mean over its scored (position, step) pairs; the loss is
``next_token + latent_weight * latent_loss + kl_weight * kl``. Steps never cross the last real token of a row.
The options, default first, and whose choice each value is:

- ``horizon``: ``l - 2`` (the re-implementation's, which credits the paper), or any number of steps.
- ``positions``: ``all`` rolls out from every position, the prefix's too, as in language modelling (nfl's
  default and the re-implementation's); ``answer`` only from the ``=`` on (nfl's; every step then lies in the
  answer).
- ``kl_positions``: ``all`` takes the KL at every scored step (nfl's); ``answer`` only at the steps whose
  position predicts an answer token, from the ``=`` on, as the next-token loss does (the re-implementation's).
  The latent loss stays on every step either way, as there. Only matters with ``positions: all``.
- ``detach_embedding``: ``false`` lets the dynamics model send gradient into the token embedding, which is
  also the tied unembedding (nfl's); ``true`` detaches it (the re-implementation's, which notes that the
  paper's algorithm does not say).
- ``zero_init_last``: ``false`` draws every dynamics layer from N(0, 0.02) (nfl's); ``true`` starts its last
  layer at zero, so that through the residual the model starts as the identity ``ĥ_{t+1} = h_t`` (the
  re-implementation's).
- ``history``: 1, as the paper's dynamics model, which reads ``h_t`` alone; the re-implementation's NextLat
  script uses 4 (its ``train.py`` default is 1). Positions with fewer than ``K - 1`` states before them start
  no rollout, as there (nothing is padded); with ``positions: answer`` the window reaches back into the prefix.

Differences left from the re-implementation with every option at its value: (1) its latents are the last
block's output under a LayerNorm without affine parameters, and its predictions pass a frozen copy of the final
LayerNorm before the head, where nfl's are the states after the backbone's own final norm, unembedded directly;
(2) it averages each step over its positions and then the steps equally, where nfl pools all (position, step)
pairs (later steps, which have fewer positions, weigh less), and its latent loss has no mask at all (path-star
rows have no padding to mask); (3) the other dynamics layers keep PyTorch's default initialisation there;
(4) its residual is an option (off in ``train.py``, on in its NextLat script), here always on; (5) it can train
a dynamics model at several layers, nfl at the last only.

The dynamics model exists at training only: inference, and every evaluation tag, is plain next-token decoding
as in :class:`~nfl.objectives.TeacherForcing`. Logged: ``train/nextlat/latent_loss``, ``train/nextlat/kl``,
``train/nextlat/next_token_loss``.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from nfl.errors import at_least, require
from nfl.models.base import Backbone
from nfl.objectives.base import ObjectiveOutput, frozen_unembed, target_cross_entropy
from nfl.objectives.teacher_forcing import TeacherForcing
from nfl.tasks.base import IGNORE_INDEX, GraphTask


class LatentDynamics(nn.Module):
    """``ĥ_{t+1} = h_t + MLP(LN([h_{t-K+1}; ...; h_t; e_{t+1}]))``: (..., K * D), (..., D) -> (..., D)."""

    def __init__(self, d_model: int, history: int = 1, zero_init_last: bool = False) -> None:
        super().__init__()
        width = (history + 1) * d_model
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, d_model), nn.GELU(), nn.Linear(d_model, d_model), nn.GELU(),
            nn.Linear(d_model, d_model),
        )
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                nn.init.zeros_(module.bias)
        if zero_init_last:
            nn.init.zeros_(self.mlp[-1].weight)  # its bias is zero already: the identity, through the residual

    def forward(self, window: torch.Tensor, next_embedding: torch.Tensor) -> torch.Tensor:
        newest = window[..., window.shape[-1] - next_embedding.shape[-1] :]  # h_t
        return newest + self.mlp(self.norm(torch.cat([window, next_embedding], dim=-1)))


class NextLat(TeacherForcing):
    """Teacher forcing plus next-latent prediction; decodes exactly like teacher forcing.

    Args:
        horizon: rollout steps of the dynamics model (default ``l - 2``, at least 1, where ``l`` is the
            longest answer).
        latent_weight: weight of the smooth-L1 latent loss.
        kl_weight: weight of the KL term.
        positions: ``all`` rolls out from every position, ``answer`` from the ``=`` on.
        kl_positions: ``all`` takes the KL at every rolled-out step, ``answer`` only at steps that predict an
            answer token (shoaibahmed/Next-Token-Failures' choice); the latent loss is on every step.
        detach_embedding: give the dynamics model the token embedding without gradient (Next-Token-Failures').
        zero_init_last: start the dynamics model's last layer at zero, an identity map through its residual
            (Next-Token-Failures').
        history: hidden states the dynamics model reads, the newest last (1: ``h_t`` only, the paper's;
            Next-Token-Failures' NextLat script uses 4).
        use_cache: as :class:`~nfl.objectives.TeacherForcing`.
    """

    def __init__(
        self,
        horizon: Optional[int] = None,
        latent_weight: float = 1.0,
        kl_weight: float = 1.0,
        positions: Literal["all", "answer"] = "all",
        kl_positions: Literal["all", "answer"] = "all",
        detach_embedding: bool = False,
        zero_init_last: bool = False,
        history: int = 1,
        use_cache: bool = True,
    ) -> None:
        super().__init__(use_cache)
        me = type(self)
        at_least(me, "horizon", horizon, 1, "null is l - 2")
        at_least(me, "latent_weight", latent_weight, 0.0)
        at_least(me, "kl_weight", kl_weight, 0.0)
        require(positions in ("all", "answer"), me, "positions", positions, "must be all or answer")
        require(kl_positions in ("all", "answer"), me, "kl_positions", kl_positions, "must be all or answer")
        require(isinstance(history, int), me, "history", history, "must be a whole number of hidden states")
        at_least(me, "history", history, 1, "1 reads h_t alone")
        self.horizon, self.latent_weight, self.kl_weight, self.positions = horizon, latent_weight, kl_weight, positions
        self.kl_positions, self.detach_embedding, self.zero_init_last = kl_positions, detach_embedding, zero_init_last
        self.history = history

    def bind(
        self, task: GraphTask, backbone: Backbone, dummy: Optional[int] = None, stop: Optional[int] = None
    ) -> None:
        super().bind(task, backbone, dummy, stop)
        require(
            self.history < task.prefix_len, type(self), "history", self.history,
            f"must be below the prefix length {task.prefix_len}, or no position has that many states before it",
        )
        self.rollout = self.horizon if self.horizon is not None else max(1, task.max_path_len - 2)
        backbone.token_embedding  # noqa: B018 -- fails here, in one line, where a backbone does not expose it
        if not hasattr(self, "dynamics"):
            self.dynamics = LatentDynamics(backbone.d_model, self.history, self.zero_init_last)

    def latent_losses(
        self,
        backbone: Backbone,
        hidden: torch.Tensor,
        tokens: torch.Tensor,
        real: torch.Tensor,
        scored: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean smooth-L1 and KL over every rollout step from ``hidden`` (B, T, D), the states after ``tokens``
        (B, T); ``real`` (B, T) marks the positions that hold a real token (targets only there), ``scored``
        (B, T; default ``real``) those where the KL is taken."""
        scored = real if scored is None else scored
        K, T = self.history, hidden.shape[1]
        embedding = backbone.token_embedding(tokens)  # (B, T, D)
        if self.detach_embedding:
            embedding = embedding.detach()
        with torch.no_grad():
            target = hidden.detach()
            true_logp = F.log_softmax(backbone.unembed(target).float(), dim=-1)  # (B, T, V)
        window = torch.cat([hidden[:, i : T - K + i] for i in range(K)], dim=-1)  # (B, T - K, K * D), newest last
        latent_sum = kl_sum = hidden.new_zeros((), dtype=torch.float32)
        count = kl_count = hidden.new_zeros((), dtype=torch.float32)
        for k in range(1, min(self.rollout, T - K) + 1):
            s = K + k - 1  # the first position step k predicts
            predicted = self.dynamics(window, embedding[:, s:])  # (B, T - s, D): ĥ at positions s..T-1
            mask, kl_mask = real[:, s:].float(), scored[:, s:].float()  # (B, T - s)
            l1 = F.smooth_l1_loss(predicted.float(), target[:, s:].float(), reduction="none").mean(-1)
            pred_logp = F.log_softmax(frozen_unembed(backbone, predicted).float(), dim=-1)
            kl = F.kl_div(pred_logp, true_logp[:, s:], log_target=True, reduction="none").sum(-1)
            latent_sum = latent_sum + (l1 * mask).sum()
            kl_sum = kl_sum + (kl * kl_mask).sum()
            count, kl_count = count + mask.sum(), kl_count + kl_mask.sum()
            window = torch.cat([window[:, :-1, hidden.shape[2] :], predicted[:, :-1]], dim=-1)  # slide by one
        return latent_sum / count.clamp(min=1), kl_sum / kl_count.clamp(min=1)

    def forward(self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor) -> ObjectiveOutput:
        P = prefix.shape[1]
        inputs = self.inputs(prefix, target)  # (B, P + l - 1)
        start = 0 if self.positions == "all" else P - self.history  # rollouts start at the '=' (P - 1) or later
        hidden = backbone(inputs, output_from=start)  # (B, T, D)
        logits = backbone.unembed(hidden[:, P - 1 - start :])  # (B, l, V)
        next_token = target_cross_entropy(logits, target)
        lengths = (target != IGNORE_INDEX).sum(dim=1)  # a row's inputs end at P + m - 2
        cols = torch.arange(start, inputs.shape[1], device=inputs.device)
        real = cols[None, :] <= (P + lengths - 2)[:, None]
        scored = real & (cols[None, :] >= P - 1) if self.kl_positions == "answer" else real
        latent, kl = self.latent_losses(backbone, hidden, inputs[:, start:], real, scored)
        loss = next_token + self.latent_weight * latent + self.kl_weight * kl
        extras = {"nextlat/latent_loss": latent.detach(), "nextlat/kl": kl.detach(),
                  "nextlat/next_token_loss": next_token.detach()}
        return ObjectiveOutput(loss, logits, extras)
