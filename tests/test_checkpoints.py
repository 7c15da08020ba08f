"""Checkpoints and run folders: a resumed fit logs like one run and continues its folder; one last.ckpt a run;
default_root_dir holds everything."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import subprocess

import pytest
import torch
import yaml

import nfl.run.checkpoints

from tests.conftest import ROOT, assert_same_series, logged, version_dir

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
    assert [p.name for p in (tmp_path / "cut" / "lightning_logs").iterdir()] == ["version_0"]  # one TensorBoard run


def test_a_run_shorter_than_the_checkpoint_interval_leaves_one_last_ckpt(run_cli, tiny_config, tmp_path):
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=3")
    checkpoints = version_dir(tmp_path) / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["global_step"] == 3


def test_default_root_dir_holds_the_events_and_checkpoints(run_cli, tiny_config, tmp_path):
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=4", "--trainer.default_root_dir=out")
    run = version_dir(tmp_path / "out")
    assert list(run.glob("events.out.tfevents.*")) and (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file() and not (tmp_path / "lightning_logs").exists()


class DiskFillsUp(io.FileIO):
    """A file on a disk that fills up halfway through the first write."""

    def write(self, data) -> int:
        super().write(memoryview(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_save_that_fails_halfway_keeps_the_previous_checkpoint_and_says_why(run_cli, tiny_config, tmp_path, monkeypatch):
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=4")
    checkpoints = version_dir(tmp_path) / "checkpoints"
    before = sorted(p.name for p in checkpoints.iterdir())
    monkeypatch.setattr(nfl.run.checkpoints, "open", lambda fd, mode: DiskFillsUp(fd, "w"), raising=False)
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=8", "--ckpt_path", str(checkpoints / "last.ckpt"))
    message = done.value.code
    assert message.startswith("error: Cannot save checkpoint") and "\n" not in message
    assert f"in {checkpoints}: no space left on device" in message
    assert sorted(p.name for p in checkpoints.iterdir()) == before  # no half-written file, no temporary left
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["global_step"] == 4


KEEP_TWO = ["--trainer.callbacks.save_top_k=2", "--trainer.callbacks.monitor=step", "--trainer.callbacks.mode=max"]


def test_every_periodic_checkpoint_is_kept_or_the_newest_k(run_cli, tiny_config, tmp_path, monkeypatch):
    run_cli("fit", "--config", str(tiny_config))  # the tiny config keeps them all, as the CPU configs do
    every = {"epoch=0-step=4.ckpt", "epoch=0-step=8.ckpt", "epoch=0-step=12.ckpt", "last.ckpt"}
    assert {p.name for p in (version_dir(tmp_path) / "checkpoints").iterdir()} == every
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=8", *KEEP_TWO)  # as the GPU configs do
    checkpoints = version_dir(tmp_path, 1) / "checkpoints"
    assert {p.name for p in checkpoints.iterdir()} == {"epoch=0-step=4.ckpt", "epoch=0-step=8.ckpt", "last.ckpt"}
    # The disk fills up at the next periodic save: the oldest is deleted only after a new one is written.
    monkeypatch.setattr(nfl.run.checkpoints, "open", lambda fd, mode: DiskFillsUp(fd, "w"), raising=False)
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", str(tiny_config), *KEEP_TWO, "--ckpt_path", str(checkpoints / "last.ckpt"))
    assert done.value.code.startswith("error: Cannot save checkpoint")
    assert {p.name for p in checkpoints.iterdir()} == {"epoch=0-step=4.ckpt", "epoch=0-step=8.ckpt", "last.ckpt"}
    for path in checkpoints.iterdir():
        assert torch.load(path, weights_only=False)["global_step"] in (4, 8)


def test_the_gpu_sized_configs_keep_the_newest_few_checkpoints_and_the_cpu_ones_all():
    for path in [*ROOT.glob("configs/*.yaml"), *ROOT.glob("configs/*/*.yaml")]:
        callbacks = (yaml.safe_load(path.read_text()).get("trainer") or {}).get("callbacks") or []
        for args in [c["init_args"] for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]:
            if path.name.startswith("quickstart"):
                assert args["save_top_k"] == -1, path
            else:
                assert args["save_top_k"] > 1 and args["monitor"] == "step" and args["mode"] == "max", path


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 2 MiB tmpfs (needs root and a kernel that lets this process mount one)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.parametrize("fault, cause", [("full", "no space left on device"), ("read-only", "read-only file system")])
def test_on_a_full_or_read_only_disk_the_run_ends_in_one_line_and_the_checkpoint_survives(
    fault, cause, run_cli, tiny_config, tmp_path, tiny_filesystem
):
    on_disk = ["--trainer.callbacks.dirpath", str(tiny_filesystem)]
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=4", *on_disk)
    last = tiny_filesystem / "last.ckpt"
    if fault == "full":
        with open(tiny_filesystem / "filler", "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(tiny_filesystem)], check=True)
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=8", *on_disk, "--ckpt_path", str(last))
    message = done.value.code
    # A folder that is read-only from the start is refused before training; a disk that fills up mid-run ends
    # the run at the failed save. Either way: one line naming the folder and the cause.
    assert message.startswith("error: ") and "\n" not in message
    assert str(tiny_filesystem) in message and cause in message.lower()
    assert not list(tiny_filesystem.glob(".*.tmp"))
    assert torch.load(last, weights_only=False)["global_step"] == 4


def test_a_ckpt_path_that_does_not_load_is_named_in_one_line(run_cli, tiny_config, tmp_path):
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=4")
    good = version_dir(tmp_path) / "checkpoints" / "last.ckpt"
    truncated, garbage = tmp_path / "truncated.ckpt", tmp_path / "garbage.ckpt"
    truncated.write_bytes(good.read_bytes()[:5000])
    garbage.write_text("not a checkpoint")
    for path, words in ((truncated, "does not load"), (garbage, "does not load"), (tmp_path / "missing.ckpt", "does not exist")):
        for sub in ("fit", "test"):
            with pytest.raises(SystemExit) as done:
                run_cli(sub, "--config", str(tiny_config), "--ckpt_path", str(path))
            assert done.value.code.startswith(f"error: Checkpoint {path} {words}") and "\n" not in done.value.code
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]  # nothing started


def test_a_non_finite_loss_stops_the_run_and_keeps_the_good_checkpoints(run_cli, tiny_config, tmp_path):
    # lr 100 diverges after the step-4 checkpoint (at step 7 on this seed), so there is good work to keep.
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", str(tiny_config), "--model.lr=100", "--trainer.max_steps=40")
    message = done.value.code
    assert message.startswith("error: The training loss became ") and "\n" not in message and "--model.lr" in message
    step = int(message.split(" at step ")[1].split()[0])
    assert 4 < step < 40
    saved = list((version_dir(tmp_path) / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in saved} == {"epoch=0-step=4.ckpt", "last.ckpt"}
    for path in saved:
        checkpoint = torch.load(path, weights_only=False)
        assert checkpoint["global_step"] <= step
        assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values()), path.name


def test_model_options_that_contradict_the_checkpoint_are_refused_in_one_line(run_cli, tiny_config, tmp_path):
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=4")
    ckpt = str(version_dir(tmp_path) / "checkpoints" / "last.ckpt")
    for sub, args, named in (
        ("fit", ["--model.backbone.init_args.d_model=64", "--model.lr=0.01"],
         ["--model.backbone.init_args.d_model is 32 in the checkpoint, 64 here", "--model.lr is 0.001"]),
        ("fit", ["--model.objective=nfl.objectives.Teacherless"], ["--model.objective.class_path"]),
        ("test", ["--data.init_args.num_nodes=30"], ["--data.init_args.num_nodes is 20", "is for G(degree=2, path_len=4, num_nodes=20)"]),
        ("predict", ["--data.init_args.reverse=true"], ["--data.init_args.reverse is False in the checkpoint, True here"]),
    ):
        with pytest.raises(SystemExit) as done:
            run_cli(sub, "--config", str(tiny_config), "--ckpt_path", ckpt, *args)
        message = done.value.code
        assert message.startswith(f"error: {ckpt} does not match this command line") and "\n" not in message
        assert all(words in message for words in named), message
    # Options that only steer training from here on (or the optimizer, outside fit) may change.
    run_cli("test", "--config", str(tiny_config), "--ckpt_path", ckpt, "--model.lr=0.01")
    cli = run_cli("fit", "--config", str(tiny_config), "--ckpt_path", ckpt, "--trainer.max_steps=5", "--model.warmup_steps=2")
    assert cli.trainer.global_step == 5


def test_a_checkpoint_from_before_graph_tasks_still_evaluates_and_resumes(run_cli, tiny_config, tmp_path):
    """Checkpoints written when the system took degree/path_len/num_nodes (no task) are read as path-star's."""
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=4")
    ckpt = version_dir(tmp_path) / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    hparams = state["hyper_parameters"]
    sizes = hparams.pop("task")["init_args"]
    hparams.update(degree=sizes["degree"], path_len=sizes["path_len"], num_nodes=sizes["num_nodes"])
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    tested = run_cli("test", "--config", str(tiny_config), "--ckpt_path", str(old)).trainer.callback_metrics
    assert "test/exact_match" in tested
    resumed = run_cli("fit", "--config", str(tiny_config), "--ckpt_path", str(old), "--trainer.max_steps=6")
    assert resumed.trainer.global_step == 6
    with pytest.raises(SystemExit) as done:
        run_cli("test", "--config", str(tiny_config), "--ckpt_path", str(old), "--data.init_args.num_nodes=30")
    assert "--data.init_args.num_nodes is 20 in the checkpoint, 30 here" in done.value.code


def test_checkpoints_get_the_usual_file_permissions(run_cli, tiny_config, tmp_path):
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=4")
    umask = os.umask(0)
    os.umask(umask)
    last = version_dir(tmp_path) / "checkpoints" / "last.ckpt"
    assert last.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temporary file's private 0600


def test_a_checkpoint_of_another_task_names_the_task_class_only(run_cli, tiny_config, tmp_path):
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=4")
    ckpt = str(version_dir(tmp_path) / "checkpoints" / "last.ckpt")
    other = tmp_path / "tree.yaml"
    other.write_text("data:\n  class_path: nfl.data.TaskDataModule\n  init_args:\n    task: {class_path: nfl.tasks.TreeStar, "
                     "init_args: {num_nodes: 20}}\n    batch_size: 32\n    n_test: 64\n")
    with pytest.raises(SystemExit) as done:
        run_cli("test", "--config", str(tiny_config), "--config", str(other), "--ckpt_path", ckpt)
    message = done.value.code
    assert "--data task class is 'nfl.tasks.path_star.PathStar' in the checkpoint" in message
    assert "branching" not in message and "\n" not in message
