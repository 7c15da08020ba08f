"""Real two-process DDP on CPU (gloo): ranks see different graphs; metrics reduce to the single-process values."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, read_scalars, version_dir


VARIED_TASK = """
data:
  class_path: nfl.data.TaskDataModule
  init_args:
    task: {class_path: nfl.tasks.PathStar, init_args: {degree: 2, arm_lengths: [3, 5], goal: any, num_nodes: 50}}
    batch_size: 32
"""


@pytest.mark.parametrize("task", ["path_star", "varied", "belief_state"])
def test_two_process_ddp_splits_data_and_reduces_metrics_exactly(task, tiny_config, tmp_path, run_cli):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # 65 held-out graphs: an uneven split (33 + 32) that padding or duplication would get wrong.
    common = ["--config", str(tiny_config), "--data.init_args.n_test", "65", "--data.init_args.eval_batch_size", "16"]
    if task == "belief_state":  # the backbone contract's extension: a spawned second encoder sharing the embedding
        common += ["--model.objective", "nfl.objectives.BeliefState"]
    if task == "varied":  # answers of several lengths: positions some rows lack, end tokens, padding
        (tmp_path / "varied.yaml").write_text(VARIED_TASK)
        common[2:2] = ["--config", str(tmp_path / "varied.yaml")]
    done = subprocess.run(
        [sys.executable, "-m", "nfl", "fit", *common, "--trainer.accelerator", "cpu", "--trainer.devices", "2",
         "--trainer.strategy", "ddp", "--trainer.max_steps", "8",
         "--trainer.callbacks+=tests.ddp_probe.BatchRecorder", f"--trainer.callbacks.out_dir={tmp_path}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [set((tmp_path / f"rank{r}.txt").read_text().split()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 8 * 32  # every rank trained on its own 8 batches ...
    assert not ranks[0] & ranks[1]  # ... and no graph appears on both ranks
    ddp_exact = read_scalars(version_dir(tmp_path))["val/exact_match"][-1][1]
    ddp_loss = read_scalars(version_dir(tmp_path))["val/loss"][-1][1]
    assert read_scalars(version_dir(tmp_path))["train/graphs_seen"][-1] == (7, 8 * 32 * 2.0)  # both ranks' graphs

    ckpt = version_dir(tmp_path) / "checkpoints" / "last.ckpt"
    single = run_cli("validate", *common, "--ckpt_path", str(ckpt)).trainer.callback_metrics
    assert single["val/exact_match"].item() == pytest.approx(ddp_exact, abs=1e-6)
    assert single["val/loss"].item() == pytest.approx(ddp_loss, rel=1e-5)
    for tag in ("val/free/pos_4", "val/tf/pos_4", "val/decision_acc", "val/reaches_goal_rate"):  # per-row counts
        assert single[tag].item() == pytest.approx(read_scalars(version_dir(tmp_path))[tag][-1][1], abs=1e-6), tag
