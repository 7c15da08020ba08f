"""The three graph constructions of :class:`~nfl.tasks.dag_search.DagSearch` (naive, balanced, star), batched
over rows; their laws, and where they deviate from the reference, are in the package docstring.

Naive and balanced graphs come as edge lists ``(src, dst)`` (rows, slots) in vertex indices, the dummy vertex
``V`` in unused slots, with their query ``(start, goal)``; graphs over ``max_edges`` are dropped (counted in
``rejected["edges"]``). Star graphs need no search, so they are built directly as label arrays.
"""

from __future__ import annotations

import numpy as np

from nfl.tasks.path_star import label_dtype, random_injection, shuffle_suffix


def naive_edges(rng: np.random.Generator, m: int, V: int, E: int, rejected: dict[str, int]) -> tuple[np.ndarray, ...]:
    """Naive graphs as edge lists: vertex ``i`` gets ``min(k, i)`` parents, ``V`` slots of three. A graph
    whose goal comes before its start in the vertex order cannot reach it and is dropped before its
    parents are drawn (they are independent of the rest), as is one with too many edges."""
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

def balanced_edges(
    rng: np.random.Generator, m: int, V: int, E: int, L: int, rejected: dict[str, int]
) -> tuple[np.ndarray, ...]:
    """Balanced graphs as edge lists. The skeleton and the ancestor chain are laid out in closed form; the
    noise vertices, the only random attachment, are added vertex by vertex over just the rows that have
    one there, with descendant sets as uint64 bitsets (the no-cycle rule) and weighted draws without
    replacement as exponential races (the law of the reference's sequential draws). A graph is dropped
    as soon as it has more than ``max_edges`` edges (edges are only ever added)."""
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
        kid_desc = np.where(has, np.take_along_axis(desc[act], kids, 1), 0).astype(np.uint64)
        d_x = np.bitwise_or.reduce(kid_bits | kid_desc, axis=1)
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
        is_par = ((par_bits[:, None] >> idx[None, :v].astype(np.uint64)) & one).astype(bool)
        anc = ((dv & par_bits[:, None]) != 0) | is_par
        desc[act, :v] = np.where(anc, dv | (d_x | (one << np.uint64(v)))[:, None], dv)

    rejected["edges"] += int((~alive).sum())
    keep = alive
    return src[keep], dst[keep], np.zeros(int(keep.sum()), dtype=np.int64), look[keep]


def star_graphs(
    rng: np.random.Generator, n: int, V: int, E: int, L: int, P: int, num_nodes: int, pad: int
) -> tuple[np.ndarray, ...]:
    """``n`` star graphs as label arrays (parents, children, start, goal, paths, lengths), built directly in
    labels (``pad`` for the dummy vertex of unused slots). Every pair in the list fits ``max_edges`` and
    ``max_path_len`` and every goal is reachable, so nothing is rejected; and the shortest path (the only
    path) is known from the construction: the start, then the chosen spoke's vertices. So no search and
    no trace-back, and nothing goes through ``DagSearch._draw``."""
    pairs = star_pairs(V, E, L, P)
    s_len, count = pairs[rng.integers(0, len(pairs), size=n)].T
    spoke = (rng.random(n) * count).astype(np.int64)
    dtype = label_dtype(num_nodes)
    labels = np.empty((n, V + 1), dtype=dtype)  # column V: the dummy, pad
    labels[:, :V] = random_injection(rng, n, num_nodes, V, dtype)
    labels[:, V] = pad
    # Edges are named by their head v = 1 + j*s_len + t (node t of spoke j); its tail is the start for
    # t = 0, else v - 1. The heads go to the last slots (unused slots first, head V), then a uniform order.
    used = E - count * s_len
    slot = np.arange(E)[None, :] - used[:, None]  # 0.. for the present edges
    head = np.where(slot >= 0, slot + 1, V).astype(np.int8)
    shuffle_suffix(rng, head, used)
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
    return parents, children, start, goal, nodes, s_len + 1

def star_pairs(V: int, E: int, L: int, P: int) -> np.ndarray:
    """The allowed (spoke length, spokes) pairs; see the package docstring."""
    return np.array(
        [
            (s, c)
            for s in range(1, L + 1)
            for c in range(2, (V - 1) // s + 1)
            if s * c <= E and s + 1 <= P
        ]
    )
