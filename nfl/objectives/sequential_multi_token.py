"""Sequential multi-token modules: teacher forcing plus ``depth`` chained modules, module ``k`` predicting the token
``k + 1`` ahead (DeepSeek-AI 2024, "DeepSeek-V3 Technical Report", arXiv 2412.19437, §2.2; the multi-token
baseline of the token-order paper, Zuhri et al. 2025, arXiv 2508.19228).

Modules. With ``h^0`` the backbone's final hidden states (the ones its unembedding reads), module ``k = 1..depth``
at position ``t`` combines the previous depth's state with the embedding of the token ``k`` ahead,

    h'^k_t = M_k [RMSNorm(h^{k-1}_t); RMSNorm(Emb(x_{t+k}))]        (M_k: Linear 2D -> D, no bias)
    h^k    = TRM_k(h'^k)                                            (a causal pre-norm block of its own)

and predicts ``x_{t+k+1}`` as ``unembed(RMSNorm_k(h^k_t))``. ``Emb`` is the backbone's token embedding and
``unembed`` its unembedding, both shared (DeepSeek-V3 shares both with the main model; each module keeps its
own output norm, as DeepSeek-V3's released weights do). Module ``k + 1`` reads ``h^k``, module ``k``'s *output*
(the block's residual stream), so every depth keeps the full causal chain. Each depth is one position shorter:
module ``k`` runs on positions whose ``k``-ahead token is an input token.

Positions. ``positions: all`` (default) runs the modules over the whole sequence, as DeepSeek-V3 does, so their
attention reads the prefix's states too; ``answer`` runs them from the ``=`` on only, so everything about the
graph must reach them through the backbone's states at the answer. Either way the loss is on answer tokens only
(as every nfl objective): module ``k`` is scored on answer tokens ``k .. l-1``, predicted from positions ``=`` ..,
the same tokens as :class:`~nfl.objectives.MultiTokenHeads`' head ``k + 1``.

Loss: ``next_token + weight * sum_k L_k`` (``reduction: sum``, the multi-token heads' convention) or
``next_token + weight / depth * sum_k L_k`` (``mean``, DeepSeek-V3's lambda / D; it used lambda 0.3, then 0.1),
each ``L_k`` a mean over module ``k``'s scored tokens. With ``weight: 0`` this is teacher forcing; with
``positions: answer`` exactly (the backbone is called as teacher forcing calls it), with ``all`` to float
rounding (the backbone also computes the prefix's last-layer states, which changes GPT's rounding).

The modules exist at training only: inference is plain next-token decoding from the backbone (DeepSeek-V3 also
discards them, or uses them to draft), so every evaluation tag is teacher forcing's. Logged:
``train/seq_mtp/module_{k}_loss``, ``train/seq_mtp/next_token_loss`` and ``{stage}/seq_mtp/module_{k}_acc``
(teacher-forced accuracy of module ``k`` on its answer tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn
from torchmetrics import Metric

from nfl.errors import OptionError, UserInputError, at_least, require
from nfl.models.base import Backbone
from nfl.objectives.base import Objective, ObjectiveOutput, target_cross_entropy
from nfl.objectives.multi_token import HeadAccuracy
from nfl.objectives.sequential_block import CausalBlock
from nfl.objectives.teacher_forcing import TeacherForcing
from nfl.tasks.base import IGNORE_INDEX, GraphTask


@dataclass
class SequentialOutput(ObjectiveOutput):
    # (B, depth, l): module k's teacher-forced prediction of answer token i; -1 where it has none (i < k)
    module_preds: Optional[torch.Tensor] = None


class DepthModule(nn.Module):
    """One prediction depth: ``h^k = TRM_k(M_k [norm(h^{k-1}); norm(e)])``; ``out_norm`` precedes the unembedding."""

    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.norm_hidden, self.norm_embedding, self.out_norm = (nn.RMSNorm(d_model) for _ in range(3))
        self.combine = nn.Linear(2 * d_model, d_model, bias=False)
        nn.init.normal_(self.combine.weight, mean=0.0, std=0.02)
        self.block = CausalBlock(d_model, n_head)

    def forward(self, hidden: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:  # (B, T, D) x2 -> (B, T, D)
        return self.block(self.combine(torch.cat([self.norm_hidden(hidden), self.norm_embedding(embedding)], -1)))


class SequentialMultiToken(TeacherForcing):
    """Teacher forcing plus DeepSeek-V3-style sequential multi-token modules; decodes like teacher forcing.

    Args:
        depth: number of modules; module k predicts the token k + 1 ahead (at most the answer length - 1).
        weight: weight of the modules' loss (lambda; 0 is teacher forcing).
        reduction: ``sum`` the module losses, or ``mean`` them (DeepSeek-V3's lambda / depth).
        positions: ``all`` runs the modules over the whole sequence (DeepSeek-V3), ``answer`` from the ``=`` on.
        n_head: attention heads of each module's block (must divide the backbone's width).
        use_cache: as :class:`~nfl.objectives.TeacherForcing`.
    """

    def __init__(
        self,
        depth: int = 1,
        weight: float = 1.0,
        reduction: Literal["sum", "mean"] = "sum",
        positions: Literal["all", "answer"] = "all",
        n_head: int = 4,
        use_cache: bool = True,
    ) -> None:
        super().__init__(use_cache)
        me = type(self)
        at_least(me, "depth", depth, 1, "the number of modules; 0 would be teacher forcing")
        at_least(me, "weight", weight, 0.0, "0 is teacher forcing")
        require(reduction in ("sum", "mean"), me, "reduction", reduction, "must be sum or mean")
        require(positions in ("all", "answer"), me, "positions", positions, "must be all or answer")
        at_least(me, "n_head", n_head, 1)
        self.depth, self.weight, self.reduction, self.positions = depth, weight, reduction, positions
        self.n_head = n_head

    def bind(
        self, task: GraphTask, backbone: Backbone, dummy: Optional[int] = None, stop: Optional[int] = None
    ) -> None:
        super().bind(task, backbone, dummy, stop)
        me = type(self)
        if self.depth > task.target_len - 1:
            raise OptionError(me, "depth", self.depth, f"module k predicts answer token k, so depth can be at most "
                              f"the answer width - 1 = {task.target_len - 1}")
        require(backbone.d_model % self.n_head == 0, me, "n_head", self.n_head,
                f"must divide the backbone's width {backbone.d_model}")
        try:
            backbone.token_embedding  # noqa: B018 -- the modules read the backbone's own embedding
        except NotImplementedError as err:
            raise UserInputError(f"SequentialMultiToken needs the backbone's token embedding: {err}.") from None
        if not hasattr(self, "depth_modules"):
            dtype = next(backbone.parameters()).dtype  # a pretrained backbone may hold bf16 weights
            modules = (DepthModule(backbone.d_model, self.n_head) for _ in range(self.depth))
            self.depth_modules = nn.ModuleList(modules).to(dtype)

    def forward(self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor) -> SequentialOutput:
        P, l = prefix.shape[1], target.shape[1]
        inputs = self.inputs(prefix, target)  # (B, P + l - 1)
        start = 0 if self.positions == "all" else P - 1
        answer = P - 1 - start  # where '=' sits in the states below
        hidden = backbone(inputs, output_from=start)  # (B, L, D): h^0
        logits = backbone.unembed(hidden[:, answer:])  # (B, l, V)
        next_token = target_cross_entropy(logits, target)
        embedding = backbone.token_embedding(inputs[:, start:])  # (B, L, D)
        preds = target.new_full((target.shape[0], self.depth, l), -1)  # (B, depth, l)
        extras, losses = {"seq_mtp/next_token_loss": next_token.detach()}, []
        for k, module in enumerate(self.depth_modules, start=1):
            hidden = module(hidden[:, :-1], embedding[:, k:])  # (B, L - k, D): h^k, chained from h^{k-1}
            head = backbone.unembed(module.out_norm(hidden[:, answer:]))  # (B, l - k, V): answer tokens k..l-1
            ahead = target[:, k:]
            # A batch whose answers are all shorter than k + 1 (variable-length tasks) gives module k nothing.
            loss_k = target_cross_entropy(head, ahead) if (ahead != IGNORE_INDEX).any() else head.sum() * 0.0
            extras[f"seq_mtp/module_{k}_loss"] = loss_k.detach()
            losses.append(loss_k)
            preds[:, k - 1, k:] = head.argmax(-1)
        total = torch.stack(losses).sum() / (self.depth if self.reduction == "mean" else 1)
        return SequentialOutput(next_token + self.weight * total, logits, extras, module_preds=preds)

    @torch.no_grad()
    def evaluate(
        self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor, steps: int
    ) -> tuple[SequentialOutput, torch.Tensor]:
        # The modules need the whole teacher-forced pass, so this is forward plus plain greedy decoding.
        return Objective.evaluate(self, backbone, prefix, target, steps)

    def eval_metric(self) -> Metric:
        return ModuleAccuracy(self.depth)


class ModuleAccuracy(HeadAccuracy):
    """Teacher-forced accuracy of each module on its answer tokens: ``seq_mtp/module_{k}_acc`` for k = 1..depth."""

    preds, tag = "module_preds", "seq_mtp/module_{}_acc"
