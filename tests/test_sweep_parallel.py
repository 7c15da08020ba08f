"""Sweeps spread over processes and machines: shards split the grid, SLURM arrays pick their shard, --parallel runs
real runs at once with their own GPUs or threads, reports failures without stopping, and resumes after a kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import pytest

from nfl.lab.sweep.processes import slot_environments, visible_gpus
from nfl.lab.sweep.spec import DONE, load_sweep, shard_of
from nfl.sweep import main as sweep_main
from tests.conftest import ROOT
from tests.test_interrupt import steps_logged, wait_for

GRID = """
name: grid
base: {base}
seeds: [0, 1]
args: ["--trainer.max_steps=4", "--trainer.val_check_interval=2"]
grid:
  objective:
    tf: {{}}
    reverse: {{data.init_args.reverse: true}}
  lr:
    low: {{model.lr: 1.0e-4}}
    high: {{model.lr: 1.0e-2}}
    mid: {{model.lr: 1.0e-3}}
"""


def listed(capsys) -> list[str]:
    """The run names a ``--dry-run`` printed."""
    return listed_in(capsys.readouterr().out)


def test_shards_run_disjoint_shares_whose_union_is_the_grid(tmp_path, tiny_config, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_STEP"):
        monkeypatch.delenv(name, raising=False)
    sweep = tmp_path / "grid.yaml"
    sweep.write_text(GRID.format(base=tiny_config))
    grid = [r.name for r in load_sweep(str(sweep))[1]]
    assert len(grid) == 12
    for n in (1, 2, 5, 12, 13):
        shares = []
        for i in range(1, n + 1):
            assert sweep_main(["--config", str(sweep), "--dry-run", "--shard", f"{i}/{n}"]) == 0
            shares.append(listed(capsys))
        assert sorted(name for share in shares for name in share) == sorted(grid)  # every run, none twice
        assert max(map(len, shares)) - min(map(len, shares)) <= 1  # as even as the grid allows
        again = []
        for i in range(1, n + 1):
            sweep_main(["--config", str(sweep), "--dry-run", "--shard", f"{i}/{n}"])
            again.append(listed(capsys))
        assert again == shares  # the same share every time: shards may start in any order, on any machine


def test_a_slurm_array_task_is_its_shard_and_an_explicit_shard_wins():
    array = {"SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "4"}
    shards = [shard_of(None, {**array, "SLURM_ARRAY_TASK_ID": str(task)}) for task in (1, 3, 5, 7)]
    assert shards == [(1, 4), (2, 4), (3, 4), (4, 4)]
    no_step = {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_ID": "2"}
    assert shard_of(None, no_step) == (3, 3)
    assert shard_of("1/2", no_step) == (1, 2)
    assert shard_of(None, {"SLURM_JOB_ID": "7"}) is None  # a job, not an array: every run
    off_range = ({**array, "SLURM_ARRAY_TASK_ID": "2"}, {**array, "SLURM_ARRAY_TASK_ID": "9"})
    for bad in (*off_range, {"SLURM_ARRAY_TASK_ID": "3"}):  # between steps, past the end, no count
        with pytest.raises(ValueError, match="SLURM"):
            shard_of(None, bad)


@pytest.mark.parametrize("shard", ["0/3", "4/3", "x", "1/0", "-1/2"])
def test_bad_shards_are_one_line(shard, tmp_path, tiny_config, capsys):
    sweep = tmp_path / "grid.yaml"
    sweep.write_text(GRID.format(base=tiny_config))
    assert sweep_main(["--config", str(sweep), f"--shard={shard}", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --shard {shard!r}" if shard in ("x", "-1/2") else f"error: --shard {shard}:")
    assert err.count("\n") == 1


def test_parallel_runs_get_their_own_gpus_or_their_share_of_the_threads():
    assert slot_environments(1, 1, ["0", "1"], 16) == [{}]  # one at a time: the environment as it is
    four = slot_environments(2, 2, ["0", "1", "2", "3"], 16)  # DDP runs of two GPUs each
    assert [s["CUDA_VISIBLE_DEVICES"] for s in four] == ["0,1", "2,3"] and four[0]["OMP_NUM_THREADS"] == "8"
    assert [s["CUDA_VISIBLE_DEVICES"] for s in slot_environments(4, 1, ["4", "6"], 16)] == ["4", "6", "4", "6"]
    cpu = slot_environments(3, 1, [], 16)
    assert [s["OMP_NUM_THREADS"] for s in cpu] == ["5"] * 3 and all("CUDA_VISIBLE_DEVICES" not in s for s in cpu)
    assert slot_environments(4, 1, [], 2)[0]["OMP_NUM_THREADS"] == "1"
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,0,-1,3"}) == ["2", "0"]  # CUDA stops at an invalid entry
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


# long trains until it is stopped (checkpointing only when stopped: last.ckpt), broken fails at start-up.
PARALLEL = """
name: par
base: {base}
args: ["--trainer.val_check_interval=2"]
grid:
  run:
    quick: {{trainer.max_steps: 4}}
    long:
      trainer.max_steps: {long}
      trainer.callbacks: [{{class_path: lightning.pytorch.callbacks.ModelCheckpoint,
                            init_args: {{save_last: true, every_n_train_steps: 100000}}}}]
    broken: {{model.lr: -1}}
"""


def test_parallel_runs_at_once_reports_a_failure_resumes_after_a_kill_and_the_report_reads_them(tmp_path, tiny_config):
    sweep = tmp_path / "par.yaml"
    sweep.write_text(PARALLEL.format(base=tiny_config, long=100000))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_ARRAY")} | {"PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "nfl.sweep", "--config", str(sweep), "--parallel", "2"]
    child = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    runs = {name: tmp_path / "lightning_logs" / "par" / f"run={name},seed=0" for name in ("quick", "long", "broken")}
    # quick and long start together; broken takes quick's place when it is done, and fails; long goes on.
    try:
        wait_for(lambda: child.poll() is not None or (
            (runs["quick"] / DONE).is_file() and (runs["broken"] / "sweep_attempts.json").is_file()
            and steps_logged(runs["long"])), timeout=300)
        child.send_signal(signal.SIGTERM)
        output = child.communicate(timeout=180)[0]
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 143, output[-3000:]
    assert "[3/3] run=broken,seed=0: FAILED with exit code 1" in output
    assert "run=long,seed=0: stopped by SIGTERM" in output
    attempts = {name: json.loads((runs[name] / "sweep_attempts.json").read_text()) for name in runs}
    quick, long = attempts["quick"][0], attempts["long"][0]
    assert quick["started"] < long["started"] + long["seconds"]  # the two ran at the same time
    assert long["started"] < quick["started"] + quick["seconds"]
    threads = str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert quick["environment"]["OMP_NUM_THREADS"] == long["environment"]["OMP_NUM_THREADS"] == threads
    assert not (runs["long"] / DONE).exists() and (runs["long"] / "checkpoints" / "last.ckpt").is_file()

    # Run again: quick is skipped, long resumes (now with 4 steps, which it ends at or has passed already), broken
    # fails again, and the exit status says a run failed.
    sweep.write_text(PARALLEL.format(base=tiny_config, long=4))
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1, again.stdout[-3000:] + again.stderr[-3000:]
    assert "[1/3] run=quick,seed=0: finished earlier, skipped" in again.stdout
    assert "[2/3] run=long,seed=0: resuming from last.ckpt" in again.stdout
    assert "failed: run=broken,seed=0" in again.stderr
    record = json.loads((runs["long"] / DONE).read_text())
    both = json.loads((runs["long"] / "sweep_attempts.json").read_text())
    assert [a["exit_code"] for a in both] == [143, 0]
    assert record["resumed"] and record["wall_seconds"] == pytest.approx(sum(a["seconds"] for a in both), abs=0.2)
    for name in ("quick", "long"):
        info = json.loads((runs[name] / "run_info.json").read_text())
        assert info["commit"] == "unknown" or len(info["commit"]) == 40
        assert set(info["versions"]) == {"nfl", "torch", "lightning", "python"}

    from nfl.report import main as report_main

    assert report_main(["--sweep", str(tmp_path / "lightning_logs" / "par"), "--out", str(tmp_path / "report")]) == 0
    with open(tmp_path / "report" / "runs.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"run=quick,seed=0", "run=long,seed=0"}
    for row in rows.values():
        p = float(row["exact_match"])
        assert float(row["exact_match_se"]) == pytest.approx((p * (1 - p) / 64) ** 0.5) and row["n_test"] == "64"
        assert int(row["n_parameters"]) > 0
    assert "| run=long | 1 |" in (tmp_path / "report" / "results.md").read_text()


def test_the_sbatch_array_script_runs_its_tasks_shard(tmp_path):
    script = ROOT / "configs" / "sweeps" / "slurm_array.sbatch"
    assert script.read_text().startswith("#!/bin/bash\n") and "#SBATCH --array=" in script.read_text()
    array = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "4",
             "SLURM_NTASKS": "1"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | array
    env |= {"PYTHONPATH": str(ROOT), "PYTHON": sys.executable, "LOGS": str(tmp_path)}
    done = subprocess.run(["bash", str(script), "configs/sweeps/cpu_grid.yaml", "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    runs = load_sweep(str(ROOT / "configs" / "sweeps" / "cpu_grid.yaml"))[1]
    assert done.stdout.startswith(f"shard 2/4: {len(runs[1::4])} of the {len(runs)} runs\n")
    assert listed_in(done.stdout) == [r.name for r in runs[1::4]]
    assert f"--trainer.logger.save_dir={tmp_path}" in done.stdout


def listed_in(out: str) -> list[str]:
    return [line.split("] ", 1)[1].split(":", 1)[0] for line in out.splitlines() if line.startswith("[")]
