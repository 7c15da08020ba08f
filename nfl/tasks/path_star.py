"""Path-star graphs G(d, l, N) (Bachmann & Nagarajan 2024, §3) and Frydenlund's variants of them.

A start node ``s`` with ``degree`` arms; each arm is a chain leading away from ``s``. Node labels are drawn
uniformly without repetition from ``0..N-1``; edges point away from the centre and the edge list is shuffled.
The answer is the path from ``s`` to the goal. With the defaults (every arm ``path_len`` nodes long counting
``s``, the goal at the end of a uniformly chosen arm, query after the graph, edges shuffled one by one) this
is the paper's task, byte-compatible with the reference code's files::

    32,3|16,12|3,19|32,34|34,6|6,16|19,47|47,28/32,12=32,34,6,16,12

The variants studied by Frydenlund (EMNLP 2024, arXiv 2410.13779, §5; ACL 2025, arXiv 2503.10542):

- ``arm_lengths: [lo, hi]``: each arm's path length (nodes from ``s`` to its leaf, ``s`` included) is drawn
  uniformly from ``lo..hi``, independently per arm ("length variation");
- ``goal: any``: the goal is a uniformly chosen non-start node of a uniformly chosen arm and the answer is
  truncated there ("generalised queries"; the decision is still the first step off ``s``);
- ``query_first: true``: the query ``s,g/`` comes before the edge list;
- ``shuffle: arms``: whole arms are permuted in the edge list, each arm's edges kept in order from ``s``
  outwards, instead of a uniform shuffle of single edges.

Everything is vectorised numpy with an explicit ``numpy.random.Generator``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from nfl.tasks.base import GraphTask, InfeasibleGraphError
from nfl.tasks.sampling import label_dtype, random_injection, random_permutation, shuffle_suffix
from nfl.tasks.scratchpad import check_scratchpad


@dataclass(frozen=True)
class PathStar(GraphTask):
    """Path-star task G(degree, path_len, num_nodes) and its variants.

    Args:
        degree: number of arms ``d``.
        path_len: nodes on an arm's path from the start to its leaf, both included (``l``); the answer length
            of the default task. With ``arm_lengths`` it is the longest arm's and may be left unset.
        num_nodes: label range ``N``.
        arm_lengths: ``[lo, hi]``: each arm's path length is drawn uniformly from ``lo..hi`` (``lo >= 2``).
        goal: ``leaf`` (the end of an arm, the paper's task) or ``any`` (any non-start node of an arm).
        query_first: write ``s,g/`` before the edge list instead of after it.
        shuffle: ``edges`` (a uniform shuffle of the edge list) or ``arms`` (whole arms in random order).
        scratchpad: ``goal_to_start``: the model first writes the goal's arm read backwards (goal to start),
            then a separator, then the path (:mod:`nfl.tasks.scratchpad`); null (default): the path alone.
    """

    degree: int = 2
    path_len: Optional[int] = None
    num_nodes: int = 50
    arm_lengths: Optional[tuple[int, int]] = None
    goal: Literal["leaf", "any"] = "leaf"
    query_first: bool = False
    shuffle: Literal["edges", "arms"] = "edges"
    scratchpad: Optional[Literal["goal_to_start"]] = None

    report_columns = (("tf_pos_ge3", "test/tf/pos_ge3"),)

    def __post_init__(self) -> None:
        lo, hi = self.arm_lengths if self.arm_lengths is not None else (None, None)
        if self.arm_lengths is not None:
            if len(self.arm_lengths) != 2 or not 2 <= lo <= hi:
                raise InfeasibleGraphError(
                    f"arm_lengths must be [shortest, longest] path lengths with 2 <= shortest <= longest, got "
                    f"{list(self.arm_lengths)}."
                )
            if self.path_len is not None and self.path_len != hi:
                raise InfeasibleGraphError(
                    f"path_len={self.path_len} contradicts arm_lengths={list(self.arm_lengths)}, whose longest "
                    f"arm sets the path length: leave path_len unset or make it {hi}."
                )
            object.__setattr__(self, "arm_lengths", (int(lo), int(hi)))
        object.__setattr__(self, "path_len", hi if hi is not None else (5 if self.path_len is None else self.path_len))
        if self.degree < 1:
            raise InfeasibleGraphError(f"degree must be >= 1, got {self.degree}.")
        if self.path_len < 2:
            raise InfeasibleGraphError(f"path_len must be >= 2 (start and goal are distinct nodes), got {self.path_len}.")
        if self.goal not in ("leaf", "any") or self.shuffle not in ("edges", "arms"):
            raise InfeasibleGraphError(f"goal must be leaf or any and shuffle edges or arms, got {self.goal!r}, {self.shuffle!r}.")
        check_scratchpad(self)
        if self.num_labels > self.num_nodes:
            raise InfeasibleGraphError(
                f"G(degree={self.degree}, path_len={self.path_len}, num_nodes={self.num_nodes}) is infeasible: "
                f"a graph needs degree*(path_len-1)+1 = {self.num_labels} distinct node labels but num_nodes is "
                f"{self.num_nodes}. Raise num_nodes to at least {self.num_labels}, or lower degree or path_len."
            )

    # --- sizes --------------------------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        """The most distinct labels in one graph: the centre plus ``path_len - 1`` nodes on each arm."""
        return self.degree * (self.path_len - 1) + 1

    @property
    def num_edges(self) -> int:
        return self.degree * (self.path_len - 1)

    @property
    def max_edges(self) -> int:
        return self.num_edges

    @property
    def max_path_len(self) -> int:
        return self.path_len

    @property
    def variable(self) -> bool:
        return self.arm_lengths is not None or self.goal == "any"

    @property
    def fixed_edges(self) -> bool:
        return self.arm_lengths is None

    def describe(self) -> str:
        size = f"G(degree={self.degree}, path_len={self.path_len}, num_nodes={self.num_nodes})"
        extras = [f"arm_lengths={list(self.arm_lengths)}"] if self.arm_lengths else []
        extras += [f"goal={self.goal}"] * (self.goal != "leaf") + ["query_first"] * self.query_first
        extras += [f"shuffle={self.shuffle}"] * (self.shuffle != "edges")
        extras += [f"scratchpad={self.scratchpad}"] * (self.scratchpad is not None)
        return size + (f" [{', '.join(extras)}]" if extras else "")

    def diagnostics(self, reverse: bool = False):
        from nfl.tasks.path_star_metrics import PathStarDiagnostics

        return PathStarDiagnostics(self, reverse)

    # --- sampling -----------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` independent graphs; returns ``(prefix, target)`` with forward paths.

        Labels are a uniform random injection of the graph's nodes into ``0..N-1``; the goal arm is uniform
        over the ``d`` arms; the edge order is a uniform shuffle (or a uniform order of whole arms).
        """
        if not self.variable and self.shuffle == "edges":
            return self._sample_reference(rng, n)
        d, a = self.degree, self.path_len - 1  # arms, and the most non-start nodes on one
        e, rows = d * a, np.arange(n)
        dtype = label_dtype(self.num_nodes)
        labels = random_injection(rng, n, self.num_nodes, 1 + e, dtype)
        start = labels[:, 0]
        # child[:, k*a + j]: node j+1 of arm k (j = 0 next to s); edge k*a+j ends there. Column e: the pad of
        # an unused slot (a slot table entry e reads it).
        # pair[:, k, 0], pair[:, k, 1]: the tail and head of canonical edge k (byte pairs gathered at once).
        fill = self.pad if self.variable else 0
        pair = np.empty((n, e + 1, 2), dtype=dtype)
        parent, child = pair[:, :, 0], pair[:, :, 1]
        arms = pair[:, :e].reshape(n, d, a, 2)
        arms[:, :, :, 1] = labels[:, 1:].reshape(n, d, a)
        arms[:, :, 0, 0] = start[:, None]
        arms[:, :, 1:, 0] = arms[:, :, :-1, 1]
        pair[:, e] = fill
        if self.arm_lengths is None:
            lengths = np.full((n, d), a)
        else:
            lo, hi = self.arm_lengths
            lengths = rng.integers(lo - 1, hi, size=(n, d))  # non-start nodes of each arm
        used = e - lengths.sum(1)  # unused slots, first in the edge list

        if self.shuffle == "edges":
            # The slots before the shuffle depend on the arm lengths alone: with few length combinations, one
            # gather from a table of them (in bytes) replaces building them row by row.
            lo, hi = self.arm_lengths if self.arm_lengths is not None else (a + 1, a + 1)
            radix = hi - lo + 1
            if radix**d <= 4096 and e < 127:
                combo = np.zeros(n, dtype=np.int64)
                for k in range(d - 1, -1, -1):
                    combo = combo * radix + (lengths[:, k] - (lo - 1))
                slot = _slot_table(d, a, lo, hi)[combo]
            else:
                slot = _slots(lengths, np.cumsum(lengths, axis=1) - lengths, used, a)
            shuffle_suffix(rng, slot, used)  # a uniform order of the present edges
        else:
            order = random_permutation(rng, n, d)  # order[:, r]: the arm at position r
            ranked = np.take_along_axis(lengths, order, axis=1)
            offset = np.empty_like(lengths)
            np.put_along_axis(offset, order, np.cumsum(ranked, axis=1) - ranked, axis=1)
            slot = _slots(lengths, offset, used, a)
        if dtype == np.uint8:  # both ends in one gather: (parent, child) byte pairs read as uint16
            edges = np.take_along_axis(pair.view(np.uint16).reshape(n, e + 1), slot, 1)
            edges = edges.view(np.uint8).reshape(n, e, 2)
            edge_p, edge_c = edges[:, :, 0], edges[:, :, 1]
        else:
            edge_p, edge_c = np.take_along_axis(parent, slot, 1), np.take_along_axis(child, slot, 1)

        goal_arm = rng.integers(0, d, size=n)
        arm_len = lengths[rows, goal_arm]  # non-start nodes on the goal's arm
        if self.goal == "leaf":
            depth = arm_len
        else:
            depth = (rng.random(n) * arm_len).astype(np.int64) + 1  # uniform over 1..arm_len
        path = np.empty((n, a + 1), dtype=labels.dtype)
        path[:, 0] = start
        path[:, 1:] = arms[rows, goal_arm, :, 1]
        goal = path[rows, depth]
        return self.encode_prefix(edge_p, edge_c, start, goal), self.encode_answers(path, depth + 1)

    def _sample_reference(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The paper's task, drawn with the same random calls in the same order as nfl always has, so a seed
        gives the same graphs (and the same results) as before tasks became pluggable."""
        d, l, e = self.degree, self.path_len, self.num_edges
        # A per-row Fisher-Yates shuffle of 0..N-1; the first num_labels columns are the graph's labels.
        labels = rng.permuted(np.broadcast_to(np.arange(self.num_nodes, dtype=np.int64), (n, self.num_nodes)), axis=1)
        start = labels[:, 0]  # (n,)
        arms = labels[:, 1 : self.num_labels].reshape(n, d, l - 1)  # (n, d, l-1), arms[:, a, 0] is next to start
        parents = np.concatenate([np.broadcast_to(start[:, None, None], (n, d, 1)), arms[:, :, :-1]], axis=2)
        parents, children = parents.reshape(n, e), arms.reshape(n, e)  # edge k: parents[k] -> children[k]

        order = rng.permuted(np.broadcast_to(np.arange(e), (n, e)), axis=1)  # uniform edge order per graph
        parents = np.take_along_axis(parents, order, axis=1)
        children = np.take_along_axis(children, order, axis=1)

        goal_arm = rng.integers(0, d, size=n)
        path = np.concatenate([start[:, None], arms[np.arange(n), goal_arm]], axis=1)  # (n, l)
        return self.encode_prefix(parents, children, start, path[:, -1]), path


def _slots(lengths: np.ndarray, offset: np.ndarray, used: np.ndarray, a: int) -> np.ndarray:
    """(n, e) int64: the canonical edge in each list slot: the present edges after the ``used`` unused
    slots, arm ``k`` from ``offset[:, k]`` on, each arm from the start outwards; the unused slots hold ``e``
    (the pad column)."""
    n, d = lengths.shape
    e = d * a
    j = np.arange(a)[None, None, :]
    present = j < lengths[:, :, None]  # (n, d, a)
    gap = a - lengths
    dest = np.where(
        present,
        (used[:, None] + offset)[:, :, None] + j,
        (np.cumsum(gap, axis=1) - gap)[:, :, None] + j - lengths[:, :, None],
    ).reshape(n, e)
    slot = np.empty((n, e), dtype=np.int64)  # slot[:, t]: the canonical edge in list slot t
    np.put_along_axis(slot, dest, np.where(present.reshape(n, e), np.arange(e), e), axis=1)
    return slot


@functools.lru_cache(maxsize=32)
def _slot_table(d: int, a: int, lo: int, hi: int) -> np.ndarray:
    """:func:`_slots` (arms in canonical order) for every combination of arm path lengths ``lo..hi``, as
    int8, row ``sum_k (len_k - lo) * (hi - lo + 1)**k``."""
    radix = hi - lo + 1
    combos = np.arange(radix**d)
    lengths = np.stack([(combos // radix**k) % radix + lo - 1 for k in range(d)], axis=1)
    used = d * a - lengths.sum(1)
    table = _slots(lengths, np.cumsum(lengths, axis=1) - lengths, used, a).astype(np.int8)
    table.flags.writeable = False
    return table
