"""The Belief State Transformer: a forward and a backward encoder, trained to predict the next and the previous
token of every (prefix, suffix) pair (Hu et al., ICLR 2025, arXiv 2410.23506; official code microsoft/BST).

Encoders. The forward encoder is the configured backbone, read left to right over the prefix and the answer.
The backward encoder is a second backbone of the same class and options (:meth:`Backbone.spawn`), reading the
answer right to left, and sharing the forward encoder's token embedding (Hu et al. §3). An end token of the
objective's own (``reserve``) closes every sequence; the backward state *at* it has read nothing else, so it is
the state of the empty suffix.

Pairs. On ``s = prefix + answer + [end]`` (0-based, the ``=`` at ``P-1``), the forward state ``F_i`` has read
``s[0..i]`` and the backward state ``B_j`` has read ``s[j..]``. Every pair with ``i >= P-1`` (the prefix itself is
never a prediction target, as in teacher forcing) and ``j - i >= min_gap`` trains the text head on
``[F_i; B_j]`` to predict the next token ``s[i+1]`` and the previous token ``s[j-1]``; both lie in the answer,
the end token is never a target, and ``min_gap >= 2`` keeps at least one unseen token between the two (the
official code's gap 1, with its end-token targets, is not offered). The loss is the mean of the two
cross-entropies, each a mean over all pairs of the batch. The backward encoder only ever reads answer tokens
after position ``P`` (``j >= i + 2 >= P + 1``), so it runs over ``l`` tokens, not the whole sequence.

Text head (as the official ``TextHead``): ``x = [F_i; B_j]``, ``x + W_down(silu(W_g x) * (W_u x))`` with a hidden
width of 8/3 of ``2D``, a LayerNorm, then the two halves of ``x`` read out by one output projection of its own:
the first half gives the next token, the second the previous one.

Efficiency (as the official code): both encoders run once per batch and every pair reads their states, so
``l (l + 1) / 2`` pairs cost head passes, not encoder passes. With ``pair_chunk`` set, pairs go through the head
that many at a time, each chunk under activation checkpointing, so the head's activations are held for one
chunk only; the encoders still get a single backward pass (the loss and gradients are those of the unchunked
computation). ``python -m nfl.bench --objectives`` measures a training step against teacher forcing.

Decoding (Hu et al. §3.2, the star graph): greedy, with the forward encoder on the prefix and the tokens
generated so far (its cache as in teacher forcing) and the backward state of the empty suffix: the next token is
the head's next-token output on ``[F_i; B_end]``. The same readout at the data's answer tokens is a true
teacher-forced pass, so the ``tf/*`` tags and ``{stage}/loss`` (its next-token cross-entropy) are logged.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from nfl.engine.decoding import continue_greedy, greedy_decode
from nfl.errors import UserInputError, at_least
from nfl.models.base import Backbone
from nfl.objectives.base import (
    Objective,
    ObjectiveOutput,
    Reservation,
    fed_back,
    reversed_rows,
    target_cross_entropy,
    teacher_forced_and_prefill,
)
from nfl.tasks.base import IGNORE_INDEX, GraphTask


class BeliefTextHead(nn.Module):
    """Reads a (forward, backward) pair of states (..., D) each into next- and previous-token logits (..., V)."""

    def __init__(self, d_model: int, vocab_size: int) -> None:
        super().__init__()
        width = 2 * d_model
        hidden = max(64, 64 * round(8 * width / 3 / 64))
        self.gate_up = nn.Linear(width, 2 * hidden)
        self.down = nn.Linear(hidden, width)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(d_model, vocab_size, bias=False)
        for linear in (self.gate_up, self.down, self.out):
            nn.init.normal_(linear.weight, mean=0.0, std=0.02)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def mixed(self, forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
        x = torch.cat([forward, backward], dim=-1)  # (..., 2D)
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.norm(x + self.down(F.silu(gate) * up))

    def forward(self, forward: torch.Tensor, backward: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nxt, prev = self.mixed(forward, backward).chunk(2, dim=-1)
        return self.out(nxt), self.out(prev)

    def next_logits(self, forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
        return self.out(self.mixed(forward, backward).chunk(2, dim=-1)[0])


def pair_grid(width: int, min_gap: int, device: Optional[torch.device] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (a, c) pair of an answer of ``width`` tokens: the forward state at ``i = P-1+a`` (it predicts answer
    token ``a``) and the backward state at ``j = P+c`` (it predicts answer token ``c-1``), with ``j - i >= min_gap``;
    ``c = width`` is the end token, the empty suffix. Rows with ``m < width`` answer tokens use the pairs with
    ``c <= m`` (their end token sits at ``c = m``)."""
    a = torch.arange(width, device=device)[:, None]
    c = torch.arange(1, width + 1, device=device)[None, :]
    keep = (c - a + 1 >= min_gap).expand(width, width)
    a, c = torch.broadcast_tensors(a, c)
    return a[keep], c[keep]


class BeliefState(Objective):
    """Belief State Transformer: next- and previous-token prediction from forward and backward states.

    Args:
        min_gap: smallest ``j - i`` of a trained pair (at least 2: one unseen token between the two states).
        pair_chunk: pairs per text-head chunk (each checkpointed); None puts every pair through at once.
        use_cache: decode with the forward encoder's cache; both give identical tokens.
    """

    def __init__(self, min_gap: int = 2, pair_chunk: Optional[int] = None, use_cache: bool = True) -> None:
        super().__init__()
        me = type(self)
        at_least(me, "min_gap", min_gap, 2, "a pair needs at least one unseen token between its two states")
        at_least(me, "pair_chunk", pair_chunk, 1, "null puts every pair through the head at once")
        self.min_gap, self.pair_chunk, self.use_cache = min_gap, pair_chunk, use_cache

    def reserve(self, task: GraphTask) -> Reservation:
        return Reservation(tokens=("end",))

    def bind(
        self, task: GraphTask, backbone: Backbone, dummy: Optional[int] = None, stop: Optional[int] = None
    ) -> None:
        super().bind(task, backbone, dummy, stop)
        at_least(type(self), "min_gap", self.min_gap, 2)
        if self.min_gap > task.target_len:
            raise UserInputError(
                f"BeliefState.min_gap={self.min_gap} leaves no pair on answers of {task.target_len} tokens; use at "
                f"most {task.target_len}."
            )
        if not hasattr(self, "backward_encoder"):
            try:
                self.backward_encoder = backbone.spawn().share_token_embedding(backbone)
            except NotImplementedError as err:
                raise UserInputError(
                    f"BeliefState needs a second {type(backbone).__name__} sharing its token embedding: {err}."
                ) from err
            self.head = BeliefTextHead(backbone.d_model, backbone.vocab_size)

    # --- training ------------------------------------------------------------------------------------
    def _suffixes(self, target: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """What the backward encoder reads: ``[end, a_{m-1}, ..., a_1]`` per row (B, l), filled after it."""
        B, L = target.shape
        rows = torch.arange(B, device=target.device)
        closed = torch.cat([target.clamp(min=0), target.new_zeros(B, 1)], dim=1)  # (B, L + 1)
        closed[rows, lengths] = self.token_ids["end"]
        return reversed_rows(closed, lengths + 1)[:, :L]

    def pair_losses(
        self, forward: torch.Tensor, backward: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean next- and previous-token cross-entropy over every valid pair of the batch.

        ``forward`` (B, l, D) holds ``F`` at ``P-1 .. P+l-2``; ``backward`` (B, l, D) holds ``B`` read from each
        row's end (index ``k`` is ``j = P + m - k``); ``lengths`` (B,) counts each row's answer tokens ``m``.
        """
        a, c = pair_grid(target.shape[1], self.min_gap, target.device)  # (n,)
        valid = c[None, :] <= lengths[:, None]  # (B, n)
        ignore = torch.full_like(valid, IGNORE_INDEX, dtype=target.dtype)
        next_t = target[:, a].where(valid, ignore)
        prev_t = target[:, c - 1].where(valid, ignore)
        k = (lengths[:, None] - c[None, :]).clamp(min=0)  # (B, n): the backward index of j = P + c
        counts = ((next_t != IGNORE_INDEX).sum(), (prev_t != IGNORE_INDEX).sum())
        chunk = self.pair_chunk or len(a)
        sums = []
        for s in range(0, len(a), chunk):
            args = (forward, backward, a[s : s + chunk], k[:, s : s + chunk], next_t[:, s : s + chunk],
                    prev_t[:, s : s + chunk])
            if self.pair_chunk is not None and torch.is_grad_enabled():
                sums.append(checkpoint(self._chunk_loss, *args, use_reentrant=False))
            else:
                sums.append(self._chunk_loss(*args))
        total = torch.stack([torch.stack(x) for x in sums]).sum(dim=0)  # (2,)
        return total[0] / counts[0].clamp(min=1), total[1] / counts[1].clamp(min=1)

    def _chunk_loss(self, forward, backward, a, k, next_t, prev_t) -> tuple[torch.Tensor, torch.Tensor]:
        f = forward[:, a]  # (B, n, D)
        b = backward.gather(1, k[:, :, None].expand(-1, -1, backward.shape[-1]))  # (B, n, D)
        nxt, prev = self.head(f, b)
        ce = lambda logits, t: F.cross_entropy(  # noqa: E731
            logits.flatten(0, 1).float(), t.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return ce(nxt, next_t), ce(prev, prev_t)

    def forward(self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor) -> ObjectiveOutput:
        """The training loss; ``logits`` are the teacher-forced next-token readout with the empty suffix."""
        P = prefix.shape[1]
        lengths = (target != IGNORE_INDEX).sum(dim=1)
        forward = backbone(torch.cat([prefix, fed_back(target)], dim=1), output_from=P - 1)  # (B, l, D)
        backward = self.backward_encoder(self._suffixes(target, lengths))  # (B, l, D)
        next_loss, prev_loss = self.pair_losses(forward, backward, target, lengths)
        with torch.no_grad():
            logits = self.head.next_logits(forward, self.empty_suffix().expand_as(forward))
        return ObjectiveOutput(
            (next_loss + prev_loss) / 2, logits, {"bst/next_loss": next_loss.detach(), "bst/prev_loss": prev_loss.detach()}
        )

    # --- inference -----------------------------------------------------------------------------------
    def empty_suffix(self) -> torch.Tensor:
        """The backward state (1, 1, D) that has read only the end token."""
        end = torch.full((1, 1), self.token_ids["end"], dtype=torch.long, device=self.head.out.weight.device)
        return self.backward_encoder(end)

    def readout(self, empty: torch.Tensor):
        return lambda hidden: self.head.next_logits(hidden, empty.reshape(-1).expand_as(hidden))

    @torch.no_grad()
    def decode(self, backbone: Backbone, prefix: torch.Tensor, steps: Optional[int] = None) -> torch.Tensor:
        readout = self.readout(self.empty_suffix())
        return greedy_decode(backbone, prefix, steps or self.task.target_len, self.use_cache, self.stop, readout)

    @torch.no_grad()
    def evaluate(
        self, backbone: Backbone, prefix: torch.Tensor, target: torch.Tensor, steps: int
    ) -> tuple[ObjectiveOutput, torch.Tensor]:
        """The forward half's teacher-forced pass, which doubles as the prefill of decoding."""
        readout = self.readout(self.empty_suffix())
        shared = teacher_forced_and_prefill(backbone, prefix, fed_back(target), steps) if self.use_cache else None
        if shared is None:
            P = prefix.shape[1]
            hidden = backbone(torch.cat([prefix, fed_back(target)], dim=1), output_from=P - 1)
            logits = readout(hidden)
            generated = greedy_decode(backbone, prefix, steps, self.use_cache, self.stop, readout)
        else:
            hidden, cache = shared
            logits = readout(hidden)  # (B, l, V)
            generated = continue_greedy(backbone, cache, logits[:, 0], steps, self.stop, readout)
        return ObjectiveOutput(target_cross_entropy(logits, target), logits), generated
