"""Grid mazes: find the way from one cell to another through a perfect maze, the planning benchmark of the
any-order and search-trace papers.

After the maze setting of Kitouni et al. (MLM-U, arXiv 2406.05183; mazes: arXiv 2412.05117), whose public code
(facebookresearch/maze_navigation_MLMU) draws its mazes with the ``maze-dataset`` library's randomised
depth-first backtracker (``gen_dfs`` with forks) on an ``n x n`` lattice and picks the origin and the target as
two random cells; Lehnert et al. (Searchformer, 2024) use grid mazes as well.

**The maze.** A ``rows x cols`` grid; the passages are the edges of a spanning tree of the grid graph, carved by
a randomised depth-first backtracker from a uniformly drawn cell: step to a uniformly chosen unvisited neighbour
of the cell on top of the stack, or pop it when it has none. So every cell is reachable, there is no loop, and
the path between two cells is unique (the shortest path is the only one). ``start`` and ``goal`` are two
distinct cells drawn uniformly, independent of where the carving began; the answer is the path from start to
goal, ``2 ..  rows * cols`` cells long.

**Tokens.** Each passage is one edge ``u,v`` of the reference grammar (``u < v``; a passage may be walked either
way, so the task is ``undirected``: a step of an answer is legal when it crosses a passage in either direction),
listed in a uniformly shuffled order; there are always ``rows * cols - 1`` of them. Cell ``(r, c)`` is node
``r * cols + c`` with ``labels: cells`` (the grid's geometry is in the ids, as the maze papers' coordinate
tokens), or a uniform injection into ``0..num_nodes-1`` with ``labels: random`` (the geometry is hidden, as
path-star hides its labels).

**Diagnostics.** ``decision_acc`` reads the branching cells: the positions whose predecessor has more than one
way on (its passages other than the one the path came in by); ``edge_follow_rate`` is the rate of legal moves.

**Differences from the maze papers' data.** The text is nfl's grammar (``u,v|.../s,g=p1,...``), not
``maze-dataset``'s ``<ADJLIST_START> (0,0) <--> (0,1) ; ...`` tokens; the mazes are drawn on the fly from a seed
rather than stored; no A* trace is offered (the ``goal_to_start`` scratchpad is).

Sampling is vectorised over the batch: every maze of a batch takes one backtracker step per iteration, and all of
them finish after exactly ``2 * rows * cols - 1`` iterations (each cell is pushed once and popped once).
``python benchmarks/maze.py`` measures it against a plain per-maze Python loop: on an idle 2-core CPU at batch
65,536, 100k 5x5 and 6.1k 20x20 mazes/s, about 6x the loop (short of the 20x a sampler of nfl aims for; the
backtracker's 2V - 1 dependent steps per maze are the floor of this design).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Optional

import numpy as np

from nfl.tasks.base import GraphTask, InfeasibleGraphError
from nfl.tasks.sampling import label_dtype, random_injection, random_permutation
from nfl.tasks.scratchpad import check_scratchpad

MAX_SIDE = 64  # cells per side; a 64 x 64 maze is 4,095 edges, a prefix of 12,288 tokens
_CELLS_AT_A_TIME = 1 << 19  # mazes x cells per block of the sampler: its (n, V) state stays in cache


# A step's choice, by a table: for each 4-bit mask of free neighbours and a uniform r in 0..11, the (r mod count)-th
# free neighbour (uniform among them, since 12 is a multiple of 1, 2, 3 and 4), or 4 when none is free.
_CHOICE = np.array([[([j for j in range(4) if m >> j & 1][r % max(1, bin(m).count("1"))] if m else 4)
                     for r in range(12)] for m in range(16)], dtype=np.int64).ravel()


def grid_neighbours(rows: int, cols: int) -> np.ndarray:
    """(rows * cols, 4) int64: the up, down, left and right neighbour of every cell, -1 off the grid."""
    cell = np.arange(rows * cols).reshape(rows, cols)
    out = np.full((rows, cols, 4), -1, dtype=np.int64)
    out[1:, :, 0], out[:-1, :, 1] = cell[:-1, :], cell[1:, :]
    out[:, 1:, 2], out[:, :-1, 3] = cell[:, :-1], cell[:, 1:]
    return out.reshape(rows * cols, 4)


def backtracker_mazes(
    rng: np.random.Generator, n: int, rows: int, cols: int, start: np.ndarray, goal: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` mazes carved by randomised depth-first backtracking from a uniform cell each, and the path between
    two given cells of each: ``(parent (n, V), paths (n, V), lengths (n,))``; ``parent`` is the cell each cell
    was carved from (-1 at the carving's root), ``paths`` the cells from ``start`` to ``goal``, -1 after the end.

    One iteration moves every maze one step: the cell on top of its stack gets a uniformly chosen unvisited
    neighbour pushed, or is popped when it has none. State lives in flat arrays indexed ``maze * (V + 1) +
    cell`` (cell ``V`` a sentinel that is always visited, standing for "off the grid") so that each step is a
    few gathers and scatters over the batch. When the start or the goal is pushed, the stack holds the path to it
    from the root, and is copied; the two copies share the path down to their lowest common cell, and the answer
    is the start's copy read back up to that cell, then the goal's read down from it."""
    V = rows * cols
    nbr = grid_neighbours(rows, cols)
    nbr_flat = np.ascontiguousarray(np.where(nbr >= 0, nbr, V))
    rows_ = np.arange(n, dtype=np.int64)
    base = rows_ * (V + 1)  # each maze's cells, and its sentinel, in the flat arrays
    root = rng.integers(0, V, size=n)
    visited = np.zeros(n * (V + 1), dtype=bool)
    visited[base + V] = True
    visited[base + root] = True
    stack = np.full((n, V), -1, dtype=np.int64)
    stack[:, 0] = root
    flat_stack = stack.reshape(-1)
    top = rows_ * V  # the flat index of each stack's top entry
    parent = np.full(n * (V + 1), -1, dtype=np.int64)
    to_start, to_goal = np.full((n, V), -1, dtype=np.int64), np.full((n, V), -1, dtype=np.int64)
    for cell, copy in ((start, to_start), (goal, to_goal)):
        at_root = root == cell
        copy[at_root, 0] = root[at_root]
    weights = np.array([1, 2, 4, 8], dtype=np.uint8)
    for _ in range(2 * V - 1):  # V - 1 pushes and V pops, for every maze alike
        cur = flat_stack[top]
        around = nbr_flat[cur]  # (n, 4)
        free = ~visited[base[:, None] + around]
        mask = free.astype(np.uint8) @ weights  # which neighbours are free, as 4 bits
        choice = _CHOICE[mask.astype(np.int64) * 12 + rng.integers(0, 12, size=n)]
        push = choice < 4
        at = np.flatnonzero(push)
        nxt = around[at, choice[at]]
        visited[base[at] + nxt] = True
        parent[base[at] + nxt] = cur[at]
        top += 2 * push - 1
        flat_stack[top[at]] = nxt
        for cell, copy in ((start, to_start), (goal, to_goal)):
            hit = at[nxt == cell[at]]
            if len(hit):  # the stack up to its top (entries above it are left from popped cells)
                depth = top[hit] - hit * V
                copy[hit] = np.where(np.arange(V)[None, :] <= depth[:, None], stack[hit], -1)
    shared = (to_start == to_goal) & (to_start >= 0)
    meet = shared.sum(axis=1) - 1  # the lowest common cell's index in both copies
    len_s, len_g = (to_start >= 0).sum(axis=1), (to_goal >= 0).sum(axis=1)
    lengths = (len_s - meet) + (len_g - meet - 1)
    i = np.arange(V)[None, :]
    up = len_s[:, None] - 1 - i  # start, its carver, ... down to the meeting cell
    down = meet[:, None] + (i - (len_s - meet)[:, None] + 1)  # then the goal's copy after the meeting cell
    from_start = np.take_along_axis(to_start, up.clip(0, V - 1), axis=1)
    from_goal = np.take_along_axis(to_goal, down.clip(0, V - 1), axis=1)
    paths = np.where(i < (len_s - meet)[:, None], from_start, from_goal)
    return parent.reshape(n, V + 1)[:, :V], np.where(i < lengths[:, None], paths, -1), lengths


@dataclass(frozen=True)
class Maze(GraphTask):
    """Grid-maze task (see the module docstring).

    Args:
        rows: cells per column of the grid (1 to 64).
        cols: cells per row of the grid (1 to 64); a maze has at least 2 cells.
        num_nodes: label range ``N``; null: ``rows * cols``, one label per cell. At least ``rows * cols``.
        labels: ``cells``: cell ``(r, c)`` is node ``r * cols + c``; ``random``: a uniform injection of the cells
            into ``0..N-1`` per maze.
        query_first: write ``s,g/`` before the edge list instead of after it.
        scratchpad: ``goal_to_start``: the model first writes the path read from the goal back to the start,
            then a separator, then the path (:mod:`nfl.tasks.scratchpad`); null (default): the path alone.
    """

    rows: int = 5
    cols: int = 5
    num_nodes: Optional[int] = None
    labels: Literal["cells", "random"] = "cells"
    query_first: bool = False
    scratchpad: Optional[Literal["goal_to_start"]] = None

    def __post_init__(self) -> None:
        check_scratchpad(self)
        for name in ("rows", "cols"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
                raise InfeasibleGraphError(f"{name} must be an integer from 1 to {MAX_SIDE}, got {value!r}.")
        if self.rows * self.cols < 2:
            raise InfeasibleGraphError(
                f"a {self.rows} x {self.cols} maze has one cell and no way to walk; raise rows or cols so that the "
                "grid has at least 2 cells."
            )
        if self.labels not in ("cells", "random"):
            raise InfeasibleGraphError(f"labels must be cells or random, got {self.labels!r}.")
        if self.num_nodes is None:
            object.__setattr__(self, "num_nodes", self.rows * self.cols)
        elif isinstance(self.num_nodes, int) and not isinstance(self.num_nodes, bool) and self.num_nodes < self.cells:
            raise InfeasibleGraphError(
                f"num_nodes={self.num_nodes} is below the {self.cells} cells of a {self.rows} x {self.cols} maze: "
                f"every cell needs a label; raise num_nodes to at least {self.cells} (or set it to null)."
            )

    # --- sizes --------------------------------------------------------------------------------------
    @property
    def cells(self) -> int:
        return self.rows * self.cols

    @property
    def max_edges(self) -> int:
        return self.cells - 1

    @property
    def max_path_len(self) -> int:
        return self.cells

    @property
    def variable(self) -> bool:
        return True  # answers differ in length

    @property
    def fixed_edges(self) -> bool:
        return True  # a spanning tree: always cells - 1 passages

    @property
    def undirected(self) -> bool:
        return True

    def describe(self) -> str:
        extra = "" if self.num_nodes == self.cells else f", N={self.num_nodes}"
        extra += ", labels=random" if self.labels == "random" else ""
        extra += ", query_first" if self.query_first else ""
        extra += f", scratchpad={self.scratchpad}" if self.scratchpad is not None else ""
        return f"Maze({self.rows}x{self.cols}{extra})"

    @cached_property
    def _chunk(self) -> int:
        return max(1, _CELLS_AT_A_TIME // self.cells)

    # --- sampling -----------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` mazes with a start and a goal; returns ``(prefix, target)`` with forward paths."""
        if n <= self._chunk:
            return self._sample(rng, n)
        prefix = np.empty((n, self.prefix_len), dtype=np.int64)
        target = np.empty((n, self.target_len), dtype=np.int64)
        for done in range(0, n, self._chunk):  # blocks whose state fits in cache, written in place
            prefix[done : done + self._chunk], target[done : done + self._chunk] = self._sample(rng, min(self._chunk, n - done))
        return prefix, target

    def _sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        V = self.cells
        start = rng.integers(0, V, size=n)
        goal = (start + rng.integers(1, V, size=n)) % V  # distinct from the start, uniform over the others
        parent, paths, lengths = backtracker_mazes(rng, n, self.rows, self.cols, start, goal)
        if self.labels == "random":
            label = random_injection(rng, n, self.num_nodes, V, label_dtype(self.num_nodes)).astype(np.int64)
        else:
            label = np.broadcast_to(np.arange(V, dtype=np.int64), (n, V))
        # The passages: (parent, cell) of every cell but the root, in a shuffled order, smaller label first.
        carved = np.argsort(parent < 0, axis=1, kind="stable")[:, : V - 1]  # the V - 1 cells with a parent
        order = np.take_along_axis(carved, random_permutation(rng, n, V - 1), axis=1)
        u = np.take_along_axis(label, np.take_along_axis(parent, order, axis=1), axis=1)
        v = np.take_along_axis(label, order, axis=1)
        rows_ = np.arange(n)[:, None]
        path_labels = np.where(paths >= 0, label[rows_, paths.clip(min=0)], -1)
        prefix = self.encode_prefix(np.minimum(u, v), np.maximum(u, v), label[rows_[:, 0], start], label[rows_[:, 0], goal])
        return prefix, self.encode_answers(path_labels, lengths)
