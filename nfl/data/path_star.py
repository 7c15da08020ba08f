"""Path-star graphs G(d, l, N): vectorised seeded generation and the reference text format (SPEC §1).

A graph is held as two integer arrays, the model's view of it:

- ``prefix`` (n, 3*d*(l-1)+3): the shuffled edge list ``p c | p c | ... p c / s g =`` as token ids;
- ``target`` (n, l): the path ``s ... g`` (or ``g ... s`` when reversed).

Everything here is pure numpy with an explicit ``numpy.random.Generator``; no global random state.
The text form is byte-compatible with the reference code's data files::

    32,3|16,12|3,19|32,34|34,6|6,16|19,47|47,28/32,12=32,34,6,16,12
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import numpy as np

from nfl.data.vocab import PathStarTask
from nfl.errors import UserInputError


class DataFileError(UserInputError):
    """A reference-format data file that cannot be read as the configured G(d, l, N)."""


def sample_graphs(rng: np.random.Generator, n: int, task: PathStarTask) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` independent path-star graphs; returns ``(prefix, target)`` int64 arrays (forward paths).

    Labels are a uniform random injection of the ``d*(l-1)+1`` graph nodes into ``0..N-1``, the goal arm is
    uniform over the ``d`` arms and the edge order is a uniform shuffle, all drawn per graph in one batch.
    """
    d, l, e = task.degree, task.path_len, task.num_edges
    # A per-row Fisher-Yates shuffle of 0..N-1; the first num_labels columns are the graph's labels.
    labels = rng.permuted(np.broadcast_to(np.arange(task.num_nodes, dtype=np.int64), (n, task.num_nodes)), axis=1)
    start = labels[:, 0]  # (n,)
    arms = labels[:, 1 : task.num_labels].reshape(n, d, l - 1)  # (n, d, l-1), arms[:, a, 0] is next to start
    parents = np.concatenate([np.broadcast_to(start[:, None, None], (n, d, 1)), arms[:, :, :-1]], axis=2)
    parents, children = parents.reshape(n, e), arms.reshape(n, e)  # edge k: parents[k] -> children[k]

    order = rng.permuted(np.broadcast_to(np.arange(e), (n, e)), axis=1)  # uniform edge order per graph
    parents = np.take_along_axis(parents, order, axis=1)
    children = np.take_along_axis(children, order, axis=1)

    goal_arm = rng.integers(0, d, size=n)
    path = np.concatenate([start[:, None], arms[np.arange(n), goal_arm]], axis=1)  # (n, l)
    return encode_prefix(parents, children, start, path[:, -1], task), path


def encode_prefix(
    parents: np.ndarray, children: np.ndarray, start: np.ndarray, goal: np.ndarray, task: PathStarTask
) -> np.ndarray:
    """Token ids ``p c | ... p c / s g =`` from edge arrays (n, E) and query arrays (n,)."""
    n, e = parents.shape
    prefix = np.empty((n, task.prefix_len), dtype=np.int64)
    prefix[:, 0 : 3 * e : 3] = parents
    prefix[:, 1 : 3 * e : 3] = children
    prefix[:, 2 : 3 * e : 3] = task.pipe
    prefix[:, 3 * e - 1] = task.slash  # the last separator closes the edge list
    prefix[:, 3 * e] = start
    prefix[:, 3 * e + 1] = goal
    prefix[:, 3 * e + 2] = task.eq
    return prefix


def edges_of(prefix: np.ndarray, task: PathStarTask) -> tuple[np.ndarray, np.ndarray]:
    """The (parents, children) arrays, each (n, E), of prefixes made by :func:`encode_prefix`."""
    e = task.num_edges
    return prefix[:, 0 : 3 * e : 3], prefix[:, 1 : 3 * e : 3]


def graph_keys(prefix: np.ndarray, task: PathStarTask) -> np.ndarray:
    """A 64-bit key per graph that ignores edge order: same edges and query give the same key.

    Used to keep held-out graphs out of training. A collision (about 2^-64 per pair) would only drop one
    extra training graph, never leak a test graph.
    """
    parents, children = edges_of(prefix, task)
    n_nodes = np.uint64(task.num_nodes)
    codes = np.sort(parents.astype(np.uint64) * n_nodes + children.astype(np.uint64), axis=1)
    query = prefix[:, 3 * task.num_edges].astype(np.uint64) * n_nodes + prefix[:, 3 * task.num_edges + 1].astype(
        np.uint64
    )
    h = np.full(len(prefix), 0xCBF29CE484222325, dtype=np.uint64)  # FNV-1a style mixing, wrapping in uint64
    prime = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for column in (*codes.T, query):
            h = (h ^ column) * prime
            h ^= h >> np.uint64(29)
    return h


# --- the reference text format ---------------------------------------------------------------------


def format_lines(prefix: np.ndarray, path: np.ndarray, task: PathStarTask) -> list[str]:
    """Reference-format lines (no newline) for graphs with *forward* paths."""
    parents, children = edges_of(prefix, task)
    e = task.num_edges
    lines = []
    for p_row, c_row, q_row, path_row in zip(
        parents.tolist(), children.tolist(), prefix[:, 3 * e : 3 * e + 2].tolist(), path.tolist()
    ):
        edges = "|".join(f"{p},{c}" for p, c in zip(p_row, c_row))
        lines.append(f"{edges}/{q_row[0]},{q_row[1]}=" + ",".join(map(str, path_row)))
    return lines


def write_file(path: str | os.PathLike, prefix: np.ndarray, target: np.ndarray, task: PathStarTask) -> None:
    """Write graphs (forward paths) to a reference-format file, one per line, ``\\n``-terminated."""
    with open(path, "w", encoding="ascii", newline="\n") as f:
        for line in format_lines(prefix, target, task):
            f.write(line + "\n")


def _ints(text: str, what: str, where: str, task: PathStarTask) -> list[int]:
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        raise DataFileError(f"{where}: {what} {text!r} is not a comma-separated list of node ids.") from None
    bad = [v for v in values if not 0 <= v < task.num_nodes]
    if bad:
        raise DataFileError(
            f"{where}: {what} {text!r} has node id {bad[0]} outside 0..{task.num_nodes - 1}; "
            f"set num_nodes to match the file."
        )
    return values


def parse_lines(lines: Iterable[str], task: PathStarTask, source: str = "<lines>") -> tuple[np.ndarray, np.ndarray]:
    """Parse reference-format lines into ``(prefix, target)`` arrays; errors name ``source`` and the line."""
    e, l = task.num_edges, task.path_len
    parents, children, queries, paths, linenos = [], [], [], [], []
    expected = (
        f"expected G(degree={task.degree}, path_len={task.path_len}, num_nodes={task.num_nodes}) lines like "
        f"'p,c|p,c|.../start,goal=n1,n2,...' with {e} edges and {l} path nodes"
    )
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        where = f"{source}:{lineno}"
        head, eq, path_text = line.partition("=")
        edges_text, slash, query_text = head.partition("/")
        if not eq or not slash:
            raise DataFileError(f"{where}: missing '/' or '='; {expected}.")
        edge_texts = edges_text.split("|")
        if len(edge_texts) != e:
            raise DataFileError(f"{where}: {len(edge_texts)} edges; {expected}.")
        for edge in edge_texts:
            pc = _ints(edge, "edge", where, task)
            if len(pc) != 2:
                raise DataFileError(f"{where}: edge {edge!r} is not 'parent,child'; {expected}.")
            parents.append(pc[0])
            children.append(pc[1])
        query = _ints(query_text, "query", where, task)
        path = _ints(path_text, "path", where, task)
        if len(query) != 2 or len(path) != l:
            raise DataFileError(f"{where}: query {query_text!r} / path {path_text!r} have the wrong length; {expected}.")
        if path[0] != query[0] or path[-1] != query[1]:
            raise DataFileError(f"{where}: the path must run from the query's start {query[0]} to its goal {query[1]}.")
        queries.append(query)
        paths.append(path)
        linenos.append(lineno)
    if not paths:
        raise DataFileError(f"{source}: no graphs found; {expected}.")
    n = len(paths)
    q = np.asarray(queries, dtype=np.int64)
    parent_arr = np.asarray(parents, dtype=np.int64).reshape(n, e)
    child_arr = np.asarray(children, dtype=np.int64).reshape(n, e)
    path_arr = np.asarray(paths, dtype=np.int64)
    row, step = first_step_off_the_graph(parent_arr, child_arr, path_arr, task)
    if row is not None:
        a, b = path_arr[row, step], path_arr[row, step + 1]
        raise DataFileError(
            f"{source}:{linenos[row]}: the path {','.join(map(str, path_arr[row]))} is not a path of the graph: "
            f"{a} -> {b} is not one of its edges."
        )
    return encode_prefix(parent_arr, child_arr, q[:, 0], q[:, 1], task), path_arr


def first_step_off_the_graph(
    parents: np.ndarray, children: np.ndarray, paths: np.ndarray, task: PathStarTask
) -> tuple[Optional[int], Optional[int]]:
    """The first (graph, step) whose step ``paths[g, i] -> paths[g, i+1]`` is not an edge of graph ``g``, or Nones.

    ``parents``/``children`` (n, E) are the edges, ``paths`` (n, l) forward paths. Vectorised: each edge and each
    step becomes one int64 key ``(g * N + parent) * N + child``, and every step key is looked up in the sorted
    edge keys, so 200k graphs take milliseconds.
    """
    n_nodes = task.num_nodes
    graph = np.arange(len(paths), dtype=np.int64)[:, None]
    edges = np.sort(((graph * n_nodes + parents) * n_nodes + children).ravel())
    steps = (graph * n_nodes + paths[:, :-1]) * n_nodes + paths[:, 1:]  # (n, l-1)
    found = edges[np.minimum(np.searchsorted(edges, steps), len(edges) - 1)] == steps
    if found.all():
        return None, None
    row, step = np.argwhere(~found)[0]  # row-major: the first bad graph, then its first bad step
    return int(row), int(step)


def read_file(path: str | os.PathLike, task: PathStarTask) -> tuple[np.ndarray, np.ndarray]:
    """Read a reference-format data file into ``(prefix, target)`` arrays with forward paths."""
    if not os.path.isfile(path):
        raise DataFileError(f"Data file {os.fspath(path)!r} does not exist; check train_file / test_file.")
    try:
        with open(path, encoding="ascii") as f:
            return parse_lines(f, task, source=os.fspath(path))
    except UnicodeDecodeError as err:
        raise DataFileError(f"{os.fspath(path)}: not a text data file ({err.reason} at byte {err.start}).") from None
