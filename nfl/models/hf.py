"""HFCausalLM: a pretrained Hugging Face causal LM (GPT-2, Pythia, ...) as an nfl backbone, with its own tokenizer.

The paper also fine-tunes pretrained GPT-2 and Pythia models (Bachmann & Nagarajan 2024, §4). Such a model
reads its own tokenizer's tokens, not nfl's numeral ones: :meth:`HFCausalLM.codec` gives the system a
:class:`~nfl.tasks.codec.TextCodec` that writes each batch out in the reference text format, tokenises it, and
parses generated text back to path nodes, so every objective and metric works unchanged.

Left padding. The codec aligns rows at ``=`` by left-padding prefixes with ``pad_id``. This module masks a
leading run of ``pad_id`` from attention and counts positions from each row's first real token, so a row's
hidden states do not depend on what it was batched with. Nothing downloads at import time:
``transformers`` (the ``hf`` extra) is imported when a model is built.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from torch import nn

from nfl.errors import OptionError, UserInputError, require
from nfl.models.base import Backbone
from nfl.tasks.base import GraphTask
from nfl.tasks.codec import TextCodec

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_HUB_TIMEOUT_S = 10.0  # seconds for the one request that checks a hub name is reachable


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise UserInputError(
            "nfl.models.HFCausalLM needs the transformers package: pip install 'nfl[hf]' (or transformers)."
        ) from err
    return transformers


def _from_pretrained(auto: Any, name: str, revision: Optional[str], option: str, **kwargs: Any) -> Any:
    """``auto.from_pretrained(name)`` from a local folder or the cache when it can, asking the hub only if not.

    A name that is neither a folder nor cached is checked with one quick request first, so an unreachable hub
    (offline, a firewall) ends in one line within seconds instead of a minute of retries.
    """
    try:
        return auto.from_pretrained(name, revision=revision, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        if os.path.isdir(os.path.expanduser(name)):
            raise  # a local folder that does not hold a model: its own message says what is missing
    _check_hub(name, revision, option)
    return auto.from_pretrained(name, revision=revision, **kwargs)


@functools.lru_cache(maxsize=None)
def _check_hub(name: str, revision: Optional[str], option: str) -> None:
    """Raise a one-line :class:`OptionError` unless the hub can be reached and has ``name`` (at ``revision``)."""
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    not_here = "is neither a local folder nor in the local Hugging Face cache"
    # The hub client reads HF_HUB_OFFLINE once, at import; the environment says what the user asks for now.
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    if offline or huggingface_hub.constants.HF_HUB_OFFLINE:
        raise OptionError(
            HFCausalLM, option, name,
            f"{not_here}, and HF_HUB_OFFLINE is set; download it once with the hub reachable, or give a folder "
            "written by save_pretrained",
        )
    try:  # one request, no retries (downloads retry for about a minute before giving up)
        huggingface_hub.HfApi().model_info(name, revision=revision, timeout=_HUB_TIMEOUT_S)
    except RevisionNotFoundError:
        raise OptionError(
            HFCausalLM, "revision", revision, f"the hub has no revision {revision!r} of {name!r}"
        ) from None
    except RepositoryNotFoundError:
        raise OptionError(
            HFCausalLM, option, name, f"{not_here}, and the hub has no such model (or it is private: log in first)"
        ) from None
    except huggingface_hub.errors.HfHubHTTPError:
        return  # the hub answered (e.g. a gated model): from_pretrained gives the precise reason
    except Exception as err:  # noqa: BLE001  a connection error of whichever HTTP library the hub client uses
        raise OptionError(
            HFCausalLM, option, name,
            f"{not_here}, and the hub cannot be reached ({type(err).__name__}); connect to the network, set "
            "HF_ENDPOINT to a mirror, or give a folder written by save_pretrained",
        ) from None


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
        model: a hub name (``gpt2``, ``EleutherAI/pythia-410m``; downloaded on first use, then loaded from the
            local cache without asking the hub: pin ``revision`` for an exact version) or a local folder written
            by ``save_pretrained``.
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
        for option, where in (("model", model), ("tokenizer", source)):
            require(
                not where.startswith(("/", ".", "~")) or os.path.isdir(os.path.expanduser(where)), type(self),
                option, where, "there is no such folder; give a folder written by save_pretrained, or a hub name",
            )
        try:
            self.tokenizer = _from_pretrained(
                transformers.AutoTokenizer, source, revision, "model" if tokenizer is None else "tokenizer"
            )
        except OptionError:
            raise
        except (OSError, ValueError) as err:
            raise UserInputError(f"Could not load a tokenizer from {source!r}: {err}") from err
        try:
            self.lm = _from_pretrained(
                transformers.AutoModelForCausalLM, model, revision, "model", dtype=_DTYPES[dtype]
            )
        except OptionError:
            raise
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
        # Read by the pre-flight size check's activation estimate (Backbone.activation_bytes).
        self.n_layer = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 1)
        self.n_head = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 1)
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

    def forward(
        self,
        idx: torch.Tensor,
        cache: Optional[HFCache] = None,
        output_from: int = 0,
        *,
        attention: str = "causal",
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        # The positions and mask are the left padding's; a pretrained causal model is read left to right only.
        self._plain_call_only(attention, attention_mask, position_ids)
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

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.lm.get_input_embeddings()

    def share_token_embedding(self, source: Backbone) -> "HFCausalLM":
        self.lm.set_input_embeddings(source.token_embedding)
        return self

    def new_cache(self, batch_size: int, max_len: int) -> HFCache:
        return HFCache(_transformers().DynamicCache(config=self.lm.config))

    def rewind_cache(self, cache: HFCache, pos: int) -> bool:
        if cache.mask is not None and pos < cache.mask.shape[1]:
            cache.kv.crop(pos - cache.mask.shape[1])  # a negative count drops that many tokens (4.x and 5.x)
            cache.mask = cache.mask[:, :pos]
        return True
