"""Greedy decoding of a backbone: autoregressive with a cache (default) or by re-running the whole sequence."""

from __future__ import annotations

import torch

from nfl.models.base import Backbone


@torch.no_grad()
def greedy_decode(backbone: Backbone, prefix: torch.Tensor, steps: int, use_cache: bool = True) -> torch.Tensor:
    """Append ``steps`` argmax tokens to ``prefix`` (B, P); returns only the new tokens (B, steps).

    The cached path runs the prefix once and then one token per step against the backbone's cache
    (KV cache for GPT, recurrent state for Mamba); ``use_cache=False`` is the plain reference.
    """
    B, P = prefix.shape
    out = prefix.new_empty(B, steps)
    if use_cache:
        cache = backbone.new_cache(B, P + steps - 1)
        hidden = backbone(prefix, cache, output_from=P - 1)  # (B, 1, D): only the last position is read
        for t in range(steps):
            out[:, t] = backbone.unembed(hidden[:, -1]).argmax(-1)
            if t + 1 < steps:
                hidden = backbone(out[:, t : t + 1], cache)  # (B, 1, D)
        return out
    seq = prefix
    for t in range(steps):
        out[:, t] = backbone.unembed(backbone(seq, output_from=seq.shape[1] - 1)[:, -1]).argmax(-1)
        seq = torch.cat([prefix, out[:, : t + 1]], dim=1)
    return out
