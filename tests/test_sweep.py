"""Sweeps run every combination once, survive interruption, and report correct rows and real plots."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch

from nfl.report import main as report_main
from nfl.lab.report.sweep import verdict
from nfl.lab.sweep.spec import DONE, command, load_sweep
from nfl.sweep import main as sweep_main
from tests.conftest import ROOT

SWEEP = """
name: tiny
base: {base}
seeds: [0, 1]
args: ["--trainer.max_steps=4", "--trainer.val_check_interval=2"]
grid:
  objective:
    tf: {{model.objective: nfl.objectives.TeacherForcing}}
    reverse: {{data.init_args.reverse: true}}
"""


@pytest.fixture
def sweep_file(tmp_path, tiny_config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.format(base=tiny_config))
    return path


def folders(root: Path) -> dict[str, Path]:
    return {p.name: p for p in (root / "lightning_logs" / "tiny").iterdir()}


def test_sweep_runs_each_combination_then_reports(sweep_file, tmp_path, capsys):
    assert sweep_main(["--config", str(sweep_file)]) == 0
    runs = folders(tmp_path)
    assert set(runs) == {f"objective={o},seed={s}" for o in ("tf", "reverse") for s in (0, 1)}
    assert all((p / DONE).is_file() and (p / "checkpoints" / "last.ckpt").is_file() for p in runs.values())

    assert report_main(["--sweep", str(tmp_path / "lightning_logs" / "tiny"), "--out", str(tmp_path / "docs")]) == 0
    with open(tmp_path / "docs" / "results.csv") as f:
        rows = {r["setting"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"objective=tf", "objective=reverse"}
    for row in rows.values():
        assert row["seeds"] == "2" and float(row["chance"]) == 0.5
        assert 0.0 <= float(row["exact_match_mean"]) <= 1.0
        assert row["verdict"] == verdict(float(row["exact_match_mean"]), float(row["decision_acc_mean"]), 0.5)
    markdown = (tmp_path / "docs" / "results.md").read_text()
    assert "| objective=tf | 2 |" in markdown and "objective=reverse.png" in markdown
    for setting in rows:
        png = tmp_path / "docs" / f"{setting}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    # Interrupt: one run lost its marker after training, another lost everything. Only those two run again.
    (runs["objective=tf,seed=1"] / DONE).unlink()
    for p in sorted(runs["objective=reverse,seed=0"].rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    kept = {name: os.path.getmtime(p / DONE) for name, p in runs.items() if (p / DONE).exists()}
    capsys.readouterr()
    assert sweep_main(["--config", str(sweep_file)]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier, skipped") == 2
    assert "objective=tf,seed=1: resuming" in out and "objective=reverse,seed=0: running" in out
    assert all(os.path.getmtime(runs[name] / DONE) == mtime for name, mtime in kept.items())
    assert all((p / DONE).is_file() for p in folders(tmp_path).values())


def test_the_report_plots_objectives_without_a_teacher_forced_pass(tmp_path, tiny_config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "mixed.yaml"
    sweep.write_text(SWEEP.format(base=tiny_config).replace("seeds: [0, 1]", "seeds: [0]").replace(
        "    reverse: {data.init_args.reverse: true}",
        "    teacherless: {model.objective: nfl.objectives.Teacherless}\n"
        "    mdm: {model.objective: nfl.objectives.MaskedDiffusion}"))
    assert sweep_main(["--config", str(sweep)]) == 0
    out = tmp_path / "docs"
    assert report_main(["--sweep", str(tmp_path / "lightning_logs" / "tiny"), "--out", str(out)]) == 0
    with open(out / "results.csv") as f:
        rows = {r["setting"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"objective=tf", "objective=teacherless", "objective=mdm"}
    assert rows["objective=tf"]["tf_decision_acc_mean"] != "nan"
    for setting in ("objective=teacherless", "objective=mdm"):  # no teacher-forced pass: no tf column value
        assert rows[setting]["tf_decision_acc_mean"] == "nan" and rows[setting]["tf_pos_ge3_mean"] == "nan"
    markdown = (out / "results.md").read_text()
    assert "| objective=mdm | 1 |" in markdown and "![exact match](exact_match.png)" in markdown
    for png in ["exact_match.png", *(f"{s}.png" for s in rows)]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 10_000


def test_a_sweep_resumes_from_the_newest_checkpoint_that_loads(tmp_path, tiny_config, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "one.yaml"
    sweep.write_text(f'name: one\nbase: {tiny_config}\nargs: ["--trainer.max_steps=6"]\ngrid: {{objective: {{tf: {{}}}}}}\n')
    assert sweep_main(["--config", str(sweep)]) == 0
    run = tmp_path / "lightning_logs" / "one" / "objective=tf,seed=0"
    last = run / "checkpoints" / "last.ckpt"
    (run / DONE).unlink()
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a save cut short by a full disk
    capsys.readouterr()
    assert sweep_main(["--config", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "skipping a checkpoint: Checkpoint lightning_logs/one/objective=tf,seed=0/checkpoints/last.ckpt does not load" in out
    assert "resuming from epoch=0-step=4.ckpt" in out and (run / DONE).is_file()
    assert torch.load(last, weights_only=False)["global_step"] == 6 and not list(last.parent.glob("last-v*"))


def test_sweep_files_are_checked(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbase: nowhere.yaml\ngrid: {a: {b: {c: 1}}}\n")
    assert sweep_main(["--config", str(bad)]) == 2
    assert "base config 'nowhere.yaml' not found" in capsys.readouterr().err
    bad.write_text("name: x\nbase: nowhere.yaml\ngrdi: {}\n")
    assert sweep_main(["--config", str(bad)]) == 2
    assert "needs 'name', 'base' and 'grid'" in capsys.readouterr().err


@pytest.mark.parametrize("text, says", [
    ("seeds: 3", "seeds 3 is a list of seeds"),
    ("seeds: [0, -1]", "whole numbers >= 0"),
    ("seeds: [1, 1]", "repeat a seed"),
    ("seeds: []", "is a list of seeds"),
    ("args: --trainer.max_steps=3", "args is a list of CLI arguments"),
    ("name: a/b", "name 'a/b' names the sweep's folder"),
    ("grid: {lr: {'a,b': {model.lr: 1}}}", "a setting name is one word"),
    ("grid: {seed: {a: {model.lr: 1}}}", "and not 'seed'"),
    ("grid: {lr: {a: [1, 2]}}", "maps CLI keys to values"),
    ("grid: {" + ", ".join(f"a{i}: {{" + ", ".join(f"s{j}: {{k: {j}}}" for j in range(10)) + "}" for i in range(7)) + "}",
     "the grid makes 10,000,000 runs"),
    ("grid: {lr: {a: {model.lr: 1}}\nbad: [", "not valid YAML"),
])
def test_a_bad_sweep_file_is_one_line(tmp_path, tiny_config, capsys, text, says):
    spec = {"name": "x", "base": str(tiny_config), "grid": "{lr: {a: {model.lr: 1}}}"}
    key = text.split(":", 1)[0]
    lines = [f"{k}: {v}" for k, v in spec.items() if k != key] + [text]
    bad = tmp_path / "bad.yaml"
    bad.write_text("\n".join(lines) + "\n")
    assert sweep_main(["--config", str(bad), "--dry-run"]) == 2
    printed = capsys.readouterr().err.strip()
    assert printed.startswith("error: ") and says in printed and "\n" not in printed, printed


def test_a_bad_only_pattern_is_one_line(sweep_file, capsys):
    assert sweep_main(["--config", str(sweep_file), "--dry-run", "--only", "seed=(0"]) == 2
    printed = capsys.readouterr().err.strip()
    assert printed.startswith("error: --only 'seed=(0' is not a regular expression") and "\n" not in printed


def test_exclude_leaves_out_the_matching_combinations(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text("seed_everything: 0\n")
    sweep = tmp_path / "s.yaml"
    head = f"name: s\nbase: {base}\nseeds: [0, 1]\ngrid:\n  backbone: {{gpt: {{a: 1}}, mamba: {{a: 2}}}}\n" \
        "  objective: {tf: {b: 1}, registers: {b: 2}, mdm: {b: 3}}\n"
    sweep.write_text(head + "exclude:\n  - {backbone: mamba, objective: [registers, mdm]}\n  - {objective: tf, seed: 1}\n")
    names = [r.name for r in load_sweep(str(sweep))[1]]
    assert names == ["backbone=gpt,objective=tf,seed=0", "backbone=gpt,objective=registers,seed=0",
                     "backbone=gpt,objective=registers,seed=1", "backbone=gpt,objective=mdm,seed=0",
                     "backbone=gpt,objective=mdm,seed=1", "backbone=mamba,objective=tf,seed=0"]
    for rule, message in [("{objectiv: tf}", "exclude names axis 'objectiv'"),
                          ("{objective: rgisters}", "exclude names objective=rgisters, which is not a setting"),
                          ("{seed: 7}", "exclude names seed=7, which is not one of the sweep's seeds [0, 1]"),
                          ("{objective: tf, seed: {}}", "exclude names seed={}"),
                          ("mamba", "'exclude' is a list of mappings")]:
        sweep.write_text(head + f"exclude: [{rule}]\n" if rule != "mamba" else head + "exclude: mamba\n")
        assert sweep_main(["--config", str(sweep)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweeps_expand_and_every_setting_parses(path, run_cli, capsys):
    assert path.read_text().startswith("# ")
    spec, runs = load_sweep(str(path))
    assert os.path.isfile(spec["base"]) and len(runs) >= 3
    assert len({r.name for r in runs}) == len(runs)
    covered, sample = set(), []  # one run per setting value is enough to parse each override once
    for run in runs:
        values = set(run.settings.items())
        if not values <= covered:
            covered |= values
            sample.append(run)
    for run in sample:
        cmd = command(spec, run, "lightning_logs")
        with pytest.raises(SystemExit) as done:
            run_cli(*cmd[cmd.index("fit"):], "--print_config")
        assert done.value.code == 0, run.name
    capsys.readouterr()


def test_verdicts_say_plainly_where_the_decision_stands():
    assert verdict(0.99, 0.99, 0.5) == "solved"
    assert verdict(0.50, 0.50, 0.5) == "at chance"
    assert verdict(0.00, 0.17, 0.5) == "below chance: not learned"
    assert verdict(0.70, 0.70, 0.5) == "beats chance, not solved"
    assert verdict(0.30, 0.30, 0.2) == "beats chance, not solved"
