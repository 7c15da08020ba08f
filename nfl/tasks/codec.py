"""Codecs: how a graph-task batch becomes a backbone's tokens, and the backbone's answers become path nodes again.

The data module generates the reference numeral tokens: a ``prefix`` (B, P) and a ``target`` (B, target_len)
of node ids (closed by the task's end token where answers vary in length). Metrics are always computed on
those node ids. A codec sits between the two (for training batches the loader applies it, in its worker
processes; see ``TaskDataModule.train_transform``):

- :class:`NumeralCodec` (GPT, Mamba): the backbone reads numeral tokens, so it is the identity.
- :class:`TextCodec` (pretrained Hugging Face models): each example is written out in the reference text
  format and tokenised with the model's own tokenizer, the prefix (``...=``) and the answer (``s,...,g``)
  separately, as the reference code does, so the answer always starts on a token boundary. An end token
  (the tokenizer's EOS) closes each answer, so free-running decoding knows where the answer stops. Rows are
  aligned at the ``=``: prefixes are left-padded (the backbone masks the padding and starts positions at the
  first real token) and answers right-padded with :data:`IGNORE_INDEX`, so every objective can treat a
  batch exactly as it treats numeral tokens.

  Back to nodes: a generated answer is decoded to text, cut at the first end token, and parsed as
  comma-separated integers, exactly ``l`` for a fixed-length task and at most the longest answer otherwise
  (whitespace around them is ignored). Text that does not parse is never an
  error: the positions that do not hold a node id read -1 (always wrong), and the row is marked ill-formed,
  so it is never an exact match.
  Under teacher forcing, path node ``i`` is right when every token that spells part of it is predicted
  right (the tokenizer's character offsets say which tokens those are); separators and the end token
  count towards the loss but belong to no node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from nfl.errors import UserInputError
from nfl.tasks.base import IGNORE_INDEX, GraphTask

_NODE = re.compile(r"[0-9]+")


@dataclass
class EncodedBatch:
    """A batch in the backbone's tokens, aligned so that every row's answer starts at column ``P``."""

    prefix: torch.Tensor  # (B, P) token ids up to and including '='
    target: torch.Tensor  # (B, L) answer token ids, IGNORE_INDEX past each row's end
    node_tokens: Optional[torch.Tensor] = None  # (B, l, L) bool: answer token j spells part of path node i
    # where l is the task's longest answer


class NumeralCodec:
    """The identity codec of backbones trained on the reference numeral tokens (node ``i`` is token ``i``)."""

    def __init__(self, task: GraphTask) -> None:
        self.task = task

    @property
    def dummy(self) -> int:
        """Token id of the teacherless dummy ``$``."""
        return self.task.dummy

    @property
    def stop(self) -> Optional[int]:
        """The token that ends an answer, after which decoding may stop (None: answers have a fixed length)."""
        return self.task.end

    def encode(self, prefix: torch.Tensor, target: torch.Tensor) -> EncodedBatch:
        return EncodedBatch(prefix, target)

    def decode_steps(self, batch: EncodedBatch) -> int:
        """How many tokens free-running decoding generates."""
        return self.task.target_len

    def generated_nodes(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Generated tokens (B, S) -> path nodes (B, l) (-1 past the answer), the number of nodes (B,), and a
        well-formed flag (B,) (None: every answer is well formed by construction)."""
        return self.task.parse_generated(tokens)

    def teacher_forced_nodes(self, pred: torch.Tensor, batch: EncodedBatch, target: torch.Tensor) -> torch.Tensor:
        """Teacher-forced answer tokens (B, L) -> (B, l) node ids: the target node where it was right, else -1
        (with a scratchpad, the predictions at the data's answer columns, after its separator)."""
        return self.task.answer_part(pred, target)[:, : self.task.max_path_len]


class TextCodec:
    """Reference text format <-> a Hugging Face fast tokenizer's token ids (see the module docstring).

    Args:
        tokenizer: a ``transformers`` fast tokenizer (its character offsets map tokens to path nodes).
        task: the graph task being trained.
        pad_id: token id that left-pads prefixes; the backbone masks a leading run of it.
        dummy_token: the teacherless dummy, a string the tokenizer encodes as exactly one token.
        max_positions: the model's longest sequence; longer batches are refused with a clear error.
    """

    def __init__(
        self, tokenizer: Any, task: GraphTask, pad_id: int, dummy_token: str = "$", max_positions: int = 1 << 30
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise UserInputError(
                f"{type(tokenizer).__name__} is a slow tokenizer; nfl needs a fast one (its character offsets "
                "map tokens to path nodes). Save the model with a tokenizer.json, or load it with use_fast=True."
            )
        if tokenizer.eos_token_id is None:
            raise UserInputError("The tokenizer has no EOS token, which nfl uses to end each answer; set eos_token.")
        self.tokenizer, self.task, self.pad_id, self.max_positions = tokenizer, task, pad_id, max_positions
        self.eos = tokenizer.eos_token_id
        ids = tokenizer(dummy_token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise UserInputError(
                f"dummy_token {dummy_token!r} is {len(ids)} tokens for this tokenizer; teacherless training needs "
                f"a single token. Choose another dummy_token (e.g. '$', '#', or the tokenizer's pad or unk token)."
            )
        self._dummy = ids[0]
        # The longest answer the tokenizer could produce, spelled one node at a time: decoding's budget.
        widths = [len(tokenizer(str(i), add_special_tokens=False)["input_ids"]) for i in range(task.num_nodes)]
        comma = len(tokenizer(",", add_special_tokens=False)["input_ids"])
        l = task.max_path_len
        self._budget = l * max(widths) + (l - 1) * comma + 1
        # Parsing must give back what was encoded: a tokenizer whose decode adds or drops characters (beyond
        # whitespace, which parse ignores) would make every answer wrong, silently.
        example = [task.num_nodes - 1 - i for i in range(l)]  # the widest node ids
        ids = tokenizer(",".join(map(str, example)), add_special_tokens=False)["input_ids"] + [self.eos]
        if self.parse(ids) != (example, l, True):
            raise UserInputError(
                f"This tokenizer does not decode {','.join(map(str, example))!r} back to the same node ids "
                f"(it decodes to {tokenizer.decode(ids[:-1])!r}); nfl cannot parse its answers."
            )

    @property
    def dummy(self) -> int:
        return self._dummy

    @property
    def stop(self) -> Optional[int]:
        return self.eos

    # --- numeral tokens -> text -> the tokenizer's tokens -----------------------------------------------
    def encode(self, prefix: torch.Tensor, target: torch.Tensor) -> EncodedBatch:
        texts = self.task.prefix_texts(prefix.cpu().numpy())  # "u,v|...|u,v/s,g=" (or the query first)
        prefix_ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        l = self.task.max_path_len
        nodes = target.cpu().numpy()[:, :l]  # (B, l), beyond each answer: the end token or IGNORE_INDEX
        lengths = self.task.answer_lengths(nodes)
        B = len(nodes)
        answers = [",".join(map(str, row[:n])) for row, n in zip(nodes.tolist(), lengths.tolist())]
        enc = self.tokenizer(answers, add_special_tokens=False, return_offsets_mapping=True)
        P = max(map(len, prefix_ids))
        L = max(map(len, enc["input_ids"])) + 1  # + the end token
        longest = P + max(L, self._budget) - 1  # teacher-forced input, or prefix + decoded answer
        if longest > self.max_positions:
            raise UserInputError(
                f"A {self.task.describe()} example is {longest} tokens "
                f"for this tokenizer, more than the model's {self.max_positions} positions. Use a smaller graph."
            )
        prefix_out = np.full((B, P), self.pad_id, dtype=np.int64)
        target_out = np.full((B, L), IGNORE_INDEX, dtype=np.int64)
        offsets = np.zeros((B, L, 2), dtype=np.int64)  # character span of each answer token; (0, 0) for none
        for b in range(B):
            p, ids = prefix_ids[b], enc["input_ids"][b]
            prefix_out[b, P - len(p) :] = p
            target_out[b, : len(ids) + 1] = ids + [self.eos]
            if ids:
                offsets[b, : len(ids)] = enc["offset_mapping"][b]
        # Character span of node i in "n0,n1,...": it starts after the i nodes and i commas before it.
        inside = np.arange(l)[None, :] < lengths[:, None]
        widths = np.where(inside, np.char.str_len(np.where(inside, nodes, 0).astype(str)), 0)  # (B, l)
        node_start = np.cumsum(widths + 1, axis=1) - (widths + 1)
        node_end = node_start + widths
        tok_start, tok_end = offsets[:, None, :, 0], offsets[:, None, :, 1]  # (B, 1, L)
        node_tokens = (tok_start < node_end[:, :, None]) & (node_start[:, :, None] < tok_end)  # (B, l, L): overlap
        node_tokens &= inside[:, :, None]
        device = prefix.device
        return EncodedBatch(*(torch.from_numpy(a).to(device) for a in (prefix_out, target_out, node_tokens)))

    # --- the tokenizer's tokens -> path nodes -------------------------------------------------------
    def decode_steps(self, batch: EncodedBatch) -> int:
        return max(self._budget, batch.target.shape[1])

    def parse(self, ids: list[int]) -> tuple[list[int], int, bool]:
        """One generated answer -> (the task's longest answer of node ids, -1 where there is none; how many
        pieces it has, at most that; whether it is well formed: ended by the end token, and comma-separated node
        ids below N, exactly ``l`` of them for a fixed-length task and at least one otherwise)."""
        ended = self.eos in ids
        text = self.tokenizer.decode(ids[: ids.index(self.eos)] if ended else ids)
        pieces = [p.strip() for p in text.split(",")]  # some tokenizers decode with spaces around tokens
        l, n = self.task.max_path_len, self.task.num_nodes
        nodes = [int(p) if _NODE.fullmatch(p) and int(p) < n else -1 for p in pieces[:l]]
        count = len(nodes)
        nodes += [-1] * (l - len(nodes))
        right_count = len(pieces) == l if not self.task.variable else 1 <= len(pieces) <= l
        return nodes, count, ended and right_count and min(nodes[:count]) >= 0

    def generated_nodes(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        parsed = [self.parse(row) for row in tokens.tolist()]
        nodes = torch.tensor([p[0] for p in parsed], dtype=torch.long, device=tokens.device)
        counts = torch.tensor([p[1] for p in parsed], dtype=torch.long, device=tokens.device)
        well_formed = torch.tensor([p[2] for p in parsed], dtype=torch.bool, device=tokens.device)
        if not self.task.variable:  # a fixed-length answer has all l positions; missing nodes read -1
            counts = torch.full_like(counts, self.task.max_path_len)
        return nodes, counts, well_formed

    def teacher_forced_nodes(self, pred: torch.Tensor, batch: EncodedBatch, target: torch.Tensor) -> torch.Tensor:
        target = target[:, : self.task.max_path_len]
        wrong = batch.node_tokens & (pred != batch.target)[:, None, :]  # (B, l, L)
        return torch.where(wrong.any(dim=2), torch.full_like(target, -1), target)
