"""The backbone contract: token ids in, hidden states out, plus the (tied) unembedding.

A backbone never sees targets, dummy tokens, losses or extra heads; objectives own all of that. Each backbone
is built as ``Backbone(vocab_size, max_seq_len, **its_own_options)``: the first two arguments come from the
data (linked by the CLI), the rest from the YAML.

Incremental decoding goes through a backbone-specific cache: ``cache = backbone.new_cache(B, max_len)``, then
``backbone(idx, cache)`` consumes ``idx`` as the tokens that follow everything already in the cache, and
updates the cache in place. ``backbone.rewind_cache(cache, pos)`` forgets every token from index ``pos`` on
(speculative decoding drops rejected drafts this way); a backbone whose cache cannot rewind returns False.
``backbone.fork_cache(cache)`` returns an independent copy (None where unsupported): evaluation teacher-forces
the answer on a copy of the prefix's cache and decodes from the original when the cache cannot rewind.

``backbone.codec(task)`` says which tokens the backbone reads: nfl's own backbones read the reference numeral
tokens (:class:`~nfl.tasks.codec.NumeralCodec`); a pretrained model reads its tokenizer's
(:class:`~nfl.tasks.codec.TextCodec`).

``backbone(idx, output_from=k)`` returns hidden states for positions ``k..T-1`` of ``idx`` only: objectives need
outputs at the answer positions, and decoding needs the last one. Earlier positions still condition them; a
backbone may skip work it does not need for them (GPT skips the last layer's queries and MLP), or compute
everything and slice.

Beyond the plain causal call (which every backbone supports and whose behaviour never changes), objectives
that are not left-to-right next-token predictors may ask for more; a backbone that cannot do it raises
:class:`~nfl.errors.UserInputError` naming what it lacks, and an objective checks up front with
:meth:`Backbone.require`:

- ``attention="bidirectional"`` (every position attends to every other; masked diffusion), where the class
  lists it in ``attention_modes``;
- ``attention_mask``: a bool (T, T) or (B, T, T) tensor, True where query ``i`` may read key ``j``, combined
  (and) with the mode's own mask (registers, which no later token may read), where ``supports_attention_mask``;
- ``position_ids``: (T,) or (B, T) positions replacing ``0..T-1`` (registers share their target's position),
  where ``supports_position_ids``.

A second encoder of the same class and size (the Belief State Transformer's backward encoder) comes from
``backbone.spawn()``, freshly initialised from the same options; ``spawn().share_token_embedding(backbone)``
makes it read the same token embedding, which ``backbone.token_embedding`` exposes. Reading right to left is
feeding it reversed rows (:func:`nfl.objectives.base.reversed_rows`).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from nfl.errors import UserInputError
from nfl.tasks.base import GraphTask
from nfl.tasks.codec import NumeralCodec

ATTENTION_MODES = ("causal", "bidirectional")


class Backbone(nn.Module):
    """Base class of every sequence model nfl trains."""

    vocab_size: int
    max_seq_len: int
    d_model: int
    attention_modes: tuple[str, ...] = ("causal",)  # the ``attention`` values forward accepts
    supports_attention_mask: bool = False
    supports_position_ids: bool = False

    def __new__(cls, *args: Any, **kwargs: Any) -> "Backbone":
        # The constructor's arguments, so that spawn() can build another backbone from the same options.
        obj = super().__new__(cls)
        object.__setattr__(obj, "_init_args", (args, kwargs))
        return obj

    def forward(
        self,
        idx: torch.Tensor,
        cache: Optional[Any] = None,
        output_from: int = 0,
        *,
        attention: str = "causal",
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """(B, T) token ids -> (B, T - output_from, D) hidden states."""
        raise NotImplementedError

    def require(
        self, who: str, attention: str = "causal", attention_mask: bool = False, position_ids: bool = False
    ) -> None:
        """Refuse, in one line naming ``who`` needs it, a call this backbone cannot make."""
        name = type(self).__name__
        lacks = []
        if attention not in self.attention_modes:
            lacks.append(f"{attention} attention (it has {', '.join(self.attention_modes)} only)")
        if attention_mask and not self.supports_attention_mask:
            lacks.append("an attention mask")
        if position_ids and not self.supports_position_ids:
            lacks.append("position ids")
        if lacks:
            raise UserInputError(
                f"{who} needs {' and '.join(lacks)}, which {name} does not offer; use nfl.models.GPT, which has "
                "every attention mode, masks and position ids."
            )

    def _plain_call_only(
        self, attention: str, attention_mask: Optional[torch.Tensor], position_ids: Optional[torch.Tensor]
    ) -> None:
        """For backbones that offer only the plain causal call: refuse anything else in one line."""
        self.require(
            "this call", attention, attention_mask is not None, position_ids is not None
        )

    @property
    def token_embedding(self) -> nn.Embedding:
        """The input token embedding (tied to the unembedding in nfl's own backbones)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its token embedding")

    def share_token_embedding(self, source: "Backbone") -> "Backbone":
        """Read ``source``'s token embedding (the same parameters, trained by both); returns self."""
        raise NotImplementedError(f"{type(self).__name__} cannot share a token embedding")

    def spawn(self) -> "Backbone":
        """A new backbone of this class built from the same options (vocabulary, length, size), freshly
        initialised: a second encoder that matches this one."""
        args, kwargs = self._init_args
        return type(self)(*args, **kwargs)

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., V)
        raise NotImplementedError

    def activation_bytes(self, batch_size: int, seq_len: int, value_bytes: int) -> int:
        """Activations one training step keeps for backward, for the pre-flight size check (:mod:`nfl.run.preflight`).

        The default is a Transformer's (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
        Transformer Models", eq. 1): ``s b h (34 + 5 a s / h)`` bytes a layer at 2 bytes a value, scaled to
        ``value_bytes``; it counts the ``a s^2`` attention scores as stored, an upper bound where attention
        runs fused. ``n_layer`` and ``n_head`` are read from the backbone (1 where it has none).
        """
        s, b, h = seq_len, batch_size, self.d_model
        a, layers = getattr(self, "n_head", 1), getattr(self, "n_layer", 1)
        return int(layers * s * b * h * (34 + 5 * a * s / h) * value_bytes / 2)

    def codec(self, task: GraphTask) -> NumeralCodec:
        """Translation between the task's numeral batches and this backbone's tokens (default: none needed)."""
        return NumeralCodec(task)

    def new_cache(self, batch_size: int, max_len: int) -> Any:
        """State for incremental decoding of up to ``max_len`` tokens in total."""
        raise NotImplementedError

    def rewind_cache(self, cache: Any, pos: int) -> bool:
        """Keep only the first ``pos`` cached tokens, so decoding resumes after them; returns whether it could.

        The default is False: a cache that cannot rewind (e.g. a recurrent state, which has no per-token
        entries) leaves this as is, and speculative decoding falls back to plain greedy decoding.
        """
        return False

    def fork_cache(self, cache: Any) -> Optional[Any]:
        """An independent copy of ``cache``, or None (the default) where copying is not supported.

        Worth offering where the cache cannot rewind but is cheap to copy (a recurrent state).
        """
        return None
