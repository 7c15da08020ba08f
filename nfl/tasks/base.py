"""The graph-task contract: what every task owns, and the token layout all tasks share.

A graph task (path-star, tree-star, DAG search, ...) is a small frozen dataclass that owns its sizes, its
token ids, a vectorised seeded sampler, its text format, the key that keeps held-out graphs out of training,
answer parsing, and its own diagnostics. Everything else in nfl (data module, system, codec, metrics,
callbacks, report, bench, ``nfl.data``) reads a task only through this class.

**Grammar.** Every task writes the reference grammar of Bachmann & Nagarajan (2024)::

    u,v|u,v|.../s,g=p1,...,pk          (query after the graph, the default)
    s,g/u,v|u,v|...=p1,...,pk          (query first, ``query_first=True``; Frydenlund 2024)

**Token ids.** Node ``i`` is token ``i``; ``|`` = N, ``=`` = N+1, ``/`` = N+2, ``$`` = N+3 (the teacherless
dummy). A task whose answers or edge lists vary in length also has ``end`` = N+4, which closes each answer,
and ``pad`` = N+5, which fills unused slots; a fixed-size task (plain path-star) has neither, so its
vocabulary, sequences and text stay exactly the reference's.

**Layout of a prefix** (``prefix_len = 3 * max_edges + 3`` tokens, the same for every row of a task): the
edge list occupies ``max_edges`` slots of three tokens ``u v sep``; a graph with fewer edges leaves its first
slots as ``pad pad pad``. The separator is ``|`` between edges and ``/`` (query last) or ``=`` (query first)
after the last one. Query last: ``[slots] s g =``; query first: ``s g / [slots]``. So edges and query sit at
the same columns in every row, and reading them back is slicing.

**Answers** (``answer_len`` columns): the path's nodes, then ``end`` (variable-length tasks), then
:data:`IGNORE_INDEX` up to the width. Samplers and files give the forward path (start first);
:meth:`GraphTask.reverse_answers` makes the reversed encoding.

**Scratchpads** (the ``scratchpad`` option of a task, :mod:`nfl.tasks.scratchpad`): what the model writes
(``target``, ``target_len`` columns) is then a scratchpad, the separator token ``sep`` (the next id after the
task's others), and the answer; the answer metrics read the part after the separator
(:meth:`GraphTask.answer_part`). Without one, ``target`` is the answer and nothing changes.
"""

# No ``from __future__ import annotations`` here: jsonargparse reads the annotations a task inherits from
# GraphTask (``scratchpad: Optional[str]``) in the task's own module, where ``Optional`` may not be imported.
import dataclasses
import os
from typing import Iterable, Optional

import numpy as np

from nfl.errors import UserInputError, at_least, require
from nfl.tasks.basics import IGNORE_INDEX, DataFileError, InfeasibleGraphError
from nfl.tasks.scratchpad import answer_columns, check_scratchpad, parse_after_scratchpad, scratchpad_width
from nfl.tasks.records import read_records, record_format
from nfl.tasks.text import format_text, parse_text

__all__ = ["IGNORE_INDEX", "DataFileError", "GraphTask", "InfeasibleGraphError", "check_task", "checked_sample"]


class GraphTask:
    """Base class of graph tasks. Subclasses are frozen dataclasses whose fields are the task's options
    (``num_nodes`` among them, and ``query_first`` where the task offers it); they implement
    :attr:`max_edges`, :attr:`max_path_len`, :attr:`variable`, :meth:`sample` and :meth:`describe`, and may
    add diagnostics (:meth:`diagnostics`) and report columns."""

    num_nodes: int
    scratchpad: Optional[str] = None  # a dataclass field of the tasks that offer one (see nfl.tasks.scratchpad)

    # --- what a subclass defines --------------------------------------------------------------------
    @property
    def max_edges(self) -> int:
        """Edge slots in a prefix: the most edges a graph of this task has."""
        raise NotImplementedError

    @property
    def max_path_len(self) -> int:
        """The most nodes an answer has (start and goal included)."""
        raise NotImplementedError

    @property
    def variable(self) -> bool:
        """Whether answers or edge lists differ in length (then the task has ``end`` and ``pad`` tokens)."""
        raise NotImplementedError

    @property
    def query_first(self) -> bool:
        return False

    @property
    def fixed_edges(self) -> bool:
        """Whether every graph has exactly ``max_edges`` edges (a file line with fewer is then malformed)."""
        return not self.variable

    @property
    def undirected(self) -> bool:
        """Whether an edge ``u,v`` may be walked both ways (a maze's passages); False: parent to child only."""
        return False

    def walkable(self, parents, children):
        """``(from, to)`` of every step an answer may take along the edges (numpy or torch, (B, E) each): the
        edges themselves, and on an undirected task each one reversed as well ((B, 2E) each)."""
        if not self.undirected:
            return parents, children
        if isinstance(parents, np.ndarray):
            return np.concatenate([parents, children], axis=1), np.concatenate([children, parents], axis=1)
        import torch

        return torch.cat([parents, children], dim=1), torch.cat([children, parents], dim=1)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` independent graphs: ``(prefix (n, prefix_len), target (n, answer_len))`` int64, forward paths."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short name with the options, e.g. ``G(2,5,50)``, for messages and reports."""
        raise NotImplementedError

    def diagnostics(self, reverse: bool = False):  # -> Optional[torchmetrics.Metric], imported lazily
        """The task's own metric beside the generic ones (see :mod:`nfl.engine.metrics`), or None."""
        return None

    report_columns: tuple[tuple[str, str], ...] = ()  # (column, test tag) this task adds to the sweep report

    # --- token ids ----------------------------------------------------------------------------------
    @property
    def pipe(self) -> int:
        return self.num_nodes

    @property
    def eq(self) -> int:
        return self.num_nodes + 1

    @property
    def slash(self) -> int:
        return self.num_nodes + 2

    @property
    def dummy(self) -> int:
        return self.num_nodes + 3

    @property
    def end(self) -> Optional[int]:
        return self.num_nodes + 4 if self.variable else None

    @property
    def pad(self) -> Optional[int]:
        return self.num_nodes + 5 if self.variable else None

    @property
    def sep(self) -> Optional[int]:
        """The token that closes a scratchpad (the path follows it); None without a scratchpad."""
        return self.num_nodes + (6 if self.variable else 4) if self.scratchpad is not None else None

    @property
    def vocab_size(self) -> int:
        return self.num_nodes + (6 if self.variable else 4) + (self.scratchpad is not None)

    # --- lengths ------------------------------------------------------------------------------------
    @property
    def prefix_len(self) -> int:
        """Tokens up to and including ``=``."""
        return 3 * self.max_edges + 3

    @property
    def answer_len(self) -> int:
        """Answer columns: the longest path, plus the end token where answers vary."""
        return self.max_path_len + (1 if self.variable else 0)

    @property
    def scratchpad_len(self) -> int:
        """Columns before the answer in what the model writes: the longest scratchpad and its separator."""

        return scratchpad_width(self)

    @property
    def target_len(self) -> int:
        """Columns the model writes: the scratchpad and its separator (if any), then the answer."""
        return self.scratchpad_len + self.answer_len

    @property
    def seq_len(self) -> int:
        """Model input length under teacher forcing: prefix + target[:-1]."""
        return self.prefix_len + self.target_len - 1

    # --- the prefix layout --------------------------------------------------------------------------
    @property
    def _edge_col(self) -> int:
        return 3 if self.query_first else 0

    @property
    def _query_col(self) -> int:
        return 0 if self.query_first else 3 * self.max_edges

    def edges_of(self, prefix):
        """``(parents, children)``, each (B, max_edges), of prefixes (numpy or torch); ``pad`` in unused slots."""
        c, e = self._edge_col, self.max_edges
        return prefix[:, c : c + 3 * e : 3], prefix[:, c + 1 : c + 3 * e : 3]

    def query_of(self, prefix):
        """``(start, goal)``, each (B,), of prefixes (numpy or torch)."""
        q = self._query_col
        return prefix[:, q], prefix[:, q + 1]

    def encode_prefix(self, parents: np.ndarray, children: np.ndarray, start: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Token ids of prefixes from edge arrays (n, max_edges), unused slots first and holding ``pad``, and
        query arrays (n,)."""
        n, e = parents.shape
        if e != self.max_edges:
            raise ValueError(f"{e} edge slots for a task with {self.max_edges}")
        prefix = np.empty((n, self.prefix_len), dtype=np.int64)
        c, q = self._edge_col, self._query_col
        # The edge slots as (n, e, 3) filled in one pass from a small-dtype staging array: a strided int64
        # write per column costs several times more than this copy.
        small = np.result_type(parents.dtype, children.dtype, np.min_scalar_type(self.vocab_size))
        slots = np.empty((n, e, 3), dtype=small)
        slots[:, :, 0] = parents
        slots[:, :, 1] = children
        if self.variable:
            np.copyto(slots[:, :, 2], np.where(parents == self.pad, self.pad, self.pipe).astype(small, copy=False))
        else:
            slots[:, :, 2] = self.pipe
        slots[:, -1, 2] = self.eq if self.query_first else self.slash
        prefix[:, c : c + 3 * e] = slots.reshape(n, 3 * e)
        prefix[:, q], prefix[:, q + 1] = start, goal
        if self.query_first:
            prefix[:, 2] = self.slash
        else:
            prefix[:, -1] = self.eq
        return prefix

    # --- answers ------------------------------------------------------------------------------------
    def encode_answers(self, paths: np.ndarray, lengths: Optional[np.ndarray] = None) -> np.ndarray:
        """``target`` (n, answer_len) from node arrays (n, >= max length) and per-row lengths (default: all
        ``max_path_len``): the nodes, ``end`` where answers vary, then IGNORE_INDEX."""
        n = len(paths)
        lengths = np.full(n, self.max_path_len) if lengths is None else lengths
        width = min(paths.shape[1], self.answer_len)
        target = np.empty((n, self.answer_len), dtype=np.int64)
        target[:, width:] = IGNORE_INDEX
        inside = np.arange(width)[None, :] < lengths[:, None]
        np.copyto(target[:, :width], np.where(inside, paths[:, :width], np.int64(IGNORE_INDEX)))
        if self.variable:
            target[np.arange(n), lengths] = self.end
        return target

    def answer_lengths(self, target):
        """Nodes in each answer row (numpy or torch): entries below ``num_nodes`` before the end or padding."""
        return ((target >= 0) & (target < self.num_nodes)).sum(1)

    def reverse_answers(self, target, lengths=None):
        """Each answer's nodes in reverse order (the end token and padding stay where they are); works on numpy
        and torch, and is its own inverse. ``lengths`` (B,): the nodes of each row to reverse (default: the
        node entries of ``target``; predictions give their own)."""
        lengths = self.answer_lengths(target) if lengths is None else lengths
        if not self.variable:
            return target.flip(1) if hasattr(target, "flip") else target[:, ::-1]
        cols = np.arange(target.shape[1]) if isinstance(target, np.ndarray) else _arange_like(target)
        idx = lengths[:, None] - 1 - cols[None, :]
        idx = idx.clip(0) if isinstance(idx, np.ndarray) else idx.clamp(min=0)
        inside = cols[None, :] < lengths[:, None]
        if isinstance(target, np.ndarray):
            return np.where(inside, np.take_along_axis(target, idx, axis=1), target)
        return target.gather(1, idx).where(inside, target)

    def answer_part(self, tokens, target=None):
        """The answer's columns (B, answer_len) of what the model writes (B, target_len) (torch): all of it
        without a scratchpad; with one, the columns after the separator of ``target`` (default ``tokens``
        itself, for the data's own rows; teacher-forced predictions pass the data's ``target``)."""
        if self.scratchpad is None:
            return tokens

        return answer_columns(self, tokens, tokens if target is None else target)

    def parse_generated(self, tokens):
        """Generated numeral tokens (B, S) (torch) -> ``(nodes (B, max_path_len), -1 where none; lengths (B,);
        well_formed (B,))``: :meth:`parse_answer` of the answer, which with a scratchpad is what follows the
        first separator (none: no nodes, length 0, not well formed)."""
        if self.scratchpad is None:
            return self.parse_answer(tokens)

        return parse_after_scratchpad(self, tokens)

    def parse_answer(self, tokens):
        """Answer tokens (B, S) (torch) -> ``(nodes (B, max_path_len), -1 where none; lengths (B,);
        well_formed (B,))``. Fixed-size tasks read the first ``max_path_len`` tokens; variable ones cut at the
        first ``end``, and an answer with no end token within the budget is not well formed."""
        import torch

        L = self.max_path_len
        if not self.variable:
            nodes = tokens[:, :L]
            return nodes, torch.full_like(nodes[:, 0], L), None
        is_end = tokens == self.end
        has_end = is_end.any(1)
        lengths = torch.where(has_end, is_end.int().argmax(1), torch.full_like(has_end, tokens.shape[1], dtype=torch.long))
        cols = torch.arange(L, device=tokens.device)
        padded = tokens[:, :L] if tokens.shape[1] >= L else torch.cat([tokens, tokens.new_full((tokens.shape[0], L - tokens.shape[1]), -1)], 1)
        nodes = padded.where(cols[None, :] < lengths[:, None], torch.full_like(padded, -1))
        well_formed = has_end & (lengths <= L) & (lengths >= 1)
        return nodes, lengths.clamp(max=L), well_formed

    # --- held-out graphs ----------------------------------------------------------------------------
    def sample_excluding(self, rng: np.random.Generator, n: int, excluded: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` graphs, redrawing any whose :meth:`graph_keys` is in the sorted array ``excluded``."""
        prefix, target = self.sample(rng, n)
        if excluded is None or len(excluded) == 0:
            return prefix, target
        for _ in range(100):
            hit = np.isin(self.graph_keys(prefix), excluded, assume_unique=False)
            if not hit.any():
                return prefix, target
            prefix[hit], target[hit] = self.sample(rng, int(hit.sum()))
        raise UserInputError(
            f"Could not draw training graphs outside the held-out set for {self.describe()} after 100 tries: the "
            "held-out set covers nearly every possible graph. Lower n_test, raise num_nodes, or set exclude_test: false."
        )

    def graph_keys(self, prefix: np.ndarray) -> np.ndarray:
        """A 64-bit key per graph that ignores edge order (and, on an undirected task, each edge's direction): same
        edges and query give the same key.

        Used to keep held-out graphs out of training. A collision (about 2^-64 per pair) would only drop one
        extra training graph, never leak a test graph.
        """
        parents, children = self.edges_of(prefix)
        if self.undirected:  # u,v and v,u are one edge
            parents, children = np.minimum(parents, children), np.maximum(parents, children)
        base = np.uint64(self.vocab_size)
        codes = np.sort(parents.astype(np.uint64) * base + children.astype(np.uint64), axis=1)
        start, goal = self.query_of(prefix)
        query = start.astype(np.uint64) * base + goal.astype(np.uint64)
        h = np.full(len(prefix), 0xCBF29CE484222325, dtype=np.uint64)  # FNV-1a style mixing, wrapping in uint64
        prime = np.uint64(0x100000001B3)
        with np.errstate(over="ignore"):
            for column in (*codes.T, query):
                h = (h ^ column) * prime
                h ^= h >> np.uint64(29)
        return h

    # --- the text format ----------------------------------------------------------------------------
    def format_lines(self, prefix: np.ndarray, target: np.ndarray) -> list[str]:
        """Text lines (no newline) of graphs with *forward* answers."""

        return format_text(self, prefix, target).decode("ascii").split("\n")[:-1]

    def prefix_texts(self, prefix: np.ndarray) -> list[str]:
        """The text of each prefix, up to and including ``=``."""
        return self.format_lines(prefix, np.full((len(prefix), 0), IGNORE_INDEX, dtype=np.int64))

    def write_file(self, path: str | os.PathLike, prefix: np.ndarray, target: np.ndarray) -> None:
        """Write graphs (forward answers) to a text file, one per line, ``\\n``-terminated."""

        with open(path, "wb") as f:
            for start in range(0, len(prefix), 1 << 16):  # bounded memory for any count
                f.write(format_text(self, prefix[start : start + (1 << 16)], target[start : start + (1 << 16)]))

    def parse_lines(self, lines: Iterable[str], source: str = "<lines>") -> tuple[np.ndarray, np.ndarray]:
        """Parse text lines into ``(prefix, target)``; errors name ``source`` and the line."""

        return parse_text(self, lines, source)

    def read_file(self, path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
        """Read a data file into ``(prefix, target)`` arrays with forward answers: the text format, or JSON lines
        (``.jsonl``) and parquet (``.parquet``) records as :mod:`nfl.tasks.records` writes them."""
        if os.path.isdir(path):
            raise DataFileError(f"Data file {os.fspath(path)!r} is a folder; give a file (train_file / test_file).")
        if not os.path.isfile(path):
            raise DataFileError(f"Data file {os.fspath(path)!r} does not exist; check train_file / test_file.")
        if record_format(path) is not None:
            return read_records(self, os.fspath(path))
        try:
            with open(path, encoding="ascii") as f:
                return self.parse_lines(f, source=os.fspath(path))
        except UnicodeDecodeError as err:
            raise DataFileError(f"{os.fspath(path)}: not a text data file ({err.reason} at byte {err.start}).") from None


def _arange_like(t):
    import torch

    return torch.arange(t.shape[1], device=t.device)


def _where(task: GraphTask) -> str:
    options = ", ".join(f"{f.name}={getattr(task, f.name)!r}" for f in dataclasses.fields(task)) if (
        dataclasses.is_dataclass(task)) else ""
    return f"{type(task).__name__}({options})"


def check_task(task: GraphTask) -> None:
    """Refuse, in one line, a task whose fields or declared sizes break the contract, so that a task which
    forgets to check one of its own options still fails with a message rather than deep in numpy. Cheap: it
    samples nothing (:func:`checked_sample` checks the first batch once the run's size has been checked).

    Checks the fields every task has (``num_nodes``, ``scratchpad``) and the sizes it declares (``max_edges``,
    ``max_path_len``)."""
    cls = type(task)
    num_nodes = getattr(task, "num_nodes", None)
    require(isinstance(num_nodes, int) and not isinstance(num_nodes, bool), cls, "num_nodes", num_nodes,
            "must be an integer number of node labels")
    at_least(cls, "num_nodes", num_nodes, 2, "a path needs a start and a goal")
    check_scratchpad(task)
    for name, low in (("max_edges", 1), ("max_path_len", 2)):
        value = getattr(task, name)
        if not (isinstance(value, int) and value >= low):
            raise UserInputError(f"{_where(task)}: these options give {name}={value}, and a task needs at least "
                                 f"{low}; change the task's options.")


def checked_sample(task: GraphTask, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``task.sample(rng, n)``, refused in one line if it fails or breaks the contract: integer arrays of
    ``(n, prefix_len)`` and ``(n, answer_len)``, prefix tokens in ``0..vocab_size-1``, answers of node labels,
    ``end`` and :data:`IGNORE_INDEX` only. Used on a run's first sampled batch."""
    try:
        prefix, target = task.sample(rng, n)
    except UserInputError:
        raise
    except Exception as err:  # a task's own option it did not check: one line, not a numpy traceback
        raise UserInputError(f"{_where(task)}: sampling a graph failed ({type(err).__name__}: {err}); the task "
                             "accepted options it cannot sample, so change them.") from None
    where = _where(task)
    for what, array, width in (("prefix", prefix, task.prefix_len), ("target", target, task.answer_len)):
        if not (isinstance(array, np.ndarray) and np.issubdtype(array.dtype, np.integer) and array.shape == (n, width)):
            shape = getattr(array, "shape", type(array).__name__)
            raise UserInputError(f"{where}: sample() returned a {what} of shape {shape}, where the contract is an "
                                 f"integer array ({n}, {width}); fix the task's sample().")
    if n and (prefix.min() < 0 or prefix.max() >= task.vocab_size):
        raise UserInputError(f"{where}: sample() wrote prefix tokens outside 0..{task.vocab_size - 1}; build the "
                             "prefix with encode_prefix().")
    allowed = (target == IGNORE_INDEX) | ((target >= 0) & (target < task.num_nodes))
    if task.end is not None:
        allowed |= target == task.end
    if not allowed.all():
        raise UserInputError(f"{where}: sample() wrote answer tokens that are not node labels 0..{task.num_nodes - 1}"
                             ", end or IGNORE_INDEX; build the answers with encode_answers().")
    return prefix, target
