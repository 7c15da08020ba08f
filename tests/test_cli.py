"""The command line: every shipped config runs, bad input gets a clear message, subcommands work."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import CONFIGS, ROOT, read_scalars, tiny_fit, version_dir


def test_configs_are_shipped():
    names = {Path(c).name for c in CONFIGS}
    for kind in ("tf", "teacherless", "reverse", "mamba_tf", "mamba_teacherless", "mamba_reverse", "mtp_k2", "mtp_k5"):
        assert f"reference_{kind}.yaml" in names
    assert {"quickstart.yaml", "quickstart_mamba.yaml", "quickstart_mtp.yaml"} <= names
    assert {"finetune_gpt2.yaml", "finetune_pythia.yaml"} <= names


@pytest.mark.parametrize("config", sorted((ROOT / "configs" / "nextlat").glob("*.yaml")), ids=lambda c: c.name)
def test_the_nextlat_configs_run_a_few_steps_at_a_tiny_size(config, run_cli):
    """The GPU-sized NextLat (Teoh et al. 2025) configs: their objectives and data, on a tiny GPT here."""
    assert config.read_text().startswith("# NextLat (Teoh et al. 2025")
    cli = run_cli(*tiny_fit(config, 2))
    assert cli.trainer.global_step == 2
    assert "test/exact_match" in cli.trainer.callback_metrics  # test_after_fit: true


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: Path(c).name)
def test_every_config_parses_and_runs_a_few_steps(config, run_cli, request):
    first_line = Path(config).read_text().splitlines()[0]
    assert first_line.startswith("# "), "each config starts with a comment saying what it reproduces"
    local = []
    backbone = yaml.safe_load(Path(config).read_text())["model"]["backbone"]
    if backbone["class_path"] == "nfl.models.HFCausalLM":  # nothing downloads: a tiny model of the same kind
        kind = "gpt_neox" if "pythia" in backbone["init_args"]["model"] else "gpt2"
        local = ["--model.backbone.init_args.model", str(request.getfixturevalue("hf_folders")[kind])]
    cli = run_cli(
        "fit", "--config", config, "--trainer.fast_dev_run", "2", "--data.init_args.batch_size", "8",
        "--data.init_args.n_test", "16", "--trainer.enable_progress_bar", "false", *local,
    )
    assert cli.trainer.global_step == 2


def test_print_config_round_trips(run_cli, capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--print_config")
    assert done.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["backbone"]["class_path"] == "nfl.models.GPT"
    assert printed["data"]["init_args"]["num_nodes"] == 50
    assert "num_nodes" not in printed["model"]  # linked from the data, so never typed twice


@pytest.mark.parametrize("overlay", sorted((ROOT / "configs" / "overlays").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_overlays_compose_with_an_experiment(overlay, run_cli, capsys):
    assert overlay.read_text().startswith("# ")
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--config", str(overlay), "--print_config")
    assert done.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["strategy"] == "ddp"
    assert printed["model"]["backbone"]["class_path"] == "nfl.models.GPT"  # the experiment is untouched


def test_overlays_compose(run_cli, tiny_config, tmp_path):
    overlay = tmp_path / "reverse.yaml"
    overlay.write_text("data:\n  init_args:\n    reverse: true\n")
    cli = run_cli("fit", "--config", str(tiny_config), "--config", str(overlay), "--trainer.max_steps", "1")
    assert cli.datamodule.reverse and cli.model.hparams.reverse  # linked into the metrics too


def test_config_typos_and_unknown_classes_are_named(run_cli, tiny_config, capsys):
    for args, word in (
        (["--model.lrr", "0.1"], "lrr"),
        (["--model.objective", "nfl.objectives.Nope"], "Nope"),
        (["--model.backbone", "nfl.models.Mamba9"], "Mamba9"),
    ):
        with pytest.raises(SystemExit) as done:
            run_cli("fit", "--config", str(tiny_config), *args)
        assert done.value.code != 0
        assert word in capsys.readouterr().err


def test_infeasible_config_is_refused_before_training(run_cli, tiny_config, tmp_path):
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", str(tiny_config), "--data.init_args.degree", "9")
    assert done.value.code.startswith("error: G(degree=9, path_len=4, num_nodes=20) is infeasible")
    assert "Raise num_nodes to at least 28" in done.value.code
    assert not (tmp_path / "lightning_logs").exists()


def test_corrupt_data_file_is_reported_with_file_and_line(run_cli, tiny_config, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1,2|3,4|5,6|7,8|9,10|11,12/1,12=1,3,5,12\n1,2|oops\n")
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", str(tiny_config), "--data.init_args.train_file", str(bad))
    assert done.value.code.startswith("error: ") and "bad.txt:2:" in done.value.code
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", str(tiny_config), "--data.init_args.test_file", str(tmp_path / "missing.txt"))
    assert done.value.code.startswith("error: data.init_args.test_file=") and "missing.txt: no such file" in done.value.code


def run_folder_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Run folder: ")]


def test_validate_test_and_predict_from_a_checkpoint(run_cli, tiny_config, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    reverse = ["--data.init_args.reverse", "true"]  # a checkpoint is used with the options it was trained with
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps", "4", *reverse)
    run = Path("lightning_logs", "version_0")  # as printed: relative to the working directory
    assert run_folder_lines(caplog) == [f"Run folder: {run}"] * 2  # first and last
    ckpt = str(run / "checkpoints" / "last.ckpt")
    for sub in ("validate", "test"):
        caplog.clear()
        cli = run_cli(sub, "--config", str(tiny_config), "--ckpt_path", ckpt, *reverse)
        assert f"{'val' if sub == 'validate' else 'test'}/exact_match" in cli.trainer.callback_metrics
        assert cli.trainer.log_dir == str(run / sub)  # the run tested logs its test, not a new version folder
        where = f"Run folder: {run} (this {sub} logs into {run / sub})"
        assert run_folder_lines(caplog) == [where] * 2
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]
    scalars = read_scalars(str(tmp_path / run))  # the fit and its evaluations together
    assert {"train/loss", "val/exact_match", "test/exact_match"} <= set(scalars)
    out = tmp_path / "out" / "predictions.tsv"
    cli = run_cli(
        "predict", "--config", str(tiny_config), "--ckpt_path", ckpt, *reverse,
        "--trainer.callbacks+=nfl.callbacks.PredictionWriter", f"--trainer.callbacks.path={out}",
    )
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    graphs = cli.datamodule.test_graphs
    assert len(rows) == len(graphs[1]) == 64
    first_path = ",".join(map(str, graphs[1][0].tolist()))
    assert rows[0][0].endswith("=" + first_path)  # the held-out line, start-first even with reverse
    for line, pred, ok in rows:
        assert ok == str(int(line.split("=")[1] == pred))


def test_help_in_a_subprocess():
    done = subprocess.run([sys.executable, "-m", "nfl", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "fit" in done.stdout and "test" in done.stdout
    done = subprocess.run([sys.executable, "-m", "nfl", "fit", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "--model.backbone" in done.stdout and "--test_after_fit" in done.stdout
    assert "--optimizer" not in done.stdout and "--lr_scheduler" not in done.stdout  # refused, so not offered


def test_a_misspelt_option_or_class_is_one_error_line(run_cli, tiny_config, capsys):
    tree = ["--data=nfl.data.TaskDataModule", "--data.init_args.task=nfl.tasks.TreeStar"]
    for args, words in (
        ([*tree, "--data.init_args.task.init_args.depht=2"], ["data.task", "'depht' is not accepted"]),
        (["--model.lrr=0.1"], ["--model.lrr"]),
        (["--data.init_args.batch_size=abc"], ["data.batch_size", "int"]),
        (["--model.objective=nfl.objectives.Nope"], ["model.objective", "Nope"]),
        (["--model.lr_schedule=linear"], ["model.lr_schedule", "cosine", "constant"]),
    ):
        with pytest.raises(SystemExit) as done:
            run_cli("fit", "--config", str(tiny_config), *args)
        err = capsys.readouterr().err.strip().splitlines()
        assert done.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
        assert all(w in err[0] for w in words), err[0]


def test_progress_off_a_terminal_is_a_line_per_logging_interval(run_cli, tiny_config, capsys):
    from nfl.callbacks import LineProgress

    cli = run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=6", "--trainer.log_every_n_steps=2",
                  "--trainer.enable_progress_bar=true")
    assert isinstance(cli.trainer.progress_bar_callback, LineProgress)  # pytest's stderr is no terminal
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in lines] == ["step 2/6", "step 4/6", "step 6/6"]
    assert "train/loss=" in lines[-1] and "validated at step 4/6: " in err and "\r" not in err
