"""One evaluation batch read on node positions (:class:`ReadAnswers`): what a task's own diagnostics consume."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ReadAnswers:
    """One evaluation batch on node positions, in emitted order and read forward (start first)."""

    prefix: torch.Tensor  # (B, P) numeral prefix
    target: torch.Tensor  # (B, L) the data's answer nodes, emitted order, -1 past its length
    length: torch.Tensor  # (B,) nodes in the data's answer
    free: torch.Tensor  # (B, L) generated nodes, emitted order, -1 past the generated length
    free_len: torch.Tensor  # (B,) generated nodes
    tf: torch.Tensor  # (B, L) teacher-forced predictions at the data's positions, emitted order
    well_formed: torch.Tensor  # (B,) bool: the generated answer parsed (ended where an end is expected)
    fwd_target: torch.Tensor
    fwd_free: torch.Tensor
    fwd_tf: torch.Tensor
    inside: torch.Tensor  # (B, L) bool: position exists in the data's answer
    is_edge: torch.Tensor  # (B, L-1) bool: generated forward pair (i, i+1) is an edge of the graph
    pairs: torch.Tensor  # (B, L-1) bool: the pair lies inside the generated answer
    valid: torch.Tensor  # (B,) bool: the generated answer starts at the start and follows edges
    reaches_goal: torch.Tensor  # (B,) bool
    exact: torch.Tensor  # (B,) bool
    out_degree: torch.Tensor  # (B, L) out-degree of the data's forward node at each position
    decision: torch.Tensor  # (B, L) bool: forward position whose predecessor has out-degree > 1
