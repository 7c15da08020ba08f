"""NextLat: teacher forcing plus next-latent prediction through a learned latent dynamics model (Teoh et al.,
arXiv 2511.05963, "Next-Latent Prediction Transformers Learn Compact World Models").

The backbone's hidden states ``h_t`` (after its final norm, the states the unembedding reads) are asked to be
a belief state: a small dynamics model must be able to roll them forward given the next tokens,

    ĥ_{t+1} = h_t + MLP(LN([h_t; Emb(x_{t+1})])),

with ``Emb`` the backbone's own token embedding and the MLP three linear layers with GELUs between them
(2D -> D -> D -> D). From every position ``t`` the model is rolled out ``horizon`` steps on the true tokens,
``ĥ_{t+k} = dyn(ĥ_{t+k-1}, x_{t+k})``, and each step is scored against the backbone's own state ``h_{t+k}``:

- ``latent_loss``: smooth L1 between ``ĥ_{t+k}`` and the stop-gradient ``h_{t+k}`` (the target latents get no
  gradient, so the backbone is not pulled towards what the dynamics model predicts);
- ``kl``: KL(p(. | h_{t+k}) || p(. | ĥ_{t+k})) between the next-token distributions of the true and the
  predicted latent, both through the backbone's unembedding, which is frozen inside this term (the true
  distribution is a stop-gradient target, and the predicted one passes gradient into ``ĥ`` only).

Each is the mean over all rolled-out (position, step) pairs; the loss is
``next_token + latent_weight * latent_loss + kl_weight * kl``. ``positions: all`` (default) rolls out from every
position (the prefix's too, as in language modelling), ``answer`` only from the ``=`` on. Steps never cross the
last real token of a row. The dynamics model exists at training only: inference, and every evaluation tag, is
plain next-token decoding as in :class:`~nfl.objectives.TeacherForcing`. Logged: ``train/nextlat/latent_loss``,
``train/nextlat/kl``, ``train/nextlat/next_token_loss``.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from nfl.errors import at_least
from nfl.models.base import Backbone
from nfl.objectives.base import ObjectiveOutput, frozen_unembed, target_cross_entropy
from nfl.objectives.teacher_forcing import TeacherForcing
from nfl.tasks.base import IGNORE_INDEX, GraphTask


class LatentDynamics(nn.Module):
    """``ĥ_{t+1} = h_t + MLP(LN([h_t; e_{t+1}]))``: (..., D), (..., D) -> (..., D)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(2 * d_model)
        self.mlp = nn.Sequential(
            nn.Linear(2 * d_model, d_model), nn.GELU(), nn.Linear(d_model, d_model), nn.GELU(),
            nn.Linear(d_model, d_model),
        )
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, hidden: torch.Tensor, next_embedding: torch.Tensor) -> torch.Tensor:
        return hidden + self.mlp(self.norm(torch.cat([hidden, next_embedding], dim=-1)))


class NextLat(TeacherForcing):
    """Teacher forcing plus next-latent prediction; decodes exactly like teacher forcing.

    Args:
        horizon: rollout steps of the dynamics model (default ``l - 2``, at least 1, where ``l`` is the
            longest answer).
        latent_weight: weight of the smooth-L1 latent loss.
        kl_weight: weight of the KL term.
        positions: ``all`` rolls out from every position, ``answer`` from the ``=`` on.
        use_cache: as :class:`~nfl.objectives.TeacherForcing`.
    """

    def __init__(
        self,
        horizon: Optional[int] = None,
        latent_weight: float = 1.0,
        kl_weight: float = 1.0,
        positions: Literal["all", "answer"] = "all",
        use_cache: bool = True,
    ) -> None:
        super().__init__(use_cache)
        me = type(self)
        at_least(me, "horizon", horizon, 1, "null is l - 2")
        at_least(me, "latent_weight", latent_weight, 0.0)
        at_least(me, "kl_weight", kl_weight, 0.0)
        self.horizon, self.latent_weight, self.kl_weight, self.positions = horizon, latent_weight, kl_weight, positions

    def bind(
        self, task: GraphTask, backbone: Backbone, dummy: Optional[int] = None, stop: Optional[int] = None
    ) -> None:
        super().bind(task, backbone, dummy, stop)
        self.rollout = self.horizon if self.horizon is not None else max(1, task.max_path_len - 2)
        backbone.token_embedding  # noqa: B018 -- fails here, in one line, where a backbone does not expose it
        if not hasattr(self, "dynamics"):
            self.dynamics = LatentDynamics(backbone.d_model)

    def latent_losses(
        self, backbone: Backbone, hidden: torch.Tensor, tokens: torch.Tensor, real: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean smooth-L1 and KL over every rollout step from ``hidden`` (B, T, D), the states after ``tokens``
        (B, T); ``real`` (B, T) marks the positions that hold a real token (targets only there)."""
        embedding = backbone.token_embedding(tokens)  # (B, T, D)
        with torch.no_grad():
            target = hidden.detach()
            true_logp = F.log_softmax(backbone.unembed(target).float(), dim=-1)  # (B, T, V)
        predicted = hidden[:, :-1]
        latent_sum = kl_sum = hidden.new_zeros((), dtype=torch.float32)
        count = hidden.new_zeros((), dtype=torch.float32)
        for k in range(1, min(self.rollout, hidden.shape[1] - 1) + 1):
            predicted = self.dynamics(predicted, embedding[:, k:])  # (B, T - k, D): ĥ_{t+k} for t = 0..T-k-1
            mask = real[:, k:].float()  # (B, T - k)
            l1 = F.smooth_l1_loss(predicted.float(), target[:, k:].float(), reduction="none").mean(-1)
            pred_logp = F.log_softmax(frozen_unembed(backbone, predicted).float(), dim=-1)
            kl = F.kl_div(pred_logp, true_logp[:, k:], log_target=True, reduction="none").sum(-1)
            latent_sum = latent_sum + (l1 * mask).sum()
            kl_sum = kl_sum + (kl * mask).sum()
            count = count + mask.sum()
            predicted = predicted[:, :-1]
        count = count.clamp(min=1)
        return latent_sum / count, kl_sum / count

    def forward(self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor) -> ObjectiveOutput:
        P = prefix.shape[1]
        inputs = self.inputs(prefix, target)  # (B, P + l - 1)
        start = 0 if self.positions == "all" else P - 1
        hidden = backbone(inputs, output_from=start)  # (B, T, D)
        logits = backbone.unembed(hidden[:, P - 1 - start :])  # (B, l, V)
        next_token = target_cross_entropy(logits, target)
        lengths = (target != IGNORE_INDEX).sum(dim=1)  # a row's inputs end at P + m - 2
        cols = torch.arange(start, inputs.shape[1], device=inputs.device)
        real = cols[None, :] <= (P + lengths - 2)[:, None]
        latent, kl = self.latent_losses(backbone, hidden, inputs[:, start:], real)
        loss = next_token + self.latent_weight * latent + self.kl_weight * kl
        extras = {"nextlat/latent_loss": latent.detach(), "nextlat/kl": kl.detach(),
                  "nextlat/next_token_loss": next_token.detach()}
        return ObjectiveOutput(loss, logits, extras)
