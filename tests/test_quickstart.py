"""The README's quickstart claims, re-measured (slow: about 4 minutes on 2 cores; `pytest -m slow`)."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


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
