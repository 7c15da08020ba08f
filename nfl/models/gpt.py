"""GPT: a decoder-only Transformer backbone (pre-LayerNorm, learned positions, tied embeddings, SDPA).

References: Radford et al. 2019 (GPT-2); karpathy/nanoGPT for the layout. The reference size for the
path-star task (Bachmann & Nagarajan 2024) is 6 layers, width 384, 6 heads.

Unlike the reference code, the position embedding starts at N(0, 0.02) like every other weight: PyTorch's
N(0, 1) default makes positions ~50x louder than tokens and stalls small models at chance (a defect of the reference code).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nfl.errors import above, at_least, in_range, require
from nfl.models.base import Backbone


class KVCache:
    """Preallocated keys and values of every layer, filled left to right by :meth:`GPT.forward`."""

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int, like: torch.Tensor):
        shape = (batch_size, n_head, max_len, head_dim)
        self.k = [like.new_empty(shape) for _ in range(n_layer)]
        self.v = [like.new_empty(shape) for _ in range(n_layer)]
        self.pos = 0  # tokens already cached
        self.max_len = max_len

    def rewind(self, pos: int) -> None:
        """Forget the tokens from ``pos`` on; their entries are simply overwritten by the next ones."""
        if not 0 <= pos <= self.pos:
            raise ValueError(f"KVCache: cannot rewind to {pos}, {self.pos} tokens are cached.")
        self.pos = pos


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        cache: Optional[KVCache] = None,
        layer: int = 0,
        q_from: int = 0,
        causal: bool = True,
        allowed: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Attention output for positions ``q_from..T-1`` of ``x`` (B, T, D); keys and values come from all of them.

        ``causal=False`` lets every query read every key; ``allowed`` (bool (T, T) or (B, T, T), True where a
        query may read a key) restricts either mode further (no cache then).
        """
        B, T, C = x.shape
        Tq, hd = T - q_from, C // self.n_head
        if q_from:  # queries only where outputs are wanted: saves a third of this projection
            q = F.linear(x[:, q_from:], self.qkv.weight[:C], None if self.qkv.bias is None else self.qkv.bias[:C])
            k, v = F.linear(x, self.qkv.weight[C:], None if self.qkv.bias is None else self.qkv.bias[C:]).split(C, 2)
        else:
            q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, Tq, self.n_head, hd).transpose(1, 2)  # (B, H, Tq, hd)
        k, v = (t.view(B, T, self.n_head, hd).transpose(1, 2) for t in (k, v))  # (B, H, T, hd)
        past = 0
        if cache is not None:
            past = cache.pos
            cache.k[layer][:, :, past : past + T] = k
            cache.v[layer][:, :, past : past + T] = v
            k, v = cache.k[layer][:, :, : past + T], cache.v[layer][:, :, : past + T]  # (B, H, past+T, hd)
        # Query i sits at absolute position offset + i and sees keys 0..offset + i.
        offset, mask = past + q_from, None
        if allowed is not None:
            mask = allowed[..., q_from:, :]  # (Tq, T) or (B, Tq, T)
            if causal:
                mask = mask & torch.ones(Tq, T, dtype=torch.bool, device=x.device).tril(diagonal=offset)
            if mask.dim() == 3:
                mask = mask[:, None]  # (B, 1, Tq, T): the same for every head
        elif causal and offset and Tq > 1:
            mask = torch.ones(Tq, past + T, dtype=torch.bool, device=x.device).tril(diagonal=offset)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal and offset == 0 and mask is None,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.proj(y.transpose(1, 2).reshape(B, Tq, C))  # (B, Tq, D)


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = CausalSelfAttention(d_model, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(d_model, bias=bias)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model, bias=bias),
            nn.GELU(),
            nn.Linear(4 * d_model, d_model, bias=bias),
            nn.Dropout(dropout),
        )

    def forward(
        self,
        x: torch.Tensor,
        cache: Optional[KVCache] = None,
        layer: int = 0,
        q_from: int = 0,
        causal: bool = True,
        allowed: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        x = x[:, q_from:] + self.attn(self.ln_1(x), cache, layer, q_from, causal, allowed)  # (B, T - q_from, D)
        return x + self.mlp(self.ln_2(x))


class GPT(Backbone):
    """Decoder-only Transformer; also bidirectional (``attention="bidirectional"``) for objectives that need it.

    Args:
        vocab_size: token ids are ``0..vocab_size-1`` (linked from the data).
        max_seq_len: longest input, i.e. the number of learned positions (linked from the data).
        n_layer: Transformer blocks.
        d_model: residual width.
        n_head: attention heads (must divide ``d_model``).
        dropout: dropout on attention weights, MLP output and embeddings.
        bias: biases in linear layers and LayerNorms.
        pos_init_std: standard deviation of the position embeddings at initialisation (GPT-2 and nanoGPT: 0.02;
            the reference code of Bachmann & Nagarajan leaves PyTorch's N(0, 1)).
    """

    attention_modes = ("causal", "bidirectional")
    supports_attention_mask = True
    supports_position_ids = True

    def __init__(
        self,
        vocab_size: int,
        max_seq_len: int,
        n_layer: int = 6,
        d_model: int = 384,
        n_head: int = 6,
        dropout: float = 0.0,
        bias: bool = True,
        pos_init_std: float = 0.02,
    ) -> None:
        super().__init__()
        me = type(self)
        at_least(me, "n_layer", n_layer, 0)
        at_least(me, "d_model", d_model, 1)
        at_least(me, "n_head", n_head, 1)
        divisors = [h for h in range(1, min(d_model, 64) + 1) if d_model % h == 0]
        require(
            d_model % n_head == 0, me, "n_head", n_head,
            f"must divide d_model={d_model} (each head gets d_model / n_head channels); use one of {divisors}, or "
            "change d_model",
        )
        in_range(me, "dropout", dropout, 0.0, 1.0, high_open=True)
        above(me, "pos_init_std", pos_init_std, 0.0, "the position embeddings' initial scale, e.g. 0.02 (or 1.0 as "
              "the reference code)")
        self.vocab_size, self.max_seq_len, self.d_model = vocab_size, max_seq_len, d_model
        self.n_layer, self.n_head = n_layer, n_head
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(max_seq_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_head, dropout, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model, bias=bias)
        # The position embeddings take the same draws at their own scale, so every other weight is the same
        # whatever pos_init_std is (and all are as before the option at its default).
        self.apply(lambda m: nn.init.normal_(m.weight, 0.0, pos_init_std) if m is self.pos_emb
                   else self._init_weights(m))
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self,
        idx: torch.Tensor,
        cache: Optional[KVCache] = None,
        output_from: int = 0,
        *,
        attention: str = "causal",
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        B, T = idx.shape
        start = 0 if cache is None else cache.pos
        if start + T > self.max_seq_len:
            raise ValueError(f"GPT: sequence of {start + T} tokens exceeds max_seq_len={self.max_seq_len}.")
        if attention not in self.attention_modes:
            raise ValueError(f"GPT: attention must be one of {self.attention_modes}, not {attention!r}.")
        if cache is not None and (attention != "causal" or attention_mask is not None):
            raise ValueError("GPT: a cache decodes left to right; bidirectional attention and masks need cache=None.")
        if position_ids is None:
            pos = torch.arange(start, start + T, device=idx.device)
        else:
            pos = position_ids
            if bool((pos < 0).any()) or bool((pos >= self.max_seq_len).any()):
                raise ValueError(f"GPT: position ids must lie in 0..{self.max_seq_len - 1} (max_seq_len).")
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, D)
        causal = attention == "causal"
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):  # only the last block can skip positions nobody reads
            x = block(x, cache, i, output_from if i == last else 0, causal, attention_mask)
        if cache is not None:
            cache.pos += T
        if not self.blocks:
            x = x[:, output_from:]
        return self.ln_f(x)  # (B, T - output_from, D)

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.tok_emb.weight)  # tied: (..., V)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.tok_emb

    def share_token_embedding(self, source: Backbone) -> "GPT":
        self.tok_emb = source.token_embedding  # the unembedding is tied to it, so that is shared too
        return self

    def rewind_cache(self, cache: KVCache, pos: int) -> bool:
        cache.rewind(pos)
        return True

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        ref = self.tok_emb.weight
        if torch.is_autocast_enabled(ref.device.type):
            ref = ref.to(torch.get_autocast_dtype(ref.device.type))
        return KVCache(self.n_layer, batch_size, self.n_head, max_len, self.d_model // self.n_head, ref)
