"""HFCausalLM: a pretrained Hugging Face causal LM (GPT-2, Pythia, ...) as an nfl backbone, with its own tokenizer.

The paper also fine-tunes pretrained GPT-2 and Pythia models (Bachmann & Nagarajan 2024, §4). Such a model
reads its own tokenizer's tokens, not nfl's numeral ones: :meth:`HFCausalLM.codec` gives the system a
:class:`~nfl.data.codec.TextCodec` that writes each batch out in the reference text format, tokenises it, and
parses generated text back to path nodes, so every objective and metric works unchanged.

Left padding. The codec aligns rows at ``=`` by left-padding prefixes with ``pad_id``. This module masks a
leading run of ``pad_id`` from attention and counts positions from each row's first real token, so a row's
hidden states do not depend on what it was batched with. Nothing downloads at import time:
``transformers`` (the ``hf`` extra) is imported when a model is built.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch

from nfl.data.codec import TextCodec
from nfl.tasks.base import GraphTask
from nfl.errors import UserInputError
from nfl.models.base import Backbone

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise UserInputError(
            "nfl.models.HFCausalLM needs the transformers package: pip install 'nfl[hf]' (or transformers)."
        ) from err
    return transformers


@dataclass
class HFCache:
    """Incremental-decoding state: the model's own KV cache plus the attention mask of everything in it."""

    kv: Any  # transformers.DynamicCache
    mask: Optional[torch.Tensor] = None  # (B, T) 1 for real tokens, 0 for left padding


class HFCausalLM(Backbone):
    """A pretrained causal LM from the hub or a local folder, fine-tuned on the path-star task.

    Args:
        vocab_size, max_seq_len: linked from the data for nfl's own backbones; unused here (the model and
            its tokenizer bring their own).
        model: a hub name (``gpt2``, ``EleutherAI/pythia-410m``; downloaded on first use) or a local folder
            written by ``save_pretrained``.
        tokenizer: where to load the tokenizer from; default the same as ``model``.
        dummy_token: the teacherless dummy, a string the tokenizer encodes as one token (the reference code
            uses ``$``).
        dtype: weights' dtype. ``bfloat16`` halves the weights' memory (pair it with ``trainer.precision:
            bf16-true``), but AdamW then updates bf16 weights with no float32 copy, and a step smaller than bf16's
            resolution (about 1/256 of a weight) is lost: at lr 1e-4 most updates vanish. Use it for evaluation,
            or for training only with care; float32 weights with ``bf16-mixed`` train as expected.
        gradient_checkpointing: recompute activations in the backward pass to save memory.
        revision: a hub branch, tag or commit to pin.
    """

    def __init__(
        self,
        vocab_size: int,
        max_seq_len: int,
        model: str,
        tokenizer: Optional[str] = None,
        dummy_token: str = "$",
        dtype: Literal["float32", "bfloat16"] = "float32",
        gradient_checkpointing: bool = False,
        revision: Optional[str] = None,
    ) -> None:
        super().__init__()
        transformers = _transformers()
        source = tokenizer or model
        for where in {model, source}:
            if where.startswith(("/", ".", "~")) and not os.path.isdir(os.path.expanduser(where)):
                raise UserInputError(
                    f"There is no folder {where!r}. Give a folder written by save_pretrained, or a hub name."
                )
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(source, revision=revision)
        except (OSError, ValueError) as err:
            raise UserInputError(f"Could not load a tokenizer from {source!r}: {err}") from err
        try:
            self.lm = transformers.AutoModelForCausalLM.from_pretrained(model, revision=revision, dtype=_DTYPES[dtype])
        except (OSError, ValueError) as err:
            raise UserInputError(
                f"Could not load a causal LM from {model!r}: {err}. Give a hub name (downloaded on first use) or "
                "a folder written by save_pretrained."
            ) from err
        if dtype == "bfloat16":
            log.warning(
                "HFCausalLM: bfloat16 weights are updated without a float32 copy; AdamW steps below bf16's "
                "resolution are lost. Prefer dtype float32 with trainer.precision bf16-mixed for training."
            )
        self.lm.train()  # from_pretrained leaves it in eval mode; Lightning switches modes per stage from here
        if gradient_checkpointing:  # renamed in transformers 5.x; the old name warns
            if hasattr(self.lm, "activation_checkpointing_enable"):
                self.lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        config = self.lm.config
        self.d_model = config.hidden_size
        self.vocab_size = self.lm.get_output_embeddings().out_features
        self.max_seq_len = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 1 << 30)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id  # GPT-2 and Pythia have no pad
        self.dummy_token = dummy_token
        # transformers 5.x renamed past_key_values to cache (the old name warns, then goes away).
        params = inspect.signature(self.lm.base_model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def codec(self, task: GraphTask) -> TextCodec:
        return TextCodec(self.tokenizer, task, self.pad_id, self.dummy_token, self.max_seq_len)

    def _padding_mask(self, idx: torch.Tensor) -> torch.Tensor:
        """1 from each row's first non-pad token on: only a leading run of ``pad_id`` is padding."""
        return (idx != self.pad_id).long().cummax(dim=1).values  # (B, T)

    def forward(self, idx: torch.Tensor, cache: Optional[HFCache] = None, output_from: int = 0) -> torch.Tensor:
        if cache is None or cache.mask is None:
            mask = self._padding_mask(idx)
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, T): 0 at each row's first real token
        else:  # everything after the first call follows real tokens
            mask = torch.cat([cache.mask, cache.mask.new_ones(idx.shape)], dim=1)
            positions = cache.mask.sum(dim=1, keepdim=True) + torch.arange(idx.shape[1], device=idx.device)
        if cache is not None:
            cache.mask = mask
        kv = {} if cache is None else {self._cache_arg: cache.kv}
        out = self.lm.base_model(
            input_ids=idx, attention_mask=mask, position_ids=positions, use_cache=cache is not None, **kv
        )
        return out.last_hidden_state[:, output_from:]  # (B, T - output_from, D)

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm.get_output_embeddings()(hidden)

    def new_cache(self, batch_size: int, max_len: int) -> HFCache:
        return HFCache(_transformers().DynamicCache(config=self.lm.config))

    def rewind_cache(self, cache: HFCache, pos: int) -> bool:
        if cache.mask is not None and pos < cache.mask.shape[1]:
            cache.kv.crop(pos - cache.mask.shape[1])  # a negative count drops that many tokens (4.x and 5.x)
            cache.mask = cache.mask[:, :pos]
        return True
