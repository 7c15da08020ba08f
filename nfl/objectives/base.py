"""The objective contract: how (prefix, target) pairs become model inputs, a loss, and decoded predictions.

An objective is an ``nn.Module`` so that any parameters it adds (extra output heads) are trained,
checkpointed and restored with the system. The system calls :meth:`Objective.bind` once, before training,
with the task and the backbone; nothing in the backbone knows which objective is in use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric

from nfl.models.base import Backbone
from nfl.tasks.base import IGNORE_INDEX, GraphTask


@dataclass
class ObjectiveOutput:
    """What one training / teacher-forced pass gives back."""

    loss: torch.Tensor  # scalar, mean over target tokens
    logits: torch.Tensor  # (B, l, V): the prediction of each target position, used for teacher-forced metrics
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # objective-specific, logged as given


@dataclass(frozen=True)
class Reservation:
    """What an objective needs beyond its task: token ids of its own, and a longer input sequence."""

    tokens: tuple[str, ...] = ()  # names of the objective's tokens (a mask, delimiters, registers, ...)
    extra_len: int = 0  # input positions beyond the task's teacher-forcing length


class Objective(nn.Module):
    """Base class of training objectives.

    ``teacher_forced`` says whether :meth:`evaluate`'s logits are a true teacher-forced pass: position ``i``'s
    prediction made with the data's answer tokens before ``i`` as input. Only then does the system log the
    ``tf/*`` tags; an objective whose logits come from another input (teacherless dummies, a masked answer)
    sets it False and logs what its logits mean under its own names.
    """

    teacher_forced: bool = True
    task: GraphTask
    token_ids: dict[str, int]  # the ids of :meth:`reserve`'s tokens, set by the system before :meth:`bind`

    def reserve(self, task: GraphTask) -> Reservation:
        """Tokens and sequence length this objective needs beyond ``task``'s; asked once, before the backbone
        is built, so the backbone's vocabulary and length are the task's plus these. The system allocates the
        tokens right after the task's own ids and puts them in ``self.token_ids`` (name -> id)."""
        return Reservation()

    def bind(
        self, task: GraphTask, backbone: Backbone, dummy: Optional[int] = None, stop: Optional[int] = None
    ) -> None:
        """Attach to a task and backbone; objectives with parameters create them here.

        ``dummy`` is the teacherless dummy's token id in the backbone's tokens (default the numeral ``$``);
        ``stop`` the token that ends an answer, where free-running decoding may stop (None: fixed length).
        """
        self.task = task
        self.dummy = task.dummy if dummy is None else dummy
        self.stop = stop

    def forward(self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor) -> ObjectiveOutput:
        """Loss and teacher-forced logits. ``prefix`` (B, P) and ``target`` (B, l) are in the backbone's tokens;
        ``target`` may hold :data:`IGNORE_INDEX` past a row's end (pretrained tokenizers' answers differ in
        length), which gets no loss."""
        raise NotImplementedError

    def decode(self, backbone: Backbone, prefix: torch.Tensor, steps: Optional[int] = None) -> torch.Tensor:
        """Free-running prediction of ``steps`` answer tokens (B, steps) from the prefix alone (default: the
        task's answer width); past an end token, the tokens are not read."""
        raise NotImplementedError

    def evaluate(
        self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor, steps: int
    ) -> tuple[ObjectiveOutput, torch.Tensor]:
        """The teacher-forced output and the free-running tokens (B, steps) of one evaluation batch.

        This is ``forward`` and ``decode``; an objective may override it to share work between the two.
        """
        return self(backbone, prefix, target), self.decode(backbone, prefix, steps)

    def eval_metric(self) -> Optional[Metric]:
        """An objective-specific metric, or None. The system makes one per stage, calls
        ``update(output, target)`` with each evaluation batch's :class:`ObjectiveOutput`, and logs every
        ``name: value`` of ``compute()`` as ``{stage}/{name}`` (e.g. ``val/mtp/head_2_acc``)."""
        return None

    def target_logits(self, backbone: Backbone, inputs: torch.Tensor, prefix_len: int) -> torch.Tensor:
        """Logits (B, l, V) at the ``l`` positions that predict the target: the ``=`` and the ``l-1`` after it."""
        hidden = backbone(inputs, output_from=prefix_len - 1)  # (B, l, D)
        return backbone.unembed(hidden)


def reversed_rows(tokens: torch.Tensor, lengths: torch.Tensor, fill: int = 0) -> torch.Tensor:
    """Each row's first ``lengths[b]`` tokens in reverse order, left-aligned, ``fill`` after them: (B, T) -> (B, T).

    What a backward encoder reads: position ``k`` of the result is token ``lengths[b] - 1 - k`` of the row.
    """
    T = tokens.shape[1]
    k = torch.arange(T, device=tokens.device)
    src = lengths[:, None] - 1 - k[None, :]  # (B, T)
    out = tokens.gather(1, src.clamp(min=0))
    return out.masked_fill(src < 0, fill)


class _Unembedding(nn.Module):
    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.backbone.unembed(hidden)


def frozen_unembed(backbone: Backbone, hidden: torch.Tensor) -> torch.Tensor:
    """``backbone.unembed(hidden)`` with the backbone's parameters frozen: gradient reaches ``hidden`` only."""
    backbone = getattr(backbone, "_orig_mod", backbone)  # a torch.compile view: its parameters are the module's
    wrapper = _Unembedding(backbone)
    frozen = {name: p.detach() for name, p in wrapper.named_parameters(remove_duplicate=False)}
    return torch.func.functional_call(wrapper, frozen, (hidden,), tie_weights=False)


def fed_back(target: torch.Tensor) -> torch.Tensor:
    """The answer tokens fed back as input, ``target[:, :-1]``; ignored positions (which come after a row's
    last answer token, so causal attention never lets them reach a scored position) become token 0."""
    return target[:, :-1].clamp(min=0)


def target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, l, V) logits against (B, l) targets over the scored (not ignored) tokens,
    in float32 whatever the autocast."""
    return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE_INDEX)


def teacher_forced_and_prefill(
    backbone: Backbone, prefix: torch.Tensor, fed: torch.Tensor, steps: int
) -> Optional[tuple[torch.Tensor, Any]]:
    """Both halves of an evaluation from one pass over ``prefix + fed``: the hidden states (B, 1 + F, D) from
    the ``=`` on, and a cache that holds exactly the prefix, for decoding ``steps`` tokens from.

    A cache that rewinds (GPT's KV cache) takes the whole input and is rewound to the prefix; one that can be
    copied (Mamba's recurrent state) takes the prefix, and a copy of it the fed-back answer. None where the
    cache can do neither: the objective then runs its forward pass and decoding separately.
    """
    B, P = prefix.shape
    cache = backbone.new_cache(B, P + max(fed.shape[1] + 1, steps) - 1)
    if backbone.rewind_cache(cache, 0):
        hidden = backbone(torch.cat([prefix, fed], dim=1), cache, output_from=P - 1)  # (B, 1 + F, D)
        backbone.rewind_cache(cache, P)
        return hidden, cache
    if backbone.fork_cache(cache) is None:
        return None
    hidden = backbone(prefix, cache, output_from=P - 1)  # (B, 1, D) at '='
    if fed.shape[1]:
        hidden = torch.cat([hidden, backbone(fed, backbone.fork_cache(cache))], dim=1)
    return hidden, cache
