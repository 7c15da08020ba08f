"""Frydenlund's supervision fixes: masked teacher forcing and ranking into the future (RITF).

Inputs are checked position by position, losses against slow implementations written here from the paper's
definitions (one position, pair or node at a time), and the neutral settings against teacher forcing on the same
backbone instance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nfl.errors import OptionError, UserInputError
from nfl.models import GPT, Mamba
from nfl.objectives import MaskedTeacherForcing, RankIntoFuture, TeacherForcing
from nfl.tasks import PathStar, TreeStar
from nfl.tasks.base import IGNORE_INDEX
from tests.conftest import bind_objective as bound, sample_batch as sample

FIXED = PathStar(degree=2, path_len=5, num_nodes=20)
VARIED = PathStar(degree=2, arm_lengths=[2, 4], goal="any", num_nodes=20)
TREE = TreeStar(degree=2, branching=2, depth=2, segment=1, num_nodes=20)


def capture_inputs(backbone):
    seen = []
    backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    return seen


def loss_and_grads(objective, backbone, prefix, target, seed=0):
    backbone.zero_grad()
    torch.manual_seed(seed)
    out = objective(backbone, prefix, target)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}


def assert_teacher_forcing_bit_for_bit(objective, backbone, prefix, target):
    loss, grads = loss_and_grads(objective, backbone, prefix, target)
    tf_loss, tf_grads = loss_and_grads(TeacherForcing(), backbone, prefix, target)
    assert torch.equal(loss, tf_loss)
    assert grads.keys() == tf_grads.keys() and all(torch.equal(grads[n], tf_grads[n]) for n in grads)


# --- masked teacher forcing ------------------------------------------------------------------------------
def corrupted(objective, backbone, prefix, target):
    """The answer-side inputs the backbone read in one training step, and that step's output."""
    seen = capture_inputs(backbone)
    out = objective(backbone, prefix, target)
    (idx,) = seen
    P = prefix.shape[1]
    assert torch.equal(idx[:, :P], prefix)  # the prefix (and its '=') is never masked
    return idx[:, P:], out


@pytest.mark.parametrize("task", [FIXED, VARIED], ids=["fixed", "varied"])
def test_masking_touches_only_fed_back_answer_nodes(task):
    objective, backbone = bound(MaskedTeacherForcing(rate=1.0), task)
    prefix, target = sample(task, 32)
    fed, out = corrupted(objective, backbone, prefix, target)
    scored_next = target[:, 1:] != IGNORE_INDEX  # fed-back answer nodes: their output is scored
    mask = objective.token_ids["mask"]
    assert (fed[scored_next] == mask).all()
    # The end token and the filler after it (which predict nothing scored) are left as teacher forcing has them.
    assert torch.equal(fed[~scored_next], target[:, :-1].clamp(min=0)[~scored_next])
    assert out.extras["masked_tf/masked_fraction"].item() == 1.0


def test_random_masking_hits_each_answer_input_at_the_rate():
    objective, backbone = bound(MaskedTeacherForcing(rate=0.3), FIXED)
    prefix, target = sample(FIXED, 512)
    fed, out = corrupted(objective, backbone, prefix, target)
    masked = fed == objective.token_ids["mask"]
    assert torch.equal(fed[~masked], target[:, :-1][~masked])  # the rest is the true answer
    per_position = masked.float().mean(0)  # (l - 1,): every fed-back position, independently
    assert ((per_position - 0.3).abs() < 0.07).all(), per_position
    assert out.extras["masked_tf/masked_fraction"].item() == pytest.approx(masked.float().mean().item())


def test_span_masking_is_one_contiguous_run_of_rate_times_the_answer():
    objective, backbone = bound(MaskedTeacherForcing(rate=0.5, span=True), FIXED)
    prefix, target = sample(FIXED, 300)
    fed, _ = corrupted(objective, backbone, prefix, target)
    masked = fed == objective.token_ids["mask"]  # 4 fed-back nodes a row, so exactly 2 of them
    starts = []
    for row in masked.tolist():
        cols = [c for c, m in enumerate(row) if m]
        assert len(cols) == 2 and cols[1] == cols[0] + 1, row
        starts.append(cols[0])
    assert set(starts) == {0, 1, 2}  # every place the span fits, uniformly
    assert all(abs(starts.count(s) / 300 - 1 / 3) < 0.1 for s in (0, 1, 2))


def test_span_masking_of_answers_of_varied_length_stays_inside_each_answer():
    objective, backbone = bound(MaskedTeacherForcing(rate=0.5, span=True), VARIED)
    prefix, target = sample(VARIED, 200)
    fed, _ = corrupted(objective, backbone, prefix, target)
    masked = fed == objective.token_ids["mask"]
    n = (target[:, 1:] != IGNORE_INDEX).sum(1)
    assert len(set(n.tolist())) > 1  # answers of several lengths
    for row, m in zip(masked.tolist(), n.tolist()):
        cols = [c for c, x in enumerate(row) if x]
        assert len(cols) in (math.floor(m / 2), math.ceil(m / 2))
        assert cols == list(range(cols[0], cols[0] + len(cols))) if cols else True
        assert all(c < m for c in cols)


def test_replacement_puts_random_nodes_where_it_does_not_mask():
    objective, backbone = bound(MaskedTeacherForcing(rate=1.0, replace=0.5), FIXED)
    prefix, target = sample(FIXED, 256)
    fed, _ = corrupted(objective, backbone, prefix, target)
    masked = fed == objective.token_ids["mask"]
    assert 0.4 < masked.float().mean() < 0.6
    assert (fed[~masked] < FIXED.num_nodes).all()
    assert (fed[~masked] != target[:, :-1][~masked]).float().mean() > 0.8  # random nodes, not the answer


@pytest.mark.parametrize("task, span", [(FIXED, False), (VARIED, True)], ids=["fixed", "varied-span"])
def test_masked_loss_is_next_token_cross_entropy_on_the_masked_input(task, span):
    objective, backbone = bound(MaskedTeacherForcing(rate=0.5, span=span), task, std=0.3)
    prefix, target = sample(task, 4)
    fed, out = corrupted(objective, backbone, prefix, target)
    P, terms = prefix.shape[1], []
    with torch.no_grad():  # each scored token from its own causal pass over what came before it
        for b in range(len(prefix)):
            for i in range(target.shape[1]):
                if target[b, i] == IGNORE_INDEX:
                    continue
                seq = torch.cat([prefix[b], fed[b, :i]])[None]
                terms.append(F.cross_entropy(backbone.unembed(backbone(seq)[0, -1])[None], target[b, i][None]))
    torch.testing.assert_close(out.loss.detach(), torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("span", [False, True])
def test_rate_zero_is_teacher_forcing_bit_for_bit(span):
    objective, backbone = bound(MaskedTeacherForcing(rate=0.0, span=span), VARIED)
    assert_teacher_forcing_bit_for_bit(objective, backbone, *sample(VARIED, 8))


def test_evaluation_is_unmasked_teacher_forcing_and_decoding_never_emits_the_mask():
    objective, backbone = bound(MaskedTeacherForcing(rate=1.0), FIXED, std=0.3)
    mask = objective.token_ids["mask"]
    prefix, target = sample(FIXED, 16)
    tf = TeacherForcing()
    tf.bind(FIXED, backbone)
    out, _ = objective.evaluate(backbone, prefix, target, FIXED.target_len)  # in training mode, still unmasked
    tf_out, _ = tf.evaluate(backbone, prefix, target, FIXED.target_len)
    assert torch.equal(out.logits, tf_out.logits) and torch.equal(out.loss, tf_out.loss)
    objective.eval()
    assert torch.equal(objective(backbone, prefix, target).loss, tf_out.loss)  # eval mode: nothing masked
    # Make the mask the most likely token everywhere: teacher forcing's decoder emits it, this one never does.
    with torch.no_grad():
        backbone.tok_emb.weight[mask] = 50 * backbone(prefix)[:, -1].mean(0)
    assert (tf.decode(backbone, prefix) == mask).any()
    seq = prefix
    with torch.no_grad():  # slow greedy over every other token, one uncached pass per step
        for _ in range(FIXED.target_len):
            logits = backbone.unembed(backbone(seq)[:, -1])
            seq = torch.cat([seq, logits[:, :mask].argmax(-1, keepdim=True)], dim=1)
    expected = seq[:, prefix.shape[1]:]
    assert torch.equal(objective.decode(backbone, prefix), expected)
    assert torch.equal(objective.evaluate(backbone, prefix, target, FIXED.target_len)[1], expected)
    objective.use_cache = False
    assert torch.equal(objective.evaluate(backbone, prefix, target, FIXED.target_len)[1], expected)


def test_masked_teacher_forcing_runs_on_mamba():
    objective, mamba = bound(MaskedTeacherForcing(rate=0.5, span=True), FIXED, Mamba, n_layer=1, d_model=16)
    prefix, target = sample(FIXED)
    assert math.isfinite(objective(mamba, prefix, target).loss.item())
    out, generated = objective.evaluate(mamba, prefix, target, FIXED.target_len)
    assert generated.shape == target.shape and not (generated == objective.token_ids["mask"]).any()


# --- ranking into the future -----------------------------------------------------------------------------
def slow_ritf(task, logits, prefix, target, margin, off_path=True):
    """Per row: the paper's pairs written out, one position and pair at a time -> (hinge sums, pair counts)."""
    sums, counts = [], []
    for b in range(len(prefix)):
        nodes = [int(t) for t in target[b] if 0 <= t < task.num_nodes]  # the answer's nodes, in order
        parents, children = task.edges_of(prefix[b : b + 1].numpy())
        graph = {int(v) for v in [*parents[0], *children[0]] if v < task.num_nodes}
        off = sorted(graph - set(nodes))
        total, count = 0.0, 0
        for i in range(len(nodes)):
            s = logits[b, i].tolist()
            for j in range(i, len(nodes)):
                for k in range(j + 1, len(nodes)):
                    total += max(0.0, margin - (s[nodes[j]] - s[nodes[k]]))
                    count += 1
                for o in off if off_path else []:
                    total += max(0.0, margin - (s[nodes[j]] - s[o]))
                    count += 1
        sums.append(total)
        counts.append(count)
    return sums, counts


def test_ritf_pairs_on_a_hand_made_graph():
    # G(2,3): path 4 -> 7 -> 1, other arm 4 -> 9 -> 2; with all logits equal every pair costs the margin.
    task = PathStar(degree=2, path_len=3, num_nodes=10)
    prefix = torch.from_numpy(task.encode_prefix(np.array([[9, 4, 7, 4]]), np.array([[2, 9, 1, 7]]),
                                                 np.array([4]), np.array([1])))
    target = torch.tensor([[4, 7, 1]])
    objective = RankIntoFuture(margin=0.5, reduction="sum")
    objective.bind(task, GPT(task.vocab_size, task.seq_len, n_layer=1, d_model=8, n_head=1))
    assert objective.off_path_nodes(prefix, target, target >= 0).nonzero()[:, 1].tolist() == [2, 9]
    logits = torch.zeros(1, 3, task.vocab_size)
    # position 1: 3 order pairs + 3 x 2 off-path; position 2: 1 + 2 x 2; position 3: 0 + 1 x 2  -> 16 pairs
    assert objective.hinge(logits, prefix, target).item() == pytest.approx(0.5 * 16)
    objective.off_path = False
    assert objective.hinge(logits, prefix, target).item() == pytest.approx(0.5 * 4)
    logits[0, 0, 1] = 2.0  # position 1: the goal above the start and the next node costs 2.5 in each pair
    assert objective.hinge(logits, prefix, target).item() == pytest.approx(0.5 * 2 + 2.5 * 2 + 0.0)


@pytest.mark.parametrize("task", [FIXED, VARIED, TREE], ids=["fixed", "varied", "tree"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ritf_hinge_matches_the_pairwise_definition(task, reduction):
    objective, _ = bound(RankIntoFuture(margin=0.7, reduction=reduction), task)
    prefix, target = sample(task, 5)
    logits = torch.randn(5, target.shape[1], task.vocab_size)
    sums, counts = slow_ritf(task, logits, prefix, target, 0.7)
    expected = sum(sums) / len(sums) if reduction == "sum" else sum(sums) / sum(counts)
    assert objective.hinge(logits, prefix, target).item() == pytest.approx(expected, rel=1e-5)
    objective.off_path = False
    sums, counts = slow_ritf(task, logits, prefix, target, 0.7, off_path=False)
    expected = sum(sums) / len(sums) if reduction == "sum" else sum(sums) / sum(counts)
    assert objective.hinge(logits, prefix, target).item() == pytest.approx(expected, rel=1e-5)


def test_ritf_loss_is_cross_entropy_plus_weighted_hinge_on_teacher_forced_logits():
    objective, backbone = bound(RankIntoFuture(margin=0.2, weight=0.5), VARIED, std=0.3)
    prefix, target = sample(VARIED, 6)
    out = objective(backbone, prefix, target)
    tf_out = TeacherForcing()(backbone, prefix, target)
    assert torch.equal(out.logits, tf_out.logits)
    sums, counts = slow_ritf(VARIED, tf_out.logits.detach(), prefix, target, 0.2)
    torch.testing.assert_close(out.extras["ritf/hinge_loss"], torch.tensor(sum(sums) / sum(counts)))
    assert torch.equal(out.extras["ritf/next_token_loss"], tf_out.loss.detach())
    torch.testing.assert_close(out.loss.detach(), tf_out.loss.detach() + 0.5 * sum(sums) / sum(counts))


def test_ritf_weight_zero_is_teacher_forcing_bit_for_bit():
    objective, backbone = bound(RankIntoFuture(weight=0.0), VARIED)
    assert_teacher_forcing_bit_for_bit(objective, backbone, *sample(VARIED, 8))


def test_ritf_evaluates_and_decodes_like_teacher_forcing_on_gpt_and_mamba():
    for cls, size in ((GPT, {"n_layer": 1, "d_model": 16, "n_head": 2}), (Mamba, {"n_layer": 1, "d_model": 16})):
        objective, backbone = bound(RankIntoFuture(), FIXED, cls, std=0.3, **size)
        tf = TeacherForcing()
        tf.bind(FIXED, backbone)
        prefix, target = sample(FIXED, 8)
        out, generated = objective.evaluate(backbone, prefix, target, FIXED.target_len)
        tf_out, tf_generated = tf.evaluate(backbone, prefix, target, FIXED.target_len)
        assert objective.teacher_forced and torch.equal(out.logits, tf_out.logits)
        assert torch.equal(generated, tf_generated) and torch.equal(objective.decode(backbone, prefix), tf_generated)
        assert math.isfinite(objective(backbone, prefix, target).loss.item())


# --- options and backbones -------------------------------------------------------------------------------
@pytest.mark.parametrize("make, message", [
    (lambda: MaskedTeacherForcing(rate=1.5), r"^MaskedTeacherForcing\.rate=1\.5: must be in \[0\.0, 1\.0\]"),
    (lambda: MaskedTeacherForcing(replace=-0.1), r"^MaskedTeacherForcing\.replace=-0\.1: must be in"),
    (lambda: RankIntoFuture(margin=-1.0), r"^RankIntoFuture\.margin=-1\.0: must be >= 0"),
    (lambda: RankIntoFuture(weight=-0.5), r"^RankIntoFuture\.weight=-0\.5: must be >= 0"),
    (lambda: RankIntoFuture(reduction="max"), r"^RankIntoFuture\.reduction=max: must be mean or sum"),
])
def test_bad_options_are_one_line(make, message):
    with pytest.raises(OptionError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_pretrained_tokenizers_are_refused_in_one_line(hf_folders):
    from nfl.models.hf import HFCausalLM
    from nfl.system import GraphSystem

    def hf(v, s):
        return HFCausalLM(v, s, str(hf_folders["gpt2"]))

    task = PathStar(degree=2, path_len=4, num_nodes=20)
    with pytest.raises(UserInputError, match=r"RankIntoFuture ranks node tokens.*nfl\.models\.GPT") as err:
        GraphSystem(backbone=hf, objective=RankIntoFuture(), task=task)
    assert "\n" not in str(err.value)
    with pytest.raises(UserInputError, match=r"MaskedTeacherForcing adds tokens of its own \(mask\)"):
        GraphSystem(backbone=hf, objective=MaskedTeacherForcing(), task=task)
