"""NextLat's options for the choices of shoaibahmed/Next-Token-Failures' re-implementation (``kl_positions``,
``detach_embedding``, ``zero_init_last``, ``history``), each against a slow implementation written here: one
rollout start at a time, the dynamics model applied from its own weights, the losses averaged over a list.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nfl.errors import OptionError
from nfl.objectives import NextLat
from nfl.objectives.base import fed_back
from nfl.objectives.nextlat import LatentDynamics
from nfl.tasks import PathStar
from nfl.tasks.base import IGNORE_INDEX
from tests.conftest import bind_objective as bound, sample_batch as sample

FIXED = PathStar(degree=2, path_len=4, num_nodes=20)
VARIED = PathStar(degree=2, arm_lengths=[2, 4], goal="any", num_nodes=20)
FAITHFUL = dict(kl_positions="answer", detach_embedding=True, zero_init_last=True, history=4)


def dynamics_step(dynamics, window, embedding):
    """One step from the module's weights: ``window[-1] + MLP(LN([window[0]; ...; window[-1]; embedding]))``."""
    x = torch.cat([*window, embedding])
    x = F.layer_norm(x, x.shape, dynamics.norm.weight, dynamics.norm.bias, dynamics.norm.eps)
    first, _, second, _, last = dynamics.mlp
    x = F.gelu(F.linear(x, first.weight, first.bias))
    x = F.gelu(F.linear(x, second.weight, second.bias))
    return window[-1] + F.linear(x, last.weight, last.bias)


def slow_losses(objective, backbone, prefix, target):
    """Latent, KL and next-token losses, one (row, start, step) at a time, from the states of every position.

    A rollout starts at each position ``t`` (from ``=`` on under ``positions: answer``) that has ``K - 1``
    states before it, reads ``h_{t-K+1..t}``, and steps on the true next tokens while they are real; the KL is
    taken where the stepped-to position predicts an answer token (``kl_positions: answer``) or everywhere."""
    K, P, W = objective.history, prefix.shape[1], backbone.tok_emb.weight
    tokens = torch.cat([prefix, fed_back(target)], dim=1)
    hidden = backbone(tokens)
    lengths = (target != IGNORE_INDEX).sum(dim=1)
    l1, kl, ce = [], [], []
    for b in range(len(tokens)):
        last = P + int(lengths[b]) - 2  # the row's last real input
        for i in range(int(lengths[b])):  # answer token i, predicted from position P - 1 + i
            ce.append(F.cross_entropy(F.linear(hidden[b, P - 1 + i], W)[None], target[b, i][None]))
        first = K - 1 if objective.positions == "all" else P - 1
        for t in range(first, tokens.shape[1]):
            window = [hidden[b, i] for i in range(t - K + 1, t + 1)]
            for p in range(t + 1, min(t + objective.rollout, last) + 1):
                e = W[tokens[b, p]]
                guess = dynamics_step(objective.dynamics, window, e.detach() if objective.detach_embedding else e)
                window = window[1:] + [guess]
                goal = hidden[b, p].detach()
                l1.append(F.smooth_l1_loss(guess, goal))
                if objective.kl_positions == "all" or p >= P - 1:
                    true = F.log_softmax(F.linear(goal, W.detach()), -1)
                    pred = F.log_softmax(F.linear(guess, W.detach()), -1)
                    kl.append((true.exp() * (true - pred)).sum())
    return torch.stack(l1).mean(), torch.stack(kl).mean(), torch.stack(ce).mean()


def redraw(dynamics, std=0.3):
    """Wider dynamics weights, so every input (each state of the window, the embedding) changes the output."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in dynamics.parameters():
            p.normal_(0.0, std)


def grads(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)


OPTIONS = [
    {},
    {"kl_positions": "answer"},
    {"detach_embedding": True},
    {"history": 2},
    {"history": 4},
    {"history": 3, "positions": "answer"},
    {**FAITHFUL, "positions": "answer"},
    FAITHFUL,
]


@pytest.mark.parametrize("task", [FIXED, VARIED], ids=["fixed", "varied"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_losses_and_gradients_match_the_slow_rollout(task, options):
    torch.manual_seed(0)
    objective, backbone = bound(NextLat(horizon=2, **options), task, std=0.3)
    redraw(objective.dynamics)
    prefix, target = sample(task, 3)
    out = objective(backbone, prefix, target)
    latent, kl = out.extras["nextlat/latent_loss"], out.extras["nextlat/kl"]
    slow_latent, slow_kl, slow_ce = slow_losses(objective, backbone, prefix, target)
    torch.testing.assert_close(latent, slow_latent.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kl, slow_kl.detach(), rtol=1e-5, atol=1e-6)
    # The same gradients into the backbone (its embedding included) and the dynamics model, detach points and all.
    params = [*backbone.parameters(), *objective.dynamics.parameters()]
    fast = grads(out.loss, params)
    slow = grads(slow_ce + slow_latent + slow_kl, params)
    for f, s in zip(fast, slow):
        torch.testing.assert_close(f, s, rtol=1e-4, atol=1e-6)


def test_the_defaults_compute_todays_rule_exactly():
    """Defaults: the rule before these options, restated here as it was (vectorised, one start per position, KL
    at every rolled-out step), must give the very same bits, and the slow rollout agrees."""
    for task in (FIXED, VARIED):
        torch.manual_seed(0)
        objective, backbone = bound(NextLat(), task)
        prefix, target = sample(task, 4)
        out = objective(backbone, prefix, target)
        P, inputs = prefix.shape[1], objective.inputs(prefix, target)
        hidden = backbone(inputs)
        real = torch.arange(inputs.shape[1])[None] <= (P + (target != IGNORE_INDEX).sum(1) - 2)[:, None]
        latent, kl = todays_latent_losses(objective, backbone, hidden, inputs, real)
        assert torch.equal(out.extras["nextlat/latent_loss"], latent.detach())
        assert torch.equal(out.extras["nextlat/kl"], kl.detach())
        slow_latent, slow_kl, _ = slow_losses(objective, backbone, prefix, target)
        torch.testing.assert_close(latent, slow_latent, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(kl, slow_kl, rtol=1e-5, atol=1e-7)


def todays_latent_losses(objective, backbone, hidden, tokens, real):
    """``NextLat.latent_losses`` as it was before ``history``, ``kl_positions`` and ``detach_embedding``."""
    from nfl.objectives.base import frozen_unembed

    embedding = backbone.token_embedding(tokens)
    target = hidden.detach()
    true_logp = F.log_softmax(backbone.unembed(target).float(), dim=-1)
    predicted = hidden[:, :-1]
    latent_sum = kl_sum = count = hidden.new_zeros((), dtype=torch.float32)
    for k in range(1, min(objective.rollout, hidden.shape[1] - 1) + 1):
        step = objective.dynamics.mlp(objective.dynamics.norm(torch.cat([predicted, embedding[:, k:]], dim=-1)))
        predicted = predicted + step
        mask = real[:, k:].float()
        l1 = F.smooth_l1_loss(predicted.float(), target[:, k:].float(), reduction="none").mean(-1)
        pred_logp = F.log_softmax(frozen_unembed(backbone, predicted).float(), dim=-1)
        kl = F.kl_div(pred_logp, true_logp[:, k:], log_target=True, reduction="none").sum(-1)
        latent_sum, kl_sum, count = latent_sum + (l1 * mask).sum(), kl_sum + (kl * mask).sum(), count + mask.sum()
        predicted = predicted[:, :-1]
    return latent_sum / count.clamp(min=1), kl_sum / count.clamp(min=1)


def test_kl_positions_answer_drops_the_prefix_steps_only():
    torch.manual_seed(0)
    objective, backbone = bound(NextLat(horizon=2), FIXED, std=0.3)
    prefix, target = sample(FIXED, 3)
    everywhere = objective(backbone, prefix, target).extras
    objective.kl_positions = "answer"
    answer = objective(backbone, prefix, target).extras
    assert torch.equal(everywhere["nextlat/latent_loss"], answer["nextlat/latent_loss"])
    assert not torch.allclose(everywhere["nextlat/kl"], answer["nextlat/kl"])
    objective.positions = "answer"  # every step already predicts an answer token: nothing left to drop
    in_answer = objective(backbone, prefix, target).extras["nextlat/kl"]
    objective.kl_positions = "all"
    torch.testing.assert_close(objective(backbone, prefix, target).extras["nextlat/kl"], in_answer)


def test_detach_embedding_stops_only_the_dynamics_models_gradient_into_the_embedding():
    torch.manual_seed(0)
    objective, backbone = bound(NextLat(horizon=2), FIXED)
    redraw(objective.dynamics)
    prefix, target = sample(FIXED, 3)
    attached = objective(backbone, prefix, target)
    objective.detach_embedding = True
    detached = objective(backbone, prefix, target)
    assert torch.equal(attached.loss, detached.loss)  # where gradient goes changes, not what is computed
    g_attached, g_detached = (grads(out.loss, [backbone.tok_emb.weight])[0] for out in (attached, detached))
    assert (g_attached - g_detached).abs().max() > 1e-3 * g_attached.abs().max()


@pytest.mark.parametrize("history", [1, 4])
def test_zero_init_last_starts_as_the_identity_and_keeps_the_other_draws(history):
    torch.manual_seed(0)
    plain = LatentDynamics(8, history)
    torch.manual_seed(0)
    zero = LatentDynamics(8, history, zero_init_last=True)
    assert zero.mlp[-1].weight.abs().sum() == 0 and zero.mlp[-1].bias.abs().sum() == 0
    for (name, a), (_, b) in zip(plain.named_parameters(), zero.named_parameters()):
        if not name.startswith("mlp.4."):
            assert torch.equal(a, b), name
    window, e = torch.randn(5, history * 8), torch.randn(5, 8)
    assert torch.equal(zero(window, e), window[:, -8:])  # the newest state, through the residual
    assert not torch.allclose(plain(window, e), window[:, -8:])


def test_history_windows_leave_out_the_first_positions():
    """Step ``k`` reads a window of ``K`` states at every start with ``K - 1`` states before it."""
    torch.manual_seed(0)
    objective, backbone = bound(NextLat(history=4), FIXED)
    shapes = []
    objective.dynamics.register_forward_hook(lambda m, args, out: shapes.append((args[0].shape, out.shape)))
    prefix, target = sample(FIXED, 2)
    objective(backbone, prefix, target)
    T, D = FIXED.seq_len, 16
    assert shapes == [((2, T - 4 - k + 1, 4 * D), (2, T - 4 - k + 1, D)) for k in range(1, objective.rollout + 1)]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"kl_positions": "prefix"}, "NextLat.kl_positions=prefix: must be all or answer"),
        ({"positions": "al"}, "NextLat.positions=al: must be all or answer"),
        ({"history": 0}, "NextLat.history=0: must be >= 1"),
        ({"history": 2.5}, "NextLat.history=2.5: must be a whole number"),
    ],
)
def test_bad_values_name_the_option(options, message):
    with pytest.raises(OptionError, match=message):
        NextLat(**options)


def test_a_history_longer_than_the_prefix_is_refused_at_bind():
    with pytest.raises(OptionError, match=f"NextLat.history={FIXED.prefix_len}: must be below the prefix length"):
        bound(NextLat(history=FIXED.prefix_len), FIXED)
