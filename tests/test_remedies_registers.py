"""MuToR registers (nfl.objectives.Registers): the interleaved sequence, its positions and mask exactly; the loss
against a slow implementation that runs each register on its own; a = 0 is teacher forcing; inference never
sees a register; backbones without masks or position ids are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nfl.errors import UserInputError
from nfl.models import GPT, Mamba
from nfl.objectives import Registers, TeacherForcing
from nfl.tasks import PathStar
from nfl.tasks.base import IGNORE_INDEX
from tests.conftest import bind_objective as bound, sample_batch as sample

FIXED = PathStar(degree=2, path_len=4, num_nodes=20)
VARIED = PathStar(degree=2, arm_lengths=[2, 4], goal="any", num_nodes=20)  # end token, IGNORE_INDEX padding


def test_the_sequence_positions_targets_and_mask_of_a_hand_made_batch():
    objective, _ = bound(Registers(max_offset=3), VARIED)
    R, X = objective.register_id, IGNORE_INDEX
    prefix = torch.tensor([[1, 2, 3], [4, 5, 6], [1, 2, 3]])  # P = 3, the '=' last
    target = torch.tensor([[7, 8, 9], [10, 11, X], [7, 8, 9]])  # l = 3; row 1 ends early
    batch = objective.build(prefix, target, torch.tensor([1, 2, 3]))
    # prefix, r, t0, r, t1, r: a register before each fed-back answer token and one after the last.
    assert batch.inputs.tolist() == [[1, 2, 3, R, 7, R, 8, R], [4, 5, 6, R, 10, R, 11, R], [1, 2, 3, R, 7, R, 8, R]]
    # Ordinary tokens keep teacher forcing's positions (t_k at P + k); register k gets P + k + d - 2, clipped to
    # the last answer input's position P + l - 2 = 4.
    assert batch.position_ids.tolist() == [
        [0, 1, 2, 2, 3, 3, 4, 4],  # d = 1: each register shares its predecessor's position
        [0, 1, 2, 3, 3, 4, 4, 4],  # d = 2: 3, 4, 5 -> 4
        [0, 1, 2, 4, 3, 4, 4, 4],  # d = 3: 4, 5 -> 4, 6 -> 4
    ]
    # Register k predicts answer column k + d - 1; past the width or past a row's end it has no target.
    assert batch.register_target.tolist() == [[7, 8, 9], [11, X, X], [9, X, X]]
    registers = {3, 5, 7}
    expected = [[j not in registers or i == j for j in range(8)] for i in range(8)]
    assert batch.attention_mask.tolist() == expected
    effective = batch.attention_mask & torch.ones(8, 8, dtype=torch.bool).tril()  # what GPT's causal mode ands in
    for i in range(8):
        read = {j for j in range(8) if effective[i, j]}
        if i in registers:  # the ordinary tokens before it, and itself
            assert read == {j for j in range(i) if j not in registers} | {i}
        else:  # teacher forcing's causal view: never a register
            assert read == set(range(i + 1)) - registers


def slow_losses(objective, backbone, prefix, target, offsets):
    """Each prediction from its own causal pass: an ordinary target from ``prefix + t_0..t_{k-1}``, register k's
    from the same tokens with one register appended at position ``P + k + d - 2`` (clipped). No mask needed:
    that is what the mask is meant to make the interleaved pass compute."""
    (B, P), l = prefix.shape, target.shape[1]
    next_ce, register_ce = [], []
    for b in range(B):
        d = int(offsets[b])
        for k in range(l):
            seen = prefix[b].tolist() + target[b, :k].tolist()  # P + k tokens, positions 0..P+k-1
            if target[b, k] != IGNORE_INDEX:
                logits = backbone.unembed(backbone(torch.tensor([seen]))[:, -1])
                next_ce.append(F.cross_entropy(logits, target[b, k : k + 1]))
            col = k + d - 1
            if col < l and target[b, col] != IGNORE_INDEX:
                ids = torch.tensor([seen + [objective.register_id]])
                pos = torch.tensor([list(range(P + k)) + [min(P + k + d - 2, P + l - 2)]])
                logits = backbone.unembed(backbone(ids, position_ids=pos)[:, -1])
                register_ce.append(F.cross_entropy(logits, target[b, col : col + 1]))
    return torch.stack(next_ce).mean(), torch.stack(register_ce).mean()


@pytest.mark.parametrize("task, n", [(FIXED, 4), (VARIED, 1), (VARIED, 6)], ids=["fixed", "varied-B1", "varied-B6"])
def test_the_loss_matches_a_slow_implementation(task, n):
    objective, backbone = bound(Registers(max_offset=3, a=0.3), task, n_layer=2, d_model=16, n_head=2)
    prefix, target = sample(task, n, seed=n)
    offsets = torch.randint(1, 4, (n,))
    if task is VARIED and n > 1:
        assert (target == IGNORE_INDEX).any() and len(set(offsets.tolist())) > 1  # padding and mixed offsets
    out = objective(backbone, prefix, target, offsets)
    with torch.no_grad():
        next_token, register = slow_losses(objective, backbone, prefix, target, offsets)
    torch.testing.assert_close(out.extras["registers/next_token_loss"], next_token, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.extras["registers/loss"], register, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss.detach(), 0.7 * next_token + 0.3 * register, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("task", [FIXED, VARIED], ids=["fixed", "varied"])
def test_a_zero_gives_teacher_forcing_loss_and_gradients(task):
    objective, backbone = bound(Registers(a=0.0, max_offset=4), task, n_layer=2, d_model=16, n_head=2)
    teacher = TeacherForcing()
    teacher.bind(task, backbone, stop=task.end)
    prefix, target = sample(task, 5)

    def loss_and_grads(obj):
        backbone.zero_grad()
        loss = obj(backbone, prefix, target).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in backbone.named_parameters()}

    reg_loss, reg_grads = loss_and_grads(objective)
    tf_loss, tf_grads = loss_and_grads(teacher)
    torch.testing.assert_close(reg_loss, tf_loss, rtol=1e-6, atol=1e-7)
    for name in tf_grads:
        torch.testing.assert_close(reg_grads[name], tf_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_ordinary_tokens_read_no_register():
    objective, backbone = bound(Registers(max_offset=4), VARIED, n_layer=2, d_model=16, n_head=2)
    prefix, target = sample(VARIED, 5)
    P, l = prefix.shape[1], target.shape[1]
    ordinary = list(range(P)) + [P + 2 * k + 1 for k in range(l - 1)]
    registers = [P + 2 * k for k in range(l)]

    def hidden(offsets):
        batch = objective.build(prefix, target, offsets)
        return backbone(batch.inputs, attention_mask=batch.attention_mask, position_ids=batch.position_ids)

    with torch.no_grad():
        plain = backbone(torch.cat([prefix, target[:, :-1].clamp(min=0)], 1))  # teacher forcing's input
        first = hidden(torch.ones(5, dtype=torch.long))
        torch.testing.assert_close(first[:, ordinary], plain, rtol=1e-5, atol=1e-6)
        # Other offsets and another register embedding move the registers' outputs, never the ordinary ones.
        backbone.tok_emb.weight[objective.register_id] += 1.0
        second = hidden(torch.full((5,), 3))
    assert torch.equal(first[:, ordinary], second[:, ordinary])
    assert not torch.allclose(first[:, registers], second[:, registers])


@pytest.mark.parametrize("use_cache", [True, False])
def test_inference_is_teacher_forcing_without_registers(use_cache):
    objective, backbone = bound(Registers(use_cache=use_cache), VARIED)
    teacher = TeacherForcing(use_cache)
    teacher.bind(VARIED, backbone, stop=VARIED.end)
    prefix, target = sample(VARIED, 4)
    calls = []
    hook = backbone.register_forward_pre_hook(lambda m, args, kwargs: calls.append((args[0], kwargs)), with_kwargs=True)
    out, generated = objective.evaluate(backbone, prefix, target, VARIED.target_len)
    decoded = objective.decode(backbone, prefix)
    hook.remove()
    assert calls and all((ids != objective.register_id).all() for ids, _ in calls)
    assert all(kw.get("attention_mask") is None and kw.get("position_ids") is None for _, kw in calls)
    tf_out, tf_generated = teacher.evaluate(backbone, prefix, target, VARIED.target_len)
    assert torch.equal(out.logits, tf_out.logits) and torch.equal(generated, tf_generated)
    assert torch.equal(decoded, teacher.decode(backbone, prefix))
    assert Registers.teacher_forced  # so the tf/* tags are logged, from this pass


def test_greedy_decoding_never_writes_the_register_token():
    objective, backbone = bound(Registers(), FIXED)
    register = objective.token_ids["register"]
    prefix, target = sample(FIXED, 8)
    tf = TeacherForcing()
    tf.bind(FIXED, backbone)
    with torch.no_grad():  # make the register the most likely token everywhere
        backbone.tok_emb.weight[register] = 50 * backbone(prefix)[:, -1].mean(0)
    assert (tf.decode(backbone, prefix) == register).any()
    for use_cache in (True, False):
        objective.use_cache = use_cache
        generated = objective.evaluate(backbone, prefix, target, FIXED.target_len)[1]
        assert not (generated == register).any() and torch.equal(objective.decode(backbone, prefix), generated)


def test_bad_options_and_backbones_are_refused_in_one_line():
    for options, match in [
        ({"max_offset": 0}, r"Registers\.max_offset=0: must be >= 1"),
        ({"a": 1.5}, r"Registers\.a=1\.5: must be"),
        ({"a": -0.1}, r"Registers\.a=-0\.1: must be"),
    ]:
        with pytest.raises(UserInputError, match=match) as err:
            Registers(**options)
        assert "\n" not in str(err.value)
    with pytest.raises(UserInputError, match=r"Registers\.max_offset=5: must be at most the answer width 4") as err:
        bound(Registers(max_offset=5), FIXED)
    assert "\n" not in str(err.value)
    with pytest.raises(
        UserInputError,
        match=r"^nfl\.objectives\.Registers needs an attention mask and position ids, which Mamba does not offer; "
        r"use nfl\.models\.GPT",
    ) as err:
        bound(Registers(), FIXED, Mamba, n_layer=1, d_model=16)
    assert "\n" not in str(err.value)
