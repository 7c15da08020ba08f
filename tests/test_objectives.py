"""Objectives build the right inputs, put the loss on target positions only, and decode consistently."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nfl.models.gpt import GPT
from nfl.objectives import Teacherless, TeacherForcing


@pytest.fixture
def batch(task, rng):
    prefix, target = task.sample(rng, 8)
    return torch.from_numpy(prefix), torch.from_numpy(target)


@pytest.fixture
def gpt(task):
    return GPT(task.vocab_size, task.seq_len, n_layer=1, d_model=32, n_head=2)


def test_teacher_forcing_inputs(task, batch):
    prefix, target = batch
    objective = TeacherForcing()
    objective.bind(task, None)
    idx = objective.inputs(prefix, target)
    assert idx.shape == (8, task.seq_len)
    assert torch.equal(idx[:, : task.prefix_len], prefix) and torch.equal(idx[:, task.prefix_len :], target[:, :-1])


def test_teacherless_puts_dummies_exactly_after_the_equals_sign(task, batch):
    prefix, target = batch
    objective = Teacherless()
    objective.bind(task, None)
    idx = objective.inputs(prefix, target)
    P = task.prefix_len
    assert idx.shape == (8, P + task.path_len - 1)
    assert torch.equal(idx[:, :P], prefix) and (idx[:, P - 1] == task.eq).all()
    assert (idx[:, P:] == task.dummy).all()
    assert not (idx[:, :P] == task.dummy).any()


@pytest.mark.parametrize("objective_cls", [TeacherForcing, Teacherless])
def test_loss_is_cross_entropy_on_target_positions_only(objective_cls, task, batch, gpt):
    """Same loss and gradients as cross-entropy on the l answer positions of a full forward pass."""
    prefix, target = batch
    objective = objective_cls()
    objective.bind(task, gpt)
    P, l = task.prefix_len, task.path_len
    full = gpt.unembed(gpt(objective.inputs(prefix, target)))  # (B, T, V): every position
    manual = F.cross_entropy(full[:, P - 1 : P - 1 + l].reshape(-1, task.vocab_size), target.reshape(-1))
    manual_grads = torch.autograd.grad(manual, list(gpt.parameters()))
    out = objective(gpt, prefix, target)
    torch.testing.assert_close(out.loss, manual)
    for g_out, g_manual in zip(torch.autograd.grad(out.loss, list(gpt.parameters())), manual_grads):
        torch.testing.assert_close(g_out, g_manual, atol=1e-6, rtol=1e-4)
    # Moving the loss onto a prefix position would change it: the positions matter.
    shifted = F.cross_entropy(full[:, P - 2 : P - 2 + l].reshape(-1, task.vocab_size), target.reshape(-1))
    assert not torch.allclose(shifted, manual)


def test_teacherless_decode_is_one_pass_argmax(task, batch, gpt):
    prefix, target = batch
    objective = Teacherless()
    objective.bind(task, gpt)
    out = objective(gpt, prefix, target)
    assert torch.equal(objective.decode(gpt, prefix), out.logits.argmax(-1))


def test_teacher_forcing_decode_feeds_back_its_own_tokens(task, batch, gpt):
    prefix, target = batch
    objective = TeacherForcing()
    objective.bind(task, gpt)
    decoded = objective.decode(gpt, prefix)
    # With its own tokens as the "teacher", a teacher-forced pass predicts exactly the decoded sequence.
    assert torch.equal(objective(gpt, prefix, decoded).logits.argmax(-1), decoded)
    uncached = TeacherForcing(use_cache=False)
    uncached.bind(task, gpt)
    assert torch.equal(uncached.decode(gpt, prefix), decoded)


@pytest.mark.parametrize("backbone", ["gpt", "mamba"])
def test_evaluation_reuses_the_teacher_forced_pass_as_the_prefill(backbone, task, rng):
    """Same loss, logits and free-running tokens as a separate forward and decode, without a prefill pass of
    its own: GPT runs the teacher-forced input once and rewinds its KV cache to the prefix; Mamba, whose
    recurrent state cannot rewind, runs the prefix once and the fed-back answer on a copy of its state."""
    from nfl.models.mamba import Mamba

    prefix, target = (torch.from_numpy(a) for a in task.sample(rng, 64))
    if backbone == "gpt":
        model = GPT(task.vocab_size, task.seq_len, n_layer=2, d_model=64, n_head=2)
    else:
        model = Mamba(task.vocab_size, task.seq_len, n_layer=2, d_model=32)
    with torch.no_grad():  # larger weights than at init, so that a random model's decoding varies
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.3)
    objective = TeacherForcing()
    objective.bind(task, model)
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[1]))
    with torch.no_grad():
        out, generated = objective.evaluate(model, prefix, target, task.target_len)
    hook.remove()
    P, l = task.prefix_len, task.target_len
    assert calls == ([P + l - 1] if backbone == "gpt" else [P, l - 1]) + [1] * (l - 1)
    with torch.no_grad():
        separate = objective(model, prefix, target)
    torch.testing.assert_close(out.logits, separate.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.loss, separate.loss)
    assert torch.equal(generated, objective.decode(model, prefix))
    assert torch.equal(generated[:, 0], out.logits[:, 0].argmax(-1))
    assert generated.unique().numel() > 5  # a varied decoding, so the comparison can fail


@pytest.mark.parametrize("extra_steps", [0, 3])
def test_teacherless_evaluation_is_one_pass(extra_steps, task, rng):
    """The teacher-forced output and the decoding of a teacherless model come from the same single pass,
    also when the decode budget is longer than the answer (a pretrained tokenizer's)."""
    prefix, target = (torch.from_numpy(a) for a in task.sample(rng, 64))
    model = GPT(task.vocab_size, task.seq_len + extra_steps, n_layer=2, d_model=64, n_head=2)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.3)
    objective = Teacherless()
    objective.bind(task, model)
    steps = task.target_len + extra_steps
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[1]))
    out, generated = objective.evaluate(model, prefix, target, steps)
    hook.remove()
    assert calls == [task.prefix_len + steps - 1]
    with torch.no_grad():
        separate = objective(model, prefix, target)
    torch.testing.assert_close(out.logits, separate.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.loss, separate.loss)
    assert torch.equal(generated, objective.decode(model, prefix, steps))
    assert generated.unique().numel() > 5
