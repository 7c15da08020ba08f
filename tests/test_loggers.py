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


def _event_values(folder) -> list[tuple[str, int, object]]:
    """Every (tag, step, summary value) in a run folder's event files, read with TensorBoard's own loader."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return [(v.tag, event.step, v) for f in sorted(folder.glob("events.out.tfevents.*"))
            for event in EventFileLoader(str(f)).Load() for v in event.summary.value]


def test_tensorboard_holds_an_hparams_row_per_position_images_and_the_config(run_cli, tiny_config, tmp_path):
    import io

    from PIL import Image
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=8", "--test_after_fit=true")
    values = _event_values(version_dir(tmp_path))
    hparams = {tag: plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
               for tag, _, v in values if v.metadata.plugin_data.plugin_name == "hparams"}
    assert set(hparams) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    metric_tags = {m.name.tag for m in hparams["_hparams_/experiment"].experiment.metric_infos}
    assert {"test/exact_match", "test/decision_acc", "val/exact_match", "train/graphs_seen"} <= metric_tags
    scalars = read_scalars(str(version_dir(tmp_path)))
    assert metric_tags <= set(scalars)  # every column is filled from a scalar the run logged
    start = hparams["_hparams_/session_start_info"].session_start_info.hparams
    assert start["task"].string_value == "PathStar" and start["task.degree"].number_value == 2
    assert start["objective"].string_value == "TeacherForcing" and start["backbone"].string_value == "GPT"
    assert start["backbone.n_layer"].number_value == 1 and start["backbone.d_model"].number_value == 32
    assert start["seed"].number_value == 0 and start["lr"].number_value == pytest.approx(1e-3)
    assert start["max_steps"].number_value == 8 and start["data.batch_size"].number_value == 32
    assert not any(tag.startswith("_hparams_") or tag == "hp_metric" for tag in scalars)

    images = [(tag, step, v) for tag, step, v in values if tag.endswith("/plots/per_position")]
    assert [(tag, step) for tag, step, _ in images] == [("val/plots/per_position", 4), ("val/plots/per_position", 8),
                                                        ("test/plots/per_position", 8)]  # no sanity-check image
    png = images[-1][2].tensor.string_val[2]
    width, height = Image.open(io.BytesIO(png)).size
    assert width > 300 and height > 200

    texts = [v.tensor.string_val[0].decode() for tag, _, v in values if tag == "run/config/text_summary"]
    assert len(texts) == 1 and "seed_everything: 0" in texts[0] and "| versions | nfl " in texts[0]


def test_runs_logged_elsewhere_get_no_tensorboard_views(run_cli, tiny_config, tmp_path):
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=4", *CSV)
    csv_run = tmp_path / "csv" / "lightning_logs" / "version_0"
    assert (csv_run / "metrics.csv").is_file() and not list(csv_run.rglob("events.out.tfevents.*"))
    assert "plots" not in (csv_run / "metrics.csv").read_text()


def test_an_offline_wandb_run_logs_the_same_tags(run_cli, tiny_config, tmp_path):
    pytest.importorskip("wandb")
    short = ["--config", str(tiny_config), "--trainer.max_steps=4"]
    run_cli("fit", *short)
    cli = run_cli("fit", *short, "--trainer.logger=lightning.pytorch.loggers.WandbLogger",
                  "--trainer.logger.init_args.offline=true", "--trainer.logger.init_args.save_dir=wb")
    run = cli.trainer.logger.experiment
    assert run.settings.mode in ("offline", "dryrun") and list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    logged = {k for k in run.summary.keys() if not k.startswith("_") and k != "trainer/global_step"}
    assert logged == set(read_scalars(str(version_dir(tmp_path))))
    assert run.summary["train/graphs_seen"] == 4 * 32
    run.finish()
