"""A small causal pre-norm Transformer block that an objective owns (sequential multi-token modules).

It works on hidden states, not tokens, so it runs beside any backbone: RMSNorm, causal multi-head
self-attention through ``scaled_dot_product_attention``, RMSNorm, a 4x GELU MLP, each with a residual. It
has no position encoding of its own: the states it reads come from a backbone that has one, and causal
attention orders them. GPT-2 initialisation (N(0, 0.02), zero biases).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalBlock(nn.Module):
    """(B, T, D) -> (B, T, D): ``x + attn(norm(x))``, then ``x + mlp(norm(x))``, position ``t`` reading ``<= t``."""

    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.norm_attn = nn.RMSNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm_mlp = nn.RMSNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm_attn(x)).split(D, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, D)
        x = x + self.proj(att)
        return x + self.mlp(self.norm_mlp(x))
