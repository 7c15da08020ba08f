"""Search on random DAGs (Saparov et al., ICLR 2025, arXiv 2412.04703, "Transformers Struggle to Learn to
Search"; code: github.com/asaparov/learning_to_search), as a whole-path task.

This module owns :class:`DagSearch`: its options and their checks, the three graph distributions of the
paper (naive, balanced, star), the batched shortest-path search that makes the answer, and the rejection loop
that keeps graphs within ``max_edges`` and ``max_path_len``. The token layout, text format and metrics are the
shared ones of :mod:`nfl.tasks.base`.

**The answer.** The paper trains one next-vertex prediction per example (the label is a uniformly drawn
child of the current vertex from which the goal is reachable). Here the target is the **whole** path: a
shortest path from the start to the goal, drawn uniformly among all shortest paths (the backtrack from the
goal picks each predecessor at distance ``d - 1`` with probability proportional to the number of shortest
paths from the start to it, which makes every shortest path equally likely). ``any_shortest_path = True``
tells :mod:`nfl.metrics` to count any shortest start-to-goal path as an exact match.

**Labels and edge order.** Vertex labels are a uniform random injection into ``0..N-1`` (the paper: into
``1..N``, 0 being reserved; nfl has no reserved id). The edge list is shuffled uniformly edge by edge, as
in the C++ training generator (``generate_training_set``: ``shuffle(edges)``). The Python generators of the
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
replacement by weight is done with Gumbel top-k keys, which has the same law as the reference's sequential
draws. Simplifications and deviations:

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
run over vertex index or BFS layer only) and seeded by the caller's ``numpy.random.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from nfl.tasks.base import GraphTask, InfeasibleGraphError
from nfl.tasks.path_star import label_dtype, random_injection, shuffle_suffix

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
    """

    distribution: Literal["naive", "balanced", "star"] = "balanced"
    num_nodes: int = 50
    max_vertices: int = 20
    max_edges: int = 24
    max_lookahead: int = 4
    max_path_len: int = 8
    query_first: bool = False

    any_shortest_path = True

    def __post_init__(self) -> None:
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
        return f"DagSearch({', '.join(parts)})"

    # --- sampling -----------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` graphs; returns ``(prefix, target)`` with forward shortest paths."""
        if self.distribution == "star":
            return self._sample_star(rng, n)
        pieces: list[tuple[np.ndarray, ...]] = []
        filled, drawn, counted = 0, 0, 0
        rejected = {"edges": 0, "path": 0, "unreachable": 0}
        budget = 100 * n + 4096
        chunk = max(256, _CELLS // self.max_vertices**2)
        # Naive candidates come with their query already ordered (see _naive_edges); each stands for two of
        # the reference's (ordered queries, half with the goal first, never reachable), and the give-up rule
        # counts them so, so that it fires where it always did.
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

    def _sample_star(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Star graphs, built directly in labels. Every pair in the list fits ``max_edges`` and
        ``max_path_len`` and every goal is reachable, so nothing is rejected; and the shortest path (the only
        path) is known from the construction: the start, then the chosen spoke's vertices. So no search and
        no trace-back, and nothing goes through :meth:`_draw`."""
        V, E, P = self.max_vertices, self.max_edges, self.max_path_len
        pairs = self._star_pairs()
        s_len, count = pairs[rng.integers(0, len(pairs), size=n)].T
        spoke = (rng.random(n) * count).astype(np.int64)
        dtype = label_dtype(self.num_nodes)
        labels = np.empty((n, V + 1), dtype=dtype)  # column V: the dummy, pad
        labels[:, :V] = random_injection(rng, n, self.num_nodes, V, dtype)
        labels[:, V] = self.pad
        # Edges are named by their head v = 1 + j*s_len + t (node t of spoke j); its tail is the start for
        # t = 0, else v - 1. The heads go to the last slots (unused slots first, head V), then a uniform order.
        used = E - count * s_len
        slot = np.arange(E)[None, :] - used[:, None]  # 0.. for the present edges
        head = np.where(slot >= 0, slot + 1, V).astype(np.int8)
        shuffle_suffix(rng, head, used)
        L = self.max_lookahead
        v = np.arange(V + 1)
        tails = np.where((v[None, :] - 1) % np.arange(1, L + 1)[:, None] == 0, 0, v[None, :] - 1)
        tails[:, V] = V  # tails[s - 1, v]: the tail of head v with spokes of s_len = s
        rows = np.arange(n)
        flat = labels.reshape(-1)
        base = (rows * (V + 1))[:, None]
        parents = flat[base + tails[s_len[:, None] - 1, head]]
        children = flat[base + head]
        t = np.arange(P)[None, :]
        path = np.where((t >= 1) & (t <= s_len[:, None]), (spoke * s_len)[:, None] + t, 0)
        nodes = flat[base + path]
        start, goal = labels[:, 0], nodes[rows, s_len]
        return self.encode_prefix(parents, children, start, goal), self.encode_answers(nodes, s_len + 1)

    def _star_pairs(self) -> np.ndarray:
        """The allowed (spoke length, spokes) pairs; see the module docstring."""
        V = self.max_vertices
        return np.array(
            [
                (s, c)
                for s in range(1, self.max_lookahead + 1)
                for c in range(2, (V - 1) // s + 1)
                if s * c <= self.max_edges and s + 1 <= self.max_path_len
            ]
        )

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

        Graphs are edge lists ``(src, dst)`` (rows, slots) in vertex indices, ``V`` (a dummy vertex) in unused
        slots; the search runs layer by layer over the edge slots, so no step costs ``V * V`` per graph."""
        V, E, P = self.max_vertices, self.max_edges, self.max_path_len
        build = self._naive_edges if self.distribution == "naive" else self._balanced_edges
        src, dst, start, goal = build(rng, m, rejected)
        # Both constructions drop graphs over max_edges; naive has the parents of vertex i in slots 3i..3i+2.
        if self.distribution == "naive":
            depth, dist, count = topo_search(src, start, goal, V)
        else:
            depth, dist, count = edge_search(src, dst, start, goal, V)
        reach = depth >= 1
        short = reach & (depth + 1 <= P)
        rejected["path"] += int((reach & ~short).sum())
        rejected["unreachable"] += int((~reach).sum())
        if not short.all():
            src, dst, start, goal = src[short], dst[short], start[short], goal[short]
            dist, count, depth = dist[short], count[short], depth[short]
        k = len(src)
        if self.distribution == "naive":
            path = topo_trace_back(rng, src, dist, count, goal, depth, P, V)
        else:
            path = edge_trace_back(rng, src, dst, dist, count, goal, depth, P)

        labels = np.empty((k, V + 1), dtype=label_dtype(self.num_nodes))  # column V: the dummy, pad
        labels[:, :V] = random_injection(rng, k, self.num_nodes, V, labels.dtype)
        labels[:, V] = self.pad
        # The edges to the last slots (unused slots first), then a uniform order of them.
        # Codes src * (V + 1) + dst in int16 (the shuffle moves them a column at a time); every slot scatters
        # at once, absent edges into a spare last column that is then dropped.
        present = src < V
        count_e = present.sum(1)
        code = np.full((k, E + 1), V * (V + 1) + V, dtype=np.int16)  # the dummy edge
        if k:
            slot = np.where(present, (E - count_e)[:, None] + np.cumsum(present, axis=1) - 1, E)
            slot += (np.arange(k) * (E + 1))[:, None]
            code.reshape(-1)[slot.reshape(-1)] = (src * (V + 1) + dst).reshape(-1)
        code = np.ascontiguousarray(code[:, :E])
        shuffle_suffix(rng, code, E - count_e)
        rk = np.arange(k)
        parents = np.take_along_axis(labels, code // (V + 1), axis=1)
        children = np.take_along_axis(labels, code % (V + 1), axis=1)
        return (
            parents, children, labels[rk, start], labels[rk, goal],
            np.take_along_axis(labels, path, axis=1), depth + 1,
        )

    # --- the three distributions (vertex indices; labels come later) --------------------------------
    def _naive_edges(self, rng: np.random.Generator, m: int, rejected: dict[str, int]) -> tuple[np.ndarray, ...]:
        """Naive graphs as edge lists: vertex ``i`` gets ``min(k, i)`` parents, ``V`` slots of three. A graph
        whose goal comes before its start in the vertex order cannot reach it and is dropped before its
        parents are drawn (they are independent of the rest), as is one with too many edges."""
        V, E = self.max_vertices, self.max_edges
        n = rng.integers(3, V + 1, size=m)
        i = np.arange(V)
        # k = 1 with probability 1/2 + 1/6, else 2 or 3 with 1/6 each: one uniform per vertex.
        u = rng.random((m, V))
        k = 1 + (u >= 2 / 3).astype(np.int64) + (u >= 5 / 6)
        k = np.where(i[None, :] < n[:, None], np.minimum(k, i[None, :]), 0)  # parents of vertex i (vertex 0: none)
        # The query: a uniform pair of distinct vertices, the earlier one the start. Parents come first in the
        # vertex order, so a goal before the start is never reachable; the reference's uniform ordered pair,
        # with those rejected, has the same law as this (each pair s < g has probability 2 / (n (n - 1))
        # instead of 1 / (n (n - 1)), a factor that does not depend on the graph), with no draw wasted on them.
        a = (rng.random(m) * n).astype(np.int64)
        b = (rng.random(m) * (n - 1)).astype(np.int64)
        b += b >= a
        start, goal = np.minimum(a, b), np.maximum(a, b)
        keep = k.sum(1) <= E
        rejected["edges"] += int((~keep).sum())
        k, start, goal = k[keep], start[keep], goal[keep]
        b = len(k)
        # Up to three distinct parents of each vertex, uniform without replacement from 0..i-1.
        u = rng.random((3, b, V))
        r1 = (u[0] * i).astype(np.int64)
        r2 = (u[1] * np.maximum(i - 1, 1)).astype(np.int64)
        r2 += r2 >= r1
        r3 = (u[2] * np.maximum(i - 2, 1)).astype(np.int64)
        lo, hi = np.minimum(r1, r2), np.maximum(r1, r2)
        r3 += r3 >= lo
        r3 += r3 >= hi
        src = np.stack([r1, r2, r3], axis=2)  # (b, V, 3)
        present = np.arange(3)[None, None, :] < k[:, :, None]
        src = np.where(present, src, V).reshape(b, 3 * V)
        dst = np.where(present, i[None, :, None], V).reshape(b, 3 * V)
        return src, dst, start, goal

    def _balanced_edges(self, rng: np.random.Generator, m: int, rejected: dict[str, int]) -> tuple[np.ndarray, ...]:
        """Balanced graphs as edge lists. The skeleton and the ancestor chain are laid out in closed form; the
        noise vertices, the only random attachment, are added vertex by vertex over just the rows that have
        one there, with descendant sets as uint64 bitsets (the no-cycle rule) and weighted draws without
        replacement as exponential races (the law of the reference's sequential draws). A graph is dropped
        as soon as it has more than ``max_edges`` edges (edges are only ever added)."""
        V, E, L = self.max_vertices, self.max_edges, self.max_lookahead
        rows = np.arange(m)
        look = rng.integers(1, L + 1, size=m)
        branches = rng.integers(2, np.minimum((E - 1) // look, (V - 1) // look) + 1)
        n = np.minimum(np.minimum(look * branches + 1 + rng.integers(0, 6, size=m), V), E + 1)
        n = np.maximum(n, 1 + branches * look)

        # Skeleton: the goal chain 1..l, then the distractor chains, each starting with an edge from vertex 0.
        branch_start = np.zeros((m, V + 2), dtype=bool)
        pos = 1 + look  # next free vertex
        coins = rng.random((m, V))
        for j in range(V - 2):  # distractor j (at most V - 2 of them)
            active = j < branches - 1
            if not active.any():
                break
            slack = n - pos - (branches - 1 - j) * look  # spare vertices if later branches take l each
            length = look + (active & (slack >= 1) & (coins[:, j] < 0.5))
            branch_start[rows[active], pos[active]] = True
            pos = np.where(active, pos + length, pos)
        skel_end = pos
        pre_len = (rng.random(m) * (n - skel_end + 1)).astype(np.int64)  # U{0..n - used}
        pre_end = skel_end + pre_len

        idx = np.arange(V)
        x = idx[None, :]
        is_skel = (x >= 1) & (x < skel_end[:, None])
        is_pre = (x >= skel_end[:, None]) & (x < pre_end[:, None])
        # Fixed edges, one per vertex: skeleton vertex x has its parent (0 at a branch start, else x - 1);
        # ancestor-chain vertex x has its child (0 for the first, else x - 1).
        other = np.where(branch_start[:, :V] | (x == skel_end[:, None]), 0, x - 1)
        fixed = is_skel | is_pre
        S = E + 1  # edge slots; the last one takes the overflow of a graph that is dropped anyway
        src = np.full((m, S), V, dtype=np.int64)
        dst = np.full((m, S), V, dtype=np.int64)
        slot = np.cumsum(fixed, axis=1) - 1  # the fixed edges first, in vertex order (at most n - 1 <= E)
        r, c = np.nonzero(fixed)
        src[r, slot[r, c]] = np.where(is_skel[r, c], other[r, c], c)
        dst[r, slot[r, c]] = np.where(is_skel[r, c], c, other[r, c])
        ecount = fixed.sum(1)
        # The reference's preferential-attachment counters after the fixed edges (both ends counted).
        flat_src = (src + (rows * (V + 1))[:, None]).ravel()
        flat_dst = (dst + (rows * (V + 1))[:, None]).ravel()
        out_deg = np.bincount(flat_src, minlength=m * (V + 1)).reshape(m, V + 1)[:, :V].astype(np.float64)
        in_deg = np.bincount(flat_dst, minlength=m * (V + 1)).reshape(m, V + 1)[:, :V].astype(np.float64)
        # Descendants (bitsets, the vertex itself excluded): a skeleton vertex reaches the rest of its branch,
        # the start every skeleton vertex, an ancestor-chain vertex x every vertex below it (0..x-1).
        one = np.uint64(1)
        bound = np.where(branch_start[:, : V + 1] | (np.arange(V + 1)[None, :] == skel_end[:, None]), np.arange(V + 1), V)
        nxt = np.minimum.accumulate(bound[:, ::-1], axis=1)[:, ::-1]  # nxt[:, y]: first bound at or after y
        end = nxt[:, 1 : V + 1]  # first bound after x
        low = (one << (idx + 1).astype(np.uint64))[None, :] - one
        desc = np.where(is_skel, ((one << end.astype(np.uint64)) - one) & ~low, 0).astype(np.uint64)
        desc[:, 0] = ((one << skel_end.astype(np.uint64)) - one) & ~one
        desc = np.where(is_pre, (one << idx.astype(np.uint64))[None, :] - one, desc)
        alive = ecount <= E

        for v in range(3, V):  # noise vertices come after the goal chain, a branch and the start
            act = np.nonzero((v >= pre_end) & (v < n) & alive)[0]
            a = len(act)
            if not a:
                continue
            c = np.minimum(rng.integers(0, 4, size=a), v)
            p = np.minimum(np.where(c == 0, rng.integers(1, 4, size=a), rng.integers(0, 4, size=a)), v)
            w = min(3, v)
            race = rng.standard_exponential((a, v)) / (0.5 + in_deg[act, :v])
            kids = np.argsort(race, axis=1)[:, :w]  # the first c finish: weighted draws without replacement
            has = np.arange(w)[None, :] < c[:, None]
            kid_bits = np.where(has, one << kids.astype(np.uint64), 0).astype(np.uint64)
            d_x = np.bitwise_or.reduce(kid_bits | np.where(has, np.take_along_axis(desc[act], kids, 1), 0).astype(np.uint64), axis=1)
            below = ((d_x[:, None] >> idx[None, :v].astype(np.uint64)) & one).astype(bool)  # (a, v)
            p = np.minimum(p, v - below.sum(1))
            race = rng.standard_exponential((a, v)) / (0.5 + out_deg[act, :v])
            race[below] = np.inf
            pars = np.argsort(race, axis=1)[:, :w]
            has_p = np.arange(w)[None, :] < p[:, None]
            par_bits = np.bitwise_or.reduce(np.where(has_p, one << pars.astype(np.uint64), 0).astype(np.uint64), axis=1)
            # Edges x -> kids, then parents -> x, appended at each row's count (overflow into the last slot).
            ra = np.broadcast_to(act[:, None], (a, w))
            k_slot = np.minimum(ecount[act][:, None] + np.cumsum(has, axis=1) - 1, S - 1)
            src[ra[has], k_slot[has]] = v
            dst[ra[has], k_slot[has]] = kids[has]
            ecount[act] += c
            p_slot = np.minimum(ecount[act][:, None] + np.cumsum(has_p, axis=1) - 1, S - 1)
            src[ra[has_p], p_slot[has_p]] = pars[has_p]
            dst[ra[has_p], p_slot[has_p]] = v
            ecount[act] += p
            alive[act] = ecount[act] <= E
            # Counters on the earlier endpoints only; descendants of x and of its ancestors.
            np.add.at(in_deg, (ra[has], kids[has]), 1.0)
            np.add.at(out_deg, (ra[has_p], pars[has_p]), 1.0)
            desc[act, v] = d_x
            dv = desc[act, :v]
            anc = ((dv & par_bits[:, None]) != 0) | ((par_bits[:, None] >> idx[None, :v].astype(np.uint64)) & one).astype(bool)
            desc[act, :v] = np.where(anc, dv | (d_x | (one << np.uint64(v)))[:, None], dv)

        rejected["edges"] += int((~alive).sum())
        keep = alive
        return src[keep], dst[keep], np.zeros(int(keep.sum()), dtype=np.int64), look[keep]


def edge_search(src: np.ndarray, dst: np.ndarray, start: np.ndarray, goal: np.ndarray, V: int):
    """Batched BFS over edge lists ``(src, dst)`` (B, S) (unused slots: the dummy vertex ``V``) from ``start``.

    Returns ``(depth, dist, count)``: edges on a shortest path to ``goal`` (-1 if unreachable), and per vertex
    (B, V + 1) the distance from the start (-1 if unreachable) and the number of shortest paths to it. Each
    layer is a gather over the edge slots and one ``bincount`` into the vertices; it stops once the goals
    are all reached or no vertex is new."""
    B = len(src)
    W = V + 1
    rows = np.arange(B)
    dist = np.full(B * W, -1, dtype=np.int64)
    count = np.zeros(B * W)
    fs = (src + (rows * W)[:, None]).ravel()
    fd = (dst + (rows * W)[:, None]).ravel()
    s0, g0 = rows * W + start, rows * W + goal
    dist[s0], count[s0] = 0, 1.0
    for d in range(1, V):
        on = dist[fs] == d - 1
        if not on.any():
            break
        into = np.bincount(fd[on], weights=count[fs[on]], minlength=B * W)
        new = (into > 0) & (dist < 0)
        dist[new] = d
        count[new] = into[new]
        if (dist[g0] >= 0).all():
            break
    return dist[g0], dist.reshape(B, W), count.reshape(B, W)


def topo_search(src: np.ndarray, start: np.ndarray, goal: np.ndarray, V: int):
    """:func:`edge_search` for graphs whose vertices are in topological order with the (at most three) parents
    of vertex ``i`` in slots ``3i..3i+2`` of ``src`` (naive graphs): distances and shortest-path counts by one
    pass over the vertices in order (a vertex's parents are all settled before it), three gathers a vertex,
    instead of a pass over every edge slot per BFS layer. Same outputs as :func:`edge_search`."""
    B = len(src)
    rows = np.arange(B)
    # (vertex, row), each vertex's row contiguous; unreachable (and the dummy V) at distance V during the
    # pass, so the nearest parent is a plain minimum, and with count 0, so an unreachable vertex sums to 0.
    dist = np.full((V + 1, B), V, dtype=np.int64)
    count = np.zeros((V + 1, B))
    dist[start, rows] = 0
    count[start, rows] = 1.0
    flat_d, flat_c = dist.reshape(-1), count.reshape(-1)
    top = int(goal.max()) if B else 0
    idx = src.reshape(B, V, 3)[:, : top + 1].transpose(1, 2, 0) * B + rows  # (vertex, parent, row) flat
    for i in range(1, top + 1):
        d0, d1, d2 = flat_d[idx[i]]
        low = np.minimum(np.minimum(d0, d1), d2)
        c0, c1, c2 = flat_c[idx[i]]
        # The start's parents all precede it and are unreachable: it keeps distance 0 and count 1 + 0.
        count[i] += (d0 == low) * c0 + (d1 == low) * c1 + (d2 == low) * c2
        np.minimum(dist[i], low + 1, out=dist[i])  # V + 1 -> stays V where no parent is reachable
    dist[dist >= V] = -1
    return dist[goal, rows], np.ascontiguousarray(dist.T), np.ascontiguousarray(count.T)


def edge_trace_back(
    rng: np.random.Generator, src: np.ndarray, dst: np.ndarray, dist: np.ndarray, count: np.ndarray,
    goal: np.ndarray, depth: np.ndarray, width: int,
) -> np.ndarray:
    """A uniformly drawn shortest path to ``goal`` per row, from the output of :func:`edge_search`: each step
    back picks an edge into the current vertex from distance ``t`` with probability proportional to its
    source's shortest-path count."""
    sd = np.take_along_axis(dist, src, axis=1)
    sc = np.take_along_axis(count, src, axis=1)
    return _trace_back(rng, goal, depth, width, lambda t, cur: (src, np.where((dst == cur[:, None]) & (sd == t), sc, 0.0)))


def topo_trace_back(
    rng: np.random.Generator, src: np.ndarray, dist: np.ndarray, count: np.ndarray, goal: np.ndarray,
    depth: np.ndarray, width: int, V: int,
) -> np.ndarray:
    """:func:`edge_trace_back` for the layout of :func:`topo_search`: the edges into the current vertex are
    its three parent slots, so each step back weighs three candidates instead of every edge slot."""
    B = len(src)
    par = src.reshape(B, V, 3)
    base = (np.arange(B) * (V + 1))[:, None]
    flat_d, flat_c = dist.reshape(-1), count.reshape(-1)

    def into(t: int, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = par[np.arange(B), cur]  # (B, 3); the dummy V where absent
        return p, np.where(flat_d[p + base] == t, flat_c[p + base], 0.0)

    return _trace_back(rng, goal, depth, width, into)


def _trace_back(rng: np.random.Generator, goal: np.ndarray, depth: np.ndarray, width: int, into) -> np.ndarray:
    """The walk back from the goal shared by both layouts: ``(B, width)`` vertex indices, 0 past ``depth``.
    ``into(t, cur)`` gives per row the candidate predecessors of the current vertex and their weights (the
    shortest-path count of those at distance ``t``, else 0); one is drawn with probability proportional to
    its weight, which makes every shortest path equally likely (``1 / count[goal]``)."""
    B = len(goal)
    rows = np.arange(B)
    path = np.zeros((B, width), dtype=np.int64)
    path[rows, depth] = goal
    for t in range(int(depth.max()) - 1 if B else -1, -1, -1):
        cand, w = into(t, path[:, t + 1])
        cum = np.cumsum(w, axis=1)
        r = rng.random(B) * cum[:, -1]
        pick = np.minimum((cum <= r[:, None]).sum(axis=1), cand.shape[1] - 1)
        path[:, t] = np.where(t < depth, cand[rows, pick], path[:, t])
    return path
