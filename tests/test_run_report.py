"""``python -m nfl.report --run``: one run's (or a few runs') final test metrics as a table, and their plots."""

from __future__ import annotations

import pytest

from nfl.report import main as report
from tests.conftest import read_scalars, version_dir

CSV = ["--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.save_dir=csv"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_report_of_runs_logged_with_tensorboard_and_csv(run_cli, tiny_config, tmp_path, capsys):
    short = ["--config", str(tiny_config), "--trainer.max_steps=4", "--test_after_fit=true"]
    run_cli("fit", *short)
    run_cli("fit", *short, *CSV)
    runs = [str(version_dir(tmp_path)), str(tmp_path / "csv" / "lightning_logs" / "version_0")]
    capsys.readouterr()
    assert report(["--run", runs[0]]) == 0  # one run: its plots go into its own folder
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    scalars = read_scalars(runs[0])
    exact, chance = scalars["test/exact_match"][-1][1], scalars["test/chance"][-1][1]
    se = (exact * (1 - exact) / 64) ** 0.5  # the tiny config's 64 held-out graphs
    cells = [c.strip() for c in table[-1].strip("|").split("|")]
    assert cells[:5] == [runs[0], f"{100 * exact:.1f} ± {100 * se:.1f}", "64",
                         f"{100 * scalars['test/decision_acc'][-1][1]:.1f}", f"{100 * chance:.1f}"]
    assert cells[5].count(",") == cells[6].count(",") == 3  # four positions, free-running and teacher-forced
    assert cells[6].split(", ")[1] == f"{100 * scalars['test/tf/pos_2'][-1][1]:.1f}"
    assert (version_dir(tmp_path) / "report.md").is_file() and list(version_dir(tmp_path).glob("*.png"))
    out = tmp_path / "side_by_side"
    assert report(["--run", *runs, "--out", str(out)]) == 0  # TensorBoard beside CSV
    printed = capsys.readouterr().out
    assert all(run in printed for run in runs) and len(list(out.glob("*.png"))) == 3  # two runs + exact match


def test_report_refuses_what_it_cannot_report_in_one_line(run_cli, tiny_config, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report(["--run", str(empty)]) == 2
    line = one_error_line(capsys)
    assert f"--run {empty}" in line and "TensorBoard" in line and "CSV" in line
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=4")  # no test: not a finished run
    capsys.readouterr()
    assert report(["--run", str(version_dir(tmp_path))]) == 2
    line = one_error_line(capsys)
    assert "--run" in line and "no test metrics" in line and "--test_after_fit" in line
    run_cli("test", "--config", str(tiny_config), "--ckpt_path", str(version_dir(tmp_path) / "checkpoints" / "last.ckpt"))
    (tmp_path / "a_file").write_text("")
    capsys.readouterr()
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "below"):
        assert report(["--run", str(version_dir(tmp_path)), "--out", str(out)]) == 2
        assert f"--out {out}" in one_error_line(capsys)
    assert report(["--run", str(version_dir(tmp_path)), str(version_dir(tmp_path))]) == 2
    assert "--out" in one_error_line(capsys)
    assert report(["--run", str(version_dir(tmp_path))]) == 0  # tested afterwards, in its test/ folder


@pytest.mark.parametrize("source", ["--sweep", "--atlas"])
def test_out_is_still_required_for_sweeps_and_the_atlas(source, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        report([source, str(tmp_path)])
    assert done.value.code == 2 and "--out is required" in capsys.readouterr().err
