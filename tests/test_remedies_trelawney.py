"""TRELAWNEY: spans inserted exactly where drawn, the loss of a slow per-row implementation, teacher forcing at
p = 0, and goal-first decoding that strips the span."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nfl.errors import UserInputError
from nfl.models import GPT, Mamba
from nfl.models.base import Backbone
from nfl.objectives import TeacherForcing, Trelawney
from nfl.objectives.trelawney import span_is_right
from nfl.tasks import PathStar
from nfl.tasks.base import IGNORE_INDEX
from tests.conftest import bind_objective as bound, sample_batch as sample

FIXED = PathStar(degree=2, path_len=4, num_nodes=20)
VARIED = PathStar(degree=2, arm_lengths=[2, 4], goal="any", num_nodes=20)  # answers of 2..4 nodes, end token


# --- the modified answers ----------------------------------------------------------------------------------
def test_spans_and_delimiters_sit_exactly_where_drawn():
    objective, _ = bound(Trelawney(), VARIED)
    O, C, E, X = objective.open, objective.close, VARIED.end, IGNORE_INDEX
    assert (O, C) == (VARIED.vocab_size, VARIED.vocab_size + 1)
    target = torch.tensor([[3, 4, 5, 6, E], [8, 9, E, X, X], [1, 2, 3, E, X], [10, 11, 12, 13, E]])
    has = torch.tensor([True, True, False, True])
    d, s, k = torch.tensor([1, 0, 2, 3]), torch.tensor([2, 1, 2, 3]), torch.tensor([2, 1, 1, 1])
    aug = objective.insert(target, has, d, s, k)
    W = VARIED.target_len + VARIED.max_path_len + 2  # the widest: the longest answer, its longest span, <T> </T>
    pad = lambda row: row + [X] * (W - len(row))  # noqa: E731
    assert aug.answer.tolist() == [
        pad([3, O, 5, 6, C, 4, 5, 6, E]),  # d=1: after node 0; the span is nodes 2..3 (3 is the goal)
        pad([O, 9, C, 8, 9, E]),  # d=0: right after '='
        pad([1, 2, 3, E]),  # no span: the answer as it was
        pad([10, 11, 12, O, 13, C, 13, E]),  # d=3: before the last node
    ]
    # The prediction of <T> gets no loss; everything else, the span and </T> included, does.
    expected = aug.answer.clone()
    expected[0, 1] = expected[1, 0] = expected[3, 3] = X
    assert torch.equal(aug.target, expected)


@pytest.mark.parametrize("span", ["goal", "random"])
def test_draws_keep_the_span_at_or_after_the_insertion_point_and_cover_every_choice(span):
    objective, _ = bound(Trelawney(p=0.5, span=span, max_span=2), VARIED)
    _, target = sample(VARIED, 4000, seed=1)
    has, d, s, k = objective.draw(target, torch.Generator().manual_seed(0))
    n = VARIED.answer_lengths(target)
    assert abs(has.float().mean().item() - 0.5) < 0.03
    assert bool(((0 <= d) & (d < n) & (1 <= k) & (k <= 2) & (d <= s) & (s + k <= n)).all())
    if span == "goal":
        assert torch.equal(s + k, n)  # the span ends at the answer's last node
    # Every allowed (n, d, k, s) occurs: the draws are not stuck on some of them.
    assert set(n.tolist()) == {2, 3, 4}
    allowed = {(a, b, c, e) for a in range(2, 5) for b in range(a) for c in range(1, min(2, a - b) + 1)
               for e in range(b, a - c + 1) if span == "random" or e == a - c}
    assert set(zip(n.tolist(), d.tolist(), k.tolist(), s.tolist())) == allowed


# --- the loss ----------------------------------------------------------------------------------------------
def slow_loss(objective, backbone, prefix, target, has, d, s, k):
    """Each row on its own, as the paper writes it: y_1..y_d <T> y_s..y_{s+k-1} </T> y_{d+1}.., no padding;
    cross-entropy on every answer token but the one predicting <T>. Also each row's logits at its answer tokens."""
    losses, logits = [], []
    for b in range(len(prefix)):
        answer = [t for t in target[b].tolist() if t != IGNORE_INDEX]
        n = VARIED.answer_lengths(target[b : b + 1]).item()
        if has[b]:
            db, sb, kb = int(d[b]), int(s[b]), int(k[b])
            seq = answer[:db] + [objective.open] + answer[sb : sb + kb] + [objective.close] + answer[db:]
            original = list(range(db)) + list(range(db + kb + 2, len(seq)))
        else:
            db, seq, original = None, answer, list(range(len(answer)))
        assert len([t for t in seq if t < VARIED.num_nodes]) == n + (kb if has[b] else 0)
        x = torch.cat([prefix[b], torch.tensor(seq[:-1])])[None]
        out = backbone.unembed(backbone(x))[0, prefix.shape[1] - 1 :]  # (len(seq), V): the prediction of seq[i]
        for i, token in enumerate(seq):
            if i != db:
                losses.append(F.cross_entropy(out[i][None], torch.tensor([token])))
        logits.append(out[original])
    return torch.stack(losses).mean(), logits


@pytest.mark.parametrize("span, backbone_cls", [("goal", GPT), ("random", Mamba)])
def test_loss_matches_a_slow_per_row_implementation(span, backbone_cls):
    objective, backbone = bound(Trelawney(p=0.7, span=span), VARIED, backbone_cls)
    prefix, target = sample(VARIED, 8, seed=2)
    torch.manual_seed(5)
    draws = objective.draw(target)
    assert draws[0].any() and not draws[0].all()  # both kinds of row in the batch
    torch.manual_seed(5)
    out = objective(backbone, prefix, target)  # draws the same spans
    loss, logits = slow_loss(objective, backbone, prefix, target, *draws)
    torch.testing.assert_close(out.loss, loss, rtol=1e-5, atol=1e-6)
    for b, row in enumerate(logits):  # the output's logits are those of the original answer tokens
        torch.testing.assert_close(out.logits[b, : len(row)], row, rtol=1e-5, atol=1e-5)
    assert out.extras["trelawney/span_rate"] == draws[0].float().mean()
    assert out.extras["trelawney/span_len"] == draws[3][draws[0]].float().mean()
    assert out.extras["trelawney/span_loss"] > 0 and out.extras["trelawney/answer_loss"] > 0


@pytest.mark.parametrize("task", [FIXED, VARIED], ids=["fixed", "varied"])
def test_p_zero_is_teacher_forcing_bit_for_bit(task):
    objective, backbone = bound(Trelawney(p=0.0), task)
    teacher, _ = bound(TeacherForcing(), task, backbone=backbone)
    prefix, target = sample(task, 6, seed=3)
    grads = []
    for obj in (objective, teacher):
        backbone.zero_grad()
        out = obj(backbone, prefix, target)
        out.loss.backward()
        grads.append((out.loss.detach(), out.logits.detach(), [p.grad.clone() for p in backbone.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert all(torch.equal(a, b) for a, b in zip(grads[0][2], grads[1][2]))


# --- inference ---------------------------------------------------------------------------------------------
class Lookup(Backbone):
    """A scripted model: the next token is ``first[x]`` (``second[x]`` where that is masked) for the last token x."""

    def __init__(self, vocab_size: int, first: dict[int, int], second: dict[int, int]) -> None:
        super().__init__()
        self.vocab_size, self.max_seq_len, self.d_model = vocab_size, 1 << 10, vocab_size
        table = torch.zeros(vocab_size, vocab_size)
        for x, y in second.items():
            table[x, y] = 1.0
        for x, y in first.items():
            table[x, y] = 2.0
        self.register_buffer("table", table)
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, idx, cache=None, output_from=0, **_):
        if cache is not None:
            cache["fed"] += idx.shape[1]
        return self.table[idx[:, output_from:]]

    def unembed(self, hidden):
        return hidden

    def new_cache(self, batch_size, max_len):
        return {"fed": 0, "max": max_len}

    def fork_cache(self, cache):
        return dict(cache)


def test_goal_first_decoding_writes_a_span_then_the_path_and_strips_the_span():
    objective = Trelawney(max_span=2)
    reservation = objective.reserve(FIXED)
    objective.token_ids = {name: FIXED.vocab_size + i for i, name in enumerate(reservation.tokens)}
    O, C, V = FIXED.vocab_size, FIXED.vocab_size + 1, FIXED.vocab_size + 2
    prefix = torch.full((1, FIXED.prefix_len), FIXED.eq)
    scripts = [
        # Writes the span 9 7 and closes it, then the path; it would write </T> after 2 and <T> after 3, which
        # the answer may not hold, so it writes its second choices 3 and 7.
        ({O: 9, 9: 7, 7: C, C: 1, 1: 2, 2: C, 3: O}, {2: 3, 3: 7}, [9, 7], True, [1, 2, 3, 7]),
        # Never closes its span: </T> is forced after max_span = 2 tokens, and the path follows it.
        ({O: 15, 15: 16, 16: 17, C: 11, 11: 12, 12: 13, 13: 14}, {}, [15, 16], False, [11, 12, 13, 14]),
    ]
    for first, second, span, closed, path in scripts:
        backbone = Lookup(V, first, second)
        objective.bind(FIXED, backbone, stop=None)
        out, answer = objective.evaluate(backbone, prefix, torch.tensor([path]), FIXED.target_len)
        assert answer.tolist() == [path]
        assert out.span.tolist() == [span] and out.span_len.tolist() == [2] and out.closed.tolist() == [closed]
        assert torch.equal(objective.decode(backbone, prefix), answer)


def slow_goal_first(objective, backbone, prefix, steps):
    """One row at a time, re-running the whole sequence each step: prefix <T>, span until </T> (forced after
    max_span tokens; never <T>), then ``steps`` answer tokens (neither delimiter)."""
    rows = []
    for b in range(len(prefix)):
        seq, span, answer = prefix[b].tolist() + [objective.open], [], []
        while len(answer) < steps:
            logits = backbone.unembed(backbone(torch.tensor([seq]))[0, -1]).clone()
            logits[objective.open] = -math.inf
            in_span = len(seq) - prefix.shape[1] - 1 == len(span) and objective.close not in seq
            if not in_span:
                logits[objective.close] = -math.inf
            token = int(logits.argmax())
            if in_span and len(span) == objective.width:
                token = objective.close
            if in_span and token != objective.close:
                span.append(token)
            elif not in_span:
                answer.append(token)
            seq.append(token)
        rows.append(answer)
    return torch.tensor(rows)


@pytest.mark.parametrize("backbone_cls", [GPT, Mamba])
def test_goal_first_decoding_of_a_real_model_is_the_slow_one(backbone_cls):
    torch.manual_seed(3)
    objective, backbone = bound(Trelawney(p=1.0, max_span=3), VARIED, backbone_cls)
    prefix, target = sample(VARIED, 6, seed=4)
    with torch.no_grad():  # larger weights than at initialisation: outputs that depend on the input
        for p in backbone.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.5)
    out, answer = objective.evaluate(backbone, prefix, target, VARIED.target_len)
    assert out.closed.any() and not out.closed.all()  # spans the model closed, and spans closed at max_span
    slow = slow_goal_first(objective, backbone, prefix, VARIED.target_len)
    for fast_or_slow in zip(VARIED.parse_generated(answer), VARIED.parse_generated(slow)):  # up to the end token
        assert torch.equal(*fast_or_slow)
    assert torch.equal(objective.decode(backbone, prefix), answer)
    # Its teacher-forced logits are teacher forcing's: no span in that pass.
    teacher, _ = bound(TeacherForcing(), VARIED, backbone=backbone)
    torch.testing.assert_close(out.logits, teacher.evaluate(backbone, prefix, target, VARIED.target_len)[0].logits)


@pytest.mark.parametrize("backbone_cls", [GPT, Mamba])
def test_greedy_inference_is_teacher_forcings_decoding(backbone_cls):
    objective, backbone = bound(Trelawney(inference="greedy"), VARIED, backbone_cls)
    teacher, _ = bound(TeacherForcing(), VARIED, backbone=backbone)
    prefix, target = sample(VARIED, 6, seed=5)
    assert torch.equal(objective.decode(backbone, prefix), teacher.decode(backbone, prefix))
    (out, generated), (tf_out, tf_generated) = (o.evaluate(backbone, prefix, target, VARIED.target_len)
                                                for o in (objective, teacher))
    assert torch.equal(generated, tf_generated) and torch.equal(out.logits, tf_out.logits)
    assert objective.eval_metric() is None and Trelawney().teacher_forced


def test_a_span_is_right_when_it_is_a_run_of_the_answers_nodes():
    E, X = VARIED.end, IGNORE_INDEX
    target = torch.tensor([[3, 4, 5, E, X], [3, 4, 5, E, X], [3, 4, 5, E, X], [3, 4, 5, E, X], [3, 4, 5, E, X]])
    span = torch.tensor([[4, 5, -1], [3, 4, -1], [5, 4, -1], [5, E, -1], [-1, -1, -1]])
    length = torch.tensor([2, 2, 2, 2, 0])
    # Right: a suffix of the path (goal spans), or any run of its nodes (random spans); never reversed, never the
    # end token, never empty.
    assert span_is_right(span, length, target, VARIED.num_nodes, True).tolist() == [True, False, False, False, False]
    assert span_is_right(span, length, target, VARIED.num_nodes, False).tolist() == [True, True, False, False, False]


# --- refusals ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, match", [
    ({"p": 1.5}, r"Trelawney\.p=1\.5: must be in \[0\.0, 1\.0\]"),
    ({"span": "middle"}, r"Trelawney\.span=middle: must be goal or random"),
    ({"max_span": 0}, r"Trelawney\.max_span=0: must be >= 1"),
    ({"inference": "beam"}, r"Trelawney\.inference=beam: must be goal_first or greedy"),
])
def test_bad_options_are_one_line(options, match):
    with pytest.raises(UserInputError, match=match) as err:
        Trelawney(**options)
    assert "\n" not in str(err.value)


def test_a_span_longer_than_any_answer_is_refused_before_the_backbone_is_built():
    with pytest.raises(UserInputError, match=r"Trelawney\.max_span=5: exceeds the longest answer of .* \(4 nodes\)"):
        Trelawney(max_span=5).reserve(FIXED)


def test_a_pretrained_model_is_refused_in_one_line(run_cli, hf_folders, tmp_path):
    from tests.test_hf import hf_config

    with pytest.raises(SystemExit) as done:
        run_cli("fit", *hf_config(tmp_path, hf_folders["gpt_neox"], "nfl.objectives.Trelawney", steps=1))
    message = str(done.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "Trelawney adds tokens of its own (open, close)" in message and "tokenizer does not have" in message
