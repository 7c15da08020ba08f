"""The three graph constructions of :class:`~nfl.tasks.dag_search.DagSearch` (naive, balanced, star), batched
over rows; their laws, and where they deviate from the reference, are in the package docstring.

Naive graphs come as edge lists ``(src, dst)`` (rows, slots) in vertex indices, the dummy vertex ``V`` in
unused slots, with their query ``(start, goal)``; balanced graphs as edge codes ``src << 6 | dst`` with the
goal and which graphs need a search (:func:`balanced_edges` gives them as edge lists). Graphs over
``max_edges`` are dropped (counted in ``rejected["edges"]``). Star graphs need no search, so they are built
directly as label arrays. :func:`vertex_labels` labels the searched ones.
"""

from __future__ import annotations

import functools

import numpy as np

from nfl.tasks.sampling import label_dtype, random_injection, shuffle_suffix

_WORD64 = (np.random.PCG64, np.random.PCG64DXSM, np.random.Philox, np.random.SFC64)  # 64-bit raw outputs


def random_words(rng: np.random.Generator, shape) -> np.ndarray:
    """Uniform 64-bit words (uint64) from ``rng``: its bit generator's raw outputs where they are 64-bit
    (numpy's default PCG64 among them), else full-range integers."""
    bg = rng.bit_generator
    if type(bg) in _WORD64:
        return bg.random_raw(int(np.prod(shape))).reshape(shape)
    return rng.integers(0, np.iinfo(np.uint64).max, size=shape, dtype=np.uint64, endpoint=True)


def vertex_labels(rng: np.random.Generator, k: int, num_nodes: int, V: int, pad: int) -> np.ndarray:
    """``(V + 1, k)``, vertex-major: per graph (column) a uniform random injection of its ``V`` vertices into
    ``0..num_nodes-1`` (the first ``V`` entries of a uniform random permutation, by a partial Fisher-Yates
    shuffle vectorised over graphs), and ``pad`` for the dummy vertex ``V``. Each step reads and writes whole
    rows, which the graph-major layout would stride through. Step i's swap partner is ``i + floor(u *
    (num_nodes - i))`` of a uniform double ``u``; small batches draw every step's at once (fewer calls),
    large ones a step at a time (the arrays stay in cache)."""
    dtype = label_dtype(num_nodes)
    arr = np.empty((max(num_nodes, V + 1), k), dtype=dtype)
    arr[:num_nodes] = np.arange(num_nodes, dtype=dtype)[:, None]
    flat = arr.reshape(-1)
    steps = min(V, num_nodes - 1)
    cols = np.arange(k)
    at_once = k <= 2048
    if at_once:
        i = np.arange(steps)[:, None]
        idx = ((rng.random((steps, k)) * (num_nodes - i)).astype(np.intp) + i) * k + cols
    for i in range(steps):
        j = idx[i] if at_once else ((rng.random(k) * (num_nodes - i)).astype(np.intp) + i) * k + cols
        tmp = flat[j]
        flat[j] = arr[i]
        arr[i] = tmp
    arr[V] = pad
    return arr[: V + 1]


def naive_edges(rng: np.random.Generator, m: int, V: int, E: int, rejected: dict[str, int]) -> tuple[np.ndarray, ...]:
    """Naive graphs as edge lists (int8): vertex ``i`` gets ``min(k, i)`` parents, ``V`` slots of three. A graph
    whose goal comes before its start in the vertex order cannot reach it and is dropped before its
    parents are drawn (they are independent of the rest), as is one with too many edges."""
    n = rng.integers(3, V + 1, size=m)
    i = np.arange(V, dtype=np.int8)
    # k = 1 with probability 1/2 + 1/6, else 2 or 3 with 1/6 each: one uniform per vertex.
    u = rng.random((m, V))
    k = (u >= 2 / 3).astype(np.int8)
    k += u >= 5 / 6
    k += 1
    k = np.where(i < n.astype(np.int8)[:, None], np.minimum(k, i), np.int8(0))  # parents of i (vertex 0: none)
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
    # Up to three distinct parents of each vertex, uniform without replacement from 0..i-1 (int8: V <= 63).
    u = rng.random((3, b, V))
    r1 = (u[0] * i).astype(np.int8)
    r2 = (u[1] * np.maximum(i - 1, 1)).astype(np.int8)
    r2 += r2 >= r1
    r3 = (u[2] * np.maximum(i - 2, 1)).astype(np.int8)
    lo, hi = np.minimum(r1, r2), np.maximum(r1, r2)
    r3 += r3 >= lo
    r3 += r3 >= hi
    src = np.empty((b, V, 3), dtype=np.int8)
    dst = np.empty((b, V, 3), dtype=np.int8)
    for j, r in enumerate((r1, r2, r3)):
        on = k > j
        src[:, :, j] = np.where(on, r, np.int8(V))
        dst[:, :, j] = np.where(on, i, np.int8(V))
    return src.reshape(b, 3 * V), dst.reshape(b, 3 * V), start, goal


def balanced_graphs(
    rng: np.random.Generator, m: int, V: int, E: int, L: int, rejected: dict[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``m`` balanced candidates; returns, for those within ``max_edges``, ``(code, look, search)``: the edges
    as codes ``src << 6 | dst`` (int16, rows, ``E`` slots, the edges first, then the dummy edge ``V << 6 | V``),
    the lookahead (the goal's index; the start is 0), and which graphs need a search: those with a noise
    vertex on a path from the start to the goal, and ``l >= 2``. In every other graph the goal chain is the
    only shortest start-goal path (the distractor chains end elsewhere, and a path through noise edges
    passes through a noise vertex and has at least two edges), so the answer is ``0, 1, ..., l``.

    The skeleton and the ancestor chain are laid out in closed form over all rows, in small integer types.
    Only the rows with noise vertices (about a third at the defaults, half a noise vertex per graph on
    average) go through the noise step, sorted by their number of noise vertices so that the rows with a
    ``k``-th one are a leading slice: one pass per ``k`` (at most five), in (vertex, row) layout, with reach
    sets as uint64 bitsets (the no-cycle rule) and the reference's sequential weighted draws without
    replacement (:func:`_weighted_draws`). A graph over ``max_edges`` is dropped at the end."""
    dummy = V << 6 | V
    X = min(V, E + 1)  # vertex slots: a graph has at most min(max_vertices, max_edges + 1) vertices
    look = rng.integers(1, L + 1, size=m)
    branches = 2 + (rng.random(m) * (np.minimum((E - 1) // look, (V - 1) // look) - 1)).astype(np.int64)  # U{2..}
    n = np.minimum(np.minimum(look * branches + 1 + rng.integers(0, 6, size=m), V), E + 1)
    n = np.maximum(n, 1 + branches * look)
    # Distractor j (of branches - 1) is l + 1 long when its coin says so and the vertex budget still has a
    # spare vertex: the spare is n - 1 - B*l, less the extras before it, so the first `spare` coins that come
    # up get one (the reference's slack rule, j by j). One 64-bit word of coins per row.
    J = max(X - 2, 1)
    j8 = np.arange(J, dtype=np.int8)[:, None]
    # (distractor, row) layout. With C_j the coins up to j, distractor j has an extra vertex iff its coin
    # came up and C_j <= spare, so the extras before it are min(C_{j-1}, spare).
    valid = j8 < (branches - 1).astype(np.int8)
    coin = np.unpackbits(random_words(rng, m).view(np.uint8).reshape(m, 8).T, axis=0, count=J, bitorder="little")
    coin &= valid
    ups = coin.astype(np.int8)
    for i in range(1, J):  # the running count, a row of adds (numpy's cumsum down short columns is slower)
        ups[i] += ups[i - 1]
    spare = (n - 1 - branches * look).astype(np.int8)
    skel_end = 1 + branches * look + np.minimum(ups[-1], spare)
    pre_end = skel_end + (rng.random(m) * (n - skel_end + 1)).astype(np.int64)  # ancestor chain: U{0..n - used}
    # One fixed edge per vertex x in 1..pre_end-1, in slot x - 1: a skeleton vertex's from x - 1 (from 0 at a
    # branch start), an ancestor-chain vertex's to x - 1 (to 0 for the first, at skel_end). All but the
    # distractors' starts depend on (skel_end, pre_end) alone: one row of a small table per graph.
    code = _fixed_edges(V, E)[skel_end * (X + 1) + pre_end]
    # Distractor j's first vertex: 1 + (j + 1) l + the extras before it (vertex 1, the goal chain's, has its
    # edge from 0 in the table).
    first = ((j8 + 1) * look.astype(np.int8) + 1) + np.minimum(ups - coin.view(np.int8), spare)
    on = np.flatnonzero(valid)  # (distractor, row) pairs, flat
    at = first.reshape(-1)[on].astype(np.int64)
    code.reshape(-1)[(on % m) * (E + 1) + at - 1] = at
    look = look.astype(np.int64)
    q = n - pre_end  # noise vertices
    noisy = np.nonzero(q > 0)[0]
    if not len(noisy):
        return code[:, :E], look, np.zeros(m, dtype=bool)
    noisy = noisy[np.argsort(-q[noisy], kind="stable")]  # most noise first: the rows with a k-th noise vertex lead
    qs, pe, se, ls = q[noisy], pre_end[noisy], skel_end[noisy], look[noisy]
    a0 = len(noisy)
    sub = code[noisy]  # their edges; the noise step writes its edges after the fixed ones (slot E: overflow)
    sub_flat = np.append(sub.reshape(-1), np.int16(dummy))  # a spare last entry takes the absent draws' edges
    # The noise step's state in (vertex, row) layout, so that sums over a row's vertices are adds of whole
    # rows. The draw weights: 0.5 + the reference's preferential-attachment counters after the fixed edges
    # (both ends counted), 0 for a vertex not yet added (so it is never drawn); flat buffers with a spare
    # last entry that absorbs the updates of absent draws.
    fixed = sub[:, : X - 1].T.astype(np.int64)  # (vertex - 1, row): vertex x's fixed edge
    par, kid = fixed >> 6, fixed & 63
    cols = np.arange(a0)
    xc = np.arange(X)[:, None]
    added = xc < pe
    weights = []
    for end_point in (par, kid):  # out-degrees (parents' weights), then in-degrees (children's)
        deg = np.bincount((end_point * a0 + cols).ravel(), minlength=(V + 1) * a0)[: X * a0].reshape(X, a0)
        buf = np.empty(X * a0 + 1)
        np.copyto(buf[:-1].reshape(X, a0), np.where(added, 0.5 + deg, 0.0))
        weights.append(buf)
    w_out, w_in = weights
    wo, wi = w_out[:-1].reshape(X, a0), w_in[:-1].reshape(X, a0)
    # Reach sets (bitsets, the vertex itself included): a skeleton vertex reaches the rest of its branch,
    # the start every skeleton vertex, an ancestor-chain vertex x every vertex up to it.
    one = np.uint64(1)
    bit = one << np.arange(X, dtype=np.uint64)[:, None]
    sk = (xc >= 1) & (xc < se)
    bound = np.full((X + 1, a0), X)  # the first vertex of each distractor, and skel_end
    bound[1:X] = np.where(sk[1:] & (par == 0), xc[1:], X)
    bound[se, cols] = se
    end = np.minimum.accumulate(bound[::-1], axis=0)[::-1][1:]  # the first bound after x
    D = np.where(sk, ((one << end.astype(np.uint64)) - one) & ~(bit - one), bit)  # x..end-1, else x itself
    np.copyto(D, (bit << one) - one, where=(xc >= se) & added)  # the ancestor chain: 0..x
    D[0] = (one << se.astype(np.uint64)) - one
    bitc, bit = bit, bit[:, 0]
    counts = np.bincount(qs)[::-1].cumsum()[::-1]  # counts[k]: rows with at least k noise vertices
    three = np.arange(3)[:, None]
    scratch, edges, goal_bit = X * a0, pe - 1, one << ls.astype(np.uint64)
    via = np.zeros(a0, dtype=np.uint64)  # the noise vertices that reached the goal when they were added
    last = len(sub_flat) - 1
    for k in range(int(qs[0])):
        A = int(counts[k + 1])
        rows = np.arange(A)
        v = pe[:A] + k  # this pass's noise vertex in each of the leading rows
        # c ~ U{0..3}; p ~ U{1..3} if c = 0, else U{0..3}: from one draw of U{0..47} (12 is a multiple of 3, 4).
        u = rng.integers(0, 48, size=A)
        c, r = u // 12, u % 12
        p = np.where(c == 0, 1 + r % 3, r % 4)
        kids = _weighted_draws(rng, wi[:, :A], rows)  # (3, A); the first c are the children
        has = three < c
        reach = np.where(has, D[kids, rows], np.uint64(0))
        d_x = reach[0] | reach[1] | reach[2]  # the children and all they reach
        below = (d_x & bitc) != 0
        p = np.minimum(p, v - np.add.reduce(below.view(np.uint8), axis=0, dtype=np.uint8))
        pars = _weighted_draws(rng, np.where(below, 0.0, wo[:, :A]), rows)  # none below: no cycle
        has_p = three < p
        # Edges x -> children, then parents -> x, after the row's edges so far (at most slot E).
        at = rows * (E + 1) + edges[:A]
        cap = rows * (E + 1) + E
        sub_flat[np.where(has, np.minimum(at + three, cap), last)] = v << 6 | kids
        edges[:A] += c
        sub_flat[np.where(has_p, np.minimum(at + c + three, cap), last)] = pars << 6 | v
        edges[:A] += p
        via[:A] |= np.where(d_x & goal_bit[:A] != 0, bit[v], np.uint64(0))
        # Counters on the earlier endpoints only (a row's draws are distinct); x joins with weight 0.5 both
        # ways (its own counters stay 0); x and all it reaches join the reach sets of its ancestors.
        w_in[np.where(has, kids * a0 + rows, scratch)] += 1.0
        w_out[np.where(has_p, pars * a0 + rows, scratch)] += 1.0
        wi[v, rows] = 0.5
        wo[v, rows] = 0.5
        par_bits = np.where(has_p, bit[pars], np.uint64(0))
        par_bits = par_bits[0] | par_bits[1] | par_bits[2]
        d_v = d_x | bit[v]
        Da = D[:, :A]
        Da[v, rows] = d_v
        np.copyto(Da, Da | d_v, where=(Da & par_bits) != 0)
    code[noisy] = sub_flat[:-1].reshape(a0, E + 1)
    # A noise vertex on a start-goal path: reachable from the start, and reaching the goal. If there is one,
    # the last on such a path reaches the goal through its own child and fixed edges only, so it already
    # reached the goal when it was added (`via`). With l = 1 the chain's one edge is shorter than any other.
    search = np.zeros(m, dtype=bool)
    search[noisy] = ((D[0] & via) != 0) & (ls > 1)
    keep = np.ones(m, dtype=bool)
    keep[noisy] = edges <= E
    rejected["edges"] += int(m - keep.sum())
    code = code[:, :E]  # an accepted graph leaves the overflow slot unused
    if keep.all():
        return code, look, search
    return code[keep], look[keep], search[keep]


@functools.cache
def _fixed_edges(V: int, E: int) -> np.ndarray:
    """``(T * T, E + 1)`` int16, ``T = min(V, E + 1) + 1``: row ``se * T + pe`` holds the fixed edges of a
    balanced graph whose skeleton ends at ``se`` and ancestor chain at ``pe`` (vertex x's in slot x - 1:
    ``x - 1 -> x`` in the skeleton, ``x -> x - 1`` in the chain, ``se -> 0`` first), distractor starts aside;
    the dummy edge elsewhere."""
    X = min(V, E + 1)
    dummy = V << 6 | V
    se, pe = np.divmod(np.arange((X + 1) ** 2), X + 1)
    x = np.arange(1, X)
    table = np.full((len(se), E + 1), dummy, dtype=np.int16)
    chain = np.where(x == se[:, None], x << 6, x << 6 | (x - 1))  # to 0 from the first, else to x - 1
    table[:, : X - 1] = np.where(x < se[:, None], (x - 1) << 6 | x, np.where(x < pe[:, None], chain, dummy))
    table.flags.writeable = False
    return table


def _weighted_draws(
    rng: np.random.Generator, w: np.ndarray, rows: np.ndarray, race: bool | None = None
) -> np.ndarray:
    """Three draws without replacement per column of the weights ``w`` (vertex, row), each with probability
    proportional to weight among those left (the reference's sequential draws; weight 0: never drawn).
    Returns (3, rows) vertex indices; draws past the number of positive weights are arbitrary (in range).

    Two ways with that one law, by the number of rows (or ``race``): for few rows, an exponential race
    (the first three of ``Exp(1) / w`` to finish; a handful of calls); for many, three uniforms per row,
    each draw one point on the line of the running sums of the weights, the second's (the third's)
    skipping the interval of the first (of the first two), so that every draw reads the same sums
    (weights are multiples of 0.5, so the sums are exact) and no row is sorted."""
    X, A = w.shape
    if race if race is not None else A < 256:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.argsort(rng.standard_exponential((X, A)) / w, axis=0)[:3]
    u = rng.random((3, A))
    if A < 512:
        cw = np.cumsum(w, axis=0)
    else:  # running sums a row of adds at a time: faster than cumsum down short columns, but X calls
        cw = w.copy()
        for i in range(1, X):
            cw[i] += cw[i - 1]
    total = cw[-1]
    out = np.empty((3, A), dtype=np.intp)
    k1, k2, k3 = out

    def index(t: np.ndarray, k: np.ndarray) -> None:  # the interval of t: the running sums at or below it
        np.minimum(np.add.reduce((cw <= t).view(np.uint8), axis=0, dtype=np.uint8), X - 1, out=k)

    index(u[0] * total, k1)
    w1 = w[k1, rows]
    s1 = cw[k1, rows] - w1
    t = u[1] * (total - w1)
    t += np.where(t >= s1, w1, 0.0)
    index(t, k2)
    w2 = w[k2, rows]
    s2 = cw[k2, rows] - w2
    w_lo = np.where(k1 < k2, w1, w2)  # the earlier interval's, then the later one's
    t = u[2] * (total - w1 - w2)
    t += np.where(t >= np.minimum(s1, s2), w_lo, 0.0)
    t += np.where(t >= np.maximum(s1, s2), w1 + w2 - w_lo, 0.0)
    index(t, k3)
    return out


def balanced_edges(
    rng: np.random.Generator, m: int, V: int, E: int, L: int, rejected: dict[str, int]
) -> tuple[np.ndarray, ...]:
    """:func:`balanced_graphs` as edge lists ``(src, dst)`` (rows, ``E`` slots) with the query ``(0, l)``."""
    code, look, _ = balanced_graphs(rng, m, V, E, L, rejected)
    code = code.astype(np.int64)
    return code >> 6, code & 63, np.zeros(len(code), dtype=np.int64), look


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
