"""Path-star generation, token ids and the reference text format (Bachmann & Nagarajan 2024, §3)."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from nfl.tasks import DataFileError, InfeasibleGraphError, PathStar
from tests.conftest import SPEC_LINE, SPEC_PREFIX, SPEC_TARGET


def test_spec_example_encodes_to_spec_token_ids_and_back(task):
    prefix, target = task.parse_lines([SPEC_LINE])
    assert prefix.tolist() == [SPEC_PREFIX]
    assert target.tolist() == [SPEC_TARGET]
    assert task.format_lines(prefix, target) == [SPEC_LINE]
    assert (task.pipe, task.eq, task.slash, task.dummy, task.vocab_size) == (50, 51, 52, 53, 54)
    assert (task.prefix_len, task.target_len) == (27, 5)


@pytest.mark.parametrize("d,l,n", [(2, 5, 50), (5, 5, 50), (3, 2, 4), (1, 4, 4)])
def test_generator_invariants(d, l, n, rng):
    task = PathStar(d, l, n)
    prefix, path = task.sample(rng, 500)
    assert prefix.shape == (500, 3 * d * (l - 1) + 3) and path.shape == (500, l)
    parents, children = task.edges_of(prefix)
    sep = prefix[:, 2 : 3 * task.num_edges : 3]
    assert (sep[:, :-1] == task.pipe).all() and (sep[:, -1] == task.slash).all()
    assert (prefix[:, -1] == task.eq).all()
    for p, c, row, q in zip(parents, children, path, prefix[:, -3:-1]):
        labels = set(p) | set(c)
        assert len(labels) == task.num_labels and max(labels) < n  # distinct labels in range
        assert len(set(zip(p, c))) == task.num_edges  # edge count
        start, goal = q
        assert row[0] == start and row[-1] == goal
        assert list(p).count(start) == d  # start degree d
        assert all(list(c).count(x) == 1 for x in labels - {start})  # each other node has one parent
        assert all(list(p).count(x) <= 1 for x in labels - {start})  # arms are chains
        assert goal not in set(p)  # the goal is a leaf
        assert all((a, b) in set(zip(p, c)) for a, b in zip(row[:-1], row[1:]))  # path follows edges


def test_goal_arm_is_uniform_and_edge_order_shuffled():
    task = PathStar(3, 4, 30)
    prefix, path = task.sample(np.random.default_rng(7), 30000)
    parents, children = task.edges_of(prefix)
    start = path[:, :1]
    # Rank of the goal arm's first edge among the start's three edges in the shuffled list: uniform over 0..2.
    first_edges = np.argsort(np.where(parents == start, np.arange(task.num_edges), 99), axis=1)[:, :3]
    goal_edge = np.argmax((parents == start) & (children == path[:, 1:2]), axis=1)
    rank = np.argmax(first_edges == goal_edge[:, None], axis=1)
    np.testing.assert_allclose(np.bincount(rank, minlength=3) / len(rank), 1 / 3, atol=0.015)
    # Every slot of the edge list holds a start edge with probability d / E (1 without a shuffle).
    np.testing.assert_allclose((parents == start).mean(axis=0), 3 / 9, atol=0.015)


def test_generation_is_deterministic_for_a_seed(task):
    a = task.sample(np.random.default_rng(5), 64)
    b = task.sample(np.random.default_rng(5), 64)
    c = task.sample(np.random.default_rng(6), 64)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("d,l,n", [(5, 11, 50), (2, 5, 8), (10, 10, 90)])
def test_infeasible_sizes_raise_quickly_with_a_clear_message(d, l, n):
    start = time.perf_counter()
    with pytest.raises(InfeasibleGraphError, match=rf"infeasible.*needs .* {d * (l - 1) + 1} distinct.*num_nodes"):
        PathStar(d, l, n)
    assert time.perf_counter() - start < 1.0


def test_graph_keys_ignore_edge_order(task, rng):
    prefix, path = task.sample(rng, 200)
    shuffled = prefix.copy()
    e = task.num_edges
    perm = rng.permutation(e)
    for offset in (0, 1):
        shuffled[:, offset : 3 * e : 3] = prefix[:, offset : 3 * e : 3][:, perm]
    assert np.array_equal(task.graph_keys(prefix), task.graph_keys(shuffled))
    assert len(np.unique(task.graph_keys(prefix))) == 200
    other_query = prefix.copy()
    other_query[:, 3 * e + 1] = (other_query[:, 3 * e + 1] + 1) % 50
    assert not np.any(task.graph_keys(prefix) == task.graph_keys(other_query))


def test_file_round_trip_is_byte_identical(tmp_path, task, rng):
    prefix, path = task.sample(rng, 100)
    out = tmp_path / "g.txt"
    task.write_file(out, prefix, path)
    text = out.read_bytes()
    assert text.endswith(b"\n") and text.count(b"\n") == 100 and b"\r" not in text
    p2, t2 = task.read_file(out)
    assert np.array_equal(p2, prefix) and np.array_equal(t2, path)
    task.write_file(tmp_path / "h.txt", p2, t2)
    assert (tmp_path / "h.txt").read_bytes() == text


@pytest.mark.parametrize(
    "bad, message",
    [
        ("32,3|16,12|3,19|32,34|34,6|6,16|19,47/32,12=32,34,6,16,12", "7 edges"),
        ("32,3|16,12|3,19|32,34|34,6|6,16|19,47|47,28/32,12=32,34,6,16", "wrong length"),
        ("32,3|16,12|3,19|32,34|34,6|6,16|19,47|47,28/32,12=32,x,6,16,12", "not a comma-separated"),
        ("32,3|16,12|3,19|32,34|34,6|6,16|19,47|47,99/32,12=32,34,6,16,12", "outside 0..49"),
        ("32,3|16,12|3,19|32,34|34,6|6,16|19,47|47,28 32,12=32,34,6,16,12", "missing '/'"),
        ("32,3|16,12|3,19|32,34|34,6|6,16|19,47|47,28/32,12=34,6,16,12,32", "from the query's start"),
    ],
)
def test_malformed_lines_name_the_file_and_line(tmp_path, task, bad, message):
    path = tmp_path / "corrupt.txt"
    path.write_text(SPEC_LINE + "\n" + bad + "\n")
    with pytest.raises(DataFileError, match=rf"corrupt.txt:2: .*{message}"):
        task.read_file(path)


def test_binary_and_missing_files_get_clear_errors(tmp_path, task):
    path = tmp_path / "binary.txt"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataFileError, match="binary.txt: not a text data file"):
        task.read_file(path)
    with pytest.raises(DataFileError, match="nope.txt' does not exist"):
        task.read_file(tmp_path / "nope.txt")


def test_generate_command_writes_a_reference_file(tmp_path, task):
    test_file, train_file = tmp_path / "test.txt", tmp_path / "sub" / "train.txt"
    base = [sys.executable, "-m", "nfl.data", "generate", "--degree", "2", "--path-len", "5", "--num-nodes", "50"]
    subprocess.run(base + ["--n", "300", "--seed", "1", "--out", str(test_file)], check=True, capture_output=True)
    done = subprocess.run(
        base + ["--n", "500", "--seed", "2", "--out", str(train_file), "--exclude", str(test_file)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "wrote 500 graphs" in done.stdout
    test_prefix, _ = task.read_file(test_file)
    train_prefix, train_path = task.read_file(train_file)
    assert len(train_path) == 500
    assert not np.isin(task.graph_keys(train_prefix), task.graph_keys(test_prefix)).any()
    again = tmp_path / "again.txt"
    subprocess.run(base + ["--n", "300", "--seed", "1", "--out", str(again)], check=True, capture_output=True)
    assert again.read_bytes() == test_file.read_bytes()


def test_generate_command_refuses_infeasible_sizes(tmp_path):
    cmd = [sys.executable, "-m", "nfl.data", "generate", "--degree", "5", "--path-len", "11", "--num-nodes", "50"]
    done = subprocess.run(cmd + ["--n", "3", "--seed", "0", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert done.returncode == 2 and "infeasible" in done.stderr and "num_nodes" in done.stderr
    assert not (tmp_path / "x").exists()
