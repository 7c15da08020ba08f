"""Greedy decoding of a backbone: autoregressive with a cache (default) or by re-running the whole sequence.

:func:`speculative_greedy_decode` gives the same tokens in fewer forward passes when extra heads can draft
the next few tokens (self-speculative decoding, Stern et al. 2018 "blockwise parallel decoding"; Gloeckle
et al. 2024 §3.2 with multi-token heads).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from nfl.models.base import Backbone


def _stopped(out: torch.Tensor, t: int, stop: Optional[int]) -> bool:
    """Whether every row has emitted ``stop`` by step ``t``; if so, the rest of ``out`` is filled with it.

    Decoding answers that end with an end token stops once every row has ended; what a row would emit after
    its end token is never read, so the tokens are the same as decoding the whole budget, up to the end.
    """
    if stop is None or t + 1 == out.shape[1] or not bool((out[:, : t + 1] == stop).any(dim=1).all()):
        return False
    out[:, t + 1 :] = stop
    return True


Readout = Callable[[torch.Tensor], torch.Tensor]  # hidden states (..., D) -> logits (..., V)


@torch.no_grad()
def greedy_decode(
    backbone: Backbone,
    prefix: torch.Tensor,
    steps: int,
    use_cache: bool = True,
    stop: Optional[int] = None,
    readout: Optional[Readout] = None,
) -> torch.Tensor:
    """Append up to ``steps`` argmax tokens to ``prefix`` (B, P); returns only the new tokens (B, steps).

    The cached path runs the prefix once and then one token per step against the backbone's cache
    (KV cache for GPT, recurrent state for Mamba); ``use_cache=False`` is the plain reference. With ``stop``
    (an end token), decoding ends once every row has emitted it (see :func:`_stopped`). ``readout`` turns
    hidden states into logits (default the backbone's unembedding; the Belief State Transformer's text head).
    """
    B, P = prefix.shape
    readout = backbone.unembed if readout is None else readout
    if use_cache:
        cache = backbone.new_cache(B, P + steps - 1)
        hidden = backbone(prefix, cache, output_from=P - 1)  # (B, 1, D): only the last position is read
        return continue_greedy(backbone, cache, readout(hidden[:, -1]), steps, stop, readout)
    out = prefix.new_empty(B, steps)
    seq = prefix
    for t in range(steps):
        out[:, t] = readout(backbone(seq, output_from=seq.shape[1] - 1)[:, -1]).argmax(-1)
        if _stopped(out, t, stop):
            break
        seq = torch.cat([prefix, out[:, : t + 1]], dim=1)
    return out


@torch.no_grad()
def continue_greedy(
    backbone: Backbone,
    cache: Any,
    logits: torch.Tensor,
    steps: int,
    stop: Optional[int] = None,
    readout: Optional[Readout] = None,
) -> torch.Tensor:
    """Greedy tokens (B, steps) from a cache that holds the prefix and the logits (B, V) that follow it.

    Whatever filled the cache (a prefill, or a teacher-forced pass rewound to the prefix) is not repeated.
    """
    readout = backbone.unembed if readout is None else readout
    out = logits.new_empty(logits.shape[0], steps, dtype=torch.long)
    for t in range(steps):
        out[:, t] = logits.argmax(-1)
        if _stopped(out, t, stop):
            break
        if t + 1 < steps:
            logits = readout(backbone(out[:, t : t + 1], cache)[:, -1])  # (B, V)
    return out


@torch.no_grad()
def speculative_greedy_decode(
    backbone: Backbone,
    prefix: torch.Tensor,
    steps: int,
    drafters: Sequence[Callable[[torch.Tensor], torch.Tensor]],
) -> torch.Tensor:
    """The tokens of :func:`greedy_decode` (B, steps), in fewer forward passes where the drafts are right.

    ``drafters[i]`` maps the hidden state (B, D) at the last verified token to logits (B, V) for the token
    ``i + 2`` ahead (head 1, the unembedding, gives the next one). Each round: head 1 emits the next token,
    the drafters guess the ones after it, and one backbone pass over ``[next token, drafts]`` verifies them
    against head 1. The longest prefix of drafts that head 1 agrees with in every row is accepted (rows
    share one cache position, so the batch accepts its minimum), and head 1's output after the last
    accepted token is the next round's token. The cache is rewound past rejected drafts; a backbone whose
    cache cannot rewind gets plain :func:`greedy_decode`. Verifying a chunk rounds differently from one token
    a pass, so where two logits tie to ~1e-6 the argmax can differ, as between cached and uncached greedy.
    """
    B, P = prefix.shape
    cache = backbone.new_cache(B, P + steps - 1)
    if not drafters or not backbone.rewind_cache(cache, 0):
        return greedy_decode(backbone, prefix, steps)
    hidden = backbone(prefix, cache, output_from=P - 1)[:, -1]  # (B, D) at the last cached token
    return continue_speculative(backbone, cache, P, hidden, steps, drafters)


@torch.no_grad()
def continue_speculative(
    backbone: Backbone,
    cache: Any,
    pos: int,
    hidden: torch.Tensor,
    steps: int,
    drafters: Sequence[Callable[[torch.Tensor], torch.Tensor]],
) -> torch.Tensor:
    """:func:`speculative_greedy_decode` from a rewindable cache that holds the ``pos`` prefix tokens, given
    the hidden state (B, D) at the last of them; the cache must have room for ``steps - 1`` more tokens."""
    out = hidden.new_empty(hidden.shape[0], steps, dtype=torch.long)
    n = 0  # tokens emitted; pos counts the tokens in the cache
    while True:
        out[:, n] = backbone.unembed(hidden).argmax(-1)  # head 1: the greedy token, certain
        n += 1
        if n == steps:
            return out
        m = min(len(drafters), steps - n)  # drafts for out[:, n : n + m]
        drafts = torch.stack([d(hidden).argmax(-1) for d in drafters[:m]], dim=1)  # (B, m)
        # Feed the new token and the drafts; the last draft only when its successor is still wanted (the
        # cache and the learned positions end at P + steps - 1 tokens).
        chunk = torch.cat([out[:, n - 1 : n], drafts], dim=1)[:, : steps - n]  # (B, c)
        hiddens = backbone(chunk, cache)  # (B, c, D)
        verified = backbone.unembed(hiddens[:, :m]).argmax(-1)  # (B, m): head 1's token after each chunk token
        agree = (verified == drafts).long().cumprod(dim=1)  # (B, m): 1 while every draft so far is right
        accepted = int(agree.sum(dim=1).min())  # drafts right in every row
        out[:, n : n + accepted] = drafts[:, :accepted]
        n += accepted
        if n == steps:
            return out
        hidden = hiddens[:, accepted]  # (B, D) at the last accepted token
        pos += 1 + accepted
        backbone.rewind_cache(cache, pos)
