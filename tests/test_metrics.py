"""Metrics on hand-made predictions for the SPEC example graph (goal arm 32-34-6-16-12, other arm 32-3-19-47-28)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TaskMetrics
from tests.conftest import SPEC_PREFIX, SPEC_TARGET

PREDICTIONS = [
    [32, 34, 6, 16, 12],  # correct
    [32, 3, 19, 47, 28],  # a valid path down the wrong arm
    [32, 34, 6, 47, 28],  # jumps arms: 3 of 4 pairs are edges
    [32, 50, 50, 50, 50],  # not nodes at all
]
TEACHER_FORCED = [
    [32, 34, 6, 16, 12],
    [32, 3, 6, 16, 12],
    [32, 3, 6, 16, 12],
    [32, 34, 6, 16, 28],
]


def run(task, reverse=False, split=False):
    metric = TaskMetrics(task, reverse=reverse)
    prefix = torch.tensor([SPEC_PREFIX] * 4)
    target, free, tf = torch.tensor([SPEC_TARGET] * 4), torch.tensor(PREDICTIONS), torch.tensor(TEACHER_FORCED)
    if reverse:
        target, free, tf = target.flip(1), free.flip(1), tf.flip(1)
    losses = torch.tensor([1.0, 3.0])
    if split:
        metric.update(prefix[:1], target[:1], free[:1], tf[:1], losses[0])
        metric.update(prefix[1:], target[1:], free[1:], tf[1:], torch.tensor(7 / 3))
    else:
        metric.update(prefix, target, free, tf, torch.tensor(2.0))
    return {k: v.item() for k, v in metric.compute().items()}


@pytest.mark.parametrize("split", [False, True])
def test_forward_metrics_on_hand_made_predictions(task, split):
    m = run(task, split=split)
    assert m["exact_match"] == pytest.approx(0.25)
    assert [m[f"free/pos_{i}"] for i in range(1, 6)] == pytest.approx([1.0, 0.5, 0.5, 0.25, 0.25])
    assert [m[f"tf/pos_{i}"] for i in range(1, 6)] == pytest.approx([1.0, 0.5, 1.0, 1.0, 0.75])
    assert m["tf/pos_ge3"] == pytest.approx(2.75 / 3)
    assert m["decision_acc"] == pytest.approx(0.5) and m["chance"] == pytest.approx(0.5)
    assert m["edge_follow_rate"] == pytest.approx(11 / 16)
    assert m["wrong_arm_rate"] == pytest.approx(0.25)
    assert m["loss"] == pytest.approx(2.0)


def test_reverse_metrics_measure_the_same_graph_quantities(task):
    fwd, rev = run(task), run(task, reverse=True)
    for key in ("exact_match", "decision_acc", "edge_follow_rate", "wrong_arm_rate", "tf/pos_ge3"):
        assert rev[key] == pytest.approx(fwd[key]), key
    # Per-position values follow the emitted order, which is reversed.
    assert [rev[f"free/pos_{i}"] for i in range(1, 6)] == pytest.approx([0.25, 0.25, 0.5, 0.5, 1.0])


def test_reset_clears_state(task):
    metric = TaskMetrics(task)
    t = torch.tensor([SPEC_TARGET])
    metric.update(torch.tensor([SPEC_PREFIX]), t, t, t, torch.tensor(0.5))
    assert metric.compute()["exact_match"].item() == 1.0
    metric.reset()
    metric.update(torch.tensor([SPEC_PREFIX]), t, torch.tensor([PREDICTIONS[1]]), t, torch.tensor(0.5))
    assert metric.compute()["exact_match"].item() == 0.0
