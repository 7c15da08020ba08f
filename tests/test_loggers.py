"""Runs logged with Lightning's CSVLogger read back like TensorBoard runs: the same tags, values and run folders."""

from __future__ import annotations

import pytest

from tests.conftest import read_scalars, version_dir

CSV = ["--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.save_dir=csv"]


def test_a_csv_logged_run_reads_back_as_the_tensorboard_run_does(run_cli, tiny_config, tmp_path):
    short = ["--config", str(tiny_config), "--trainer.max_steps=6", "--test_after_fit=true"]
    run_cli("fit", *short)
    run_cli("fit", *short, *CSV)
    csv_run = tmp_path / "csv" / "lightning_logs" / "version_0"
    assert (csv_run / "metrics.csv").is_file() and not list(csv_run.glob("events.out.tfevents.*"))
    tensorboard, csv = read_scalars(str(version_dir(tmp_path))), read_scalars(str(csv_run))
    assert {"train/loss", "val/exact_match", "test/exact_match", "test/tf/pos_2"} <= set(tensorboard)
    assert set(csv) == set(tensorboard)
    for tag, points in tensorboard.items():
        assert [s for s, _ in csv[tag]] == [s for s, _ in points], tag
        assert [v for _, v in csv[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag
    # A test of its checkpoint logs into the CSV run's test/ folder, and reads back with it.
    cli = run_cli("test", "--config", str(tiny_config), *CSV, "--ckpt_path", str(csv_run / "checkpoints" / "last.ckpt"))
    assert tmp_path / cli.trainer.log_dir == csv_run / "test" and (csv_run / "test" / "metrics.csv").is_file()
    assert len(read_scalars(str(csv_run))["test/exact_match"]) == 2
