"""Tree-star graphs: path-star arms that branch, so the path to the goal passes several decisions.

After the tree-star topology of Frydenlund (ACL 2025, arXiv 2503.10542), where the arms of a path-star
graph branch into trees. The start node has ``degree`` children; below them every branch node has
``branching`` children, down to ``depth`` levels of branch points under the start, and every tree edge is a
chain of ``segment`` edges (``segment - 1`` fresh nodes in between), so between two decisions the
Clever-Hans shortcut of following the only edge out of the previous node works, and at each branch node it
does not. The goal is a uniformly chosen leaf; the answer is the unique start-to-goal path of
``depth * segment + 1`` nodes. Labels are a uniform injection into ``0..N-1`` and the edge list is shuffled
uniformly, as on path-star.

``decision_acc`` is broken down by branching depth as ``decision_acc/depth_{k}`` (``k = 1``: the choice at the
start, ``k = 2``: at the first branch node below it, ...).

The topology is the same for every graph, so sampling is a relabelling and a shuffle of one template,
vectorised over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Optional

import numpy as np

from nfl.tasks.base import GraphTask, InfeasibleGraphError
from nfl.tasks.sampling import label_dtype, random_injection, random_permutation
from nfl.tasks.scratchpad import check_scratchpad


@dataclass(frozen=True)
class TreeStar(GraphTask):
    """Tree-star task.

    Args:
        degree: children of the start node (the first decision).
        branching: children of every branch node below the start (the later decisions).
        depth: levels of branch points under the start; the answer passes ``depth`` decisions.
        segment: edges between two consecutive branch points (a chain); 1 makes a plain tree.
        num_nodes: label range ``N``.
        query_first: write ``s,g/`` before the edge list instead of after it.
        scratchpad: ``goal_to_start``: the model first writes the path read from the goal up to the start,
            then a separator, then the path (:mod:`nfl.tasks.scratchpad`); null (default): the path alone.
    """

    degree: int = 2
    branching: int = 2
    depth: int = 2
    segment: int = 2
    num_nodes: int = 50
    query_first: bool = False
    scratchpad: Optional[Literal["goal_to_start"]] = None

    def __post_init__(self) -> None:
        check_scratchpad(self)
        for name in ("degree", "branching", "depth", "segment"):
            if getattr(self, name) < 1:
                raise InfeasibleGraphError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.num_labels > self.num_nodes:
            raise InfeasibleGraphError(
                f"{self.describe()} is infeasible: a graph has {self.num_labels} nodes but num_nodes is "
                f"{self.num_nodes}. Raise num_nodes to at least {self.num_labels}, or lower degree, branching, "
                "depth or segment."
            )

    # --- sizes --------------------------------------------------------------------------------------
    @property
    def tree_edges(self) -> int:
        """Edges of the tree of branch points (before chains replace them)."""
        return self.degree * sum(self.branching**j for j in range(self.depth))

    @property
    def num_edges(self) -> int:
        return self.tree_edges * self.segment

    @property
    def num_labels(self) -> int:
        return self.num_edges + 1

    @property
    def max_edges(self) -> int:
        return self.num_edges

    @property
    def max_path_len(self) -> int:
        return self.depth * self.segment + 1

    @property
    def variable(self) -> bool:
        return False

    def describe(self) -> str:
        return (
            f"TreeStar(degree={self.degree}, branching={self.branching}, depth={self.depth}, "
            f"segment={self.segment}, N={self.num_nodes}"
            + (f", scratchpad={self.scratchpad}" if self.scratchpad is not None else "") + ")"
        )

    def diagnostics(self, reverse: bool = False):
        from nfl.tasks.tree_star_metrics import DecisionsByDepth

        return DecisionsByDepth(self.depth)

    # --- the template -------------------------------------------------------------------------------
    @cached_property
    def _template(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(parents (E,), children (E,), paths (leaves, l)) over node indices 0..V-1, 0 the start."""
        parents, children, paths = [], [], []
        next_id = [1]

        def chain(top: int) -> list[int]:  # the segment below ``top``: its nodes, the last a branch point
            nodes, prev = [], top
            for _ in range(self.segment):
                node = next_id[0]
                next_id[0] += 1
                parents.append(prev)
                children.append(node)
                nodes.append(node)
                prev = node
            return nodes

        def grow(node: int, path: list[int], level: int) -> None:
            if level == self.depth:
                paths.append(path)
                return
            for _ in range(self.degree if level == 0 else self.branching):
                below = chain(node)
                grow(below[-1], path + below, level + 1)

        grow(0, [0], 0)
        return np.array(parents), np.array(children), np.array(paths)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` graphs: labels a uniform injection, the goal a uniform leaf, the edges shuffled."""
        parents, children, paths = self._template
        labels = random_injection(rng, n, self.num_nodes, self.num_labels, label_dtype(self.num_nodes))  # of node j
        order = random_permutation(rng, n, self.num_edges)  # the template edge in each list slot
        edge_p = np.take_along_axis(labels, parents[order], axis=1)
        edge_c = np.take_along_axis(labels, children[order], axis=1)
        leaf = rng.integers(0, len(paths), size=n)
        path = np.take_along_axis(labels, paths[leaf], axis=1)  # (n, l)
        return self.encode_prefix(edge_p, edge_c, path[:, 0], path[:, -1]), path.astype(np.int64)
