"""Tiny Hugging Face models and tokenizers, built and saved locally so that no test downloads anything.

``gpt2_like``: a byte-level BPE tokenizer trained on path-star text (like GPT-2's, every node below 50 is one
token) and a 2-layer GPT-2. ``pythia_like``: a tokenizer that spells every character as its own token (so
nodes are 1 or 2 tokens and rows differ in length, the hard case) and a 2-layer GPT-NeoX, Pythia's
architecture. Both are loaded back through ``from_pretrained``, the code path users take.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nfl.tasks import PathStar

EOS = "<|endoftext|>"


def _lines(n: int = 2000) -> list[str]:
    task = PathStar(2, 5, 50)
    return task.format_lines(*task.sample(np.random.default_rng(0), n))


def bpe_tokenizer(add_prefix_space: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[EOS], initial_alphabet=alphabet)
    tok.train_from_iterator(_lines(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)


def char_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list("0123456789,|/=$#")
    vocab = {c: i for i, c in enumerate(["<pad>", EOS, "<unk>", *chars])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token="<pad>", unk_token="<unk>")


def gpt2_like(folder: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = bpe_tokenizer()
    tokenizer.save_pretrained(folder)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # deterministic in train mode
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def pythia_like(folder: Path) -> Path:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tokenizer = char_tokenizer()
    tokenizer.save_pretrained(folder)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=256, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    GPTNeoXForCausalLM(config).save_pretrained(folder)
    return folder
