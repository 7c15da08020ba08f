"""The GPT backbone: shapes, causality, initialisation, and the KV cache against the full forward."""

from __future__ import annotations

import pytest
import torch

from nfl.engine.decoding import greedy_decode
from nfl.models.gpt import GPT


@pytest.fixture
def gpt() -> GPT:
    return GPT(vocab_size=54, max_seq_len=31, n_layer=2, d_model=32, n_head=4).eval()


def test_shapes_and_tied_unembedding(gpt):
    idx = torch.randint(0, 54, (3, 31))
    hidden = gpt(idx)
    assert hidden.shape == (3, 31, 32)
    logits = gpt.unembed(hidden)
    assert logits.shape == (3, 31, 54)
    torch.testing.assert_close(logits, hidden @ gpt.tok_emb.weight.T)
    names = [n for n, _ in gpt.named_parameters()]
    assert not any("lm_head" in n for n in names)


def test_position_embedding_starts_small():
    big = GPT(vocab_size=54, max_seq_len=512, n_layer=1, d_model=256, n_head=4)
    assert big.pos_emb.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert big.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_pos_init_std_scales_the_position_draws_and_leaves_every_other_weight_alone():
    def built(**kwargs) -> dict[str, torch.Tensor]:
        torch.manual_seed(3)
        return GPT(vocab_size=54, max_seq_len=512, n_layer=2, d_model=256, n_head=4, **kwargs).state_dict()

    default, wide = built(), built(pos_init_std=1.0)
    assert wide["pos_emb.weight"].std().item() == pytest.approx(1.0, rel=0.05)  # the reference code's N(0, 1)
    torch.testing.assert_close(wide["pos_emb.weight"], 50 * default["pos_emb.weight"])
    assert all(torch.equal(default[k], wide[k]) for k in default if k != "pos_emb.weight")


def test_causality(gpt):
    idx = torch.randint(0, 54, (2, 20))
    changed = idx.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 54
    a, b = gpt(idx), gpt(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_cache_matches_full_forward_in_chunks(gpt):
    idx = torch.randint(0, 54, (2, 25))
    full = gpt(idx)
    cache = gpt.new_cache(2, 25)
    parts = [gpt(idx[:, :10], cache), gpt(idx[:, 10:11], cache), gpt(idx[:, 11:18], cache), gpt(idx[:, 18:], cache)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [0, 1, 12, 16])
def test_output_from_equals_slicing_the_full_forward(gpt, k):
    idx = torch.randint(0, 54, (3, 25))
    full = gpt(idx)
    torch.testing.assert_close(gpt(idx, output_from=k), full[:, k:], atol=1e-5, rtol=1e-5)
    cache = gpt.new_cache(3, 25)
    gpt(idx[:, :8], cache)  # prefill 8 tokens, then ask for outputs from position 8 + k on
    torch.testing.assert_close(gpt(idx[:, 8:], cache, output_from=k), full[:, 8 + k :], atol=1e-5, rtol=1e-5)


def test_cached_and_uncached_greedy_decoding_agree(gpt):
    prefix = torch.randint(0, 54, (16, 27))
    assert torch.equal(greedy_decode(gpt, prefix, 4, use_cache=True), greedy_decode(gpt, prefix, 4, use_cache=False))


def test_too_long_inputs_and_bad_heads_are_refused(gpt):
    with pytest.raises(ValueError, match="exceeds max_seq_len=31"):
        gpt(torch.zeros(1, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="n_head=5: must divide d_model=32"):
        GPT(54, 31, n_layer=1, d_model=32, n_head=5)
