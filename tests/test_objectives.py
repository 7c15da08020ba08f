"""Objectives build the right inputs, put the loss on target positions only, and decode consistently."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nfl.data.path_star import sample_graphs
from nfl.models.gpt import GPT
from nfl.objectives import Teacherless, TeacherForcing


@pytest.fixture
def batch(task, rng):
    prefix, target = sample_graphs(rng, 8, task)
    return torch.from_numpy(prefix), torch.from_numpy(target)


@pytest.fixture
def gpt(task):
    return GPT(task.vocab_size, task.seq_len, n_layer=1, d_model=32, n_head=2)


class Recorder(torch.nn.Module):
    """Wraps a backbone and keeps its hidden states so a test can read their gradients."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.inputs, self.hidden = None, None

    def forward(self, idx, cache=None):
        self.inputs = idx
        self.hidden = self.inner(idx, cache)
        self.hidden.retain_grad()
        return self.hidden

    def unembed(self, h):
        return self.inner.unembed(h)


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
    prefix, target = batch
    objective = objective_cls()
    recorder = Recorder(gpt)
    objective.bind(task, recorder)
    out = objective(recorder, prefix, target)
    P, l = task.prefix_len, task.path_len
    logits = gpt.unembed(recorder.hidden.detach())[:, P - 1 : P - 1 + l]
    torch.testing.assert_close(out.loss, F.cross_entropy(logits.reshape(-1, task.vocab_size), target.reshape(-1)))
    out.loss.backward()
    grad = recorder.hidden.grad  # (B, T, D): the prefix positions before '=' get no loss gradient
    assert torch.all(grad[:, : P - 1] == 0)
    assert torch.all(grad[:, P - 1 :].abs().sum(-1) > 0)


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
