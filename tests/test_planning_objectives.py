"""The objectives that need more than one causal left-to-right pass: Belief State, NextLat, masked diffusion.

Each loss is compared with a slow implementation written here from the papers' definitions, one pair, position
or masked token at a time.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nfl.errors import UserInputError
from nfl.models import GPT, Mamba
from nfl.objectives import BeliefState, MaskedDiffusion, NextLat
from nfl.objectives.belief_state import pair_grid
from nfl.objectives.base import reversed_rows
from nfl.tasks import PathStar
from nfl.tasks.base import IGNORE_INDEX
from tests.conftest import bind_objective as bound, sample_batch as sample


VARIED = PathStar(degree=2, arm_lengths=[2, 4], goal="any", num_nodes=20)


# --- Belief State ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("width, gap", [(5, 2), (5, 3), (4, 4)])
def test_pairs_are_every_answer_pair_at_least_min_gap_apart(width, gap):
    P = 7  # any prefix length: pairs are relative to the '=' at P - 1
    expected = {(i, j) for i in range(P - 1, P + width) for j in range(i + gap, P + width + 1)}  # j = P+width: end
    a, c = pair_grid(width, gap)
    got = {(P - 1 + int(x), P + int(y)) for x, y in zip(a, c)}
    assert got == expected
    assert all(i >= P - 1 for i, _ in got)  # no pair starts inside the prefix
    assert len(a) == len(got)  # no pair twice


def slow_bst_losses(objective, backbone, prefix, target):
    """Each pair on its own: F_i from a forward pass over s[:i+1], B_j from a backward pass over s[j:] reversed."""
    end = objective.token_ids["end"]
    P, gap = prefix.shape[1], objective.min_gap
    next_ce, prev_ce = [], []
    for b in range(len(prefix)):
        answer = target[b][target[b] != IGNORE_INDEX]
        s = torch.cat([prefix[b], answer, torch.tensor([end])])
        n = len(s)  # the end token sits at n - 1
        for i in range(P - 1, n - 1):
            for j in range(i + gap, n):
                f = backbone(s[None, : i + 1])[0, -1]
                bwd = objective.backward_encoder(s[j:].flip(0)[None])[0, -1]
                nxt, prev = objective.head(f, bwd)
                next_ce.append(F.cross_entropy(nxt[None], s[i + 1][None]))
                prev_ce.append(F.cross_entropy(prev[None], s[j - 1][None]))
    return torch.stack(next_ce).mean(), torch.stack(prev_ce).mean()


@pytest.mark.parametrize("task", [PathStar(degree=2, path_len=4, num_nodes=20), VARIED], ids=["fixed", "varied"])
def test_belief_state_losses_match_the_pairwise_definition(task):
    objective, backbone = bound(BeliefState(), task)
    prefix, target = sample(task, 4)
    out = objective(backbone, prefix, target)
    next_loss, prev_loss = slow_bst_losses(objective, backbone, prefix, target)
    torch.testing.assert_close(out.extras["bst/next_loss"], next_loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.extras["bst/prev_loss"], prev_loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, (next_loss + prev_loss) / 2, rtol=1e-5, atol=1e-6)


def test_belief_state_gradients_reach_both_encoders_and_the_shared_embedding():
    task = PathStar(degree=2, path_len=4, num_nodes=20)
    objective, backbone = bound(BeliefState(), task)
    assert objective.backward_encoder.tok_emb is backbone.tok_emb  # one embedding, read by both
    assert objective.backward_encoder.blocks[0] is not backbone.blocks[0]
    objective(backbone, *sample(task)).loss.backward()
    for name, module in (("forward", backbone.blocks), ("backward", objective.backward_encoder.blocks),
                         ("head", objective.head)):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, name
    assert backbone.tok_emb.weight.grad.abs().sum() > 0


def test_chunked_pairs_give_the_unchunked_loss_and_gradients():
    task = VARIED
    prefix, target = sample(task, 5)
    results = []
    for chunk in (None, 3):
        torch.manual_seed(0)
        objective, backbone = bound(BeliefState(pair_chunk=chunk), task)
        loss = objective(backbone, prefix, target).loss
        params = list(backbone.parameters()) + list(objective.parameters())
        results.append((loss, torch.autograd.grad(loss, params, allow_unused=True)))
    (loss, grads), (chunked, chunked_grads) = results
    torch.testing.assert_close(chunked, loss)
    for g, h in zip(grads, chunked_grads):
        if g is not None:
            torch.testing.assert_close(h, g, rtol=1e-5, atol=1e-7)


def test_belief_state_decodes_greedily_from_the_forward_state_and_the_empty_suffix():
    task = PathStar(degree=2, path_len=4, num_nodes=20)
    objective, backbone = bound(BeliefState(), task)
    prefix, target = sample(task, 5)
    end = torch.full((1, 1), objective.token_ids["end"])
    empty = objective.backward_encoder(end)[0, -1]
    seq, manual = prefix, []
    with torch.no_grad():
        for _ in range(task.target_len):
            hidden = backbone(seq)[:, -1]
            token = objective.head.next_logits(hidden, empty.expand_as(hidden)).argmax(-1)
            manual.append(token)
            seq = torch.cat([seq, token[:, None]], dim=1)
    manual = torch.stack(manual, dim=1)
    assert torch.equal(objective.decode(backbone, prefix), manual)
    objective.use_cache = False
    assert torch.equal(objective.decode(backbone, prefix), manual)
    objective.use_cache = True
    out, generated = objective.evaluate(backbone, prefix, target, task.target_len)
    assert torch.equal(generated, manual)
    assert torch.equal(out.logits[:, 0].argmax(-1), manual[:, 0])  # the teacher-forced pass starts the same


def test_reversed_rows_reverse_each_row_within_its_length():
    rows = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert reversed_rows(rows, torch.tensor([4, 2]), fill=-1).tolist() == [[4, 3, 2, 1], [6, 5, -1, -1]]


# --- NextLat ---------------------------------------------------------------------------------------------
def test_nextlat_rollout_covers_horizon_steps_from_every_position():
    task = PathStar(degree=2, path_len=5, num_nodes=20)
    objective, backbone = bound(NextLat(), task)
    assert objective.rollout == task.path_len - 2  # the default horizon, l - 2
    shapes = []
    objective.dynamics.register_forward_hook(lambda m, args, out: shapes.append((tuple(args[0].shape), tuple(out.shape))))
    prefix, target = sample(task, 3)
    objective(backbone, prefix, target)
    T = task.seq_len
    assert shapes == [((3, T - k, 16), (3, T - k, 16)) for k in range(1, objective.rollout + 1)]
    shapes.clear()
    objective.positions = "answer"  # from the '=' on: l positions of hidden states
    objective(backbone, prefix, target)
    assert [s[0][1] for s in shapes] == [task.target_len - k for k in range(1, objective.rollout + 1)]


def slow_nextlat(objective, backbone, hidden, tokens, frozen=True):
    """Every (position, step) on its own: roll ĥ forward on the true tokens, score against h."""
    W = backbone.tok_emb.weight
    emb = backbone.tok_emb(tokens)
    l1, kl = [], []
    B, T, _ = hidden.shape
    for b in range(B):
        for t in range(T):
            h = hidden[b, t]
            for k in range(1, objective.rollout + 1):
                if t + k >= T:
                    break
                h = objective.dynamics(h, emb[b, t + k])
                goal = hidden[b, t + k].detach()
                l1.append(F.smooth_l1_loss(h, goal))
                true = F.log_softmax(F.linear(goal, W).detach(), -1)
                pred = F.log_softmax(F.linear(h, W.detach() if frozen else W), -1)
                kl.append((true.exp() * (true - pred)).sum())
    return torch.stack(l1).mean(), torch.stack(kl).mean()


def test_nextlat_losses_stop_gradients_into_targets_and_freeze_the_head():
    task = PathStar(degree=2, path_len=4, num_nodes=20)
    objective, backbone = bound(NextLat(horizon=2), task)
    prefix, target = sample(task, 2)
    tokens = objective.inputs(prefix, target)
    hidden = backbone(tokens).detach().requires_grad_()  # a leaf: which states get gradient is visible
    real = torch.ones(tokens.shape, dtype=torch.bool)
    latent, kl = objective.latent_losses(backbone, hidden, tokens, real)
    slow_latent, slow_kl = slow_nextlat(objective, backbone, hidden, tokens)
    torch.testing.assert_close(latent, slow_latent, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(kl, slow_kl, rtol=1e-5, atol=1e-7)
    # Stop-gradient: the last state is only ever a target, so neither term sends it any gradient.
    (g_latent,) = torch.autograd.grad(latent, hidden, retain_graph=True)
    assert g_latent[:, -1].abs().sum() == 0 and g_latent[:, 0].abs().sum() > 0
    # Frozen head: the KL term's gradient into the embedding (also the tied unembedding) is only through the
    # dynamics model's input embeddings, as with the head detached; an unfrozen head would add to it.
    grad = torch.autograd.grad(kl, backbone.tok_emb.weight, retain_graph=True)[0]
    expected = torch.autograd.grad(slow_kl, backbone.tok_emb.weight, retain_graph=True)[0]
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-8)
    unfrozen = torch.autograd.grad(slow_nextlat(objective, backbone, hidden, tokens, frozen=False)[1],
                                   backbone.tok_emb.weight)[0]
    assert (unfrozen - expected).abs().max() > 1e-4 * expected.abs().max()


def test_nextlat_decodes_like_teacher_forcing_and_logs_its_parts():
    task = PathStar(degree=2, path_len=4, num_nodes=20)
    objective, backbone = bound(NextLat(), task)
    prefix, target = sample(task)
    out = objective(backbone, prefix, target)
    assert {"nextlat/latent_loss", "nextlat/kl"} <= set(out.extras)
    torch.testing.assert_close(
        out.loss, out.extras["nextlat/next_token_loss"] + out.extras["nextlat/latent_loss"] + out.extras["nextlat/kl"]
    )
    from nfl.engine.decoding import greedy_decode

    assert torch.equal(objective.decode(backbone, prefix), greedy_decode(backbone, prefix, task.target_len, False))


# --- masked diffusion ------------------------------------------------------------------------------------
def capture_inputs(backbone):
    seen = []
    backbone.register_forward_pre_hook(lambda m, args, kwargs: seen.append((args[0].clone(), dict(kwargs))),
                                       with_kwargs=True)
    return seen


@pytest.mark.parametrize("task", [PathStar(degree=2, path_len=5, num_nodes=20), VARIED], ids=["fixed", "varied"])
def test_diffusion_masks_answer_tokens_only_and_scores_only_them(task):
    objective, backbone = bound(MaskedDiffusion(token_reweighting=False, time_weighting="none"), task)
    mask = objective.token_ids["mask"]
    prefix, target = sample(task, 64)
    seen = capture_inputs(backbone)
    out = objective(backbone, prefix, target)
    (idx, kwargs), = seen
    P = prefix.shape[1]
    assert kwargs["attention"] == "bidirectional"
    assert torch.equal(idx[:, :P], prefix)  # the prefix is never masked
    answer = idx[:, P:]
    masked = answer == mask
    clean = target.masked_fill(target == IGNORE_INDEX, task.pad if task.pad is not None else 0)
    assert torch.equal(answer[~masked], clean[~masked])  # what is not masked is the answer itself
    assert 0 < masked.float().mean() < 1
    with torch.no_grad():
        logits = backbone.unembed(backbone(idx, attention="bidirectional")[:, P:])
    manual = F.cross_entropy(logits[masked], clean[masked])  # the mean over masked answer tokens, nothing else
    torch.testing.assert_close(out.loss.detach(), manual, rtol=1e-5, atol=1e-6)


def test_diffusion_weights_follow_the_noise_level_and_the_focal_rule():
    task = PathStar(degree=2, path_len=5, num_nodes=20)
    objective, backbone = bound(MaskedDiffusion(timesteps=10, time_weighting="elbo", alpha=0.5, gamma=2.0), task)
    mask = objective.token_ids["mask"]
    prefix, target = sample(task, 32)
    seen = capture_inputs(backbone)
    torch.manual_seed(3)
    out = objective(backbone, prefix, target)
    torch.manual_seed(3)  # the same draws again: the noise level of each row
    rate = torch.randint(1, 11, (32, 1)).float() / 10
    idx = seen[0][0]
    masked = idx[:, prefix.shape[1]:] == mask
    with torch.no_grad():
        logits = backbone.unembed(backbone(idx, attention="bidirectional")[:, prefix.shape[1]:])
    ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view(32, 5)
    focal = 0.5 * (1 - torch.exp(-ce)) ** 2 * ce
    manual = (focal / rate * masked).sum() / masked.sum()
    torch.testing.assert_close(out.loss.detach(), manual, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("steps, remask", [(None, False), (2, False), (3, True), (7, False)])
def test_diffusion_decoding_fills_every_position_within_its_passes(steps, remask):
    task = PathStar(degree=2, path_len=5, num_nodes=20)
    objective, backbone = bound(MaskedDiffusion(steps=steps, remask=remask), task)
    prefix, target = sample(task, 8)
    seen = capture_inputs(backbone)
    out, generated = objective.evaluate(backbone, prefix, target, task.target_len)
    passes = len(seen) - 1  # the first pass is the one-step denoising of the tags
    assert passes <= (steps or task.target_len) and passes == min(steps or 5, 5)
    assert (out.passes == passes).all()
    assert generated.shape == (8, 5) and not (generated == objective.token_ids["mask"]).any()
    # Without re-masking the number of masked positions falls as the schedule says, one pass at a time.
    if not remask:
        masked = [int((idx[:, prefix.shape[1]:] == objective.token_ids["mask"]).sum(1)[0]) for idx, _ in seen[1:]]
        expected = {5 - math.ceil(5 * s / (steps or 5)) for s in range(steps or 5)} - {0}
        assert masked == sorted(expected, reverse=True)


def test_diffusion_decoding_unmasks_the_most_confident_position_first():
    task = PathStar(degree=2, path_len=5, num_nodes=20)
    objective, backbone = bound(MaskedDiffusion(), task)
    prefix, _ = sample(task, 4)
    seen = capture_inputs(backbone)
    objective.decode(backbone, prefix)
    first = seen[0][0]
    with torch.no_grad():
        logp = backbone.unembed(backbone(first, attention="bidirectional")[:, prefix.shape[1]:]).log_softmax(-1)
    logp[..., objective.token_ids["mask"]] = -math.inf
    best = logp.max(-1).values.argmax(-1)  # (B,)
    after = seen[1][0][:, prefix.shape[1]:]
    unmasked = after != objective.token_ids["mask"]
    assert (unmasked.sum(1) == 1).all() and unmasked[torch.arange(4), best].all()


def test_gpt_attends_both_ways_only_in_bidirectional_mode():
    gpt = GPT(20, 12, n_layer=2, d_model=16, n_head=2)
    x = torch.randint(0, 20, (2, 12))
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 20  # change the last token only
    with torch.no_grad():
        assert torch.equal(gpt(x)[:, :-1], gpt(y)[:, :-1])  # causal: earlier outputs cannot see it
        assert not torch.allclose(gpt(x, attention="bidirectional")[:, 0], gpt(y, attention="bidirectional")[:, 0])
        # A mask that forbids reading the last token makes the bidirectional pass blind to it again.
        allowed = torch.ones(12, 12, dtype=torch.bool)
        allowed[:, -1] = False
        allowed[-1, -1] = True
        a = gpt(x, attention="bidirectional", attention_mask=allowed)[:, :-1]
        torch.testing.assert_close(a, gpt(y, attention="bidirectional", attention_mask=allowed)[:, :-1])
        # Shared position ids: two positions with the same id and token give the same input embedding.
        same = gpt(x, position_ids=torch.zeros(12, dtype=torch.long), output_from=0)
        assert same.shape == (2, 12, 16)


def test_objectives_refuse_backbones_that_cannot_run_them_in_one_line():
    task = PathStar(degree=2, path_len=4, num_nodes=20)
    with pytest.raises(UserInputError, match=r"MaskedDiffusion needs bidirectional attention .* Mamba .* nfl\.models\.GPT"):
        bound(MaskedDiffusion(), task, Mamba, n_layer=1, d_model=16)
    # The Belief State Transformer and NextLat run on Mamba: a second Mamba sharing the embedding.
    objective, mamba = bound(BeliefState(), task, Mamba, n_layer=1, d_model=16)
    assert objective.backward_encoder.embedding is mamba.embedding
    assert math.isfinite(objective(mamba, *sample(task)).loss.item())
    objective, mamba = bound(NextLat(), task, Mamba, n_layer=1, d_model=16)
    assert math.isfinite(objective(mamba, *sample(task)).loss.item())
