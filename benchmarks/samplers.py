"""Speed of nfl's vectorised graph samplers against plain per-graph Python code, and of writing a data file.

Two sections, both measured in one run on the machine at hand:

1. **Sampling.** For each task setting (path-star G(2,5,50), the reference task; path-star with
   ``arm_lengths=(3,6), goal="any"`` of degree 3; ``TreeStar()``; ``DagSearch`` naive, balanced and star, all
   with their defaults) it prints graphs/s of ``task.sample(rng, batch)`` at two batch sizes (median of a few
   repeats after a warm-up) next to graphs/s of a plain per-graph Python implementation of the same sampler
   (stdlib ``random``, lists and loops, one graph at a time, producing the same token rows), and the ratio.
   Before timing, the per-graph code's output is checked: invariants of every graph (distinct labels, the
   answer is a path along the edges from start to goal, tree and DAG structure, acyclicity, shortest answers),
   the token layout (nfl's own ``answers_are_paths`` on the per-graph rows) and a few statistics against
   nfl's sampler (mean edges, mean answer length, how often the first edge leaves the start), so that both
   sides draw from the same distribution.

2. **Whole-process file generation** of path-star G(2,5,50): wall time (start-up included) of
   ``python -m nfl.data generate --degree 2 --path-len 5 --num-nodes 50 --n COUNT --seed 0 --out FILE`` as a
   subprocess with ``PYTHONPATH`` set to this repository, next to a subprocess running a stand-in for the
   reference code's generate-and-save (Bachmann & Nagarajan, github.com/gregorbachmann/Next-Token-Failures,
   ``data/graphs.py``: per graph, labels drawn one ``np.random.randint(0, N, 1)[0]`` at a time with rejection,
   ``random.shuffle`` of the edge list, the line built by string concatenation and written with one
   ``file.write`` per graph). Both files are checked (line count, the first lines parsed by nfl).

Run::

    python benchmarks/samplers.py            # full run: batches 256 and 65536, 1,000,000-graph files (~3 min)
    python benchmarks/samplers.py --quick    # smaller counts, ~20 s, for a smoke test

``--batches``, ``--repeats``, ``--python-graphs``, ``--gen-n`` and ``--ref-n`` override the counts; ``--only
DagSearch`` (any words of the setting names) samples just those settings, and ``--skip generation`` leaves
the file section out. When the
stand-in writes fewer graphs than nfl (``--ref-n`` below ``--gen-n``) its time is scaled linearly to the same
count, and the table says so.

The per-graph samplers and the reference stand-in are written here for this benchmark (none of it is the
reference's code); the real reference code's timings can differ.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nfl.tasks import DagSearch, PathStar, TreeStar  # noqa: E402
from nfl.tasks.base import IGNORE_INDEX, GraphTask  # noqa: E402
from nfl.tasks.text import answers_are_paths  # noqa: E402

Graph = tuple[list[tuple[int, int]], int, int, list[int]]  # (edges, start, goal, forward path), in labels


# ---------------------------------------------------------------------------------------------------------
# Per-graph Python samplers: one graph per call, stdlib random, lists and loops.
# ---------------------------------------------------------------------------------------------------------
def path_star_graph(task: PathStar) -> Graph:
    """A path-star graph: arms of uniform lengths (or all ``path_len - 1``), labels a uniform injection."""
    d, a = task.degree, task.path_len - 1
    if task.arm_lengths is None:
        lengths = [a] * d
    else:
        lo, hi = task.arm_lengths
        lengths = [random.randint(lo - 1, hi - 1) for _ in range(d)]
    labels = random.sample(range(task.num_nodes), 1 + sum(lengths))
    start = labels[0]
    arms, pos = [], 1
    for length in lengths:
        arms.append(labels[pos : pos + length])
        pos += length
    edges = []
    for arm in arms:
        prev = start
        for v in arm:
            edges.append((prev, v))
            prev = v
    if task.shuffle == "edges":
        random.shuffle(edges)
    else:
        order = list(range(d))
        random.shuffle(order)
        edges = [e for k in order for e in edges[sum(lengths[:k]) : sum(lengths[: k + 1])]]
    arm = random.choice(arms)
    depth = len(arm) if task.goal == "leaf" else random.randint(1, len(arm))
    path = [start] + arm[:depth]
    return edges, start, path[-1], path


def tree_star_graph(task: TreeStar) -> Graph:
    """A tree-star graph grown level by level from fresh labels; the goal a uniform leaf."""
    labels = iter(random.sample(range(task.num_nodes), task.num_labels))
    start = next(labels)
    edges, leaf_paths = [], []
    todo = [(start, [start], 0)]
    while todo:
        node, path, level = todo.pop()
        if level == task.depth:
            leaf_paths.append(path)
            continue
        for _ in range(task.degree if level == 0 else task.branching):
            prev, below = node, list(path)
            for _ in range(task.segment):
                v = next(labels)
                edges.append((prev, v))
                below.append(v)
                prev = v
            todo.append((prev, below, level + 1))
    random.shuffle(edges)
    path = random.choice(leaf_paths)
    return edges, start, path[-1], path


def bfs_shortest_path(n: int, edges: list[tuple[int, int]], s: int, g: int) -> list[int] | None:
    """A uniformly drawn shortest path s -> g (vertex indices) by BFS with path counts, or None."""
    out = [[] for _ in range(n)]
    into = [[] for _ in range(n)]
    for u, v in edges:
        out[u].append(v)
        into[v].append(u)
    dist, count = [-1] * n, [0] * n
    dist[s], count[s] = 0, 1
    queue = deque([s])
    while queue:
        u = queue.popleft()
        for v in out[u]:
            if dist[v] < 0:
                dist[v], count[v] = dist[u] + 1, count[u]
                queue.append(v)
            elif dist[v] == dist[u] + 1:
                count[v] += count[u]
    if dist[g] < 0:
        return None
    path, v = [g], g
    while v != s:  # backtrack: each predecessor with probability proportional to its path count
        preds = [u for u in into[v] if dist[u] == dist[v] - 1]
        v = random.choices(preds, weights=[count[u] for u in preds])[0]
        path.append(v)
    return path[::-1]


def weighted_sample(items: list[int], weights: list[float], k: int) -> list[int]:
    """``k`` items drawn one after another without replacement, each with probability proportional to weight."""
    items, weights, chosen = list(items), list(weights), []
    for _ in range(k):
        i = random.choices(range(len(items)), weights=weights)[0]
        chosen.append(items.pop(i))
        weights.pop(i)
    return chosen


def naive_dag(task: DagSearch) -> tuple[int, list[tuple[int, int]], int, int]:
    n = random.randint(3, task.max_vertices)
    edges = []
    for i in range(1, n):
        k = 1 if random.random() < 0.5 else random.randint(1, 3)
        for p in random.sample(range(i), min(k, i)):
            edges.append((p, i))
    start = random.randrange(n)
    goal = random.randrange(n - 1)
    if goal >= start:
        goal += 1
    return n, edges, start, goal


def balanced_dag(task: DagSearch) -> tuple[int, list[tuple[int, int]], int, int]:
    V, E, L = task.max_vertices, task.max_edges, task.max_lookahead
    look = random.randint(1, L)
    branches = random.randint(2, min((E - 1) // look, (V - 1) // look))
    n = min(look * branches + 1 + random.randint(0, 5), V, E + 1)
    n = max(n, 1 + branches * look)
    in_deg, out_deg = [0] * n, [0] * n
    children = [[] for _ in range(n)]
    edges = []

    def add(u: int, v: int) -> None:
        edges.append((u, v))
        children[u].append(v)

    # Skeleton: the goal chain 0 -> 1 -> ... -> look, then branches - 1 distractor chains out of the start.
    for x in range(1, look + 1):
        add(x - 1, x)
    pos = look + 1
    for j in range(branches - 1):
        slack = n - pos - (branches - 1 - j) * look
        length = look + (1 if slack >= 1 and random.random() < 0.5 else 0)
        prev = 0
        for x in range(pos, pos + length):
            add(prev, x)
            prev = x
        pos += length
    for u, v in edges:
        out_deg[u] += 1
        in_deg[v] += 1
    # The ancestor chain: ... -> x -> x - 1 -> ... -> pos -> 0.
    pre_end = pos + random.randint(0, n - pos)
    for x in range(pos, pre_end):
        child = 0 if x == pos else x - 1
        add(x, child)
        out_deg[x] += 1
        in_deg[child] += 1
    # Noise vertices: children by in-degree, parents by out-degree among non-descendants (no cycle).
    for x in range(pre_end, n):
        c = min(random.randint(0, 3), x)
        p = min(random.randint(1, 3) if c == 0 else random.randint(0, 3), x)
        kids = weighted_sample(list(range(x)), [0.5 + in_deg[u] for u in range(x)], c)
        below, stack = set(), list(kids)
        while stack:
            u = stack.pop()
            if u not in below:
                below.add(u)
                stack.extend(children[u])
        others = [u for u in range(x) if u not in below]
        parents = weighted_sample(others, [0.5 + out_deg[u] for u in others], min(p, len(others)))
        for u in kids:
            add(x, u)
            in_deg[u] += 1
        for u in parents:
            add(u, x)
            out_deg[u] += 1
    return n, edges, 0, look


def star_dag(task: DagSearch) -> tuple[int, list[tuple[int, int]], int, int]:
    V = task.max_vertices
    pairs = [
        (s, k)
        for s in range(1, task.max_lookahead + 1)
        for k in range(2, (V - 1) // s + 1)
        if s * k <= task.max_edges and s + 1 <= task.max_path_len
    ]
    s_len, spokes = random.choice(pairs)
    edges = []
    for j in range(spokes):
        prev = 0
        for t in range(s_len):
            v = 1 + j * s_len + t
            edges.append((prev, v))
            prev = v
    return 1 + spokes * s_len, edges, 0, random.randrange(spokes) * s_len + s_len


DAGS = {"naive": naive_dag, "balanced": balanced_dag, "star": star_dag}


def dag_graph(task: DagSearch) -> Graph:
    """A DAG of the task's distribution with a shortest answer by BFS, redrawn until it fits; then labelled."""
    while True:
        n, edges, start, goal = DAGS[task.distribution](task)
        if len(edges) > task.max_edges:
            continue
        path = bfs_shortest_path(n, edges, start, goal)
        if path is None or len(path) > task.max_path_len:
            continue
        break
    labels = random.sample(range(task.num_nodes), n)
    edges = [(labels[u], labels[v]) for u, v in edges]
    random.shuffle(edges)
    return edges, labels[start], labels[goal], [labels[v] for v in path]


def per_graph_sampler(task: GraphTask) -> Callable[[], Graph]:
    if isinstance(task, PathStar):
        return lambda: path_star_graph(task)
    if isinstance(task, TreeStar):
        return lambda: tree_star_graph(task)
    return lambda: dag_graph(task)


def tokens(task: GraphTask, graph: Graph) -> tuple[list[int], list[int]]:
    """One graph's prefix and target token rows in nfl's layout (query last)."""
    edges, start, goal, path = graph
    N, E = task.num_nodes, task.max_edges
    pipe, eq, slash = N, N + 1, N + 2
    prefix = []
    if task.variable:
        prefix += [N + 5] * (3 * (E - len(edges)))
    for u, v in edges:
        prefix += [u, v, pipe]
    prefix[-1] = slash
    prefix += [start, goal, eq]
    target = list(path)
    if task.variable:
        target.append(N + 4)
        target += [IGNORE_INDEX] * (task.target_len - len(target))
    return prefix, target


# ---------------------------------------------------------------------------------------------------------
# Checks of the per-graph code: invariants, token layout, and statistics against nfl's sampler.
# ---------------------------------------------------------------------------------------------------------
def check_graph(task: GraphTask, graph: Graph) -> None:
    edges, start, goal, path = graph
    nodes = {u for e in edges for u in e}
    assert all(0 <= u < task.num_nodes for u in nodes), "label out of range"
    assert len(set(edges)) == len(edges), "repeated edge"
    edge_set = set(edges)
    assert path[0] == start and path[-1] == goal and start != goal, "answer does not run from start to goal"
    assert all((u, v) in edge_set for u, v in zip(path, path[1:])), "answer leaves the edges"
    indeg = {u: 0 for u in nodes}
    outdeg = {u: 0 for u in nodes}
    for u, v in edges:
        outdeg[u] += 1
        indeg[v] += 1
    if isinstance(task, (PathStar, TreeStar)):  # a tree rooted at the start: labels distinct, one parent each
        assert len(nodes) == len(edges) + 1, "labels repeat"
        assert indeg[start] == 0 and all(indeg[u] == 1 for u in nodes if u != start), "not a tree"
    if isinstance(task, PathStar):
        assert outdeg[start] == task.degree and all(outdeg[u] <= 1 for u in nodes if u != start), "not a star"
        lo, hi = task.arm_lengths or (task.path_len, task.path_len)
        arms = sum(1 for u in nodes if outdeg[u] == 0)
        assert arms == task.degree and task.degree * (lo - 1) <= len(edges) <= task.degree * (hi - 1)
        assert 2 <= len(path) <= hi and (task.goal == "any" or outdeg[goal] == 0)
    if isinstance(task, TreeStar):
        assert len(edges) == task.num_edges and len(path) == task.max_path_len and outdeg[goal] == 0
        assert outdeg[start] == task.degree
        leaves = [u for u in nodes if outdeg[u] == 0]
        assert len(leaves) == task.degree * task.branching ** (task.depth - 1), "wrong leaves"
        assert all(outdeg[u] in (1, task.branching) for u in nodes if u != start and outdeg[u]), "wrong branching"
    if isinstance(task, DagSearch):
        assert len(edges) <= task.max_edges and 2 <= len(path) <= task.max_path_len
        order = [u for u in nodes if indeg[u] == 0]  # Kahn's algorithm: every vertex gets a place
        left = dict(indeg)
        for u in order:
            for a, b in edges:
                if a == u:
                    left[b] -= 1
                    if left[b] == 0:
                        order.append(b)
        assert len(order) == len(nodes), "cycle"
        dist = {u: len(nodes) for u in nodes}  # shortest by relaxation, independent of the BFS above
        dist[start] = 0
        for _ in nodes:
            for a, b in edges:
                dist[b] = min(dist[b], dist[a] + 1)
        assert dist[goal] == len(path) - 1, "answer is not a shortest path"
        if task.distribution == "star":
            assert outdeg[start] >= 2 and all(outdeg[u] <= 1 for u in nodes if u != start), "not a star"
            assert len(edges) == outdeg[start] * (len(path) - 1), "spokes of different lengths"
        if task.distribution == "balanced":
            assert outdeg[start] >= 2


def stats(task: GraphTask, prefix: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(3, n): edges, answer nodes, whether the first edge in the list leaves the start."""
    parents, _ = task.edges_of(prefix)
    start, _ = task.query_of(prefix)
    present = (parents >= 0) & (parents < task.num_nodes)
    first = parents[np.arange(len(parents)), present.argmax(1)]
    return np.stack([present.sum(1), task.answer_lengths(target), first == start]).astype(np.float64)


def check_sampler(task: GraphTask, graphs: int, rng: np.random.Generator) -> str:
    """Check the per-graph sampler; returns a one-line comparison of its statistics with nfl's."""
    draw = per_graph_sampler(task)
    rows = []
    for _ in range(graphs):
        graph = draw()
        check_graph(task, graph)
        rows.append(tokens(task, graph))
    prefix = np.array([p for p, _ in rows], dtype=np.int64)
    target = np.array([t for _, t in rows], dtype=np.int64)
    assert prefix.shape == (graphs, task.prefix_len) and target.shape == (graphs, task.target_len), "layout"
    assert answers_are_paths(task, prefix, target).all(), "nfl does not read the per-graph rows as paths"
    ours = stats(task, prefix, target)
    theirs = stats(task, *task.sample(rng, graphs))
    verdict, cells = "ok", []
    for a, b in zip(ours, theirs):
        se = np.sqrt(a.var() / len(a) + b.var() / len(b))
        if abs(a.mean() - b.mean()) > max(4 * se, 1e-9):
            verdict = "DIFFERS"
        cells.append(f"{b.mean():5.2f}/{a.mean():5.2f}")
    return f"{'  '.join(cells)}  {verdict}"


# ---------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------
def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def settings() -> list[tuple[str, GraphTask]]:
    return [
        ("PathStar G(2,5,50)", PathStar(2, 5, 50)),
        ("PathStar d3 arms 3..6 goal=any", PathStar(3, arm_lengths=(3, 6), goal="any", num_nodes=50)),
        ("TreeStar()", TreeStar()),
        ("DagSearch naive", DagSearch("naive")),
        ("DagSearch balanced", DagSearch("balanced")),
        ("DagSearch star", DagSearch("star")),
    ]


def rate(graphs: int, seconds: float) -> str:
    return f"{graphs / seconds:,.0f}"


def sampling_section(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    random.seed(0)
    small, big = args.batches
    print(f"\n## Sampling: graphs/s (nfl: median of {args.repeats} after a warm-up; per-graph Python: "
          f"{args.python_graphs} graphs a repeat)\n")
    print("check: nfl/python means of edges, answer nodes, first edge from start; ok = within 4 SE\n")
    chosen = [(name, task) for name, task in settings() if not args.only or any(w in name for w in args.only)]
    for name, task in chosen:
        print(f"  {name:<32} {check_sampler(task, args.check_graphs, rng)}")
    head = f"{'setting':<32} {'nfl b=' + str(small):>13} {'nfl b=' + str(big):>13} {'python':>10} " \
           f"{'x (b=' + str(small) + ')':>11} {'x (b=' + str(big) + ')':>11}"
    print("\n" + head + "\n" + "-" * len(head))
    for name, task in chosen:
        t_small = median_seconds(lambda: task.sample(rng, small), args.repeats)
        t_big = median_seconds(lambda: task.sample(rng, big), args.repeats)
        draw, k = per_graph_sampler(task), args.python_graphs
        t_py = median_seconds(lambda: [tokens(task, draw()) for _ in range(k)], args.repeats)
        py = k / t_py
        print(f"{name:<32} {rate(small, t_small):>13} {rate(big, t_big):>13} {py:>10,.0f} "
              f"{small / t_small / py:>10.1f}x {big / t_big / py:>10.1f}x", flush=True)


# ---------------------------------------------------------------------------------------------------------
# Whole-process file generation
# ---------------------------------------------------------------------------------------------------------
# A stand-in for the reference generate-and-save of one training file, written for this benchmark after
# reading gregorbachmann/Next-Token-Failures data/graphs.py (star_graph, generate_and_save): what it draws
# (labels one numpy scalar draw at a time, with rejection; the unused list of remaining nodes it builds;
# random.shuffle of the edges) and how it writes (strings built by concatenation, one write per line).
REFERENCE_STAND_IN = r'''
import random, sys
import numpy as np

def pick(n):
    return np.random.randint(0, n, 1)[0]

def star(degree, length, n):
    source = pick(n)
    goal = pick(n)
    while goal == source:
        goal = pick(n)
    path = [source]
    for _ in range(length - 2):  # the answer's inner nodes
        v = pick(n)
        while v in path or v == goal:
            v = pick(n)
        path.append(v)
    path.append(goal)
    edges = [[path[j], path[j + 1]] for j in range(length - 1)]
    unused = [v for v in range(n) if v not in path]  # built by the reference, never used
    taken = set()
    for _ in range(degree - 1):  # the other arms, one label at a time
        here, v, placed = source, pick(n), 1
        while placed < length:
            if v not in taken and v not in path:
                edges.append([here, v])
                taken.add(v)
                here, placed = v, placed + 1
            v = pick(n)
    random.shuffle(edges)
    return path, edges, source, goal

def main(count, out, degree=2, length=5, n=50):
    np.random.seed(0)
    random.seed(0)
    f = open(out, "w")
    for _ in range(count):
        path, edges, source, goal = star(degree, length, n)
        answer = ""
        for v in path:
            answer += str(v) + ","
        answer = answer[:-1]
        line = ""
        for u, v in edges:
            line += str(u) + "," + str(v) + "|"
        line = line[:-1] + "/" + str(source) + "," + str(goal) + "="
        f.write(line + answer + "\n")
    f.close()

main(int(sys.argv[1]), sys.argv[2])
'''


def run_timed(cmd: list[str], env: dict[str, str], cwd: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return seconds


def check_file(task: PathStar, path: Path, count: int) -> float:
    """Line count and the first lines parsed by nfl (grammar, answers are paths); returns bytes per line."""
    lines = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            lines += block.count(b"\n")
    assert lines == count, f"{path.name}: {lines} lines, expected {count}"
    with open(path, encoding="ascii") as f:
        head = [next(f) for _ in range(min(count, 2000))]
    task.parse_lines(head, source=str(path))
    return path.stat().st_size / count


def generation_section(args: argparse.Namespace) -> None:
    task = PathStar(2, 5, 50)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    with tempfile.TemporaryDirectory() as tmp:
        ours, ref, script = Path(tmp, "nfl.txt"), Path(tmp, "reference.txt"), Path(tmp, "reference_stand_in.py")
        script.write_text(REFERENCE_STAND_IN)
        cmd = [sys.executable, "-m", "nfl.data", "generate", "--degree", "2", "--path-len", "5", "--num-nodes", "50",
               "--n", str(args.gen_n), "--seed", "0", "--out", str(ours)]
        print("\n## File generation: G(2,5,50), whole process (wall time, start-up included)\n")
        print(f"nfl:       PYTHONPATH={ROOT} {' '.join(['python'] + cmd[1:-1])} TMP")
        print(f"reference: stand-in of data/graphs.py generate_and_save, python {script.name} {args.ref_n} TMP\n")
        t_nfl = run_timed(cmd, env, tmp)
        b_nfl = check_file(task, ours, args.gen_n)
        ours.unlink()
        t_ref = run_timed([sys.executable, str(script), str(args.ref_n), str(ref)], env, tmp)
        b_ref = check_file(task, ref, args.ref_n)
        t_boot = run_timed([sys.executable, str(script), "0", str(ref)], env, tmp) if args.ref_n != args.gen_n else 0.0
    scaled = t_boot + (t_ref - t_boot) * args.gen_n / args.ref_n  # start-up once, the rest in proportion
    note = "" if args.ref_n == args.gen_n else f" (scaled from {args.ref_n:,}, start-up {t_boot:.2f} s counted once)"
    head = f"{'':<22} {'graphs':>10} {'seconds':>9} {'graphs/s':>11} {'bytes/line':>11} {f's for {args.gen_n:,}':>14}"
    print(head + "\n" + "-" * len(head))
    print(f"{'nfl.data generate':<22} {args.gen_n:>10,} {t_nfl:>9.2f} {args.gen_n / t_nfl:>11,.0f} {b_nfl:>11.2f} "
          f"{t_nfl:>14.2f}")
    print(f"{'reference stand-in':<22} {args.ref_n:>10,} {t_ref:>9.2f} {args.ref_n / t_ref:>11,.0f} {b_ref:>11.2f} "
          f"{scaled:>14.2f}{note}")
    print(f"\nratio (reference stand-in / nfl, wall time for {args.gen_n:,} graphs): {scaled / t_nfl:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts (~20 s): a smoke test")
    parser.add_argument("--batches", type=int, nargs=2, metavar=("SMALL", "BIG"), help="nfl batch sizes (256 65536)")
    parser.add_argument("--repeats", type=int, help="timed repeats after the warm-up (3)")
    parser.add_argument("--python-graphs", type=int, help="graphs per repeat of the per-graph code (2000)")
    parser.add_argument("--check-graphs", type=int, help="graphs checked per setting (2000)")
    parser.add_argument("--gen-n", type=int, help="graphs nfl.data generate writes (1,000,000)")
    parser.add_argument("--ref-n", type=int, help="graphs the reference stand-in writes, scaled to --gen-n (1,000,000)")
    parser.add_argument("--skip", choices=["sampling", "generation"], help="leave one section out")
    parser.add_argument("--only", nargs="+", metavar="WORD",
                        help="sample only the settings whose name contains one of these (e.g. DagSearch)")
    args = parser.parse_args()
    if args.quick:
        defaults = dict(batches=[256, 8192], repeats=3, python_graphs=1000, check_graphs=1000, gen_n=100_000,
                        ref_n=10_000)
    else:
        defaults = dict(batches=[256, 65536], repeats=3, python_graphs=2000, check_graphs=2000, gen_n=1_000_000,
                        ref_n=1_000_000)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, CPUs: {cpus} usable of {os.cpu_count()}")
    t0 = time.perf_counter()
    if args.skip != "sampling":
        sampling_section(args)
    if args.skip != "generation":
        generation_section(args)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
