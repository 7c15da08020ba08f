"""Scratchpads: the model writes a scratchpad first, then a separator, then the answer (a task's ``scratchpad``).

Frydenlund (ACL 2025, arXiv 2503.10542) traces the path-star failure to excess supervision that the
Clever-Hans shortcut absorbs, and to the task's minimal nature, which leaves nothing to decompose; supervision
that has the model write intermediate steps before the answer (a scratchpad) is among the fixes discussed.
The graph generator of that work (arvieFrydenlund/GraphGen) writes its scratchpads as part of the target,
after the prefix and before the task's answer, each part opened by a marker token. nfl's ``goal_to_start``
scratchpad is the answer's path read from the goal back to the start: on path-star the goal's arm backwards,
where every next node is the unique parent of the previous one (no planning needed), so by the time the model
writes the path it has already written the arm it needs. On tree-star it is the path up the tree, on DAG
search the answer's shortest path reversed. What the model writes (``target``, ``task.target_len`` columns)::

    g ... s  sep  s ... g  [end]  IGNORE ...      (scratchpad, separator, the answer)

The separator ``sep`` is a token of its own (``N + 4``, or ``N + 6`` where answers vary in length), so the
model marks where the path starts, and a variable-length scratchpad needs nothing else. Departures and
choices: GraphGen's scratchpads are searches (BFS/DFS traces with depth markers), not the reversed path, and
there the token after the scratchpad is the task's ``=``; nfl's prefix already ends with ``=``, so one
separator token closes the scratchpad instead. ``reverse: true`` is refused beside a scratchpad (the reversed
answer already is ``g ... s``).

Data files and samplers keep the plain forward answer; the scratchpad is built from it when a batch is made
(:func:`write_scratchpads`), so the same files serve both. The answer metrics read the answer after the
separator: free-running, what the model wrote after the first separator it wrote (none: no answer, never an
exact match); teacher-forced, the data's answer columns. ``scratchpad/exact_match``
(:mod:`nfl.tasks.scratchpad_metrics`) is the fraction of free-running scratchpads that are exactly right.
Every objective sees only a longer answer (``task.target_len`` counts the scratchpad and its separator);
tokenizer backbones (pretrained models) have no separator token and are refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

import numpy as np

from nfl.errors import require
from nfl.tasks.basics import IGNORE_INDEX, InfeasibleGraphError

if TYPE_CHECKING:  # torch only where model outputs are read: the data side (nfl.data generate) is numpy
    import torch

    from nfl.tasks.base import GraphTask

SCRATCHPADS = ("goal_to_start",)


def check_scratchpad(task: "GraphTask") -> None:
    """Refuse an unknown ``scratchpad`` value (tasks call this from ``__post_init__``)."""
    if task.scratchpad is not None and task.scratchpad not in SCRATCHPADS:
        raise InfeasibleGraphError(f"scratchpad must be null or {' or '.join(SCRATCHPADS)}, got {task.scratchpad!r}.")


def scratchpad_width(task: "GraphTask") -> int:
    """Columns before the answer: the longest scratchpad (as many nodes as the longest path) and the separator."""
    return 0 if task.scratchpad is None else task.max_path_len + 1


def refuse_reverse(task: "GraphTask", reverse: bool, owner: Union[type, str]) -> None:
    """``reverse: true`` beside a scratchpad is refused in one line, naming ``owner``'s ``reverse``."""
    require(
        not (reverse and task.scratchpad is not None), owner, "reverse", reverse,
        f"the reversed answer runs from the goal to the start, which is what the {task.scratchpad} scratchpad "
        "already writes before the answer; set reverse: false, or scratchpad: null",
    )


def write_scratchpads(task: "GraphTask", target: np.ndarray) -> np.ndarray:
    """What the model writes, (n, target_len), from forward answers (n, answer_len): per row the answer's ``k``
    nodes from the goal back to the start, ``sep``, then the answer as it is (its end token included)."""
    n, width = target.shape
    lengths = task.answer_lengths(target)[:, None]  # (n, 1) nodes k
    cols = np.arange(task.target_len)[None, :]
    backwards = task.reverse_answers(target)  # its first k columns: the nodes from the goal back
    scratch = np.take_along_axis(backwards, np.minimum(cols, width - 1).repeat(n, 0), axis=1)
    src = cols - lengths - 1  # the answer's column after the separator
    answer = np.take_along_axis(target, src.clip(0, width - 1), axis=1)
    return np.where(
        cols < lengths, scratch, np.where(cols == lengths, task.sep, np.where(src < width, answer, IGNORE_INDEX))
    ).astype(np.int64)


def first_index(tokens: "torch.Tensor", token: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(index of the first ``token`` in each row, or the row's width; whether there is one), each (B,)."""
    import torch

    hit = tokens == token
    found = hit.any(1)
    return torch.where(found, hit.int().argmax(1), torch.full_like(found, tokens.shape[1], dtype=torch.long)), found


def shift_left(tokens: "torch.Tensor", start: "torch.Tensor", width: int) -> "torch.Tensor":
    """(B, width): row ``b``'s tokens from column ``start[b]`` on, -1 past its end."""
    import torch

    cols = start[:, None] + torch.arange(width, device=tokens.device)[None, :]
    inside = cols < tokens.shape[1]
    return tokens.gather(1, cols.clamp(max=tokens.shape[1] - 1)).where(inside, torch.full_like(cols, -1))


def after_separator(task: "GraphTask", tokens: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Generated tokens (B, S) -> (the tokens after the first separator, left-aligned, -1-filled (B, S);
    whether a separator was written (B,))."""
    sep_at, found = first_index(tokens, task.sep)
    after = shift_left(tokens, sep_at + 1, tokens.shape[1])
    return after.where(found[:, None], after.new_full((), -1)), found


def parse_after_scratchpad(task: "GraphTask", tokens: "torch.Tensor"):
    """:meth:`GraphTask.parse_generated` for a task with a scratchpad: the answer after the first separator.
    No separator: no answer (no nodes, length 0, not well formed)."""
    after, found = after_separator(task, tokens)
    import torch

    nodes, lengths, well_formed = task.parse_answer(after)
    well_formed = found if well_formed is None else well_formed & found
    return nodes, lengths.where(found, torch.zeros_like(lengths)), well_formed


def answer_columns(task: "GraphTask", tokens: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
    """The (B, answer_len) columns of ``tokens`` (B, >= target_len) that hold the answer in ``target``'s layout:
    those after its separator (teacher-forced predictions sit at the data's columns)."""
    sep_at, _ = first_index(target, task.sep)  # at most max_path_len, so the answer's columns all lie inside
    return shift_left(tokens, sep_at + 1, task.answer_len)
