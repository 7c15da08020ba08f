"""Mamba: a selective state-space backbone; pure-PyTorch scan on CPU, the ``mamba-ssm`` kernel on CUDA.

References: Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (arXiv
2312.00752); state-spaces/mamba (``mamba_ssm.modules.mamba_simple.Mamba`` and ``MixerModel``) for parameter
names, shapes and initialisation, so that a state dict moves between the CPU and the CUDA path;
johnma2006/mamba-minimal and alxndrTL/mamba.py for readable pure-PyTorch layouts.

Glossary (paper symbols): D = ``d_model`` the residual width; E = ``expand * d_model`` the width inside a
block; N = ``d_state`` the state size per channel; R = ``dt_rank`` the rank of the projection giving the
step size Δ; ``A = -exp(A_log)`` (E, N) the diagonal state matrix; ``D`` (E,) the skip; ``d_conv`` the width
of the causal depthwise convolution. A block is ``x + mixer(norm(x))``; after the last, ``norm_f``.

Decoding keeps, per layer, the last ``d_conv - 1`` conv inputs and the (E, N) state: constant memory per
token, however long the sequence (:class:`MambaCache`).
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Callable, Literal, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from nfl.errors import above, at_least, require
from nfl.models.base import Backbone
from nfl.models.selective_scan import selective_scan, selective_scan_ref

Kernels = Literal["auto", "cuda", "torch"]
ScanChoice = Literal["stepwise", "sequential", "doubling", "reference"]
MAMBA_EXTRA = "pip install nfl[mamba]"


@functools.lru_cache(maxsize=None)
def _cuda_selective_scan() -> Optional[Callable]:
    """``mamba_ssm``'s fused selective-scan kernel, or None when the package (or its CUDA build) is missing."""
    try:  # imported here, never at module import: it pulls in Triton and needs a CUDA build
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def require_cuda_kernels() -> Callable:
    fn = _cuda_selective_scan()
    if fn is None:
        raise ImportError(f"Mamba(kernels='cuda') needs the mamba-ssm CUDA kernels: {MAMBA_EXTRA}")
    return fn


class MambaCache:
    """Recurrent state of every layer: the last ``d_conv - 1`` conv inputs and the SSM state h."""

    def __init__(self, n_layer: int, batch_size: int, d_inner: int, d_conv: int, d_state: int, like: torch.Tensor):
        self.conv = [like.new_zeros(batch_size, d_inner, d_conv - 1) for _ in range(n_layer)]  # (B, E, K-1)
        self.ssm = [like.new_zeros(batch_size, d_inner, d_state, dtype=torch.float32) for _ in range(n_layer)]
        self.pos = 0  # tokens consumed so far (informational: the state does not grow)


class MambaMixer(nn.Module):
    """The selective SSM block of the paper (Figure 3), named and initialised as ``mamba_ssm``'s ``Mamba``."""

    def __init__(
        self, d_model: int, d_state: int, d_conv: int, expand: int, dt_rank: int, dt_min: float, dt_max: float,
        dt_init_floor: float, conv_bias: bool, bias: bool,
    ) -> None:
        super().__init__()
        E = self.d_inner = expand * d_model
        self.d_state, self.d_conv, self.dt_rank = d_state, d_conv, dt_rank
        self.in_proj = nn.Linear(d_model, 2 * E, bias=bias)  # x and the gate z
        self.conv1d = nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(E, dt_rank + 2 * d_state, bias=False)  # Δ (low rank), B, C
        self.dt_proj = nn.Linear(dt_rank, E, bias=True)
        self.out_proj = nn.Linear(E, d_model, bias=bias)
        # Δ = softplus(dt_proj(.)) starts log-uniform in [dt_min, dt_max]: bias = softplus^-1(dt).
        nn.init.uniform_(self.dt_proj.weight, -(dt_rank**-0.5), dt_rank**-0.5)
        log_dt = torch.rand(E) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True
        # S4D-real initialisation A_n = -(n + 1), stored as its log so that A stays negative.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(E, 1))  # (E, N)
        self.D = nn.Parameter(torch.ones(E))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def forward(
        self, hidden: torch.Tensor, kernels: Kernels, scan: ScanChoice,
        cache: Optional[MambaCache] = None, layer: int = 0,
    ) -> torch.Tensor:
        T = hidden.shape[1]
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (B, T, E) each
        x = x.transpose(1, 2)  # (B, E, T)
        if cache is None:
            x = self.conv1d(x)[..., :T]  # left padding d_conv-1 makes it causal
        else:  # continue from the cached inputs instead of zero padding
            x = torch.cat([cache.conv[layer].to(x.dtype), x], dim=-1)  # (B, E, K-1+T)
            cache.conv[layer] = x[..., x.shape[-1] - (self.d_conv - 1) :].clone()
            x = F.conv1d(x, self.conv1d.weight, self.conv1d.bias, groups=self.d_inner)  # (B, E, T)
        x = F.silu(x).transpose(1, 2)  # (B, T, E)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, T, E); the bias goes inside the softplus below
        A = -torch.exp(self.A_log.float())  # (E, N)
        # The kernel takes no initial state, so decoding (a cache) always runs the PyTorch recurrence.
        if cache is None and _use_cuda_kernels(kernels, x):
            y = _cuda_selective_scan()(
                x.transpose(1, 2).contiguous(), dt.transpose(1, 2).contiguous(), A,
                B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(), self.D.float(),
                z=z.transpose(1, 2).contiguous(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            ).transpose(1, 2)  # (B, T, E)
        else:  # float32 inside, whatever the autocast, as in the kernel
            x, z = x.float(), z.float()
            dt = F.softplus(dt.float() + self.dt_proj.bias.float())
            h0 = None if cache is None else cache.ssm[layer]
            if scan == "reference":
                y, h = selective_scan_ref(x, dt, A, B.float(), C.float(), h0)
            else:
                y, h = selective_scan(x, dt, A, B.float(), C.float(), h0, scan)  # (B, T, E), (B, E, N)
            if cache is not None:
                cache.ssm[layer] = h.detach()
            y = (y + x * self.D) * F.silu(z)
        return self.out_proj(y.to(hidden.dtype))


def _use_cuda_kernels(kernels: Kernels, x: torch.Tensor) -> bool:
    if kernels == "torch":
        return False
    if kernels == "cuda":
        if not x.is_cuda:
            raise ValueError("Mamba(kernels='cuda') runs only on CUDA tensors; use kernels='auto' or 'torch' on CPU.")
        require_cuda_kernels()
        return True
    return x.is_cuda and _cuda_selective_scan() is not None


class Block(nn.Module):
    def __init__(self, d_model: int, mixer: MambaMixer):
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.mixer = mixer

    def forward(
        self, x: torch.Tensor, kernels: Kernels, scan: ScanChoice, cache: Optional[MambaCache], layer: int
    ) -> torch.Tensor:
        return x + self.mixer(self.norm(x), kernels, scan, cache, layer)  # pre-norm residual


class Mamba(Backbone):
    """Mamba language model trunk: embedding, residual Mamba blocks with RMSNorm, final norm, tied unembedding.

    Args:
        vocab_size: token ids are ``0..vocab_size-1`` (linked from the data).
        max_seq_len: longest input (linked from the data); Mamba has no positions, so it is only recorded.
        n_layer: Mamba blocks (two per Transformer block is the paper's like-for-like size).
        d_model: residual width D.
        d_state: SSM state size N per channel.
        d_conv: width of the causal depthwise convolution.
        expand: inner width E = expand * d_model.
        dt_rank: rank R of the projection producing the step size Δ; "auto" is ceil(d_model / 16).
        dt_min: smallest initial step size Δ.
        dt_max: largest initial step size Δ.
        dt_init_floor: lower clamp of the initial Δ.
        conv_bias: bias in the depthwise convolution.
        bias: biases in the input and output projections.
        kernels: "auto" uses the mamba-ssm CUDA kernel when the tensors are on CUDA and the package imports,
            else the pure-PyTorch scan; "cuda" requires the kernel (``pip install nfl[mamba]``); "torch"
            never uses it.
        scan: the pure-PyTorch scan: "stepwise" (default, fastest measured on CPU, see
            benchmarks/mamba_scan.py), "sequential", "doubling", or "reference" (the autograd step loop).
    """

    def __init__(
        self,
        vocab_size: int,
        max_seq_len: int,
        n_layer: int = 12,
        d_model: int = 384,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: Union[int, Literal["auto"]] = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        kernels: Kernels = "auto",
        scan: ScanChoice = "stepwise",
    ) -> None:
        super().__init__()
        me = type(self)
        at_least(me, "n_layer", n_layer, 0)
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand)):
            at_least(me, name, value, 1)
        require(
            dt_rank == "auto" or dt_rank >= 1, me, "dt_rank", dt_rank, 'must be >= 1 or "auto" (ceil(d_model / 16))'
        )
        above(me, "dt_min", dt_min, 0.0, "the smallest initial step size, e.g. 0.001")
        at_least(me, "dt_max", dt_max, dt_min, f"the largest initial step size, at least dt_min={dt_min}")
        above(me, "dt_init_floor", dt_init_floor, 0.0, "e.g. 1e-4")
        require(  # fail at construction, not at the first batch
            kernels != "cuda" or _cuda_selective_scan() is not None, me, "kernels", kernels,
            f"needs the mamba-ssm CUDA kernels ({MAMBA_EXTRA}); use kernels: auto or torch without them",
        )
        self.vocab_size, self.max_seq_len, self.d_model = vocab_size, max_seq_len, d_model
        self.n_layer, self.kernels, self.scan = n_layer, kernels, scan
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(
            Block(d_model, MambaMixer(d_model, d_state, d_conv, expand, self.dt_rank, dt_min, dt_max, dt_init_floor,
                                      conv_bias, bias))
            for _ in range(n_layer)
        )
        self.norm_f = nn.RMSNorm(d_model, eps=1e-5)
        self._init_weights()

    def activation_bytes(self, batch_size: int, seq_len: int, value_bytes: int) -> int:
        """Activations one training step keeps (:mod:`nfl.run.preflight`): per layer and token the scan's float32
        states h_t (``d_inner x d_state``, what the stepwise scan stores for its backward), about 16 values of
        width ``d_inner`` (projections, convolution, gate, step sizes) and 4 of width ``d_model``."""
        mixer = self.layers[0].mixer if len(self.layers) else None
        if mixer is None:
            return 0
        E, N = mixer.d_inner, mixer.d_state
        per_token = E * N * 4 + (16 * E + 4 * self.d_model) * value_bytes
        return int(self.n_layer * batch_size * seq_len * per_token)

    def _init_weights(self) -> None:
        """As ``mamba_ssm``'s ``_init_weights``: N(0, 0.02) embedding, zero biases (except Δ's), and the
        residual output projections rescaled by 1/sqrt(n_layer) (GPT-2's prenorm-residual scheme)."""
        nn.init.normal_(self.embedding.weight, std=0.02)
        for module in self.modules():
            bias = getattr(module, "bias", None) if isinstance(module, nn.Linear) else None
            if bias is not None and not getattr(bias, "_no_reinit", False):
                nn.init.zeros_(bias)
        for block in self.layers:
            nn.init.kaiming_uniform_(block.mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                block.mixer.out_proj.weight /= math.sqrt(self.n_layer)

    def forward(
        self,
        idx: torch.Tensor,
        cache: Optional[MambaCache] = None,
        output_from: int = 0,
        *,
        attention: str = "causal",
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        self._plain_call_only(attention, attention_mask, position_ids)  # a recurrence reads left to right only
        x = self.embedding(idx)  # (B, T, D)
        for i, block in enumerate(self.layers):
            x = block(x, self.kernels, self.scan, cache, i)
        if cache is not None:
            cache.pos += idx.shape[1]
        # The recurrence needs every position; only the final norm can skip the ones nobody reads.
        return self.norm_f(x[:, output_from:])  # (B, T - output_from, D)

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.embedding.weight)  # tied: (..., V)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.embedding

    def share_token_embedding(self, source: Backbone) -> "Mamba":
        self.embedding = source.token_embedding  # tied to the unembedding, so that is shared too
        return self

    def fork_cache(self, cache: MambaCache) -> MambaCache:
        """A copy of the recurrent state: (d_conv - 1 + d_state) * d_inner numbers a row and layer."""
        fork = copy.copy(cache)
        fork.conv, fork.ssm = [t.clone() for t in cache.conv], [t.clone() for t in cache.ssm]
        return fork

    def new_cache(self, batch_size: int, max_len: int) -> MambaCache:
        """Recurrent state for decoding; its size does not depend on ``max_len``."""
        ref = self.embedding.weight
        if torch.is_autocast_enabled(ref.device.type):
            ref = ref.to(torch.get_autocast_dtype(ref.device.type))
        m = self.layers[0].mixer
        return MambaCache(self.n_layer, batch_size, m.d_inner, m.d_conv, m.d_state, ref)
