"""Grid mazes: every maze a spanning tree of the grid carved by a depth-first backtracker, the answer its unique
start-to-goal path, passages walked either way by the metrics, and bad sizes refused in one line."""

from __future__ import annotations

import random
from collections import deque

import numpy as np
import pytest
import torch

from nfl.engine.metrics import read_answers
from nfl.tasks import InfeasibleGraphError, Maze
from nfl.tasks.text import answers_are_paths


def _mazes(task, n, seed=0):
    prefix, target = task.sample(np.random.default_rng(seed), n)
    parents, children = task.edges_of(prefix)
    start, goal = task.query_of(prefix)
    lengths = task.answer_lengths(target)
    for i in range(n):
        edges = list(zip(parents[i].tolist(), children[i].tolist()))
        yield edges, int(start[i]), int(goal[i]), target[i, : lengths[i]].tolist()


def _bfs_path(edges, start, goal):
    around = {}
    for u, v in edges:
        around.setdefault(u, []).append(v)
        around.setdefault(v, []).append(u)
    came = {start: None}
    todo = deque([start])
    while todo:
        u = todo.popleft()
        for v in around[u]:
            if v not in came:
                came[v] = u
                todo.append(v)
    path = [goal]
    while path[-1] != start:
        path.append(came[path[-1]])
    return path[::-1]


@pytest.mark.parametrize("rows, cols", [(2, 2), (3, 5), (1, 7), (8, 8), (20, 20)])
def test_every_maze_is_a_spanning_tree_of_the_grid_and_the_answer_its_path(rows, cols):
    task = Maze(rows=rows, cols=cols)
    n = 40 if rows * cols > 100 else 300
    grid = {(r * cols + c, r * cols + c + 1) for r in range(rows) for c in range(cols - 1)}
    grid |= {(r * cols + c, (r + 1) * cols + c) for r in range(rows - 1) for c in range(cols)}
    for edges, start, goal, path in _mazes(task, n):
        assert len(edges) == rows * cols - 1 == len(set(edges)) and set(edges) <= grid  # u < v, grid neighbours
        parent = list(range(rows * cols))  # connected with V - 1 edges: a spanning tree

        def find(x):
            while parent[x] != x:
                x = parent[x]
            return x
        for u, v in edges:
            parent[find(u)] = find(v)
        assert len({find(x) for x in range(rows * cols)}) == 1
        assert start != goal and path == _bfs_path(edges, start, goal)


def _slow_backtracker(rng: random.Random, rows: int, cols: int) -> set:
    """One maze by the textbook recursive backtracker, a plain Python loop: its passages as (u, v), u < v."""
    V = rows * cols
    cell = rng.randrange(V)
    seen, stack, passages = {cell}, [cell], set()
    while stack:
        cur = stack[-1]
        r, c = divmod(cur, cols)
        options = [x for x, ok in ((cur - cols, r > 0), (cur + cols, r < rows - 1), (cur - 1, c > 0), (cur + 1, c < cols - 1))
                   if ok and x not in seen]
        if not options:
            stack.pop()
            continue
        nxt = rng.choice(options)
        seen.add(nxt)
        stack.append(nxt)
        passages.add((min(cur, nxt), max(cur, nxt)))
    return passages


def _dead_ends(passages, V):
    degree = np.zeros(V, dtype=int)
    for u, v in passages:
        degree[u] += 1
        degree[v] += 1
    return int((degree == 1).sum())


def test_the_mazes_are_the_backtrackers_not_another_generators():
    """Dead ends per maze, a signature of the generator (the backtracker's long corridors leave few; Kruskal's
    and the binary tree leave many more), match the textbook per-maze backtracker's within 4 standard errors."""
    rows = cols = 6
    fast = [_dead_ends(edges, 36) for edges, _, _, _ in _mazes(Maze(rows=rows, cols=cols), 2000)]
    rng = random.Random(0)
    slow = [_dead_ends(_slow_backtracker(rng, rows, cols), 36) for _ in range(2000)]
    se = np.sqrt(np.var(fast) / len(fast) + np.var(slow) / len(slow))
    assert abs(np.mean(fast) - np.mean(slow)) < 4 * se, (np.mean(fast), np.mean(slow))
    binary_tree = 1 + (rows - 1) + (cols - 1)  # far more dead ends than either: the test can fail
    assert np.mean(fast) < 36 / 4 < binary_tree + 6


def test_seeded_labels_and_starts():
    task = Maze(rows=4, cols=4, labels="random", num_nodes=50, query_first=True)
    a, b = task.sample(np.random.default_rng(5), 64), task.sample(np.random.default_rng(5), 64)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], task.sample(np.random.default_rng(6), 64)[0])
    labels = set()
    for edges, start, goal, path in _mazes(task, 200):
        nodes = {u for e in edges for u in e}
        assert len(nodes) == 16 and max(nodes) < 50 and start in nodes and goal in nodes
        labels |= nodes
    assert len(labels) == 50  # every label used across mazes
    starts = [s for _, s, _, _ in _mazes(Maze(rows=3, cols=3), 3000)]
    counts = np.bincount(starts, minlength=9)
    assert counts.min() > 3000 / 9 * 0.8  # a uniform start cell


def test_text_round_trip_and_keys_that_ignore_passage_direction(tmp_path):
    task = Maze(rows=3, cols=4, labels="random", num_nodes=20)
    prefix, target = task.sample(np.random.default_rng(1), 100)
    path = tmp_path / "m.txt"
    task.write_file(path, prefix, target)
    back = task.read_file(path)
    assert np.array_equal(back[0], prefix) and np.array_equal(back[1], target)
    flipped = prefix.copy()
    parents, children = task.edges_of(prefix)
    flipped[:, 0 : 3 * task.max_edges : 3], flipped[:, 1 : 3 * task.max_edges : 3] = children, parents
    assert np.array_equal(task.graph_keys(flipped), task.graph_keys(prefix))
    assert answers_are_paths(task, flipped, target).all()  # a passage walks either way
    lines = path.read_text().splitlines()
    head, answer = lines[0].split("=")
    wrong = head + "=" + ",".join(answer.split(",")[:1] + answer.split(",")[2:])  # skips a cell: not a path
    (tmp_path / "bad.txt").write_text(wrong + "\n")
    with pytest.raises(Exception, match="bad.txt:1"):
        task.read_file(tmp_path / "bad.txt")


def test_metrics_walk_passages_both_ways_and_decide_at_branching_cells():
    task = Maze(rows=5, cols=5)
    prefix, target = task.sample(np.random.default_rng(2), 200)
    P, T = torch.from_numpy(prefix), torch.from_numpy(target)
    L = task.max_path_len
    nodes = T[:, :L].where((T[:, :L] >= 0) & (T[:, :L] < task.num_nodes), torch.full_like(T[:, :L], -1))
    lengths = task.answer_lengths(T)
    read = read_answers(task, False, P, T, nodes, nodes, free_len=lengths)
    assert read.exact.all() and read.valid.all() and read.is_edge[read.pairs].all()
    # Decisions by a slow count: a path cell after one whose passages, but the one the path came in by, are > 1.
    parents, children = task.edges_of(prefix)
    for row in range(len(prefix)):
        path = [v for v in target[row] if 0 <= v < task.num_nodes]
        degree = {v: int((parents[row] == v).sum() + (children[row] == v).sum()) for v in path}
        expected = [False] + [degree[u] - (i > 0) > 1 for i, u in enumerate(path[:-1])]
        assert read.decision[row, : len(path)].tolist() == expected
    assert read.decision.any() and not read.decision.all()
    # A walk back through the passage it came by is a legal move but not the answer.
    back = nodes.clone()
    long = int(torch.nonzero(lengths >= 3)[0])
    back[long, 2] = back[long, 0]
    again = read_answers(task, False, P, T, back, nodes, free_len=lengths)
    assert not again.exact[long] and again.is_edge[long, 1]


@pytest.mark.parametrize("options, message", [
    ({"rows": 0}, "rows must be an integer from 1 to 64, got 0"),
    ({"cols": 65}, "cols must be an integer from 1 to 64, got 65"),
    ({"rows": 1, "cols": 1}, "has one cell and no way to walk"),
    ({"rows": 4, "cols": 4, "num_nodes": 10}, "num_nodes=10 is below the 16 cells"),
    ({"labels": "hex"}, "labels must be cells or random"),
])
def test_impossible_mazes_are_refused_in_one_line(options, message):
    with pytest.raises(InfeasibleGraphError) as err:
        Maze(**options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_bad_maze_option_on_the_command_line_is_one_error_line(run_cli, tiny_config, capsys):
    from tests.test_bad_input import one_error_line

    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", str(tiny_config), "--data=nfl.data.TaskDataModule",
                "--data.init_args.task=nfl.tasks.Maze", "--data.init_args.task.init_args.rows=0")
    assert "rows must be an integer from 1 to 64" in one_error_line(done, capsys)
