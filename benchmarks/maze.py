"""Speed of nfl's vectorised maze sampler (``nfl.tasks.Maze``) against a plain per-maze Python loop.

For each grid size it prints mazes/s of ``Maze(rows=n, cols=n).sample(rng, batch)`` (the whole sample: carving,
start and goal, the path, the token rows) at ``--batch`` (default 65,536, one call, after a small warm-up) next to
mazes/s of plain Python code that does the same one maze at a time: the textbook recursive backtracker with
``random`` and a list as its stack, a breadth-first search for the start-to-goal path, and the token row built as a
list. The per-maze code runs ``--python-mazes`` mazes (it would take minutes at the full batch) and its rate is
per maze, so the ratio compares rates. Before timing, the two are checked to draw the same distribution: mean
dead ends per maze and mean answer length agree within 4 standard errors.

    python benchmarks/maze.py                       # 5x5, 10x10, 20x20 at batch 65,536
    python benchmarks/maze.py --sizes 20 --batch 8192 --python-mazes 500
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import deque

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nfl.tasks import Maze  # noqa: E402


def python_maze(rng: random.Random, task: Maze) -> tuple[list[int], list[int]]:
    """One maze, one graph at a time: (prefix token row, answer path)."""
    rows, cols = task.rows, task.cols
    V = rows * cols
    cell = rng.randrange(V)
    seen, stack, around = {cell}, [cell], {v: [] for v in range(V)}
    passages = []
    while stack:
        cur = stack[-1]
        r, c = divmod(cur, cols)
        options = [x for x, ok in ((cur - cols, r > 0), (cur + cols, r < rows - 1), (cur - 1, c > 0),
                                   (cur + 1, c < cols - 1)) if ok and x not in seen]
        if not options:
            stack.pop()
            continue
        nxt = rng.choice(options)
        seen.add(nxt)
        stack.append(nxt)
        passages.append((min(cur, nxt), max(cur, nxt)))
        around[cur].append(nxt)
        around[nxt].append(cur)
    start = rng.randrange(V)
    goal = (start + rng.randrange(1, V)) % V
    came, todo = {start: None}, deque([start])
    while todo:
        u = todo.popleft()
        for v in around[u]:
            if v not in came:
                came[v] = u
                todo.append(v)
    path = [goal]
    while path[-1] != start:
        path.append(came[path[-1]])
    rng.shuffle(passages)
    prefix = []
    for i, (u, v) in enumerate(passages):
        prefix += [u, v, task.pipe if i < len(passages) - 1 else task.slash]
    return prefix + [start, goal, task.eq], path[::-1]


def dead_ends(edges: np.ndarray, V: int) -> int:
    return int((np.bincount(edges.ravel(), minlength=V) == 1).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--python-mazes", type=int, default=2000)
    args = parser.parse_args()
    print(f"{'maze':<8} {'nfl mazes/s':>12} {'python mazes/s':>15} {'ratio':>7}   (nfl at batch {args.batch:,}, "
          f"python over {args.python_mazes:,} mazes)")
    for n in args.sizes:
        task = Maze(rows=n, cols=n)
        V = n * n
        prefix, target = task.sample(np.random.default_rng(1), 2000)
        parents, children = task.edges_of(prefix)
        fast_dead = [dead_ends(np.stack([parents[i], children[i]]), V) for i in range(2000)]
        fast_len = task.answer_lengths(target)
        rng = random.Random(0)
        slow = [python_maze(rng, task) for _ in range(2000)]
        slow_dead = [dead_ends(np.array([p[0::3][:-1], p[1::3][:-1]]), V) for p, _ in slow]
        slow_len = [len(path) for _, path in slow]
        for name, a, b in (("dead ends", fast_dead, slow_dead), ("answer length", fast_len, slow_len)):
            se = np.sqrt(np.var(a) / len(a) + np.var(b) / len(b))
            if abs(np.mean(a) - np.mean(b)) > 4 * se:
                raise SystemExit(f"{n}x{n}: mean {name} differs: nfl {np.mean(a):.2f}, python {np.mean(b):.2f}")
        task.sample(np.random.default_rng(2), 256)  # warm-up
        start = time.perf_counter()
        task.sample(np.random.default_rng(3), args.batch)
        fast = args.batch / (time.perf_counter() - start)
        rng = random.Random(1)
        start = time.perf_counter()
        for _ in range(args.python_mazes):
            python_maze(rng, task)
        slow_rate = args.python_mazes / (time.perf_counter() - start)
        print(f"{n}x{n:<6} {fast:12,.0f} {slow_rate:15,.0f} {fast / slow_rate:7.1f}")


if __name__ == "__main__":
    main()
