"""Multi-token heads: head j's targets, k = 1 as teacher forcing, self-speculative decoding, checkpoints, logging."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nfl.engine.decoding import greedy_decode, speculative_greedy_decode
from nfl.errors import UserInputError
from nfl.models.base import Backbone
from nfl.models.gpt import GPT
from nfl.models.mamba import Mamba
from nfl.objectives import MultiTokenHeads, TeacherForcing
from nfl.system import PathStarSystem
from tests.conftest import read_scalars, version_dir


@pytest.fixture
def batch(task, rng):
    prefix, target = task.sample(rng, 8)
    return torch.from_numpy(prefix), torch.from_numpy(target)


class Recorder(torch.nn.Module):
    """Wraps a backbone: computes every position (so tests index absolute positions) and keeps the hidden states."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.hidden = None

    def forward(self, idx, cache=None, output_from=0):
        self.hidden = self.inner(idx, cache)  # (B, T, D)
        self.hidden.retain_grad()
        return self.hidden[:, output_from:]

    def unembed(self, h):
        return self.inner.unembed(h)


def tiny_gpt(task, n_layer=1):
    return GPT(task.vocab_size, task.seq_len, n_layer=n_layer, d_model=32, n_head=2)


def bound(task, backbone, **kwargs) -> MultiTokenHeads:
    objective = MultiTokenHeads(**kwargs)
    objective.bind(task, backbone)
    return objective


def count_passes(backbone):
    """Record the length of every forward pass of ``backbone``; returns (list, hook handle)."""
    calls = []
    return calls, backbone.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[1]))


# --- training targets ------------------------------------------------------------------------------------
def test_head_j_targets_are_the_tokens_j_ahead_and_only_answer_tokens(task, batch):
    prefix, target = batch
    P, l = task.prefix_len, task.path_len
    gpt = tiny_gpt(task)
    recorder = Recorder(gpt)
    objective = bound(task, gpt, k=l)
    out = objective(recorder, prefix, target)
    assert out.logits.shape == (8, l, task.vocab_size)
    sequence = torch.cat([prefix, target], dim=1)  # (B, P + l): position t's j-ahead token is sequence[:, t + j]
    for j in range(1, l + 1):
        positions = [t for t in range(P - 1, P + l - 1) if t + j < P + l]  # target positions, answer still ahead
        assert all(t + j >= P for t in positions)  # never a prefix token
        hidden = recorder.hidden.detach()[:, positions]
        logits = objective.head_logits(recorder, j, hidden)  # (B, n, V)
        expected = F.cross_entropy(logits.flatten(0, 1), sequence[:, [t + j for t in positions]].flatten())
        torch.testing.assert_close(out.extras[f"mtp/head_{j}_loss"], expected)
        recorder.hidden.grad = None
        out.extras[f"mtp/head_{j}_loss"].backward(retain_graph=True)
        touched = recorder.hidden.grad.abs().sum(dim=(0, 2)) > 0  # (T,): positions that carry head j's loss
        assert touched.nonzero().flatten().tolist() == positions
        # the metric's per-head predictions line up with the same targets
        preds = out.head_preds[:, j - 1]  # (B, l), -1 where head j predicts nothing
        assert (preds[:, : j - 1] == -1).all()
        assert torch.equal(preds[:, j - 1 :], logits.argmax(-1))
    metric = objective.eval_metric()
    metric.update(out, target)
    accs = metric.compute()
    assert set(accs) == {f"mtp/head_{j}_acc" for j in range(1, l + 1)}
    torch.testing.assert_close(accs["mtp/head_1_acc"], (out.logits.argmax(-1) == target).float().mean())


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_loss_combines_the_heads_with_weights(reduction, task, batch):
    prefix, target = batch
    weights = [1.0, 0.5, 0.25]
    gpt = tiny_gpt(task)
    objective = bound(task, gpt, k=3, reduction=reduction, head_weights=weights)
    out = objective(gpt, prefix, target)
    total = sum(w * out.extras[f"mtp/head_{j + 1}_loss"] for j, w in enumerate(weights))
    torch.testing.assert_close(out.loss, total if reduction == "sum" else total / sum(weights))


def test_k1_reproduces_teacher_forcing_exactly(task, batch):
    prefix, target = batch
    gpt = tiny_gpt(task, n_layer=2)
    tf, mtp = TeacherForcing(), bound(task, gpt, k=1)
    tf.bind(task, gpt)
    assert not list(mtp.parameters())  # head 1 is the backbone's own unembedding
    results = []
    for objective in (tf, mtp):
        gpt.zero_grad()
        out = objective(gpt, prefix, target)
        out.loss.backward()
        results.append((out.loss.detach(), out.logits.detach(), [p.grad.clone() for p in gpt.parameters()]))
    (tf_loss, tf_logits, tf_grads), (loss, logits, grads) = results
    assert torch.equal(loss, tf_loss) and torch.equal(logits, tf_logits)
    assert all(torch.equal(a, b) for a, b in zip(grads, tf_grads))
    assert torch.equal(mtp.decode(gpt, prefix), tf.decode(gpt, prefix))


def test_heads_are_trainable_parameters_and_bad_settings_are_refused(task):
    gpt = tiny_gpt(task)
    objective = bound(task, gpt, k=3)
    assert len(objective.heads) == 2 and all(p.requires_grad for p in objective.parameters())
    with pytest.raises(UserInputError, match="at most path_len"):
        bound(task, gpt, k=task.path_len + 1)
    with pytest.raises(UserInputError, match="head_weights"):
        MultiTokenHeads(k=2, head_weights=[1.0])


# --- decoding --------------------------------------------------------------------------------------------
def randomised(module, std):
    """Spread a freshly initialised model's weights so that greedy decoding does not repeat one token."""
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, std)
    return module.eval()


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("std", [0.02, 0.3])
def test_speculative_decoding_equals_greedy_on_random_models(k, std, task, rng):
    prefix = torch.from_numpy(task.sample(rng, 32)[0])
    for seed in range(4):
        torch.manual_seed(seed)
        gpt = tiny_gpt(task, n_layer=2)
        objective = bound(task, gpt, k=k, speculative=True)
        randomised(gpt, std), randomised(objective, std)
        greedy = greedy_decode(gpt, prefix, task.path_len)
        calls, hook = count_passes(gpt)
        assert torch.equal(objective.decode(gpt, prefix), greedy)
        hook.remove()
        assert len(calls) <= task.path_len and calls[0] == task.prefix_len


@pytest.mark.parametrize("backbone", ["gpt", "mamba"])
@pytest.mark.parametrize("speculative", [False, True])
def test_evaluation_reuses_the_teacher_forced_pass_as_the_prefill(speculative, backbone, task, rng):
    """Same output and tokens as a separate forward and decode, with no prefill pass of its own (Mamba:
    the prefix once, the answer on a copy of the state; its decoding is never speculative)."""
    prefix, target = (torch.from_numpy(a) for a in task.sample(rng, 32))
    torch.manual_seed(0)
    if backbone == "gpt":
        gpt = randomised(tiny_gpt(task, n_layer=2), 0.3)
    else:
        gpt = randomised(Mamba(task.vocab_size, task.seq_len, n_layer=2, d_model=32), 0.3)
    objective = randomised(bound(task, gpt, k=3, speculative=speculative), 0.3)
    with torch.no_grad():
        separate, decoded = objective(gpt, prefix, target), objective.decode(gpt, prefix)
    calls, hook = count_passes(gpt)
    out, generated = objective.evaluate(gpt, prefix, target, task.path_len)
    hook.remove()
    torch.testing.assert_close(out.logits, separate.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.loss, separate.loss)
    assert torch.equal(out.head_preds, separate.head_preds)
    assert torch.equal(generated, decoded) and generated.unique().numel() > 5
    P, l = task.prefix_len, task.path_len
    if backbone == "mamba":
        assert calls == [P, l - 1] + [1] * (l - 1)
    else:
        assert calls[0] == P + l - 1 and all(c < P for c in calls[1:])


class OracleDrafter:
    """Drafts from a known greedy continuation: right where ``correct[row, i, j]`` says so, else a wrong token.

    It recognises where decoding stands by matching the hidden state it is given against the hidden states
    of the greedy trajectory (B, l, D); the real drafters are the heads, this one gives controlled accuracy.
    """

    def __init__(self, trajectory, greedy, correct, j, vocab_size):
        self.trajectory, self.greedy, self.correct, self.j, self.V = trajectory, greedy, correct, j, vocab_size

    def __call__(self, hidden):  # (B, D) -> (B, V)
        i = (self.trajectory - hidden[:, None]).norm(dim=-1).argmin(dim=1)  # (B,): hidden of answer position i
        rows = torch.arange(hidden.shape[0])
        ahead = (i + self.j - 1).clamp(max=self.greedy.shape[1] - 1)  # the answer token j ahead of position i
        token = self.greedy[rows, ahead]
        token = torch.where(self.correct[rows, ahead], token, (token + 1) % self.V)
        return F.one_hot(token, self.V).float()


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("p_correct", [1.0, 0.8, 0.5, 0.0])
def test_speculative_decoding_with_drafts_of_known_accuracy(k, p_correct, task, rng):
    prefix = torch.from_numpy(task.sample(rng, 16)[0])
    gpt = randomised(tiny_gpt(task, n_layer=2), 0.3)
    l, B = task.path_len, prefix.shape[0]
    greedy = greedy_decode(gpt, prefix, l)
    with torch.no_grad():  # hidden states of the greedy trajectory at positions P-1 .. P+l-2
        trajectory = gpt(torch.cat([prefix, greedy[:, :-1]], dim=1))[:, task.prefix_len - 1 :]
    for seed in range(5):
        correct = torch.rand(B, l, generator=torch.Generator().manual_seed(seed)) < p_correct  # (B, l)
        drafters = [OracleDrafter(trajectory, greedy, correct, j, task.vocab_size) for j in range(2, k + 1)]
        calls, hook = count_passes(gpt)
        assert torch.equal(speculative_greedy_decode(gpt, prefix, l, drafters), greedy)
        hook.remove()
        if p_correct == 1.0:  # prefill, then k tokens a pass (the last pass needs no successor)
            assert len(calls) == 1 + -(-(l - 1) // k) and max(calls[1:]) == min(k, l - 1)
        elif p_correct == 0.0:
            assert len(calls) == l  # every draft rejected: one token a pass, as greedy
        else:
            assert len(calls) <= l


class NoRewindGPT(GPT):
    """A GPT that, like a recurrent backbone, does not offer to rewind its cache (the Backbone default)."""

    rewind_cache = Backbone.rewind_cache


def test_a_cache_that_cannot_rewind_falls_back_to_greedy(task, rng):
    prefix = torch.from_numpy(task.sample(rng, 8)[0])
    gpt = NoRewindGPT(task.vocab_size, task.seq_len, n_layer=1, d_model=32, n_head=2).eval()
    objective = bound(task, gpt, k=3, speculative=True)
    greedy = greedy_decode(gpt, prefix, task.path_len)
    calls, hook = count_passes(gpt)
    assert torch.equal(objective.decode(gpt, prefix), greedy)
    hook.remove()
    assert calls == [task.prefix_len] + [1] * (task.path_len - 1)  # plain greedy: one token a pass


def test_kv_cache_rewind_forgets_the_dropped_tokens(task, rng):
    prefix = torch.from_numpy(task.sample(rng, 4)[0])
    gpt = randomised(tiny_gpt(task, n_layer=2), 0.3)
    extra = torch.randint(0, task.num_nodes, (4, 3))
    with torch.no_grad():
        fresh = gpt(torch.cat([prefix, extra[:, :1]], dim=1))[:, -1]
        cache = gpt.new_cache(4, task.seq_len)
        gpt(prefix, cache)
        gpt(extra[:, [2, 0]], cache)  # two wrong tokens, then rewind them and feed the right one
        assert gpt.rewind_cache(cache, task.prefix_len) and cache.pos == task.prefix_len
        torch.testing.assert_close(gpt(extra[:, :1], cache)[:, -1], fresh)
    with pytest.raises(ValueError, match="cannot rewind"):
        cache.rewind(cache.pos + 1)


# --- through the CLI -------------------------------------------------------------------------------------
MTP_ARGS = ("--model.objective", "nfl.objectives.MultiTokenHeads", "--model.objective.k", "3",
            "--model.objective.speculative", "true")


def test_heads_survive_a_checkpoint_round_trip(run_cli, tiny_config, tmp_path):
    cli = run_cli("fit", "--config", str(tiny_config), *MTP_ARGS, "--trainer.max_steps", "8")
    checkpoints = version_dir(tmp_path) / "checkpoints"
    system = PathStarSystem.load_from_checkpoint(checkpoints / "last.ckpt")
    objective = system.objective
    assert isinstance(objective, MultiTokenHeads) and objective.k == 3 and objective.speculative
    heads = {n: p for n, p in system.state_dict().items() if n.startswith("objective.heads.")}
    assert len(heads) == 2 * 6  # two heads of LayerNorm + two Linear layers (weight and bias each)
    trained = cli.model.state_dict()
    earlier = torch.load(checkpoints / "epoch=0-step=4.ckpt", weights_only=False)["state_dict"]
    for name, value in heads.items():
        assert torch.equal(value, trained[name].cpu()), name  # restored exactly
    assert any(not torch.equal(earlier[n], v) for n, v in heads.items())  # and optimised between checkpoints
    ckpt = torch.load(checkpoints / "last.ckpt", weights_only=False)
    n_optimised = sum(len(g["params"]) for g in ckpt["optimizer_states"][0]["param_groups"])
    assert n_optimised == len(list(system.parameters()))
    prefix = torch.from_numpy(system.task.sample(np.random.default_rng(0), 8)[0])
    system.eval()
    assert torch.equal(system.objective.decode(system.backbone, prefix), greedy_decode(system.backbone, prefix, 4))


def test_per_head_accuracies_and_losses_are_logged(run_cli, tiny_config, tmp_path):
    run_cli("fit", "--config", str(tiny_config), *MTP_ARGS, "--trainer.max_steps", "4", "--test_after_fit", "true")
    scalars = read_scalars(version_dir(tmp_path))
    for j in (1, 2, 3):
        for stage in ("val", "test"):
            assert f"{stage}/mtp/head_{j}_acc" in scalars and 0.0 <= scalars[f"{stage}/mtp/head_{j}_acc"][0][1] <= 1.0
        assert f"train/mtp/head_{j}_loss" in scalars
    assert "val/mtp/head_4_acc" not in scalars
    # head 1 is the system's own teacher-forced prediction
    tf = [scalars[f"test/tf/pos_{i}"][0][1] for i in range(1, 5)]
    assert scalars["test/mtp/head_1_acc"][0][1] == pytest.approx(sum(tf) / 4, abs=1e-6)


def test_eval_loss_is_the_next_token_loss_not_the_head_sum(run_cli, tiny_config, tmp_path):
    """val/loss stays comparable across objectives: head 1's cross-entropy, not the sum over heads."""
    cli = run_cli("fit", "--config", str(tiny_config), *MTP_ARGS, "--trainer.max_steps", "4")
    system, data = cli.model.eval(), cli.datamodule
    prefix, target = (torch.from_numpy(a) for a in data.test_graphs)
    with torch.no_grad():
        out = system.objective(system.backbone, prefix, target)
    head1 = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), target.flatten()).item()
    logged = cli.trainer.callback_metrics["val/loss"].item()
    assert logged == pytest.approx(head1, rel=1e-4)
    assert out.loss.item() > 1.5 * head1  # the training loss sums 3 heads: it would have been far off
