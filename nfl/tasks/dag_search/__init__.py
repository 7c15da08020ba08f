"""Search on random DAGs (Saparov et al., ICLR 2025, arXiv 2412.04703, "Transformers Struggle to Learn to
Search"; code: github.com/asaparov/learning_to_search), as a whole-path task.

This package owns :class:`DagSearch`. Here: its options and their checks, sampling and the rejection loop
that keeps graphs within ``max_edges`` and ``max_path_len``; in :mod:`.graphs`, the three graph distributions
of the paper (naive, balanced, star); in :mod:`.search`, the batched shortest-path search and the trace-back
that make the answer. The token layout, text format and metrics are the shared ones of :mod:`nfl.tasks.base`.

**The answer.** The paper trains one next-vertex prediction per example (the label is a uniformly drawn
child of the current vertex from which the goal is reachable). Here the target is the **whole** path: a
shortest path from the start to the goal, drawn uniformly among all shortest paths (the backtrack from the
goal picks each predecessor at distance ``d - 1`` with probability proportional to the number of shortest
paths from the start to it, which makes every shortest path equally likely). ``any_shortest_path = True``
tells :mod:`nfl.engine.metrics` to count any shortest start-to-goal path as an exact match.

**Labels and edge order.** Vertex labels are a uniform random injection into ``0..N-1`` (the paper: into
``1..N``, 0 being reserved; nfl has no reserved id). The edge list is in uniformly random order, as in
the C++ training generator (``generate_training_set``: ``shuffle(edges)``); here by sorting a random 64-bit
key per edge, whose ties (probability below ``E^2 / 2^52`` per graph, 1e-13 at the defaults) keep the
vertex order, the one departure from exactly uniform. The Python generators of the
same repository (``generate_star_graph_data``, ``generate_eval_data``) instead write edges per source vertex
in vertex order, which puts the start's edge into the goal branch first among its edges: a positional cue
that leaks the answer, which is not reproduced here.

**naive** (``generate_graph`` in ``generator.cpp``; the paper's "naive", the code's ``simple``):
``n ~ U{3..max_vertices}`` vertices in topological order; vertex ``i >= 1`` gets ``k`` parents (``k = 1``
with probability 1/2, else ``k ~ U{1..3}``; ``k <= i``) drawn uniformly without replacement from
``0..i-1``. Deviation: start and goal are uniform over *all* ``n`` vertices (distinct); the reference draws
both from ``0..n-2`` only, so its last vertex (always a sink) is never the goal; that quirk is not followed.
As in the reference, a graph whose goal is unreachable from its start is dropped and a fresh graph drawn
(not only a fresh query), so graphs with many reachable pairs are favoured exactly as there.

**balanced** (``generate_graph_with_lookahead`` with the parameter draws of ``generate_training_set``; the
paper's "balanced", the code's ``crafted``): lookahead ``l``; ``B ~ U{2..floor((max_edges-1)/l)}``
branches (also capped by ``floor((max_vertices-1)/l)``); ``n = max(min(l*B + 1 + U{0..5}, max_vertices,
max_edges + 1), 1 + B*l)``; vertex 0 is the start, the goal chain ``0 -> 1 -> ... -> l`` ends at the goal,
``B - 1`` distractor chains from the start have length ``l`` or ``l + 1`` (+1 with probability 1/2 when
the vertex budget leaves room, the reference's rule); an ancestor chain of ``U{0..n - used}`` fresh
vertices leads into the start; every remaining vertex is a noise vertex with ``c ~ U{0..3}`` children and
``p`` parents (``p ~ U{1..3}`` if ``c = 0``, else ``U{0..3}``; both capped by its index), children drawn
without replacement among earlier vertices with weight ``0.5 + in-degree``, parents with weight
``0.5 + out-degree`` among earlier vertices that are not its descendants (so no cycle forms). The degree
counters are the reference's: skeleton and ancestor-chain degrees, plus only the noise edges counted on the
earlier endpoint (a noise vertex's own degrees are not updated when it is added). Sampling without
replacement by weight is the reference's sequential draws (each on the running sums of the weights left),
or for a handful of graphs at once an exponential race, which has the same law. A graph's answer is its
goal chain without a search unless a noise vertex lies on a start-goal path (then, with ``l >= 2``, it
is searched like any edge list), which is exact: every other start-goal path passes through a noise
vertex. Simplifications and deviations:

- ``l ~ U{1..max_lookahead}``: the reference draws ``l ~ U{0..L}``, where ``l = 0`` is the single edge
  start -> goal with one or two branches, a one-step answer with nothing to search; it is left out.
- No lookahead-equality filter: the reference keeps only the training examples whose measured
  ``lookahead_depth`` equals ``l`` (noise edges can add shortcuts or merge branches); here every graph is
  kept and the answer is simply a shortest path of the graph as drawn, so ``l`` is the designed, not the
  measured, lookahead and a noise shortcut can make the answer shorter than ``l + 1`` nodes.
- ``l`` is redrawn with each rejected graph (the reference keeps it until one example with exactly that
  lookahead is emitted), so after rejections for too many edges the lookahead is not exactly uniform.

**star** (``generate_star_graph``, ``generate_star_graph_data(uniform=True)`` in ``train.py``): a start
with ``k`` spokes, each a fresh chain of ``s_len`` vertices; the pair ``(s_len, k)`` is drawn uniformly from
the list of allowed pairs, ``s_len in 1..max_lookahead``, ``k in 2..floor((max_vertices-1)/s_len)``, pairs
with ``k*s_len > max_edges`` or ``s_len + 1 > max_path_len`` left out of the list (the same law as drawing
from the full list and rejecting). Deviations: ``k = 1`` (one spoke, no decision) is left out; the goal is
the end of a uniformly chosen spoke (the reference always uses spoke 0, which only its per-vertex edge order
made distinguishable).

**Rejection.** Graphs with more than ``max_edges`` edges or a shortest answer of more than ``max_path_len``
nodes (and, for naive, an unreachable goal) are redrawn, in vectorised rounds; when under 1% of (at least
4096) candidates fit, or after a hundred candidates per requested graph, the sampler gives up with an
:class:`InfeasibleGraphError` naming the option to raise. Everything is vectorised over the batch (loops
run over vertex index, a graph's k-th noise vertex or BFS layer only) and seeded by the caller's
``numpy.random.Generator``. Ranged draws ``U{0..r-1}`` are often ``floor(u * r)`` of a uniform double ``u``
(uniform up to its 2^-53 resolution).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from nfl.tasks.base import GraphTask, InfeasibleGraphError
from nfl.tasks.dag_search.graphs import balanced_graphs, naive_edges, random_words, star_graphs, vertex_labels
from nfl.tasks.dag_search.search import edge_search, edge_trace_back, topo_search, topo_trace_back
from nfl.tasks.scratchpad import check_scratchpad

_CELLS = 1 << 22  # candidate graphs per round: at most _CELLS // V**2 (the round sizes set the random stream)


@dataclass(frozen=True)
class DagSearch(GraphTask):
    """Shortest-path search on random DAGs after Saparov et al. (2025); see the module docstring.

    Args:
        distribution: ``naive``, ``balanced`` or ``star`` (the paper's three training distributions).
        num_nodes: label range ``N``; a graph's labels are a uniform injection into ``0..N-1``.
        max_vertices: the most vertices in a graph (the paper's ``N``).
        max_edges: edge slots in a prefix; graphs with more edges are redrawn.
        max_lookahead: the paper's ``L`` (balanced: the goal chain length; star: the longest spoke); unused
            by naive.
        max_path_len: the most nodes in an answer; graphs whose shortest answer is longer are redrawn.
        query_first: write ``s,g/`` before the edge list instead of after it.
        scratchpad: ``goal_to_start``: the model first writes the answer's shortest path read from the goal
            back to the start, then a separator, then the path (:mod:`nfl.tasks.scratchpad`); null (default):
            the path alone.
    """

    distribution: Literal["naive", "balanced", "star"] = "balanced"
    num_nodes: int = 50
    max_vertices: int = 20
    max_edges: int = 24
    max_lookahead: int = 4
    max_path_len: int = 8
    query_first: bool = False
    scratchpad: Optional[Literal["goal_to_start"]] = None

    any_shortest_path = True

    def __post_init__(self) -> None:
        check_scratchpad(self)
        d, V, E, L, P = self.distribution, self.max_vertices, self.max_edges, self.max_lookahead, self.max_path_len
        if d not in ("naive", "balanced", "star"):
            raise InfeasibleGraphError(f"distribution must be naive, balanced or star, got {d!r}.")
        if V < 3:
            raise InfeasibleGraphError(f"max_vertices must be >= 3 (the smallest graph has 3 vertices), got {V}.")
        if V > 63:
            raise InfeasibleGraphError(
                f"max_vertices must be <= 63 (graphs are built with 64-bit vertex sets), got {V}; lower max_vertices."
            )
        if self.num_nodes < V:
            raise InfeasibleGraphError(
                f"num_nodes={self.num_nodes} is below max_vertices={V}: a graph needs a distinct label per "
                f"vertex; raise num_nodes to at least {V} or lower max_vertices."
            )
        if E < 2:
            raise InfeasibleGraphError(f"max_edges must be >= 2 (the smallest graph has 2 edges), got {E}.")
        if P < 2:
            raise InfeasibleGraphError(f"max_path_len must be >= 2 (start and goal are distinct), got {P}.")
        if d != "naive":
            if L < 1:
                raise InfeasibleGraphError(f"max_lookahead must be >= 1 for {d}, got {L}.")
            if 2 * L + 1 > V:
                raise InfeasibleGraphError(
                    f"max_lookahead={L} needs max_vertices >= {2 * L + 1} (two branches of length {L} and the "
                    f"start) but max_vertices is {V}; raise max_vertices or lower max_lookahead."
                )
            need = 2 * L + 1 if d == "balanced" else 2 * L
            if E < need:
                raise InfeasibleGraphError(
                    f"max_lookahead={L} needs max_edges >= {need} for {d} but max_edges is {E}; raise max_edges "
                    "or lower max_lookahead."
                )
            if P < L + 1:
                raise InfeasibleGraphError(
                    f"max_lookahead={L} makes answers of up to {L + 1} nodes but max_path_len is {P}; raise "
                    f"max_path_len to {L + 1} or lower max_lookahead."
                )

    # --- sizes --------------------------------------------------------------------------------------
    @property
    def variable(self) -> bool:
        return True

    def describe(self) -> str:
        parts = [self.distribution, f"V<={self.max_vertices}", f"E<={self.max_edges}"]
        if self.distribution != "naive":
            parts.append(f"L={self.max_lookahead}")
        parts.append(f"N={self.num_nodes}")
        if self.max_path_len != 8:
            parts.append(f"P<={self.max_path_len}")
        if self.query_first:
            parts.append("query_first")
        if self.scratchpad is not None:
            parts.append(f"scratchpad={self.scratchpad}")
        return f"DagSearch({', '.join(parts)})"

    # --- sampling -----------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` graphs; returns ``(prefix, target)`` with forward shortest paths."""
        if self.distribution == "star":
            V, E, L, P = self.max_vertices, self.max_edges, self.max_lookahead, self.max_path_len
            parents, children, start, goal, paths, lengths = star_graphs(rng, n, V, E, L, P, self.num_nodes, self.pad)
            return self.encode_prefix(parents, children, start, goal), self.encode_answers(paths, lengths)
        pieces: list[tuple[np.ndarray, ...]] = []
        filled, drawn, counted = 0, 0, 0
        rejected = {"edges": 0, "path": 0, "unreachable": 0}
        budget = 100 * n + 4096
        chunk = max(256, _CELLS // self.max_vertices**2)
        # Naive candidates come with their query already ordered (see graphs.naive_edges); each stands for two
        # of the reference's (ordered queries, half with the goal first, never reachable), and the give-up
        # rule counts them so, so that it fires where it always did.
        weight = 2 if self.distribution == "naive" else 1
        while filled < n:
            if counted >= budget or (counted >= 4096 and 100 * filled < counted):  # under 1% accepted: hopeless
                self._give_up(counted, filled, rejected)
            rate = (filled + 1) / (drawn + 1) if drawn else 0.5
            m = int(min(chunk, max(64, np.ceil((n - filled) / max(rate, 0.01) * 1.1))))
            out = self._draw(rng, m, rejected)
            drawn += m
            counted += weight * m
            rejected["unreachable"] += (weight - 1) * m
            if len(out[0]):
                pieces.append(out)
                filled += len(out[0])
        parents, children, start, goal, paths, lengths = (np.concatenate(x)[:n] for x in zip(*pieces))
        return self.encode_prefix(parents, children, start, goal), self.encode_answers(paths, lengths)

    def _give_up(self, drawn: int, filled: int, rejected: dict[str, int]) -> None:
        worst = max(rejected, key=rejected.get)
        fix = {
            "edges": f"raise max_edges (now {self.max_edges}) or lower max_vertices",
            "path": f"raise max_path_len (now {self.max_path_len})",
            "unreachable": "raise max_edges",
        }[worst]
        raise InfeasibleGraphError(
            f"{self.describe()}: only {filled} of {drawn} drawn graphs fit (most rejected: {worst}); {fix}."
        )

    def _draw(self, rng: np.random.Generator, m: int, rejected: dict[str, int]) -> tuple[np.ndarray, ...]:
        """``m`` candidate graphs; the accepted ones as label arrays (edges, query, paths, lengths).

        Graphs are edge lists in vertex indices (``src << 6 | dst`` codes, the dummy vertex ``V`` in unused
        slots); no step of the search costs ``V * V`` per graph."""
        V, E, P = self.max_vertices, self.max_edges, self.max_path_len
        if self.distribution == "naive":
            # Naive has the parents of vertex i in slots 3i..3i+2, which the topological search reads.
            src, dst, start, goal = naive_edges(rng, m, V, E, rejected)
            depth, dist, count = topo_search(src, start, goal, V)
            reach = depth >= 1
            short = reach & (depth + 1 <= P)
            rejected["path"] += int((reach & ~short).sum())
            rejected["unreachable"] += int((~reach).sum())
            if not short.all():
                src, dst, start, goal = src[short], dst[short], start[short], goal[short]
                dist, count, depth = dist[short], count[short], depth[short]
            path = topo_trace_back(rng, src, dist, count, goal, depth, P, V)
            labels, parents, children = self._labels(rng, src.astype(np.int16) << 6 | dst)
            k = len(src)
            rk = np.arange(k)
            nodes = labels.reshape(-1)[path * k + rk[:, None]]
            return parents, children, labels[start, rk], labels[goal, rk], nodes, depth + 1
        # The goal chain 0, 1, ..., l is the answer unless a noise vertex lies on a start-goal path
        # (graphs.balanced_graphs); only those graphs are searched. Every goal is reachable, and no answer is
        # longer than l + 1 <= P.
        code, goal, search = balanced_graphs(rng, m, V, E, self.max_lookahead, rejected)
        depth = goal.copy()
        s = np.nonzero(search)[0]
        if len(s):
            c = code[s].astype(np.int64)
            src, dst = c >> 6, c & 63
            start = np.zeros(len(s), dtype=np.int64)
            depth[s], dist, count = edge_search(src, dst, start, goal[s], V)
            path = edge_trace_back(rng, src, dst, dist, count, goal[s], depth[s], P)
        labels, parents, children = self._labels(rng, code)
        k = len(code)
        width = min(P, V + 1)  # answers have at most l + 1 <= V nodes
        nodes = np.ascontiguousarray(labels[:width].T)  # the goal chain; entries past the goal are not read
        if len(s):
            nodes[s] = labels.reshape(-1)[path[:, :width] * k + s[:, None]]
        return parents, children, labels[0], labels[goal, np.arange(k)], nodes, depth + 1

    def _labels(self, rng: np.random.Generator, code: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels for graphs given as edge codes ``src << 6 | dst`` (rows, slots; the dummy edge in unused
        slots, anywhere, at most ``max_edges`` edges a row): ``(labels, parents, children)``, the labels
        vertex-major (``(V + 1, k)``, row ``V`` the dummy's, ``pad``) and the edges (k, max_edges) in labels,
        unused slots first, the edges in a uniformly random order."""
        V, E = self.max_vertices, self.max_edges
        k = len(code)
        labels = vertex_labels(rng, k, self.num_nodes, V, self.pad)
        flat = labels.reshape(-1)
        rk = np.arange(k)[:, None]
        # A uniform order of each graph's edges, after its unused slots: sort keys of a random word per slot
        # with the edge's code in the low 12 bits and the top bit set (the dummy edge's key is its bare code,
        # so unused slots sort first). Two edges of a graph tie, and keep their code order, with probability
        # below E^2 / 2^52 per graph (1e-13 at E = 24): the one departure from uniform.
        dummy = V << 6 | V
        key = random_words(rng, code.shape)
        key |= np.uint64(1 << 63)
        key &= np.uint64(~4095 & 0xFFFFFFFFFFFFFFFF)
        key |= code.astype(np.uint64)
        np.copyto(key, np.uint64(dummy), where=code == dummy)
        key.sort(axis=1)
        key = key[:, key.shape[1] - E :].astype(np.int64)
        return labels, flat[(key >> 6 & 63) * k + rk], flat[(key & 63) * k + rk]
