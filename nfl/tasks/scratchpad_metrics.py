"""``scratchpad/exact_match``: the free-running scratchpads that are exactly right (see :mod:`nfl.tasks.scratchpad`).

Right means a separator was written and the nodes before the first one are the data's scratchpad; on tasks
whose answers are not unique (DAG search), any scratchpad that is a shortest start-to-goal path read
backwards (goal first, each step an edge walked against its direction, as long as the data's) counts, as
``exact_match`` counts any shortest path.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from nfl.tasks.base import GraphTask
from nfl.tasks.scratchpad import first_index, shift_left


class ScratchpadMatch(Metric):
    """Exact match of the scratchpad the model wrote free-running (the module docstring says what counts)."""

    full_state_update = False

    def __init__(self, task: GraphTask) -> None:
        super().__init__()
        self.task = task
        for name in ("n", "exact"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, prefix: torch.Tensor, target: torch.Tensor, generated: torch.Tensor) -> None:
        """``target`` (B, target_len): the data's scratchpad, separator and answer; ``generated`` (B, S)."""
        task = self.task
        W = task.max_path_len  # the longest scratchpad
        true_len, _ = first_index(target, task.sep)
        gen_len, wrote = first_index(generated, task.sep)
        cols = torch.arange(W, device=target.device)[None, :]
        gen = shift_left(generated, torch.zeros_like(gen_len), W)  # (B, W): the nodes before the separator
        gen = gen.where(cols < gen_len[:, None], torch.full_like(cols, -1))
        true = target[:, :W].where(cols < true_len[:, None], torch.full_like(cols, -1))
        same_len = wrote & (gen_len == true_len)
        if getattr(task, "any_shortest_path", False):  # any shortest path read backwards: goal first, start last
            parents, children = task.edges_of(prefix)
            real = (parents >= 0) & (parents < task.num_nodes)
            # step i of the scratchpad, gen[i] then gen[i+1], must be the edge gen[i+1] -> gen[i]
            up = (gen[:, 1:, None] == parents[:, None, :]) & (gen[:, :-1, None] == children[:, None, :])
            step = (up & real[:, None, :]).any(2)  # (B, W-1)
            start, goal = task.query_of(prefix)
            last = gen.gather(1, (gen_len - 1).clamp(0, W - 1)[:, None])[:, 0]
            inside = cols[:, :-1] < (gen_len - 1)[:, None]
            exact = same_len & (gen[:, 0] == goal) & (last == start) & (step | ~inside).all(1)
        else:
            exact = same_len & (gen == true).all(1)
        self.n += len(target)
        self.exact += exact.sum()

    def compute(self) -> dict[str, torch.Tensor]:
        return {"scratchpad/exact_match": (self.exact / self.n.clamp(min=1)).float()}
