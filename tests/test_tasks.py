"""The graph-task axis: generator invariants per task, variable-length answers end to end, the token hook."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from nfl.engine.decoding import greedy_decode
from nfl.models.gpt import GPT
from nfl.objectives import TeacherForcing
from nfl.objectives.base import Objective, Reservation, target_cross_entropy
from nfl.system import GraphSystem
from nfl.tasks import DagSearch, Maze, PathStar, TreeStar
from nfl.tasks.base import IGNORE_INDEX
from nfl.tasks.spec import task_from_spec, task_spec
from tests.conftest import ROOT, TaskMetrics

VARIED = PathStar(degree=3, arm_lengths=(3, 6), goal="any", num_nodes=30)
TASKS = [
    PathStar(2, 5, 50),
    VARIED,
    PathStar(2, 5, 50, query_first=True, shuffle="arms"),
    PathStar(3, None, 40, arm_lengths=(2, 5), query_first=True),
    TreeStar(),
    TreeStar(degree=3, branching=2, depth=3, segment=1, num_nodes=40),
]


def graphs_of(task, n=300, seed=0):
    """Per-graph Python view: (edges, start, goal, path) of each sampled graph."""
    prefix, target = task.sample(np.random.default_rng(seed), n)
    parents, children = task.edges_of(prefix)
    start, goal = task.query_of(prefix)
    lengths = task.answer_lengths(target)
    for i in range(n):
        real = parents[i] < task.num_nodes
        edges = list(zip(parents[i][real].tolist(), children[i][real].tolist()))
        yield edges, int(start[i]), int(goal[i]), target[i, : lengths[i]].tolist(), prefix[i], target[i]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.describe())
def test_generator_invariants(task):
    for edges, start, goal, path, prefix, target in graphs_of(task):
        nodes = {u for e in edges for u in e}
        assert max(nodes) < task.num_nodes and len(edges) <= task.max_edges
        assert len(set(edges)) == len(edges) and len(nodes) == len(edges) + 1  # a tree: one parent per node
        assert sum(u == start for u, _ in edges) == task.degree
        children = Counter(u for u, _ in edges)
        assert path[0] == start and path[-1] == goal and all(e in set(edges) for e in zip(path, path[1:]))
        assert 2 <= len(path) <= task.max_path_len
        if isinstance(task, TreeStar) or task.goal == "leaf":
            assert goal not in children  # the goal is a leaf
        if task.variable:  # the end token closes the answer, then nothing
            n = len(path)
            assert target[n] == task.end and (target[n + 1 :] == IGNORE_INDEX).all()
            pads = (prefix == task.pad).sum()
            assert pads == 3 * (task.max_edges - len(edges))
        else:
            assert len(target) == task.max_path_len and len(edges) == task.max_edges


def test_path_star_variants_draw_what_they_say():
    lengths, depths = Counter(), Counter()
    for edges, start, goal, path, _, _ in graphs_of(VARIED, n=3000):
        children = {u: v for u, v in edges}
        for first in (v for u, v in edges if u == start):  # walk each arm from the start
            n, node = 1, first
            while node in children:
                n, node = n + 1, children[node]
            lengths[n + 1] += 1  # path length of the arm, start included
        depths[len(path)] += 1
    assert set(lengths) == {3, 4, 5, 6} and min(lengths.values()) > 0.2 * sum(lengths.values())
    assert set(depths) == {2, 3, 4, 5, 6}  # the goal anywhere on an arm: answers of every length


def test_whole_arm_permutation_keeps_each_arm_in_order():
    task = PathStar(3, 4, 30, shuffle="arms")
    for edges, start, _, _, _, _ in graphs_of(task, n=50):
        arms = [edges[i : i + 3] for i in range(0, 9, 3)]
        for arm in arms:
            assert arm[0][0] == start and arm[1][0] == arm[0][1] and arm[2][0] == arm[1][1]
    firsts = Counter()
    for edges, start, goal, path, _, _ in graphs_of(task, n=3000):
        firsts[edges[0][1] == path[1]] += 1  # is the goal's arm listed first?
    assert abs(firsts[True] / 3000 - 1 / 3) < 0.03


def test_tree_star_structure_and_decisions():
    task = TreeStar(degree=2, branching=3, depth=2, segment=2, num_nodes=50)
    assert (task.num_edges, task.max_path_len) == (2 * (1 + 3) * 2, 5)
    leaves = Counter()
    for edges, start, goal, path, _, _ in graphs_of(task, n=2000):
        out = Counter(u for u, _ in edges)
        assert [out[u] for u in path[:-1]] == [2, 1, 3, 1]  # decisions at the start and at the branch point
        below = lambda u: sorted(v for p, v in edges if p == u)  # noqa: E731  (children in label order)
        leaves[(below(start).index(path[1]), below(path[2]).index(path[3]))] += 1
    assert len(leaves) == 6 and all(v > 2000 / 6 * 0.8 for v in leaves.values())  # the goal: a uniform leaf


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.describe())
def test_text_round_trip_and_grammar(task, tmp_path):
    prefix, target = task.sample(np.random.default_rng(1), 200)
    path = tmp_path / "g.txt"
    task.write_file(path, prefix, target)
    p2, t2 = task.read_file(path)
    assert np.array_equal(p2, prefix) and np.array_equal(t2, target)
    line = path.read_text().splitlines()[0]
    head, answer = line.split("=")
    if task.query_first:
        query, edges = head.split("/")
    else:
        edges, query = head.split("/")
    assert len(query.split(",")) == 2 and all(len(e.split(",")) == 2 for e in edges.split("|"))
    assert answer.split(",")[0] == query.split(",")[0]


def test_generate_writes_any_task_from_a_config(tmp_path):
    out = tmp_path / "tree.txt"
    config = ROOT / "configs" / "quickstart_tree_star.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "nfl.data", "generate", "--config", str(config), "--n", "50", "--seed", "3", "--out", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert "wrote 50 graphs of TreeStar" in done.stdout
    prefix, target = TreeStar().read_file(out)
    expected = TreeStar().sample_excluding(np.random.default_rng(3), 50, None)
    assert np.array_equal(prefix, expected[0]) and np.array_equal(target, expected[1])
    probe = "import sys, nfl.data.__main__; print('lightning' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"


def test_a_task_spec_round_trips_through_plain_data():
    for task in TASKS:
        spec = task_spec(task)
        assert task_from_spec(spec) == task
        assert all(isinstance(v, (int, str, bool, tuple, type(None))) for v in spec["init_args"].values())


# --- variable-length answers ---------------------------------------------------------------------------
def test_reversing_variable_answers_keeps_the_end_token_in_place():
    prefix, target = VARIED.sample(np.random.default_rng(2), 64)
    rev = VARIED.reverse_answers(target)
    for fwd, back in zip(target, rev):
        n = VARIED.answer_lengths(fwd[None])[0]
        assert back[:n].tolist() == fwd[:n][::-1].tolist() and np.array_equal(back[n:], fwd[n:])
    assert torch.equal(VARIED.reverse_answers(torch.from_numpy(rev)), torch.from_numpy(target))


def test_padding_gets_no_loss():
    task = VARIED
    prefix, target = (torch.from_numpy(a) for a in task.sample(np.random.default_rng(0), 16))
    logits = torch.randn(16, task.target_len, task.vocab_size)
    loss = target_cross_entropy(logits, target)
    scored = target != IGNORE_INDEX
    by_hand = torch.stack(
        [-logits[b, j].log_softmax(-1)[target[b, j]] for b in range(16) for j in range(task.target_len) if scored[b, j]]
    ).mean()
    assert torch.allclose(loss, by_hand)
    changed = logits.clone()
    changed[~scored] = 100.0  # whatever the model says past the end token costs nothing
    assert torch.allclose(target_cross_entropy(changed, target), loss)


class EndAfter(torch.nn.Module):
    """A stand-in 'backbone' that counts passes and emits the end token from the given step on."""

    def __init__(self, vocab, end, at, d=4):
        super().__init__()
        self.vocab, self.end, self.at, self.d_model = vocab, end, at, d
        self.passes = 0

    def new_cache(self, B, n):
        return {"len": 0}

    def forward(self, idx, cache=None, output_from=0):
        self.passes += 1
        if cache is not None:
            cache["len"] += idx.shape[1]
            step = cache["len"]
        else:
            step = idx.shape[1]
        h = torch.zeros(idx.shape[0], idx.shape[1] - output_from, 1)
        return h + step

    def unembed(self, h):
        step = h[..., 0].long()
        out = torch.zeros(*h.shape[:-1], self.vocab)
        token = torch.where(step >= self.at, torch.full_like(step, self.end), torch.zeros_like(step))
        return out.scatter(-1, token[..., None], 1.0)


def test_decoding_stops_once_every_row_has_ended():
    task = VARIED
    P = task.prefix_len
    backbone = EndAfter(task.vocab_size, task.end, at=P + 2)
    prefix = torch.zeros(3, P, dtype=torch.long)
    out = greedy_decode(backbone, prefix, task.target_len, stop=task.end)
    assert out.shape == (3, task.target_len)
    assert out[0].tolist() == [0, 0] + [task.end] * (task.target_len - 2)
    assert backbone.passes == 3  # the prefill, then one pass a token until the end token: not target_len
    again = EndAfter(task.vocab_size, task.end, at=P + 2)
    assert torch.equal(greedy_decode(again, prefix, task.target_len), out) and again.passes == task.target_len


def test_metrics_on_answers_of_different_lengths():
    task = PathStar(2, None, 20, arm_lengths=(3, 4), goal="any")
    # Arms 0-1-2-3 and 0-4-5 (start 0); edges listed with one unused slot first.
    parents = np.array([[task.pad, 0, 1, 2, 0, 4]])
    children = np.array([[task.pad, 1, 2, 3, 4, 5]])
    rows = []
    for goal, path in ((2, [0, 1, 2]), (5, [0, 4, 5]), (3, [0, 1, 2, 3]), (1, [0, 1])):
        prefix = task.encode_prefix(parents, children, np.array([0]), np.array([goal]))
        rows.append((prefix[0], task.encode_answers(np.array([path + [0] * 4])[:, :4], np.array([len(path)]))[0]))
    prefix = torch.tensor(np.stack([r[0] for r in rows]))
    target = torch.tensor(np.stack([r[1] for r in rows]))
    E = task.end
    generated = torch.tensor([
        [0, 1, 2, E, 0],  # right
        [0, 4, 5, 0, E],  # right nodes, then one too many: not an exact match, and (5, 0) is no edge
        [0, 1, 2, E, 0],  # stops early: a valid path that does not reach the goal
        [0, 4, E, 0, 0],  # the wrong arm at the decision
    ])
    nodes, lengths, well_formed = task.parse_generated(generated)
    assert lengths.tolist() == [3, 4, 3, 2] and well_formed.tolist() == [True, True, True, True]
    tf = target.clone()[:, : task.max_path_len].clamp(min=-1)
    tf[3, 1] = 4  # teacher-forced: wrong at row 3's decision only
    metrics = TaskMetrics(task)
    metrics.update(prefix, target, nodes, tf, torch.tensor(0.5), well_formed, lengths)
    m = {k: v.item() for k, v in metrics.compute().items()}
    assert m["exact_match"] == pytest.approx(1 / 4)
    assert m["free/pos_1"] == 1.0 and m["free/pos_2"] == pytest.approx(3 / 4)
    assert m["free/pos_3"] == pytest.approx(3 / 3) and m["free/pos_4"] == pytest.approx(0 / 1)  # rows with a pos 4
    assert "free/pos_5" not in m  # the end token (column 5 of the widest answer) is never a position
    assert m["decision_acc"] == pytest.approx(3 / 4) and m["chance"] == pytest.approx(1 / 2)
    assert m["tf/decision_acc"] == pytest.approx(3 / 4) and m["tf/non_decision_acc"] == 1.0
    assert m["valid_path_rate"] == pytest.approx(3 / 4)  # row 1 runs on past the leaf 5: (5, 0) is no edge
    assert m["reaches_goal_rate"] == pytest.approx(1 / 4)
    assert m["wrong_arm_rate"] == pytest.approx(1 / 4)
    assert m["edge_follow_rate"] == pytest.approx((2 + 2 + 2 + 1) / (2 + 3 + 2 + 1))


# --- the objective's token hook ----------------------------------------------------------------------
class WithMask(TeacherForcing):
    """Teacher forcing that reserves a mask token and two extra positions (what masked objectives need)."""

    def reserve(self, task):
        return Reservation(tokens=("mask", "open"), extra_len=2)


def test_objective_tokens_and_length_come_after_the_task_s():
    task = VARIED
    system = GraphSystem(lambda v, t: GPT(v, t, n_layer=1, d_model=16, n_head=2), objective=WithMask(), task=task)
    assert system.objective.token_ids == {"mask": task.vocab_size, "open": task.vocab_size + 1}
    assert system.backbone.vocab_size == task.vocab_size + 2 and system.backbone.max_seq_len == task.seq_len + 2
    plain = GraphSystem(lambda v, t: GPT(v, t, n_layer=1, d_model=16, n_head=2), task=task)
    assert isinstance(plain.objective, Objective) and plain.backbone.vocab_size == task.vocab_size


# --- what holds for path-star holds for every task -------------------------------------------------------
STREAM_TASKS = [VARIED, TreeStar(), DagSearch(max_vertices=10, max_edges=12, max_lookahead=2, max_path_len=5, num_nodes=20),
                Maze(rows=4, cols=4, labels="random", num_nodes=30)]


@pytest.mark.parametrize("task", STREAM_TASKS, ids=lambda t: type(t).__name__)
def test_streams_are_distinct_per_rank_and_independent_of_workers(task):
    from torch.utils.data import DataLoader

    from nfl.data.datamodule import TrainBatches

    def take(loader, n):
        return [b for _, b in zip(range(n), loader)]

    serial = take(DataLoader(TrainBatches(task, 16, seed=3, reverse=True), batch_size=None), 4)
    workers = take(DataLoader(TrainBatches(task, 16, seed=3, reverse=True), batch_size=None, num_workers=2), 4)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(serial, workers))
    keys = [np.concatenate([task.graph_keys(TrainBatches(task, 64, 0, rank=r, world_size=2).batch(b)[0].numpy())
                            for b in range(5)]) for r in (0, 1)]
    assert not np.isin(keys[0], keys[1]).any()


@pytest.mark.parametrize("task", [PathStar(2, None, 5, arm_lengths=(2, 3), goal="any"),
                                  TreeStar(degree=2, branching=1, depth=1, segment=1, num_nodes=4),
                                  Maze(rows=2, cols=2)],
                         ids=lambda t: type(t).__name__)
def test_held_out_graphs_never_reach_training_on_small_graph_spaces(task):
    from nfl.data.datamodule import TaskDataModule

    dm = TaskDataModule(task, batch_size=64, n_test=20)
    dm.setup("fit")
    held_out = task.graph_keys(dm.test_graphs[0])
    seen = np.concatenate([task.graph_keys(dm.train_batches().batch(b)[0].numpy()) for b in range(10)])
    assert not np.isin(seen, held_out).any()
    open_dm = TaskDataModule(task, batch_size=64, n_test=20, exclude_test=False)
    open_dm.setup("fit")
    seen = np.concatenate([task.graph_keys(open_dm.train_batches().batch(b)[0].numpy()) for b in range(10)])
    assert np.isin(seen, held_out).any()  # without exclusion they do: the check above can fail


def test_multi_token_heads_with_nothing_ahead_in_a_batch_add_no_loss_and_no_nan():
    from nfl.objectives import MultiTokenHeads

    task = PathStar(2, None, 20, arm_lengths=(2, 4), goal="any")
    gpt = GPT(task.vocab_size, task.seq_len, n_layer=1, d_model=16, n_head=2)
    objective = MultiTokenHeads(k=4)
    objective.bind(task, gpt)
    prefix, target = (torch.from_numpy(a) for a in task.sample(np.random.default_rng(0), 64))
    short = task.answer_lengths(target) == 2  # start, goal, end token: heads 4 has nothing to predict
    out = objective(gpt, prefix[short], target[short])
    assert torch.isfinite(out.loss) and out.extras["mtp/head_4_loss"].item() == 0.0
    out.loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in gpt.parameters())


def test_a_line_with_too_few_edges_is_refused_where_every_graph_has_them_all():
    from nfl.tasks import DataFileError

    task = PathStar(2, 4, 20, goal="any")  # answers vary, the edge list does not
    prefix, target = task.sample(np.random.default_rng(0), 3)
    line = task.format_lines(prefix, target)[0]
    head, answer = line.split("/")
    short = "|".join(head.split("|")[1:]) + "/" + answer  # one edge dropped
    with pytest.raises(DataFileError, match=r"<lines>:1: 5 edges"):
        task.parse_lines([short])
