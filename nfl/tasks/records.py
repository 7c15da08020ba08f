"""Graphs as records for other tools: JSON lines and parquet files that ``datasets``, pandas or plain ``json`` read
without nfl, and that nfl's data modules read back.

Each graph is one record (one JSON object per line, or one parquet row) with the columns of :data:`COLUMNS`:
``prefix``, ``answer`` and ``text`` are the reference text format exactly as ``python -m nfl.data generate
--format text`` writes the line (``text`` is the whole line without its newline, ``prefix`` runs up to and
including the ``=``, ``answer`` is the rest); ``edges`` (a list of ``[parent, child]`` pairs in the order the
line lists them), ``start``, ``goal`` and ``path`` (the answer's node ids, start to goal) are the same graph as
integers. Reading a file back parses its ``text`` column, so a record file obeys the text format's checks and
one-line errors. pyarrow is imported only to write or read parquet.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Iterator

import numpy as np

from nfl.tasks.basics import DataFileError
from nfl.tasks.text import format_text

if TYPE_CHECKING:
    from nfl.tasks.base import GraphTask

COLUMNS = ("prefix", "answer", "text", "edges", "start", "goal", "path")
FORMATS = ("jsonl", "parquet")
SUFFIXES = {".jsonl": "jsonl", ".parquet": "parquet"}


def record_format(path: str | os.PathLike) -> str | None:
    """``"jsonl"`` or ``"parquet"`` for a file name ending ``.jsonl`` or ``.parquet``, else None (text)."""
    return SUFFIXES.get(os.path.splitext(os.fspath(path))[1].lower())


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401 - the submodule is what reads and writes
    except ImportError:
        raise DataFileError("parquet needs pyarrow: pip install pyarrow (or pip install -e '.[data]').") from None
    return pyarrow


def jsonl_bytes(task: "GraphTask", prefix: np.ndarray, target: np.ndarray) -> bytes:
    """Graphs as JSON lines, one object per graph with the keys of :data:`COLUMNS`."""
    lines = format_text(task, prefix, target).decode("ascii").split("\n")[:-1]
    parents, children = task.edges_of(prefix)
    start, goal = task.query_of(prefix)
    N = task.num_nodes
    pairs, present = np.stack([parents, children], axis=2).astype(np.int64), (parents >= 0) & (parents < N)
    nodes, on_path = np.asarray(target, dtype=np.int64), (target >= 0) & (target < N)
    out = []
    for i, text in enumerate(lines):
        cut = text.index("=") + 1
        record = {
            "prefix": text[:cut], "answer": text[cut:], "text": text, "edges": pairs[i][present[i]].tolist(),
            "start": int(start[i]), "goal": int(goal[i]), "path": nodes[i][on_path[i]].tolist(),
        }
        out.append(json.dumps(record, separators=(",", ":")))
    return ("\n".join(out) + "\n").encode("ascii")


def _text_arrays(pa, text: bytes) -> tuple:
    """``(prefix, answer, text)`` string arrays of ``\\n``-terminated ASCII lines, cut out of the bytes by
    offsets that numpy finds (no Python string per graph)."""
    raw = np.frombuffer(text, dtype=np.uint8)
    newlines = np.flatnonzero(raw == ord("\n"))
    eqs = np.flatnonzero(raw == ord("="))  # one per line in every grammar
    n = len(newlines)
    if len(eqs) != n:
        raise ValueError(f"{len(eqs)} '=' in {n} lines")
    data = pa.py_buffer(text)
    starts = np.concatenate([[0], newlines[:-1] + 1])

    def pieces(*cuts: np.ndarray):  # piece k of line i is the k-th string of row i
        offsets = np.empty(len(cuts) * n + 1, dtype=np.int32)
        for k, cut in enumerate(cuts):
            offsets[k:-1:len(cuts)] = cut
        offsets[-1] = len(raw)
        table = pa.StringArray.from_buffers(len(cuts) * n, pa.py_buffer(offsets), data)
        return [table.take(pa.array(np.arange(k, len(cuts) * n, len(cuts)))) for k in range(len(cuts) - 1)]

    prefix, answer = pieces(starts, eqs + 1, newlines)  # the third piece of each line is its newline
    (lines,) = pieces(starts, newlines)
    return prefix, answer, lines


def arrow_table(task: "GraphTask", prefix: np.ndarray, target: np.ndarray):
    """Graphs as a pyarrow table with the columns of :data:`COLUMNS`, built from flat arrays (no per-graph
    Python objects)."""
    pa = _pyarrow()

    def ragged(values: np.ndarray, keep: np.ndarray, width: int = 1):
        if keep.all():  # every row full (path-star's edges): no mask to apply
            offsets = np.arange(0, keep.size + 1, keep.shape[1], dtype=np.int32)
            inner = pa.array(values.reshape(-1).astype(np.int32))
        else:
            offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
            inner = pa.array(values[keep].reshape(-1).astype(np.int32))
        if width > 1:
            inner = pa.FixedSizeListArray.from_arrays(inner, width)
        return pa.ListArray.from_arrays(pa.array(offsets), inner)

    prefix_text, answer_text, lines = _text_arrays(pa, format_text(task, prefix, target))
    parents, children = task.edges_of(prefix)
    N = task.num_nodes
    start, goal = task.query_of(prefix)
    return pa.table({
        "prefix": prefix_text,
        "answer": answer_text,
        "text": lines,
        "edges": ragged(np.stack([parents, children], axis=2), (parents >= 0) & (parents < N), 2),
        "start": pa.array(np.asarray(start).astype(np.int32)),
        "goal": pa.array(np.asarray(goal).astype(np.int32)),
        "path": ragged(np.asarray(target), (target >= 0) & (target < N)),
    })


class RecordWriter:
    """Appends chunks of graphs to one ``.jsonl`` or ``.parquet`` file. Parquet chunks are encoded and compressed
    on a thread of their own (pyarrow releases the GIL there) while the caller draws the next chunk; at most one
    chunk waits, so memory stays bounded."""

    def __init__(self, task: "GraphTask", path: str, fmt: str) -> None:
        self.task, self.path, self.fmt = task, path, fmt
        self._file = open(path, "wb") if fmt == "jsonl" else None
        self._parquet = None
        self._pending = None
        self._pool = None

    def write(self, prefix: np.ndarray, target: np.ndarray) -> None:
        if self.fmt == "jsonl":
            self._file.write(jsonl_bytes(self.task, prefix, target))
            return
        table = arrow_table(self.task, prefix, target)
        if self._parquet is None:
            from concurrent.futures import ThreadPoolExecutor

            self._parquet = _pyarrow().parquet.ParquetWriter(self.path, table.schema)
            self._pool = ThreadPoolExecutor(max_workers=1)
        self._wait()
        self._pending = self._pool.submit(self._parquet.write_table, table)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # re-raises a failed write (a full disk: OSError) here

    def close(self) -> None:
        try:
            self._wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
            if self._file is not None:
                self._file.close()
            if self._parquet is not None:
                self._parquet.close()


def _jsonl_texts(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFileError(f"{path}:{number}: not a JSON object ({err.msg}); a .jsonl data file holds one "
                                    "graph per line, as python -m nfl.data generate --format jsonl writes it.") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataFileError(f"{path}:{number}: no 'text' field (the graph's line in the text format); write the "
                                    "file with python -m nfl.data generate --format jsonl.")
            yield record["text"]


def _parquet_texts(path: str) -> list[str]:
    pa = _pyarrow()
    try:
        schema = pa.parquet.read_schema(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataFileError(f"{path}: not a parquet file ({str(err).splitlines()[0]}).") from None
    if "text" not in schema.names:
        raise DataFileError(f"{path}: no 'text' column (the graph's line in the text format); it has "
                            f"{', '.join(schema.names) or 'none'}. Write it with python -m nfl.data generate --format parquet.")
    try:
        column = pa.parquet.read_table(path, columns=["text"]).column("text")
    except (pa.ArrowInvalid, OSError) as err:
        raise DataFileError(f"{path}: cannot read its 'text' column ({str(err).splitlines()[0]}).") from None
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        raise DataFileError(f"{path}: its 'text' column holds {column.type}, not strings.")
    if column.null_count:
        raise DataFileError(f"{path}: {column.null_count} rows have no 'text'.")
    return column.to_pylist()


def read_records(task: "GraphTask", path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(prefix, target)`` of a ``.jsonl`` or ``.parquet`` file, parsed from its ``text`` column; errors name
    the file (and the line, for JSON lines)."""
    fmt = record_format(path)
    if fmt == "jsonl":
        try:
            return task.parse_lines((t + "\n" for t in _jsonl_texts(path)), source=path)
        except UnicodeDecodeError as err:
            raise DataFileError(f"{path}: not a UTF-8 JSON lines file ({err.reason} at byte {err.start}).") from None
    return task.parse_lines([t + "\n" for t in _parquet_texts(path)], source=path)
