"""Token-order prediction and sequential multi-token modules: targets on hand-made batches, losses against slow
implementations written here from the papers' definitions, the neutral weight, and decoding that never uses the
training-only parts. (A few CLI steps, checkpoint/resume and the tags come from tests/test_objective_runs.py.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nfl.engine.decoding import greedy_decode
from nfl.errors import OptionError
from nfl.models import GPT, Mamba
from nfl.objectives import SequentialMultiToken, TeacherForcing, TokenOrder
from nfl.objectives.sequential_multi_token import ModuleAccuracy, SequentialOutput
from nfl.objectives.token_order import order_scores
from nfl.tasks import PathStar
from nfl.tasks.base import IGNORE_INDEX

FIXED = PathStar(degree=2, path_len=4, num_nodes=20)
VARIED = PathStar(degree=2, arm_lengths=[2, 4], goal="any", num_nodes=20)  # end token, IGNORE past it
X = IGNORE_INDEX


def bound(objective, task=FIXED, backbone=None):
    backbone = backbone or GPT(task.vocab_size, task.seq_len, n_layer=1, d_model=16, n_head=2)
    objective.bind(task, backbone, stop=task.end)
    return objective, backbone


def sample(task, n=5, seed=0):
    prefix, target = task.sample(np.random.default_rng(seed), n)
    return torch.from_numpy(prefix), torch.from_numpy(target)


def grads(module):
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def loss_and_grads(objective, backbone, prefix, target):
    backbone.zero_grad()
    loss = objective(backbone, prefix, target).loss
    loss.backward()
    return loss.detach(), grads(backbone)


# --- token-order prediction ----------------------------------------------------------------------------------
def test_order_scores_rank_the_next_occurrences_inside_the_window():
    target = torch.tensor([[5, 3, 7, X], [2, 2, 9, 4]])
    scores = order_scores(target, vocab_size=10, window=3)
    expected = [  # position -> {token: window - distance to its next occurrence}, every other token -inf
        [{5: 3, 3: 2, 7: 1}, {3: 3, 7: 2}, {7: 3}, {}],
        [{2: 3, 9: 1}, {2: 3, 9: 2, 4: 1}, {9: 3, 4: 2}, {4: 3}],  # 2's nearest occurrence wins; 4 at d=3 is out
    ]
    for b, rows in enumerate(expected):
        for j, ranked in enumerate(rows):
            want = torch.full((10,), float("-inf"))
            for token, score in ranked.items():
                want[token] = score
            assert torch.equal(scores[b, j], want), (b, j)


def slow_ranking_loss(objective, backbone, prefix, target):
    """TOP's ListNet loss one (row, position) at a time: score each token by its next occurrence, softmax, CE."""
    hidden = backbone(objective.inputs(prefix, target), output_from=prefix.shape[1] - 1)
    W, V, losses = objective.span, objective.order_head.out_features, []
    for b in range(target.shape[0]):
        answer = [t for t in target[b].tolist() if t != IGNORE_INDEX]
        for j in range(len(answer)):
            scores = torch.full((V,), float("-inf"))
            for v in range(V):
                later = [m - j for m in range(j, len(answer)) if answer[m] == v]
                if later and later[0] < W:
                    scores[v] = W - later[0]
            log_p = F.log_softmax(objective.order_head(hidden[b, j]), -1)
            losses.append(-(F.softmax(scores, -1) * log_p).sum())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("task, window", [(FIXED, None), (FIXED, 2), (VARIED, None)],
                         ids=["fixed", "window2", "varied"])
def test_token_order_loss_is_next_token_plus_the_slow_listnet_loss(task, window):
    objective, backbone = bound(TokenOrder(window=window, weight=0.5), task)
    assert objective.span == (window or task.target_len)
    prefix, target = sample(task)
    out = objective(backbone, prefix, target)
    slow = slow_ranking_loss(objective, backbone, prefix, target)
    torch.testing.assert_close(out.extras["top/ranking_loss"], slow.detach(), rtol=1e-5, atol=1e-6)
    tf = TeacherForcing()
    tf.bind(task, backbone, stop=task.end)
    torch.testing.assert_close(out.extras["top/next_token_loss"], tf(backbone, prefix, target).loss.detach())
    torch.testing.assert_close(out.loss, out.extras["top/next_token_loss"] + 0.5 * slow, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("task", [FIXED, VARIED], ids=["fixed", "varied"])
def test_token_order_at_weight_zero_is_teacher_forcing_bit_for_bit(task):
    objective, backbone = bound(TokenOrder(weight=0.0), task)
    tf = TeacherForcing()
    tf.bind(task, backbone, stop=task.end)
    prefix, target = sample(task)
    tf_loss, tf_grads = loss_and_grads(tf, backbone, prefix, target)
    loss, got = loss_and_grads(objective, backbone, prefix, target)
    assert torch.equal(loss, tf_loss)
    assert tf_grads.keys() == got.keys() and all(torch.equal(got[n], tf_grads[n]) for n in got)
    objective.weight = 1.0  # and the ranking loss does reach the backbone when it is weighted
    assert not torch.equal(loss_and_grads(objective, backbone, prefix, target)[1]["tok_emb.weight"],
                           tf_grads["tok_emb.weight"])


def test_token_order_decodes_and_evaluates_as_teacher_forcing_without_its_head():
    objective, backbone = bound(TokenOrder())
    tf = TeacherForcing()
    tf.bind(FIXED, backbone)
    assert objective.teacher_forced
    prefix, target = sample(FIXED)
    with torch.no_grad():
        objective.order_head.weight.normal_()  # inference must not read the training-only head
    (out, generated), (tf_out, tf_generated) = (o.evaluate(backbone, prefix, target, 4) for o in (objective, tf))
    assert torch.equal(out.logits, tf_out.logits) and torch.equal(generated, tf_generated)
    assert torch.equal(objective.decode(backbone, prefix), greedy_decode(backbone, prefix, 4, False))


def test_token_order_refuses_bad_options_in_one_line():
    with pytest.raises(OptionError, match=r"^TokenOrder\.window=0: must be >= 1 \(null is the answer width\)\.$"):
        TokenOrder(window=0)
    with pytest.raises(OptionError, match=r"^TokenOrder\.weight=-1: must be >= 0"):
        TokenOrder(weight=-1)


# --- sequential multi-token modules ------------------------------------------------------------------------------
def test_each_module_reads_the_previous_modules_output_and_the_embedding_k_ahead():
    objective, backbone = bound(SequentialMultiToken(depth=3))
    prefix, target = sample(FIXED, 3)
    seen = []
    for module in objective.depth_modules:
        module.register_forward_hook(lambda m, args, out: seen.append((args[0], args[1], out)))
    objective(backbone, prefix, target)
    inputs = torch.cat([prefix, target[:, :-1]], dim=1)  # teacher forcing's input, unchanged
    chained = backbone(inputs)  # h^0 at every position (positions: all)
    for k, (hidden, embedding, out) in enumerate(seen, start=1):
        T = inputs.shape[1] - k
        assert torch.equal(embedding, backbone.tok_emb(inputs[:, k:]))  # position t reads the token t + k
        torch.testing.assert_close(hidden, chained[:, :-1])  # module k-1's output, not the backbone's
        assert out.shape == (3, T, 16)
        chained = out
    assert not torch.allclose(seen[2][0], backbone(inputs)[:, :-3])  # the chained state is not h^0


def slow_attention_block(block, x):
    """The block one position and head at a time: position t attends to positions <= t."""
    T, D = x.shape
    H = block.n_head
    hd = D // H
    q, k, v = block.qkv(block.norm_attn(x)).split(D, dim=-1)
    rows = []
    for t in range(T):
        heads = []
        for h in range(H):
            sl = slice(h * hd, (h + 1) * hd)
            w = torch.softmax(torch.stack([q[t, sl] @ k[s, sl] / math.sqrt(hd) for s in range(t + 1)]), 0)
            heads.append(sum(w[s] * v[s, sl] for s in range(t + 1)))
        rows.append(torch.cat(heads))
    x = x + block.proj(torch.stack(rows))
    return x + block.mlp(block.norm_mlp(x))


def slow_module_losses(objective, backbone, prefix, target):
    """DeepSeek-V3's chain written out per row: h'^k_t = M_k[norm(h^{k-1}_t); norm(Emb(x_{t+k}))], h^k = TRM_k(h'^k),
    and module k's CE on answer token t - (P - 1) + k from positions t >= P - 1 (the '=' on)."""
    P, l = prefix.shape[1], target.shape[1]
    inputs = torch.cat([prefix, target[:, :-1].clamp(min=0)], dim=1)
    full = torch.cat([prefix, target], dim=1)
    losses = [[] for _ in objective.depth_modules]
    for b in range(prefix.shape[0]):
        h = backbone(inputs[b : b + 1])[0]  # (T, D): h^0
        for k, module in enumerate(objective.depth_modules, start=1):
            rows = [module.combine(torch.cat([module.norm_hidden(h[t]),
                                              module.norm_embedding(backbone.tok_emb.weight[inputs[b, t + k]])]))
                    for t in range(h.shape[0] - 1)]
            h = slow_attention_block(module.block, torch.stack(rows))  # h^k, one position shorter
            for t in range(P - 1, P - 1 + l - k):
                answer = full[b, t + k + 1]
                if answer != IGNORE_INDEX:
                    logits = module.out_norm(h[t]) @ backbone.tok_emb.weight.T
                    losses[k - 1].append(-F.log_softmax(logits, -1)[answer])
    per_module = [torch.stack(module_losses).mean() for module_losses in losses]
    return per_module


@pytest.mark.parametrize("task", [FIXED, VARIED], ids=["fixed", "varied"])
def test_module_losses_match_the_slow_chain_and_combine_by_weight(task):
    objective, backbone = bound(SequentialMultiToken(depth=2, weight=0.3, reduction="mean"), task)
    prefix, target = sample(task, 2)
    out = objective(backbone, prefix, target)
    slow = slow_module_losses(objective, backbone, prefix, target)
    for k, loss in enumerate(slow, start=1):
        torch.testing.assert_close(out.extras[f"seq_mtp/module_{k}_loss"], loss.detach(), rtol=1e-5, atol=1e-6)
    expected = out.extras["seq_mtp/next_token_loss"] + 0.3 / 2 * (slow[0] + slow[1])  # DeepSeek-V3's lambda / D
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    objective.reduction = "sum"
    expected = out.extras["seq_mtp/next_token_loss"] + 0.3 * (slow[0] + slow[1])
    torch.testing.assert_close(objective(backbone, prefix, target).loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("positions", ["answer", "all"])
def test_modules_at_weight_zero_are_teacher_forcing(positions):
    """Bit for bit where the backbone is called as teacher forcing calls it (answer); to float rounding with all,
    where the backbone also computes the prefix's last-layer states."""
    objective, backbone = bound(SequentialMultiToken(depth=2, weight=0.0, positions=positions), VARIED)
    tf = TeacherForcing()
    tf.bind(VARIED, backbone, stop=VARIED.end)
    prefix, target = sample(VARIED)
    tf_loss, tf_grads = loss_and_grads(tf, backbone, prefix, target)
    loss, got = loss_and_grads(objective, backbone, prefix, target)
    assert tf_grads.keys() == got.keys()
    if positions == "answer":
        assert torch.equal(loss, tf_loss) and all(torch.equal(got[n], tf_grads[n]) for n in got)
    else:
        torch.testing.assert_close(loss, tf_loss)
        for name in got:
            torch.testing.assert_close(got[name], tf_grads[name], rtol=1e-4, atol=1e-6)
    objective.weight = 1.0  # weighted, the modules' loss reaches the backbone
    assert not torch.allclose(loss_and_grads(objective, backbone, prefix, target)[1]["tok_emb.weight"],
                              tf_grads["tok_emb.weight"], rtol=1e-3, atol=1e-6)


def test_modules_are_unused_at_inference_and_their_accuracy_is_teacher_forced():
    objective, backbone = bound(SequentialMultiToken(depth=2, positions="answer"))
    tf = TeacherForcing()
    tf.bind(FIXED, backbone)
    prefix, target = sample(FIXED)
    with torch.no_grad():
        for p in objective.depth_modules.parameters():
            p.normal_()  # inference must not read the training-only modules
    (out, generated), (tf_out, tf_generated) = (o.evaluate(backbone, prefix, target, 4) for o in (objective, tf))
    assert objective.teacher_forced and torch.equal(out.logits, tf_out.logits)
    assert torch.equal(generated, tf_generated)
    assert torch.equal(objective.decode(backbone, prefix), greedy_decode(backbone, prefix, 4, False))
    assert (out.module_preds[:, 0, 0] == -1).all() and (out.module_preds[:, 1, :2] == -1).all()
    assert (out.module_preds[:, 0, 1:] >= 0).all() and (out.module_preds[:, 1, 2:] >= 0).all()


def test_module_accuracy_counts_scored_answer_tokens_only():
    target = torch.tensor([[1, 2, 3, 4], [5, 6, 7, X]])
    preds = torch.tensor([
        [[-1, 2, 0, 4], [-1, -1, 3, 0]],  # module 1: 2 of 3 right; module 2: 1 of 2
        [[-1, 6, 7, 9], [-1, -1, 0, 9]],  # module 1: 2 of 2 scored (the last is past the end); module 2: 0 of 1
    ])
    metric = ModuleAccuracy(2)
    metric.update(SequentialOutput(torch.zeros(()), torch.zeros(2, 4, 3), module_preds=preds), target)
    got = metric.compute()
    assert set(got) == {"seq_mtp/module_1_acc", "seq_mtp/module_2_acc"}
    assert got["seq_mtp/module_1_acc"].item() == pytest.approx(4 / 5)
    assert got["seq_mtp/module_2_acc"].item() == pytest.approx(1 / 3)


def test_sequential_modules_refuse_bad_options_in_one_line():
    with pytest.raises(OptionError, match=r"^SequentialMultiToken\.depth=4: .* at most the answer width - 1 = 3\.$"):
        bound(SequentialMultiToken(depth=4))
    with pytest.raises(OptionError, match=r"^SequentialMultiToken\.n_head=3: must divide the backbone's width 16\.$"):
        bound(SequentialMultiToken(n_head=3))
    with pytest.raises(OptionError, match=r"^SequentialMultiToken\.positions=prefix: must be all or answer\.$"):
        SequentialMultiToken(positions="prefix")
    with pytest.raises(OptionError, match=r"^SequentialMultiToken\.depth=0: must be >= 1"):
        SequentialMultiToken(depth=0)


# --- backbones -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", [TokenOrder(), SequentialMultiToken(depth=2)], ids=["top", "seq_mtp"])
def test_both_run_on_the_pure_pytorch_mamba(objective):
    mamba = Mamba(FIXED.vocab_size, FIXED.seq_len, n_layer=1, d_model=16, kernels="torch")
    objective, mamba = bound(objective, backbone=mamba)
    prefix, target = sample(FIXED, 3)
    out = objective(mamba, prefix, target)
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    own = list(objective.parameters())
    assert own and all(p.grad is not None and p.grad.abs().sum() > 0 for p in own)
    assert mamba.embedding.weight.grad.abs().sum() > 0
    assert torch.equal(objective.decode(mamba, prefix), greedy_decode(mamba, prefix, 4, False))


def test_both_run_on_a_pretrained_model_in_its_own_tokens(hf_folders):
    from nfl.models.hf import HFCausalLM

    hf = HFCausalLM(0, 0, str(hf_folders["gpt_neox"]))  # character tokens: answers differ in length
    task = PathStar(degree=2, path_len=5, num_nodes=50)
    batch = hf.codec(task).encode(*sample(task, 4))
    assert (batch.target == IGNORE_INDEX).any()
    tf = TeacherForcing()
    tf.bind(task, hf)
    want, tf_generated = tf.evaluate(hf.eval(), batch.prefix, batch.target, 6)
    for objective in (TokenOrder(), SequentialMultiToken(positions="answer")):
        objective, hf = bound(objective, task, hf)
        hf.train()
        out = objective(hf, batch.prefix, batch.target)
        assert math.isfinite(out.loss.item())
        out.loss.backward()
        assert all(p.grad is not None for p in objective.parameters())
        hf.eval()
        got, generated = objective.evaluate(hf, batch.prefix, batch.target, 6)
        torch.testing.assert_close(got.logits, want.logits)  # inference is the backbone's own next-token pass
        assert torch.equal(generated, tf_generated)
