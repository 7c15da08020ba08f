"""Ctrl-C keeps the work: fit writes last.ckpt at the interrupted step, and a sweep waits for that save."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.conftest import ROOT

LONG = ["--trainer.max_steps=100000", "--trainer.val_check_interval=100000", "--trainer.limit_val_batches=0"]


def wait_for(predicate, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while not predicate():
        assert time.time() < end, "timed out"
        time.sleep(0.2)


def steps_logged(folder: Path) -> bool:
    return any(folder.glob("**/events.out.tfevents.*")) and any(p.stat().st_size > 2000 for p in folder.glob("**/events.*"))


def test_ctrl_c_during_fit_saves_last_ckpt_and_resumes(tiny_config, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-m", "nfl", "fit", "--config", str(tiny_config), *LONG],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    wait_for(lambda: steps_logged(tmp_path / "lightning_logs") or child.poll() is not None)
    child.send_signal(signal.SIGINT)
    output = child.communicate(timeout=120)[0]
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert last.is_file(), output[-2000:]
    step = torch.load(last, weights_only=False)["global_step"]
    assert step > 0 and f"Interrupted at step {step}" in output
    resumed = subprocess.run(
        [sys.executable, "-m", "nfl", "fit", "--config", str(tiny_config), "--trainer.max_steps", str(step + 2),
         "--ckpt_path", str(last)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    assert torch.load(final, weights_only=False)["global_step"] == step + 2


def test_ctrl_c_on_a_sweep_lets_the_run_save_then_resumes_it(tiny_config, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    args = ", ".join(f'"{a}"' for a in LONG)
    sweep.write_text(f"name: s\nbase: {tiny_config}\nargs: [{args}]\ngrid: {{objective: {{tf: {{}}}}}}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-m", "nfl.sweep", "--config", str(sweep)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    run = tmp_path / "lightning_logs" / "s" / "objective=tf,seed=0"
    wait_for(lambda: steps_logged(run) or child.poll() is not None)
    child.send_signal(signal.SIGINT)
    output = child.communicate(timeout=180)[0]
    assert child.returncode == 130 and "Run the sweep again to resume" in output
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] > 0
    assert "Interrupted at step" in (run / "stdout.log").read_text()
