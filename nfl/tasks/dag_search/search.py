"""Shortest paths for :class:`~nfl.tasks.dag_search.DagSearch`: batched distances and shortest-path counts from
the start (over any edge list, or in one topological pass for the naive layout), and the trace-back from the
goal that draws one shortest path uniformly (each predecessor with probability proportional to its count).
"""

from __future__ import annotations

import numpy as np


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
        into = np.bincount(fd, weights=np.where(on, count[fs], 0.0), minlength=B * W)
        new = (into > 0) & (dist < 0)
        np.copyto(dist, d, where=new)
        np.copyto(count, into, where=new)
        if (dist[g0] >= 0).all():
            break
    return dist[g0], dist.reshape(B, W), count.reshape(B, W)


def topo_search(src: np.ndarray, start: np.ndarray, goal: np.ndarray, V: int):
    """:func:`edge_search` for graphs whose vertices are in topological order with the (at most three) parents
    of vertex ``i`` in slots ``3i..3i+2`` of ``src`` (naive graphs): distances and shortest-path counts by one
    pass over the vertices in order (a vertex's parents are all settled before it), three gathers a vertex,
    instead of a pass over every edge slot per BFS layer. Same outputs as :func:`edge_search` (distances
    per vertex as int8)."""
    B = len(src)
    rows = np.arange(B)
    # (vertex, row), each vertex's row contiguous; unreachable (and the dummy V) at distance V during the
    # pass, so the nearest parent is a plain minimum, and with count 0, so an unreachable vertex sums to 0.
    dist = np.full((V + 1, B), V, dtype=np.int8)  # V <= 63: int8 moves an eighth of the bytes
    count = np.zeros((V + 1, B))
    dist[start, rows] = 0
    count[start, rows] = 1.0
    flat_d, flat_c = dist.reshape(-1), count.reshape(-1)
    top = int(goal.max()) if B else 0
    idx = src.reshape(B, V, 3)[:, : top + 1].transpose(1, 2, 0).astype(np.int64) * B + rows  # (vertex, parent, row)
    for i in range(1, top + 1):
        d0, d1, d2 = flat_d[idx[i]]
        low = np.minimum(np.minimum(d0, d1), d2)
        c0, c1, c2 = flat_c[idx[i]]
        # The start's parents all precede it and are unreachable: it keeps distance 0 and count 1 + 0.
        count[i] += (d0 == low) * c0 + (d1 == low) * c1 + (d2 == low) * c2
        np.minimum(dist[i], low + 1, out=dist[i])  # V + 1 -> stays V where no parent is reachable
    dist[dist >= V] = -1
    return dist[goal, rows].astype(np.int64), np.ascontiguousarray(dist.T), np.ascontiguousarray(count.T)


def edge_trace_back(
    rng: np.random.Generator, src: np.ndarray, dst: np.ndarray, dist: np.ndarray, count: np.ndarray,
    goal: np.ndarray, depth: np.ndarray, width: int,
) -> np.ndarray:
    """A uniformly drawn shortest path to ``goal`` per row, from the output of :func:`edge_search`: each step
    back picks an edge into the current vertex from distance ``t`` with probability proportional to its
    source's shortest-path count."""
    sd = np.take_along_axis(dist, src, axis=1)
    sc = np.take_along_axis(count, src, axis=1)

    def into(t: int, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return src, np.where((dst == cur[:, None]) & (sd == t), sc, 0.0)

    return _trace_back(rng, goal, depth, width, into)


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
        if w.shape[1] <= 4:  # a column at a time: cumsum along a short axis is slow
            cum = w.copy()
            for j in range(1, w.shape[1]):
                cum[:, j] += cum[:, j - 1]
        else:
            cum = np.cumsum(w, axis=1)
        r = rng.random(B) * cum[:, -1]
        pick = np.minimum((cum <= r[:, None]).sum(axis=1), cand.shape[1] - 1)
        path[:, t] = np.where(t < depth, cand[rows, pick], path[:, t])
    return path
