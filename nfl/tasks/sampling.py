"""Seeded, vectorised draws every task samples with: label injections, permutations, suffix shuffles."""

from __future__ import annotations

import numpy as np

# Salts that keep a data module's seed streams apart: np.random.default_rng([seed, salt]).
STREAM, EPOCH_ORDER, TEST, RESAMPLE = 0, 1, 2, 3


def label_dtype(num_nodes: int) -> type:
    """The smallest integer dtype that holds every token id of a task with ``num_nodes`` labels."""
    for dtype in (np.uint8, np.int16, np.int32):
        if num_nodes + 6 <= np.iinfo(dtype).max:
            return dtype
    return np.int64


def random_injection(rng: np.random.Generator, n: int, num_labels: int, k: int, dtype=np.int64) -> np.ndarray:
    """``(n, k)``: per row ``k`` distinct labels of ``0..num_labels-1``, a uniformly drawn ordered selection
    (the first ``k`` entries of a uniform random permutation). A partial Fisher-Yates shuffle vectorised over
    the rows: ``k`` steps, each swapping one column with a uniformly drawn later one."""
    arr = np.empty((n, num_labels), dtype=dtype)
    arr[:] = np.arange(num_labels, dtype=dtype)
    flat = arr.reshape(-1)
    base = np.arange(n, dtype=np.int64) * num_labels
    for i in range(min(k, num_labels - 1)):
        idx = base + rng.integers(i, num_labels, size=n)
        tmp = flat[idx]
        flat[idx] = arr[:, i]
        arr[:, i] = tmp
    return arr[:, :k]


def random_permutation(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``(n, k)`` int64: a uniform random permutation of ``0..k-1`` per row."""
    return random_injection(rng, n, k, k, np.int64)


def shuffle_suffix(rng: np.random.Generator, arr: np.ndarray, lo: np.ndarray) -> None:
    """Shuffle ``arr[b, lo[b]:]`` uniformly, in place, for every row ``b`` (vectorised Fisher-Yates)."""
    n, k = arr.shape
    flat = arr.reshape(-1)
    base = np.arange(n, dtype=np.int64) * k
    for i in range(k - 1):
        j = np.where(lo <= i, rng.integers(i, k, size=n), i)
        idx = base + j
        tmp = flat[idx]
        flat[idx] = arr[:, i]
        arr[:, i] = tmp
