"""Ctrl-C and SIGTERM keep the work: fit writes last.ckpt at the interrupted step, and a sweep waits for that save."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, assert_same_series, logged, read_scalars

LONG = ["--trainer.max_steps=100000", "--trainer.val_check_interval=100000", "--trainer.limit_val_batches=0"]


def wait_for(predicate, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while not predicate():
        assert time.time() < end, "timed out"
        time.sleep(0.2)


def steps_logged(folder: Path) -> bool:
    """Whether a training step's loss is in the folder's event files (not just the summaries a run writes at its
    start, before the signal handlers are in place)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for path in folder.glob("**/events.out.tfevents.*"):
        try:
            if any(v.tag == "train/loss" for event in EventFileLoader(str(path)).Load() for v in event.summary.value):
                return True
        except Exception:  # noqa: BLE001 - a record still being written: look again later
            continue
    return False


def interrupt_fit(tmp_path: Path, signum: int, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Start ``python -m nfl fit ARGS``, send ``signum`` once steps are logged; the finished process and last.ckpt."""
    child = subprocess.Popen(
        [sys.executable, "-m", "nfl", "fit", *args], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    wait_for(lambda: steps_logged(tmp_path / "lightning_logs") or child.poll() is not None)
    child.send_signal(signum)
    try:
        output = child.communicate(timeout=120)[0]
    finally:
        if child.poll() is None:  # it did not stop: do not leave it training
            child.kill()
    return subprocess.CompletedProcess(child.args, child.returncode, output), tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


def test_ctrl_c_during_fit_saves_last_ckpt_and_the_resumed_run_logs_like_one_run(tiny_config, tmp_path, run_cli):
    # Validation every 3 steps and a schedule that does not depend on max_steps: the resumed run must log
    # exactly what one uninterrupted run of the same length logs, wherever the signal lands.
    common = ["--config", str(tiny_config), "--trainer.val_check_interval=3", "--model.decay_steps=1000"]
    done, last = interrupt_fit(tmp_path, signal.SIGINT, *common, "--trainer.max_steps=100000")
    assert done.returncode == 130, done.stdout[-2000:]
    step = torch.load(last, weights_only=False)["global_step"]
    assert step > 0 and f"Interrupted at step {step}" in done.stdout
    cli = run_cli("fit", *common, "--trainer.max_steps", str(step + 4), "--ckpt_path", str(last))
    assert cli.trainer.global_step == step + 4
    # The resumed run continues the same TensorBoard run and replaces its last.ckpt.
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]
    assert torch.load(last, weights_only=False)["global_step"] == step + 4
    run_cli("fit", *common, "--trainer.max_steps", str(step + 4), "--trainer.logger.save_dir=whole")
    assert_same_series(logged(tmp_path), logged(tmp_path / "whole"))


def test_sigterm_during_fit_saves_last_ckpt_and_exits_143(tiny_config, tmp_path):
    done, last = interrupt_fit(tmp_path, signal.SIGTERM, "--config", str(tiny_config), *LONG)
    assert done.returncode == 143, done.stdout[-2000:]
    step = torch.load(last, weights_only=False)["global_step"]
    assert step > 0 and f"Interrupted at step {step}" in done.stdout


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_a_sweep_lets_the_run_save_then_stops(signum, code, tiny_config, tmp_path):
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
    child.send_signal(signum)
    output = child.communicate(timeout=180)[0]
    assert child.returncode == code and "Run the sweep again to resume" in output, output[-2000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] > 0
    assert "Interrupted at step" in (run / "stdout.log").read_text()  # the training process saved, then exited


def test_slurm_requeue_signal_saves_a_resumable_checkpoint_and_requeues(tiny_config, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"  # stands in for SLURM's: records how Lightning called it
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env = {**os.environ, **slurm, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "nfl", "fit", "--config", str(tiny_config), "--model.decay_steps=1000"]
    child = subprocess.Popen([*args, *LONG], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: steps_logged(tmp_path / "lightning_logs") or child.poll() is not None)
    child.send_signal(signal.SIGUSR1)
    try:
        output = child.communicate(timeout=120)[0]
    finally:
        if child.poll() is None:  # it did not stop: do not leave it training
            child.kill()
    assert child.returncode == 128 + signal.SIGUSR1, output[-2000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    hpc = torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=False)  # what a requeued job restores
    last = torch.load(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    step = hpc["global_step"]
    assert step > 0 and last["global_step"] == step and hpc["loops"] == last["loops"]
    # The requeued job runs the same command; Lightning finds the hpc checkpoint by itself.
    requeued = subprocess.run([*args, "--trainer.max_steps", str(step + 2)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    assert requeued.returncode == 0 and "hpc_ckpt_1.ckpt" in requeued.stderr, requeued.stderr[-2000:]
    steps = [s for s, _ in read_scalars(str(tmp_path / "lightning_logs" / "version_1"))["train/loss"]]
    assert steps == [step, step + 1]  # continues where it stopped, no step logged twice or skipped
