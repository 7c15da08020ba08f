"""A resumed fit logs the same steps and values as an uninterrupted one, whichever callback wrote its checkpoint."""

from __future__ import annotations

from tests.conftest import assert_same_series, logged

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
