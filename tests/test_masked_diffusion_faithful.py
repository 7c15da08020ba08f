"""Masked diffusion's options after Ye et al.'s code (HKUNLP/diffusion-vs-ar): the shifted readout and the
Gumbel-perturbed top-k decoding, each compared with a slow implementation written here one row and one position at
a time from a tiny GPT's full outputs (every position of one bidirectional pass, nothing sliced by the objective).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nfl.errors import OptionError
from nfl.objectives import MaskedDiffusion
from nfl.tasks import PathStar
from nfl.tasks.base import IGNORE_INDEX
from tests.conftest import bind_objective as bound, sample_batch as sample

FIXED = PathStar(degree=2, path_len=5, num_nodes=20)
VARIED = PathStar(degree=2, arm_lengths=[2, 4], goal="any", num_nodes=20)
TASKS = pytest.mark.parametrize("task", [FIXED, VARIED], ids=["fixed", "varied"])


def full_logits(backbone, seq):
    """(n,) tokens -> (n, V): the output at every position of one bidirectional pass over one row."""
    with torch.no_grad():
        return backbone.unembed(backbone(seq[None], attention="bidirectional"))[0]


def read_position(P, i, shift):
    """The input position whose output predicts answer position i (0-based): the one before it when shifted."""
    return P - 1 + i if shift else P + i


def clean_token(task, token):
    return int(token) if token != IGNORE_INDEX else task.pad


def capture_inputs(backbone):
    seen = []
    backbone.register_forward_pre_hook(lambda m, args, kwargs: seen.append((args[0].clone(), dict(kwargs))),
                                       with_kwargs=True)
    return seen


# --- the shifted readout ---------------------------------------------------------------------------------
@TASKS
def test_shifted_loss_matches_a_per_row_per_position_loop(task):
    T, B = 10, 8
    objective, backbone = bound(MaskedDiffusion(timesteps=T, shift=True), task, std=0.3)  # linear, focal 0.25, 1
    mask = objective.token_ids["mask"]
    prefix, target = sample(task, B)
    P, L = prefix.shape[1], target.shape[1]
    seen = capture_inputs(backbone)
    torch.manual_seed(5)
    out = objective(backbone, prefix, target)
    torch.manual_seed(5)  # the same draws again: each row's noise level
    rate = torch.randint(1, T + 1, (B, 1)).float() / T
    (idx, kwargs), = seen
    assert kwargs["output_from"] == P - 1  # the backbone computes the '=' and the answer, not the prefix before
    total, count, first = 0.0, 0, 0
    for b in range(B):
        logits = full_logits(backbone, idx[b])
        r = float(rate[b])
        for i in range(L):
            if idx[b, P + i] != mask:
                continue
            ce = F.cross_entropy(logits[P - 1 + i][None], torch.tensor([clean_token(task, target[b, i])]))
            total += 0.25 * (1 - torch.exp(-ce)) * ce * (1 - r + 1 / T)
            count, first = count + 1, first + (i == 0)
    assert count > 0 and first > 0  # answer token 1, read off the '=', is among the masked ones
    torch.testing.assert_close(out.loss.detach(), (total / count).reshape(()), rtol=1e-5, atol=1e-6)


@TASKS
def test_shifted_one_pass_tags_read_the_position_before_each_answer_token(task):
    objective, backbone = bound(MaskedDiffusion(shift=True, steps=2), task, std=0.3)
    mask = objective.token_ids["mask"]
    prefix, target = sample(task, 6)
    P, L = prefix.shape[1], target.shape[1]
    out, _ = objective.evaluate(backbone, prefix, target, L)
    expected = torch.stack([full_logits(backbone, torch.cat([prefix[b], torch.full((L,), mask)]))[P - 1 : P - 1 + L]
                            for b in range(len(prefix))])
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-5)  # {stage}/loss is their cross-entropy
    metric = objective.eval_metric()
    metric.update(out, target)
    tags = metric.compute()
    for i in range(L):
        rows = [b for b in range(len(prefix)) if target[b, i] not in (IGNORE_INDEX, task.end)]
        if rows:
            hits = sum(int(expected[b, i].argmax()) == int(target[b, i]) for b in rows)
            assert float(tags[f"mdm/denoise_pos_{i + 1}"]) == pytest.approx(hits / len(rows))


def test_the_default_readout_is_unshifted_and_asks_for_the_answer_positions_only():
    objective, backbone = bound(MaskedDiffusion(), FIXED, std=0.3)
    prefix, target = sample(FIXED, 4)
    seen = capture_inputs(backbone)
    out, _ = objective.evaluate(backbone, prefix, target, 5)
    assert seen[0][1]["output_from"] == prefix.shape[1]
    full = full_logits(backbone, seen[0][0][0])
    torch.testing.assert_close(out.logits[0], full[prefix.shape[1]:], rtol=1e-5, atol=1e-5)


# --- decoding --------------------------------------------------------------------------------------------
def slow_decode(objective, backbone, prefix, width, *, steps, remask, repredict, shift, noise, seed):
    """Decoding one row and one position at a time. Ye et al.'s rule (``repredict``) is written as their code
    writes it: every answer position takes the pass's best token, and the ``k = floor(width * t / T)`` positions
    (``t = T - s``) whose perturbed score is below the ``k + 1``-th lowest are masked again."""
    mask = objective.token_ids["mask"]
    B, P = prefix.shape
    g = torch.Generator().manual_seed(seed)
    x = [[mask] * width for _ in range(B)]
    passes = done = 0
    for s in range(1, steps + 1):
        goal = math.ceil(width * s / steps)
        if goal == done and not repredict:
            continue
        passes += 1
        scale = noise * (steps - s) / steps
        u = torch.rand(B, width, generator=g) if scale > 0 else None  # one draw per answer position
        for b in range(B):
            logits = full_logits(backbone, torch.cat([prefix[b], torch.tensor(x[b])]))
            token, score = [], []
            for i in range(width):
                logp = logits[read_position(P, i, shift)].float().log_softmax(-1)
                logp[mask] = -math.inf
                best = int(logp.argmax())
                tok = x[b][i] if x[b][i] != mask and not repredict else best
                token.append(tok)
                sc = float(logp[tok])
                if u is not None:
                    sc += scale * -math.log(-math.log(float(u[b, i]) + 1e-8) + 1e-8)
                score.append(sc)
            if repredict:
                k = width - goal  # = floor(width * t / T)
                cutoff = sorted(score)[k] if k < width else math.inf
                x[b] = [mask if score[i] < cutoff else token[i] for i in range(width)]
            elif remask:
                keep = sorted(range(width), key=lambda i: -score[i])[:goal]
                x[b] = [token[i] if i in keep else mask for i in range(width)]
            else:
                still = [i for i in range(width) if x[b][i] == mask]
                for i in sorted(still, key=lambda i: -score[i])[: goal - done]:
                    x[b][i] = token[i]
        done = goal
    return torch.tensor(x), passes


DECODINGS = [  # steps, remask, repredict, shift, noise
    (20, True, True, True, 0.5),  # Ye et al.'s path-finding decoding: 20 passes for 5 positions
    (7, True, True, True, 4.0),
    (5, True, True, False, 0.0),
    (3, True, False, False, 2.0),  # nfl's remasking (an unmasked token keeps its token), with noise
    (None, False, False, True, 2.0),  # no remasking: only masked positions compete
]


@pytest.mark.parametrize("task", [FIXED, VARIED], ids=["fixed", "varied"])
@pytest.mark.parametrize("steps, remask, repredict, shift, noise", DECODINGS)
def test_decoding_matches_a_slow_loop_with_the_same_generator(task, steps, remask, repredict, shift, noise):
    options = dict(steps=steps, remask=remask, repredict=repredict, shift=shift, noise=noise)
    objective, backbone = bound(MaskedDiffusion(noise_seed=3, **options), task, std=0.3)
    prefix, target = sample(task, 4)
    width = target.shape[1]
    got, passes = objective.generate(backbone, prefix, width)
    options["steps"] = steps or width
    expected, slow_passes = slow_decode(objective, backbone, prefix, width, seed=3, **options)
    assert torch.equal(got, expected)
    assert (passes == slow_passes).all()
    assert not (got == objective.token_ids["mask"]).any()
    if repredict:
        assert slow_passes == steps  # every pass runs, even those that unmask nothing more


def test_the_noise_changes_choices_and_is_reproducible_without_touching_the_global_generator():
    prefix = sample(FIXED, 16)[0]

    def decode(**options):
        torch.manual_seed(0)  # the same weights for every decoder
        objective, backbone = bound(MaskedDiffusion(steps=5, remask=True, repredict=True, shift=True, **options),
                                    FIXED, std=0.3)
        state = torch.get_rng_state()
        x = objective.generate(backbone, prefix, 5)[0]
        assert torch.equal(torch.get_rng_state(), state)  # decoding draws nothing from the global generator
        return x

    noisy = decode(noise=4.0)
    assert not torch.equal(decode(), noisy)  # the noise does reorder the choices
    assert not torch.equal(decode(noise=4.0, noise_seed=1), noisy)  # and the seed says which noise
    assert torch.equal(decode(noise=4.0), noisy)  # a fresh generator at every call: the same answers again


# --- bad values ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, shown", [
    ({"noise": -0.5}, "MaskedDiffusion.noise=-0.5:"),
    ({"noise": math.nan}, "MaskedDiffusion.noise=nan:"),
    ({"noise": math.inf}, "MaskedDiffusion.noise=inf:"),
    ({"noise_seed": -1}, "MaskedDiffusion.noise_seed=-1:"),
    ({"repredict": True}, "MaskedDiffusion.repredict=true:"),  # without remask
])
def test_bad_values_name_the_option(options, shown):
    with pytest.raises(OptionError) as error:
        MaskedDiffusion(**options)
    assert str(error.value).startswith(shown) and "\n" not in str(error.value)
