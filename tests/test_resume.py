"""A resumed fit logs the same steps and values as an uninterrupted one, whichever callback wrote its checkpoint."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import read_scalars

# Validation every 3 steps and a fixed schedule, so a run cut short follows the uninterrupted run exactly.
COMMON = ["--trainer.val_check_interval=3", "--model.decay_steps=12"]


def logged(root: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of every version folder under ``root`` (a resumed run may write a folder of its own)."""
    merged: dict[str, list[tuple[int, float]]] = {}
    for folder in sorted((root / "lightning_logs").iterdir()):
        for tag, points in read_scalars(str(folder)).items():
            merged.setdefault(tag, []).extend(points)
    return {tag: sorted(points) for tag, points in merged.items()}


def assert_same_series(resumed: dict, uninterrupted: dict) -> None:
    for tag in ("val/loss", "val/exact_match", "train/loss"):
        steps = [s for s, _ in uninterrupted[tag]]
        assert [s for s, _ in resumed[tag]] == steps, tag
        for (_, a), (_, b) in zip(resumed[tag], uninterrupted[tag]):
            assert abs(a - b) < 1e-6, (tag, a, b)


def test_resume_from_the_checkpoint_written_at_the_end_of_fit_logs_like_one_run(run_cli, tiny_config, tmp_path):
    run_cli("fit", "--config", str(tiny_config), *COMMON, "--trainer.logger.save_dir=whole")
    # 6 steps: ModelCheckpoint saves at step 4, KeepLastCheckpoint at 6, right after a validation.
    run_cli("fit", "--config", str(tiny_config), *COMMON, "--trainer.max_steps=6", "--trainer.logger.save_dir=cut")
    last = tmp_path / "cut" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    run_cli("fit", "--config", str(tiny_config), *COMMON, "--trainer.logger.save_dir=cut", "--ckpt_path", str(last))
    whole, cut = logged(tmp_path / "whole"), logged(tmp_path / "cut")
    assert [s for s, _ in whole["val/loss"]] == [2, 5, 8, 11]
    assert_same_series(cut, whole)
