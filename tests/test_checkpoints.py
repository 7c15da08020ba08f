"""Checkpoints and run folders: a resumed fit logs like one run and continues its folder; one last.ckpt a run;
default_root_dir holds everything."""

from __future__ import annotations

import torch

from tests.conftest import assert_same_series, logged, version_dir

# Validation every 3 steps and a fixed schedule, so a run cut short follows the uninterrupted run exactly.
COMMON = ["--trainer.val_check_interval=3", "--model.decay_steps=12"]


def test_resume_from_the_checkpoint_written_at_the_end_of_fit_logs_like_one_run(run_cli, tiny_config, tmp_path):
    run_cli("fit", "--config", str(tiny_config), *COMMON, "--trainer.logger.save_dir=whole")
    # 6 steps: ModelCheckpoint saves at step 4, KeepLastCheckpoint at 6, right after a validation.
    run_cli("fit", "--config", str(tiny_config), *COMMON, "--trainer.max_steps=6", "--trainer.logger.save_dir=cut")
    last = tmp_path / "cut" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    run_cli("fit", "--config", str(tiny_config), *COMMON, "--trainer.logger.save_dir=cut", "--ckpt_path", str(last))
    whole, cut = logged(tmp_path / "whole"), logged(tmp_path / "cut")
    assert [s for s, _ in whole["val/loss"]] == [2, 5, 8, 11]
    assert_same_series(cut, whole)
    assert [p.name for p in (tmp_path / "cut" / "lightning_logs").iterdir()] == ["version_0"]  # one TensorBoard run


def test_a_run_shorter_than_the_checkpoint_interval_leaves_one_last_ckpt(run_cli, tiny_config, tmp_path):
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=3")
    checkpoints = version_dir(tmp_path) / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["global_step"] == 3


def test_default_root_dir_holds_the_events_and_checkpoints(run_cli, tiny_config, tmp_path):
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=4", "--trainer.default_root_dir=out")
    run = version_dir(tmp_path / "out")
    assert list(run.glob("events.out.tfevents.*")) and (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file() and not (tmp_path / "lightning_logs").exists()
