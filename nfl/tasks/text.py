"""Reading and writing graph tasks in the reference text format, for any task's layout.

Writing is vectorised: every line is laid out as a fixed grid of *pieces* (a node's digits, a separator, a
comma, or nothing), each piece is looked up as one zero-padded integer of its ASCII bytes, and dropping the
zero bytes of the whole grid leaves the text. A million path-star lines take about a second this way, where formatting them one
f-string at a time takes most of the time of generating a file.

Reading parses line by line and then checks, vectorised, that every answer is a path of its graph: it starts
at the query's start, ends at its goal, and follows edges. The first bad line is reported with file and line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Optional

import numpy as np

from nfl.tasks.basics import DataFileError

if TYPE_CHECKING:
    from nfl.tasks.base import GraphTask


def _table(task: "GraphTask") -> tuple[np.ndarray, dict[str, int]]:
    """The ASCII of every piece as one unsigned integer of 1, 2, 4 or 8 bytes, zero bytes where the text is
    shorter (ASCII text has no zero byte); nodes are pieces 0..N-1, then come the named pieces."""
    n = task.num_nodes
    names = {"|": n, "=": n + 1, "/": n + 2, ",": n + 3, "\n": n + 4, "": n + 5}
    texts = [str(i) for i in range(n)] + list(names)
    width = next(w for w in (1, 2, 4, 8) if w >= max(map(len, texts)))
    table = np.zeros((len(texts), width), dtype=np.uint8)
    for i, t in enumerate(texts):
        table[i, : len(t)] = np.frombuffer(t.encode("ascii"), dtype=np.uint8)
    return table.view(f"<u{width}").ravel(), names


def format_text(task: "GraphTask", prefix: np.ndarray, target: np.ndarray) -> bytes:
    """The lines of graphs with forward answers, each ``\\n``-terminated, as ASCII bytes."""
    table, piece = _table(task)
    n, N = len(prefix), task.num_nodes
    empty, comma = piece[""], piece[","]
    sep_piece = {task.pipe: piece["|"], task.eq: piece["="], task.slash: piece["/"]}

    def node(a: np.ndarray) -> np.ndarray:  # node ids stay, anything else (pad, end, ignore) is nothing
        return np.where((a >= 0) & (a < N), a, empty)

    parents, children = task.edges_of(prefix)
    c = task._edge_col
    seps = prefix[:, c + 2 : c + 3 * task.max_edges : 3]
    sep = np.full(seps.shape, empty, dtype=np.int64)
    for token, p in sep_piece.items():
        sep[seps == token] = p
    present = (parents >= 0) & (parents < N)
    slots = np.stack([node(parents), np.where(present, comma, empty), node(children), sep], axis=2).reshape(n, -1)
    start, goal = task.query_of(prefix)
    after = piece["/"] if task.query_first else piece["="]
    query = np.stack([start, np.full(n, comma), goal, np.full(n, after)], axis=1)
    graph = [query, slots] if task.query_first else [slots, query]
    nodes = node(target)  # (n, L)
    commas = np.where(nodes[:, 1:] != empty, comma, empty)
    answer = np.empty((n, 2 * target.shape[1]), dtype=np.int64)
    answer[:, 0::2] = np.concatenate([np.full((n, 1), empty), commas], axis=1)[:, : target.shape[1]]
    answer[:, 1::2] = nodes
    pieces = np.concatenate([*graph, answer, np.full((n, 1), piece["\n"])], axis=1)  # (n, K)
    text = table[pieces].view(np.uint8)  # (n, K * width): every piece's bytes, zero-padded
    return text[text != 0].tobytes()


def _expected(task: "GraphTask") -> str:
    grammar = "s,g/u,v|u,v|...=p1,...,pk" if task.query_first else "u,v|u,v|.../s,g=p1,...,pk"
    edges = f"{task.max_edges}" if task.fixed_edges else f"at most {task.max_edges}"
    nodes = f"{task.max_path_len}" if not task.variable else f"at most {task.max_path_len}"
    return f"expected {task.describe()} lines like '{grammar}' with {edges} edges and {nodes} answer nodes"


def _ints(text: str, what: str, where: str, task: "GraphTask") -> list[int]:
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        raise DataFileError(f"{where}: {what} {text!r} is not a comma-separated list of node ids.") from None
    bad = [v for v in values if not 0 <= v < task.num_nodes]
    if bad:
        raise DataFileError(
            f"{where}: {what} {text!r} has node id {bad[0]} outside 0..{task.num_nodes - 1}; set num_nodes to match the file."
        )
    return values


def parse_text(task: "GraphTask", lines: Iterable[str], source: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse lines into ``(prefix, target)`` with forward answers, checking each answer is a path of its graph."""
    E, L, pad = task.max_edges, task.max_path_len, task.pad
    expected = _expected(task)
    rows_p, rows_c, queries, paths, lengths, numbers = [], [], [], [], [], []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        where = f"{source}:{lineno}"
        head, eq, path_text = line.partition("=")
        first, slash, second = head.partition("/")
        if not eq or not slash:
            raise DataFileError(f"{where}: missing '/' or '='; {expected}.")
        query_text, edges_text = (first, second) if task.query_first else (second, first)
        edge_texts = edges_text.split("|")
        if len(edge_texts) > E or (task.fixed_edges and len(edge_texts) != E):
            raise DataFileError(f"{where}: {len(edge_texts)} edges; {expected}.")
        pcs = []
        for edge in edge_texts:
            pc = _ints(edge, "edge", where, task)
            if len(pc) != 2:
                raise DataFileError(f"{where}: edge {edge!r} is not 'parent,child'; {expected}.")
            pcs.append(pc)
        query = _ints(query_text, "query", where, task)
        path = _ints(path_text, "path", where, task)
        if len(query) != 2 or len(path) > L or (not task.variable and len(path) != L) or len(path) < 1:
            raise DataFileError(f"{where}: query {query_text!r} / path {path_text!r} have the wrong length; {expected}.")
        missing = E - len(pcs)
        rows_p.append([pad] * missing + [p for p, _ in pcs])
        rows_c.append([pad] * missing + [c for _, c in pcs])
        queries.append(query)
        paths.append(path + [0] * (L - len(path)))
        lengths.append(len(path))
        numbers.append(lineno)
    if not paths:
        raise DataFileError(f"{source}: no graphs found; {expected}.")
    q = np.asarray(queries, dtype=np.int64)
    parents, children = np.asarray(rows_p, dtype=np.int64), np.asarray(rows_c, dtype=np.int64)
    prefix = task.encode_prefix(parents, children, q[:, 0], q[:, 1])
    lengths_a = np.asarray(lengths, dtype=np.int64)
    target = task.encode_answers(np.asarray(paths, dtype=np.int64), lengths_a)
    start, goal = task.query_of(prefix)
    rows = np.arange(len(target))
    wrong_ends = (target[:, 0] != start) | (target[rows, lengths_a - 1] != goal)
    off_row, off_step = first_step_off_the_graph(task, prefix, target)
    first_end = int(np.argmax(wrong_ends)) if wrong_ends.any() else None
    if first_end is not None and (off_row is None or first_end <= off_row):
        raise DataFileError(
            f"{source}:{numbers[first_end]}: the path must run from the query's start {start[first_end]} to its goal "
            f"{goal[first_end]}; fix or drop the line."
        )
    if off_row is not None:
        path = target[off_row, : lengths_a[off_row]]
        u, v = path[off_step], path[off_step + 1]
        raise DataFileError(
            f"{source}:{numbers[off_row]}: the path {','.join(map(str, path))} is not a path of the graph: {u} -> {v} "
            "is not one of its edges; fix or drop the line."
        )
    return prefix, target


def steps_on_graph(task: "GraphTask", prefix: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(n, l-1) bool: whether step ``target[g, i] -> target[g, i+1]`` is an edge of graph ``g``, either way on
    an undirected task (True past an answer's end, where there is no step).

    Vectorised: each edge and each step becomes one int64 key ``(g * V + parent) * V + child``, and every step
    key is looked up in the sorted edge keys, so 200k graphs take milliseconds.
    """
    V = task.vocab_size
    parents, children = task.walkable(*task.edges_of(prefix))
    graph = np.arange(len(target), dtype=np.int64)[:, None]
    edges = np.sort(((graph * V + parents) * V + children).ravel())
    nodes = np.where(target >= 0, target, 0)[:, : task.max_path_len]
    steps = (graph * V + nodes[:, :-1]) * V + nodes[:, 1:]  # (n, l-1)
    found = edges[np.minimum(np.searchsorted(edges, steps), len(edges) - 1)] == steps
    return found | (np.arange(steps.shape[1])[None, :] >= (task.answer_lengths(target) - 1)[:, None])


def first_step_off_the_graph(task: "GraphTask", prefix: np.ndarray, target: np.ndarray) -> tuple[Optional[int], Optional[int]]:
    """The first (graph, step) whose step is not an edge of its graph (see :func:`steps_on_graph`), or Nones."""
    found = steps_on_graph(task, prefix, target)
    if found.all():
        return None, None
    row, step = np.argwhere(~found)[0]  # row-major: the first bad graph, then its first bad step
    return int(row), int(step)


def answers_are_paths(task: "GraphTask", prefix: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(n,) bool: each forward answer starts at the start, ends at the goal and follows edges of its graph."""
    start, goal = task.query_of(prefix)
    last = target[np.arange(len(target)), task.answer_lengths(target) - 1]
    return (target[:, 0] == start) & (last == goal) & steps_on_graph(task, prefix, target).all(axis=1)
