"""The README's quickstart and Mamba claims, re-measured (slow: about 25 minutes on 2 cores; `pytest -m slow`)."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
QUICKSTART_MAMBA = str(ROOT / "configs" / "quickstart_mamba.yaml")


@pytest.mark.slow
def test_teacher_forcing_shows_the_clever_hans_failure(run_cli):
    metrics = run_cli("fit", "--config", QUICKSTART).trainer.callback_metrics
    assert metrics["test/tf/pos_ge3"] > 0.95  # the shortcut is learned ...
    assert abs(metrics["test/decision_acc"] - 0.5) < 0.05  # ... the decision is not
    assert abs(metrics["test/exact_match"] - 0.5) < 0.05


@pytest.mark.slow
def test_reverse_targets_fix_it(run_cli):
    metrics = run_cli("fit", "--config", QUICKSTART, "--data.init_args.reverse", "true").trainer.callback_metrics
    assert metrics["test/exact_match"] > 0.95


@pytest.mark.slow
def test_mamba_learns_the_reversed_task_and_fails_the_forward_one_the_same_way(run_cli):
    """Bachmann & Nagarajan's Mamba claim: the model that solves reversed targets shows the Clever-Hans signature."""
    reverse = run_cli("fit", "--config", QUICKSTART_MAMBA, "--data.init_args.reverse", "true").trainer.callback_metrics
    assert reverse["test/exact_match"] > 0.95  # the model can learn the task ...
    forward = run_cli("fit", "--config", QUICKSTART_MAMBA).trainer.callback_metrics
    assert forward["test/tf/pos_ge3"] > 0.95  # ... yet teacher-forced it learns only the shortcut
    assert abs(forward["test/decision_acc"] - 0.5) < 0.05
