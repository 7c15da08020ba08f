"""DagSearch (Saparov et al. 2025 distributions, whole shortest-path answers): invariants checked against an
independent per-graph Python BFS, determinism, uniform tie breaking, the text round trip, distribution shape,
and option checks. Pure numpy and fast."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from nfl.tasks.base import IGNORE_INDEX, InfeasibleGraphError
from nfl.tasks.dag_search import DagSearch
from nfl.tasks.dag_search.graphs import balanced_edges, balanced_graphs
from nfl.tasks.dag_search.search import edge_search, edge_trace_back, topo_search, topo_trace_back

DISTRIBUTIONS = ["naive", "balanced", "star"]


# --- independent helpers (plain Python, one graph at a time) -------------------------------------------
def graphs(task, prefix, target):
    """Per row: (edges list, start, goal, answer list), checking the slot layout on the way."""
    parents, children = task.edges_of(prefix)
    start, goal = task.query_of(prefix)
    lengths = task.answer_lengths(target)
    out = []
    for i in range(len(prefix)):
        unused = parents[i] == task.pad
        assert (children[i][unused] == task.pad).all()
        k = int(unused.sum())
        assert not unused[k:].any(), "unused edge slots must come first"
        edges = list(zip(parents[i][k:].tolist(), children[i][k:].tolist()))
        n = int(lengths[i])
        row = target[i].tolist()
        assert row[n] == task.end and all(t == IGNORE_INDEX for t in row[n + 1 :])
        out.append((edges, int(start[i]), int(goal[i]), row[:n]))
    return out


def python_bfs(edges, start):
    succ = {}
    for u, v in edges:
        succ.setdefault(u, []).append(v)
    dist, queue = {start: 0}, deque([start])
    while queue:
        u = queue.popleft()
        for v in succ.get(u, []):
            if v not in dist:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def is_dag(edges):
    nodes = {x for e in edges for x in e}
    indeg = {x: 0 for x in nodes}
    for _, v in edges:
        indeg[v] += 1
    ready = [x for x in nodes if indeg[x] == 0]
    seen = 0
    while ready:
        u = ready.pop()
        seen += 1
        for a, b in edges:
            if a == u:
                indeg[b] -= 1
                if indeg[b] == 0:
                    ready.append(b)
    return seen == len(nodes)


def all_shortest_paths(edges, start, goal):
    dist = python_bfs(edges, start)
    succ = {}
    for u, v in edges:
        succ.setdefault(u, []).append(v)
    paths = []

    def walk(path):
        u = path[-1]
        if u == goal:
            paths.append(path)
            return
        for v in succ.get(u, []):
            if dist.get(v) == dist[u] + 1 and dist[v] <= dist[goal]:
                walk(path + [v])

    walk([start])
    return paths


# --- invariants ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("query_first", [False, True])
def test_answers_are_shortest_paths_of_dags(distribution, query_first):
    task = DagSearch(distribution=distribution, query_first=query_first)
    prefix, target = task.sample(np.random.default_rng(3), 300)
    assert prefix.shape == (300, task.prefix_len) == (300, 3 * task.max_edges + 3)
    assert target.shape == (300, task.max_path_len + 1)
    assert (task.end, task.pad, task.vocab_size) == (54, 55, 56)
    for edges, s, g, answer in graphs(task, prefix, target):
        assert 1 <= len(edges) <= task.max_edges
        assert len(set(edges)) == len(edges) and all(u != v for u, v in edges)
        nodes = {x for e in edges for x in e}
        assert all(0 <= x < task.num_nodes for x in nodes) and len(nodes) <= task.max_vertices
        assert is_dag(edges)
        assert s in nodes and g in nodes and s != g
        assert answer[0] == s and answer[-1] == g
        assert all(step in set(edges) for step in zip(answer[:-1], answer[1:]))
        dist = python_bfs(edges, s)
        assert len(answer) - 1 == dist[g], "the answer must be a shortest path"
        assert 2 <= len(answer) <= task.max_path_len
    # Labels are a random injection: the start's label is spread over the label range.
    start, _ = task.query_of(prefix)
    assert len(np.unique(start)) > 40


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_same_seed_same_graphs_other_seed_differs(distribution):
    task = DagSearch(distribution=distribution)
    a = task.sample(np.random.default_rng(11), 200)
    b = task.sample(np.random.default_rng(11), 200)
    c = task.sample(np.random.default_rng(12), 200)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("query_first", [False, True])
def test_text_round_trip(distribution, query_first):
    task = DagSearch(distribution=distribution, query_first=query_first)
    prefix, target = task.sample(np.random.default_rng(5), 200)
    lines = task.format_lines(prefix, target)
    assert all(("/" in line.split("=")[0]) for line in lines)
    back_prefix, back_target = task.parse_lines(lines)
    np.testing.assert_array_equal(back_prefix, prefix)
    np.testing.assert_array_equal(back_target, target)


# --- tie breaking ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["edges", "topo"])
def test_ties_are_uniform_over_shortest_paths(layout):
    # s=0 -> a=1, s -> b=2, a -> x=3, b -> x, b -> y=4, x -> g=8, y -> g, plus a longer route 0 -> 5 -> 6 -> 7 -> 8.
    # Shortest paths 0-1-3-8, 0-2-3-8, 0-2-4-8: 1/3 each when uniform (a predecessor drawn uniformly at each
    # backtracking step would give 1/4, 1/4, 1/2). Vertices are in topological order, the parents of vertex i
    # in slots 3i..3i+2 (the naive layout, which the edge-list search takes as any edge list).
    edges = [(0, 1), (0, 2), (1, 3), (2, 3), (2, 4), (3, 8), (4, 8), (0, 5), (5, 6), (6, 7), (7, 8)]
    B, V = 6000, 9
    src, dst = np.full((B, 3 * V), V), np.full((B, 3 * V), V)
    filled = [0] * V
    for u, v in edges:
        src[:, 3 * v + filled[v]], dst[:, 3 * v + filled[v]] = u, v
        filled[v] += 1
    start, goal = np.zeros(B, dtype=np.int64), np.full(B, 8)
    rng = np.random.default_rng(0)
    if layout == "edges":
        depth, dist, count = edge_search(src, dst, start, goal, V)
        path = edge_trace_back(rng, src, dst, dist, count, goal, depth, 5)
    else:
        depth, dist, count = topo_search(src, start, goal, V)
        path = topo_trace_back(rng, src, dist, count, goal, depth, 5, V)
    assert (depth == 3).all() and dist[0, :V].tolist() == [0, 1, 1, 2, 2, 1, 2, 3, 3] and count[0, 8] == 3
    assert (path[:, 0] == 0).all() and (path[:, 3] == 8).all() and (path[:, 4] == 0).all()
    kinds = path[:, 1] * 10 + path[:, 2]
    freq = {k: float(np.mean(kinds == k)) for k in (13, 23, 24)}
    assert np.isin(kinds, [13, 23, 24]).all()
    assert all(abs(f - 1 / 3) < 0.03 for f in freq.values()), freq


def test_sampled_graphs_break_ties_both_ways():
    # On sampled graphs with several shortest paths, the answer is the lexicographically first one about as
    # often as uniform choice predicts (sum of 1/count), so ties go both ways and no fixed order is used.
    task = DagSearch(distribution="naive")
    prefix, target = task.sample(np.random.default_rng(21), 3000)
    hits, expected, tied = 0, 0.0, 0
    for edges, s, g, answer in graphs(task, prefix, target):
        paths = all_shortest_paths(edges, s, g)
        assert answer in paths
        if len(paths) > 1:
            tied += 1
            hits += answer == min(paths)
            expected += 1 / len(paths)
    assert tied > 100
    assert 0 < hits < tied
    assert abs(hits - expected) < 4 * np.sqrt(expected), (hits, expected, tied)


# --- distribution shape ---------------------------------------------------------------------------------
def test_star_goal_is_a_spoke_end():
    task = DagSearch(distribution="star")
    prefix, target = task.sample(np.random.default_rng(8), 400)
    lengths = []
    for edges, s, g, answer in graphs(task, prefix, target):
        out = {}
        indeg = {}
        for u, v in edges:
            out[u] = out.get(u, 0) + 1
            indeg[v] = indeg.get(v, 0) + 1
        assert out[s] >= 2 and s not in indeg  # the centre, with two or more spokes
        assert g not in out  # a spoke end
        assert all(indeg[x] == 1 for x in indeg) and all(out[x] == 1 for x in out if x != s)  # chains
        spoke = len(answer) - 1
        assert len(edges) % spoke == 0 and len(edges) // spoke == out[s]  # all spokes as long as the goal's
        lengths.append(len(answer))
    counts = np.bincount(lengths, minlength=task.max_lookahead + 2)
    assert counts[:2].sum() == 0 and (counts[2:] > 20).all()  # spoke lengths 1..L all occur


@pytest.mark.parametrize("distribution", ["balanced", "star"])
def test_edge_order_does_not_give_the_first_step_away(distribution):
    # Edges are shuffled one by one: the answer's first edge is first (or last) among the start's edges only
    # as often as chance says. (The reference's Python generators write edges per source vertex in creation
    # order, which puts the goal branch first.)
    task = DagSearch(distribution=distribution)
    prefix, target = task.sample(np.random.default_rng(13), 1500)
    first = last = 0
    expected = 0.0
    for edges, s, g, answer in graphs(task, prefix, target):
        own = [v for u, v in edges if u == s]  # the start's edges in list order
        first += own[0] == answer[1]
        last += own[-1] == answer[1]
        expected += 1 / len(own)
    for hits in (first, last):
        assert abs(hits - expected) < 4 * np.sqrt(expected), (hits, expected)


def test_balanced_answer_lengths_spread_and_skeleton():
    task = DagSearch(distribution="balanced")
    prefix, target = task.sample(np.random.default_rng(9), 2000)
    lengths = task.answer_lengths(target)
    share = np.bincount(lengths, minlength=task.max_path_len + 1) / len(lengths)
    assert (share[2 : task.max_lookahead + 2] > 0.1).all() and share[task.max_lookahead + 2 :].sum() == 0
    # The construction in vertex indices: start 0, goal l, the goal chain 0 -> 1 -> ... -> l, two or more
    # branches out of the start, l uniform over 1..L (before the graphs over max_edges are dropped).
    m, rejected = 2000, {"edges": 0}
    V, E, L = task.max_vertices, task.max_edges, task.max_lookahead
    src, dst, start, goal = balanced_edges(np.random.default_rng(1), m, V, E, L, rejected)
    k = len(src)
    assert k + rejected["edges"] == m and k > 0.8 * m and ((src < V).sum(1) <= E).all()
    assert (start == 0).all() and set(goal.tolist()) == set(range(1, L + 1))
    assert np.abs(np.bincount(goal)[1:] / k - 1 / L).max() < 0.05
    codes = src * 100 + dst
    for i in range(1, L + 1):
        on = goal >= i
        assert (codes[on] == (i - 1) * 100 + i).any(axis=1).all()
    assert ((src == 0).sum(1) >= 2).all()
    depth, _, _ = edge_search(src, dst, start, goal, V)
    assert (depth <= goal).all() and (depth >= 1).all()
    assert (depth < goal).any()  # noise shortcuts exist (no lookahead-equality filter)


def test_naive_graph_sizes_spread():
    task = DagSearch(distribution="naive")
    prefix, target = task.sample(np.random.default_rng(4), 500)
    sizes = [len({x for e in edges for x in e}) for edges, *_ in graphs(task, prefix, target)]
    assert min(sizes) == 3 and max(sizes) >= 15  # n ~ U{3..max_vertices}, large n trimmed by max_edges
    assert len(set(sizes)) >= 12


# --- options -----------------------------------------------------------------------------------------------
def test_max_edges_field_overrides_the_property_and_describe():
    task = DagSearch(max_edges=30, max_path_len=6)
    assert task.max_edges == 30 and task.prefix_len == 93 and task.target_len == 7 and task.variable
    assert DagSearch().describe() == "DagSearch(balanced, V<=20, E<=24, L=4, N=50)"
    assert DagSearch.any_shortest_path is True


@pytest.mark.parametrize(
    "options,word",
    [
        ({"distribution": "dfs"}, "distribution"),
        ({"max_vertices": 2}, "max_vertices"),
        ({"max_vertices": 60}, "num_nodes"),
        ({"max_vertices": 64, "num_nodes": 100}, "max_vertices"),
        ({"max_edges": 1}, "max_edges"),
        ({"max_path_len": 1}, "max_path_len"),
        ({"max_lookahead": 0}, "max_lookahead"),
        ({"max_lookahead": 10}, "max_vertices"),
        ({"max_edges": 8}, "max_edges"),
        ({"max_path_len": 4}, "max_path_len"),
        ({"distribution": "star", "max_lookahead": 5, "max_edges": 9}, "max_edges"),
    ],
)
def test_bad_options_raise_one_clear_line(options, word):
    with pytest.raises(InfeasibleGraphError, match=word) as err:
        DagSearch(**options)
    assert "\n" not in str(err.value)


def test_hopeless_rejection_gives_up_naming_the_option():
    # naive graphs have n - 1 >= 2 edges with n ~ U{3..60}: almost none fit two edge slots.
    task = DagSearch(distribution="naive", num_nodes=60, max_vertices=60, max_edges=2)
    with pytest.raises(InfeasibleGraphError, match="raise max_edges"):
        task.sample(np.random.default_rng(0), 50)


# --- the balanced construction against a slow per-graph reference ---------------------------------------
def reference_balanced(r, V, E, L):
    """One balanced graph in vertex indices, drawn the slow way (plain Python, ``random.Random`` ``r``): the
    construction of the package docstring with sequential weighted draws without replacement (as the
    reference's C++ draws them, no exponential races) and descendants by depth-first search."""
    look = r.randint(1, L)
    B = r.randint(2, min((E - 1) // look, (V - 1) // look))
    n = max(min(look * B + 1 + r.randint(0, 5), V, E + 1), 1 + B * look)
    edges = [(x - 1, x) for x in range(1, look + 1)]
    pos = look + 1
    for j in range(B - 1):
        length = look + (n - pos - (B - 1 - j) * look >= 1 and r.random() < 0.5)
        edges += [(0 if x == pos else x - 1, x) for x in range(pos, pos + length)]
        pos += length
    pre_end = pos + r.randint(0, n - pos)
    edges += [(x, 0 if x == pos else x - 1) for x in range(pos, pre_end)]
    in_deg, out_deg, children = [0] * n, [0] * n, [[] for _ in range(n)]
    for u, v in edges:
        out_deg[u] += 1
        in_deg[v] += 1
        children[u].append(v)

    def draw(items, weights, k):
        items, weights, out = list(items), list(weights), []
        for _ in range(k):
            t, acc = r.random() * sum(weights), 0.0
            i = 0
            while i < len(items) - 1 and acc + weights[i] <= t:
                acc += weights[i]
                i += 1
            out.append(items.pop(i))
            weights.pop(i)
        return out

    for x in range(pre_end, n):
        c = min(r.randint(0, 3), x)
        p = min(r.randint(1, 3) if c == 0 else r.randint(0, 3), x)
        kids = draw(range(x), [0.5 + in_deg[u] for u in range(x)], c)
        below, stack = set(), list(kids)
        while stack:
            u = stack.pop()
            if u not in below:
                below.add(u)
                stack.extend(children[u])
        others = [u for u in range(x) if u not in below]
        parents = draw(others, [0.5 + out_deg[u] for u in others], min(p, len(others)))
        edges += [(x, u) for u in kids] + [(u, x) for u in parents]
        children[x] += kids
        for u in parents:
            children[u].append(x)
        for u in kids:
            in_deg[u] += 1
        for u in parents:
            out_deg[u] += 1
    return edges, look


def balanced_features(edges, look, V):
    """Per graph: statistics that a wrong attachment rule, skeleton or shortcut would move, and the edge set."""
    succ = {}
    for u, v in edges:
        succ.setdefault(u, []).append(v)
    dist, count, queue = {0: 0}, {0: 1}, deque([0])
    while queue:
        u = queue.popleft()
        for v in succ.get(u, []):
            if v not in dist:
                dist[v], count[v] = dist[u] + 1, count[u]
                queue.append(v)
            elif dist[v] == dist[u] + 1:
                count[v] += count[u]
    indeg, outdeg = [0] * (V + 1), [0] * (V + 1)
    for u, v in edges:
        outdeg[u] += 1
        indeg[v] += 1
    into, outof = indeg.__getitem__, outdeg.__getitem__
    back = [(u, v) for u, v in edges if u > v]  # the ancestor chain's edges and the noise vertices' to children
    n = 1 + max(max(e) for e in edges)  # every vertex has an edge
    stats = [
        len(edges), len(edges) - (n - 1),  # the second: noise edges less noise vertices, sum of (c + p - 1)
        n, len(back), sum(v for _, v in back), sum(1 <= v <= look for _, v in back),  # the last: noise children
        into(0), max(into(0) - 1, 0), outof(0), into(look), outof(look),  # beyond the chain's edge; beyond B
        dist[look], min(count[look], 4), len(dist), look,
        sum(d * d for d in indeg), sum(d * d for d in outdeg),  # preferential attachment
        sum(u >= n - 3 and v >= n - 3 for u, v in edges),  # among the last vertices (noise ones, if any)
    ]
    return stats, {u * (V + 1) + v for u, v in edges}


@pytest.mark.parametrize("V,E,L", [(20, 24, 4), (30, 24, 4)])  # the defaults; more vertex slots than fit
def test_balanced_construction_matches_a_slow_reference(V, E, L):
    # Means of per-graph statistics and the frequency of every edge (u, v) in vertex indices, against the
    # slow reference above: both the accepted graphs (at most max_edges edges) of the same law.
    import random

    r = random.Random(0)
    ref = []
    while len(ref) < 20000:
        edges, look = reference_balanced(r, V, E, L)
        if len(edges) <= E:
            ref.append(balanced_features(edges, look, V))
    src, dst, _, goal = balanced_edges(np.random.default_rng(2), 20500, V, E, L, {"edges": 0})
    ours = []
    for i in range(len(src)):
        on = src[i] < V
        ours.append(balanced_features(list(zip(src[i][on].tolist(), dst[i][on].tolist())), int(goal[i]), V))
    a = np.array([s for s, _ in ref], dtype=float)
    b = np.array([s for s, _ in ours], dtype=float)
    se = np.sqrt(a.var(0) / len(a) + b.var(0) / len(b))
    z = np.abs(a.mean(0) - b.mean(0)) / np.maximum(se, 1e-12)
    assert (z < 4.5).all(), (z.round(1), a.mean(0).round(3), b.mean(0).round(3))
    cells = (V + 1) ** 2
    fa = np.zeros(cells)
    fb = np.zeros(cells)
    for _, es in ref:
        fa[list(es)] += 1
    for _, es in ours:
        fb[list(es)] += 1
    pa, pb = fa / len(a), fb / len(b)
    pool = (fa + fb) / (len(a) + len(b))
    cz = np.abs(pa - pb) / np.sqrt(np.maximum(pool * (1 - pool), 1e-12) * (1 / len(a) + 1 / len(b)))
    seen = (fa + fb) >= 10
    assert seen.sum() > 150 and (cz[seen] < 5).all(), sorted(zip(cz[seen].round(1), np.nonzero(seen)[0]))[-5:]


@pytest.mark.parametrize("race", [False, True])
def test_weighted_draws_without_replacement_have_the_sequential_law(race):
    # Three draws per column, each with probability proportional to weight among the vertices left: every
    # ordered triple as often as w_a / T * w_b / (T - w_a) * w_c / (T - w_a - w_b); weight 0 never drawn.
    # Both ways of drawing (running sums for many rows, an exponential race for few).
    import itertools

    from nfl.tasks.dag_search.graphs import _weighted_draws

    w = np.array([0.5, 1.5, 2.5, 0.0, 0.5, 3.5, 1.0])
    n = 200000
    k = _weighted_draws(np.random.default_rng(0), np.repeat(w[:, None], n, axis=1), np.arange(n), race=race)
    seen = np.bincount((k[0] * 7 + k[1]) * 7 + k[2], minlength=7**3) / n
    total = w.sum()
    for a, b, c in itertools.product(range(7), repeat=3):
        distinct = len({a, b, c}) == 3
        pr = w[a] / total * w[b] / (total - w[a]) * w[c] / (total - w[a] - w[b]) if distinct else 0.0
        f = seen[(a * 7 + b) * 7 + c]
        assert abs(f - pr) <= 4.5 * np.sqrt(pr * (1 - pr) / n), ((a, b, c), f, pr)


def test_balanced_search_flag_marks_exactly_the_graphs_with_another_start_goal_path():
    # Unflagged graphs get the goal chain as their answer without a search: that is right when the chain is
    # the only start-goal path, or it is one edge long (l = 1; any other path has two or more); a graph with
    # another path (through a noise vertex) and l >= 2 is flagged.
    V, E, L = 20, 24, 4
    code, look, search = balanced_graphs(np.random.default_rng(6), 4000, V, E, L, {"edges": 0})
    code = code.astype(np.int64)
    for i in range(len(code)):
        on = code[i] != (V << 6 | V)
        edges = list(zip((code[i][on] >> 6).tolist(), (code[i][on] & 63).tolist()))
        goal = int(look[i])
        succ = {}
        for u, v in edges:
            succ.setdefault(u, []).append(v)
        memo = {goal: 1}

        def through(u, succ=succ, memo=memo):
            if u not in memo:
                memo[u] = sum(through(v) for v in succ.get(u, []))
            return memo[u]

        assert all((x - 1, x) in edges for x in range(1, goal + 1))
        assert bool(search[i]) == (through(0) > 1 and goal > 1), (i, edges, goal)
    assert 0.02 < search.mean() < 0.3


def test_balanced_ties_with_the_goal_chain_are_drawn_uniformly(monkeypatch):
    # Most balanced graphs get the goal chain as their answer without a search; where a noise vertex makes a
    # second route as short as the chain, the answer must still be uniform over the shortest paths. With
    # labels equal to vertex indices (start 0, goal l), the chain 0, 1, ..., l is recognisable: it is the
    # answer of a graph with k shortest paths, the chain among them, one time in k.
    import nfl.tasks.dag_search as dag

    def identity(rng, k, num_nodes, V, pad):
        labels = np.repeat(np.arange(V + 1, dtype=np.uint8)[:, None], k, axis=1)
        labels[V] = pad
        return labels

    monkeypatch.setattr(dag, "vertex_labels", identity)
    task = DagSearch(distribution="balanced")
    prefix, target = task.sample(np.random.default_rng(22), 8000)
    hits, expected, tied = 0, 0.0, 0
    for edges, s, g, answer in graphs(task, prefix, target):
        assert s == 0
        paths = all_shortest_paths(edges, s, g)
        assert answer in paths
        chain = list(range(g + 1))
        if len(paths) > 1 and chain in paths:
            tied += 1
            hits += answer == chain
            expected += 1 / len(paths)
    assert tied > 100
    assert abs(hits - expected) < 4 * np.sqrt(expected), (hits, expected, tied)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_answer_slots_wider_than_the_graph(distribution):
    # max_path_len above max_vertices + 1: answer rows have more slots than a graph has vertices.
    task = DagSearch(distribution=distribution, max_vertices=9, num_nodes=10, max_edges=12, max_lookahead=2,
                     max_path_len=12)
    prefix, target = task.sample(np.random.default_rng(1), 500)
    assert target.shape == (500, 13)
    for edges, s, g, answer in graphs(task, prefix, target):
        assert answer[0] == s and answer[-1] == g and len(answer) - 1 == python_bfs(edges, s)[g]
        assert all(step in set(edges) for step in zip(answer[:-1], answer[1:]))
