"""Samples to solve: train/graphs_seen counts every training graph and survives resuming; StopWhenSolved stops a
solved run and keeps its count in checkpoints; run_info.json records the run; the report's step, graphs, SE and
median-over-seeds rules."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nfl.lab.report.logs import NOT_SOLVED, binomial_se, samples_to_solve, solve_cell, value_at
from tests.conftest import read_scalars, version_dir

STOP = ["--trainer.callbacks+=nfl.callbacks.StopWhenSolved"]


def test_graphs_seen_counts_repeats_of_a_finite_set_and_continues_after_resume(run_cli, tiny_config, tmp_path):
    # 64 training graphs in batches of 32: two batches an epoch, so 6 steps go over the set three times.
    common = ["--config", str(tiny_config), "--data.init_args.n_train", "64"]
    cli = run_cli("fit", *common, "--trainer.max_steps", "6")
    seen = read_scalars(version_dir(tmp_path))["train/graphs_seen"]
    assert seen == [(step, 32.0 * (step + 1)) for step in range(6)]
    last = version_dir(tmp_path) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["graphs_seen"] == 6 * 32

    info = json.loads((version_dir(tmp_path) / "run_info.json").read_text())
    unique = {p.data_ptr(): p.numel() for p in cli.model.state_dict().values()}  # a shared tensor once
    assert info["n_parameters"] == sum(unique.values())  # this model's state is its parameters, no buffers
    assert info["n_test_graphs"] == 64 and info["world_size"] == 1
    assert info["commit"] == "unknown" or len(info["commit"]) == 40
    assert set(info["versions"]) == {"nfl", "torch", "lightning", "python"}

    run_cli("fit", *common, "--trainer.max_steps", "8", "--ckpt_path", str(last))
    assert read_scalars(version_dir(tmp_path))["train/graphs_seen"][-2:] == [(6, 7 * 32.0), (7, 8 * 32.0)]

    # A checkpoint from before nfl counted graphs: the count starts from the steps already taken.
    old = torch.load(last, weights_only=False)
    del old["graphs_seen"]
    torch.save(old, last.parent / "old.ckpt")  # in the run's folder, so that the run continues there
    run_cli("fit", *common, "--trainer.max_steps", "9", "--ckpt_path", str(last.parent / "old.ckpt"))
    assert read_scalars(version_dir(tmp_path))["train/graphs_seen"][-1] == (8, 9 * 32.0)


def test_stop_when_solved_stops_after_two_validations_and_a_resumed_run_keeps_counting(run_cli, tiny_config, tmp_path):
    # Threshold 0: every validation (every 4 steps) counts, so the run stops at the second one, step 8.
    common = ["--config", str(tiny_config), *STOP, "--trainer.callbacks.threshold=0", "--test_after_fit=true"]
    cli = run_cli("fit", *common, "--trainer.max_steps", "40")
    assert cli.trainer.global_step == 8
    scalars = read_scalars(version_dir(tmp_path))
    assert [s for s, _ in scalars["val/exact_match"]] == [3, 7] and "test/exact_match" in scalars
    last = torch.load(version_dir(tmp_path) / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 8
    state = next(v for k, v in last["callbacks"].items() if k.startswith("StopWhenSolved"))
    # ModelCheckpoint wrote step 8 just before that step's validation, so it holds the first validation's count.
    assert state == {"in_a_row": 1}

    # Resumed with more steps: the saved count goes on (stop at the next validation, step 12), neither starting
    # again at 0 (step 16) nor stopping before a validation has been seen (step 8).
    last = version_dir(tmp_path) / "checkpoints" / "last.ckpt"
    cli = run_cli("fit", *common, "--trainer.max_steps", "40", "--ckpt_path", str(last))
    assert cli.trainer.global_step == 12

    # Out of reach, even with patience 1: the run trains to max_steps.
    cli = run_cli("fit", "--config", str(tiny_config), *STOP, "--trainer.callbacks.threshold=1.01",
                  "--trainer.callbacks.patience=1", "--trainer.max_steps", "8",
                  "--trainer.logger.save_dir", "unreached")
    assert cli.trainer.global_step == 8


def test_stop_when_solved_refuses_bad_options_in_one_line(run_cli, tiny_config):
    for option, words in (("--trainer.callbacks.patience=0", "StopWhenSolved.patience=0: must be >= 1"),
                          ("--trainer.callbacks.monitor=val/exact", "StopWhenSolved.monitor=val/exact: not logged")):
        with pytest.raises(SystemExit) as done:
            run_cli("fit", "--config", str(tiny_config), *STOP, option, "--trainer.max_steps", "4")
        message = done.value.code
        assert message.startswith(f"error: {words}") and "\n" not in message, message
    assert "val/exact_match" in message  # the tags it could have named


def test_samples_to_solve_reads_the_first_validation_at_95_percent():
    scalars = {
        "val/exact_match": [(99, 0.5), (199, 0.96), (299, 0.94), (399, 0.99)],
        "train/graphs_seen": [(s, 256.0 * (s + 1)) for s in range(19, 400, 20)],
    }
    assert samples_to_solve(scalars) == (200, 200 * 256)
    assert samples_to_solve(scalars, threshold=0.97) == (400, 400 * 256)
    assert samples_to_solve(scalars, threshold=0.999) == (NOT_SOLVED, NOT_SOLVED)
    assert math.isnan(samples_to_solve({"val/exact_match": [(9, 1.0)]})[1])  # a run from before graphs were counted


def test_graphs_seen_between_logged_steps_grows_linearly():
    series = [(s, 32.0 * (s + 1)) for s in (9, 19, 29)]  # log_every_n_steps=10
    for step in (0, 4, 9, 14, 29, 35):
        assert value_at(series, step) == pytest.approx(32.0 * (step + 1))


def test_the_median_over_seeds_is_not_solved_when_most_seeds_never_solve():
    assert solve_cell([300, 500, 400]) == "400"
    assert solve_cell([300, NOT_SOLVED, 400]) == "400 (2 of 3 solved)"
    assert solve_cell([300, NOT_SOLVED, NOT_SOLVED]) == "not solved (1 of 3 solved)"
    assert solve_cell([300, NOT_SOLVED]) == "not solved (1 of 2 solved)"
    assert solve_cell([NOT_SOLVED]) == "not solved (0 of 1 solved)"


def test_binomial_standard_error():
    for p, n in ((0.5, 2000), (0.9, 64), (1.0, 100)):
        assert binomial_se(p, n) == pytest.approx((p * (1 - p) / n) ** 0.5)
    assert math.isnan(binomial_se(0.5, None))
