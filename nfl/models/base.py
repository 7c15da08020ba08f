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
tokens (:class:`~nfl.data.codec.NumeralCodec`); a pretrained model reads its tokenizer's
(:class:`~nfl.data.codec.TextCodec`).

``backbone(idx, output_from=k)`` returns hidden states for positions ``k..T-1`` of ``idx`` only: objectives need
outputs at the answer positions, and decoding needs the last one. Earlier positions still condition them; a
backbone may skip work it does not need for them (GPT skips the last layer's queries and MLP), or compute
everything and slice.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from nfl.data.codec import NumeralCodec
from nfl.tasks.base import GraphTask


class Backbone(nn.Module):
    """Base class of every sequence model nfl trains."""

    vocab_size: int
    max_seq_len: int
    d_model: int

    def forward(self, idx: torch.Tensor, cache: Optional[Any] = None, output_from: int = 0) -> torch.Tensor:
        """(B, T) token ids -> (B, T - output_from, D) hidden states."""
        raise NotImplementedError

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., V)
        raise NotImplementedError

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
