"""The LightningModule end to end through the real CLI: training, logging, checkpoints, resume, optimisation."""

from __future__ import annotations

import math

import pytest
import torch

from nfl.models.gpt import GPT
from nfl.objectives import Teacherless
from nfl.engine.schedules import warmup_cosine
from nfl.system import PathStarSystem
from tests.conftest import read_scalars, version_dir

PINNED = ["loss", "exact_match", "decision_acc", "chance", "edge_follow_rate", "wrong_arm_rate"]


def test_fit_logs_every_pinned_tag_on_schedule(run_cli, tiny_config, tmp_path):
    run_cli("fit", "--config", str(tiny_config), "--test_after_fit", "true")
    scalars = read_scalars(version_dir(tmp_path))
    expected = {"train/loss", "train/lr"}
    for stage in ("val", "test"):
        expected |= {f"{stage}/{k}" for k in PINNED}
        expected |= {f"{stage}/{kind}/pos_{i}" for kind in ("free", "tf") for i in range(1, 5)}
    assert expected <= set(scalars), sorted(expected - set(scalars))
    # val_check_interval: 4, really; Lightning logs at the 0-based index of the last training batch seen.
    assert [step for step, _ in scalars["val/exact_match"]] == [3, 7, 11]
    assert scalars["val/chance"][0][1] == pytest.approx(0.5)
    assert len(scalars["test/exact_match"]) == 1
    checkpoints = version_dir(tmp_path) / "checkpoints"
    assert {p.name for p in checkpoints.iterdir()} >= {"last.ckpt", "epoch=0-step=4.ckpt", "epoch=0-step=12.ckpt"}


def test_the_last_training_step_is_logged_whatever_log_every_n_steps_is(run_cli, tiny_config, tmp_path):
    for version, interval in enumerate((4, 50)):  # 6 steps: not a multiple of 4, and shorter than 50
        run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps", "6", "--trainer.log_every_n_steps", str(interval))
        scalars = read_scalars(version_dir(tmp_path, version))
        expected = [3, 5] if interval == 4 else [5]
        for tag in ("train/loss", "train/lr", "train/graphs_seen"):
            assert [s for s, _ in scalars[tag]] == expected, (interval, tag)


def test_short_training_run_lowers_the_loss(run_cli, tiny_config, tmp_path):
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps", "60", "--model.lr", "3e-3")
    losses = [v for _, v in read_scalars(version_dir(tmp_path))["train/loss"]]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2  # nats
    assert losses[0] == pytest.approx(math.log(24), rel=0.15)  # starts near uniform over the vocabulary


def test_resume_continues_the_same_step_data_and_schedule(run_cli, tiny_config, tmp_path):
    run_cli("fit", "--config", str(tiny_config))
    uninterrupted = torch.load(version_dir(tmp_path) / "checkpoints" / "last.ckpt", weights_only=False)
    midway = version_dir(tmp_path) / "checkpoints" / "epoch=0-step=8.ckpt"
    run_cli("fit", "--config", str(tiny_config), "--ckpt_path", str(midway))
    resumed_dir = version_dir(tmp_path)  # the resumed run continues the same TensorBoard run
    resumed = torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == uninterrupted["global_step"] == 12
    steps = [s for s, _ in read_scalars(resumed_dir)["train/loss"]]
    assert steps == sorted([*range(12), *range(8, 12)])  # logging restarts at the interrupted step, not 0
    for name, value in uninterrupted["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], value, msg=name)  # same data, same schedule
    first = uninterrupted["lr_schedulers"][0]["last_epoch"]
    assert resumed["lr_schedulers"][0]["last_epoch"] == first


def test_checkpoint_rebuilds_injected_backbone_and_objective(run_cli, tiny_config, tmp_path):
    run_cli("fit", "--config", str(tiny_config), "--model.objective", "nfl.objectives.Teacherless", "--trainer.max_steps", "4")
    system = PathStarSystem.load_from_checkpoint(version_dir(tmp_path) / "checkpoints" / "last.ckpt")
    assert isinstance(system.objective, Teacherless) and isinstance(system.backbone, GPT)
    assert system.backbone.d_model == 32 and system.task.path_len == 4


def make_system(**kwargs) -> PathStarSystem:
    return PathStarSystem(lambda v, t: GPT(v, t, n_layer=1, d_model=16, n_head=2), **kwargs)


def test_weight_decay_is_applied_to_matrices_only():
    system = make_system(lr=0.1, weight_decay=0.5)
    groups = system.parameter_groups()
    decayed = {id(p) for p in groups[0]["params"]}
    names = {n for n, p in system.named_parameters() if id(p) in decayed}
    assert "backbone.tok_emb.weight" in names and "backbone.blocks.0.attn.qkv.weight" in names
    assert not any(n.endswith("bias") or "ln_" in n for n in names)
    before = {n: p.detach().clone() for n, p in system.named_parameters()}
    optimizer = torch.optim.AdamW(groups, lr=0.1)
    sum((p * 0).sum() for p in system.parameters()).backward()  # zero gradient: only decay can move weights
    optimizer.step()
    for n, p in system.named_parameters():
        expected = before[n] * (1 - 0.1 * 0.5) if n in names else before[n]
        torch.testing.assert_close(p.detach(), expected, msg=n)


def test_flagged_parameters_are_not_decayed():
    system = make_system()
    flagged = system.backbone.blocks[0].attn.qkv.weight
    flagged._no_weight_decay = True
    assert all(p is not flagged for p in system.parameter_groups()[0]["params"])


def test_schedule_warms_up_then_decays_in_optimizer_steps():
    values = [warmup_cosine(s, warmup_steps=10, decay_steps=110, min_ratio=0.1) for s in range(200)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[60] == pytest.approx(0.55) and values[110] == pytest.approx(0.1) and values[199] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_logged_learning_rate_follows_the_schedule(run_cli, tiny_config, tmp_path):
    run_cli("fit", "--config", str(tiny_config), "--model.warmup_steps", "3", "--model.min_lr_ratio", "0.2")
    lrs = read_scalars(version_dir(tmp_path))["train/lr"]
    for step, lr in lrs:
        assert lr == pytest.approx(1e-3 * warmup_cosine(step, 3, 12, 0.2), rel=1e-5), step
    assert lrs[-1][1] < 0.3e-3  # it really decays within max_steps


def test_constant_schedule_warms_up_then_stays_flat(run_cli, tiny_config, tmp_path):
    run_cli("fit", "--config", str(tiny_config), "--model.warmup_steps", "3", "--model.lr_schedule", "constant")
    lrs = read_scalars(version_dir(tmp_path))["train/lr"]
    assert [round(lr / 1e-3, 6) for _, lr in lrs] == [min(1.0, round((step + 1) / 3, 6)) for step, _ in lrs]
    assert lrs[-1][0] == 11  # logged to the last step, where the cosine would be at its floor


def test_bf16_mixed_precision_keeps_metrics_in_full_precision(run_cli, tiny_config, tmp_path):
    cli = run_cli("fit", "--config", str(tiny_config), "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "8")
    bf16_loss = cli.trainer.callback_metrics["val/loss"]
    assert bf16_loss.dtype == torch.float32 and torch.isfinite(bf16_loss)
    ckpt = str(version_dir(tmp_path) / "checkpoints" / "last.ckpt")
    fp32 = run_cli("validate", "--config", str(tiny_config), "--ckpt_path", ckpt).trainer.callback_metrics
    assert bf16_loss.item() == pytest.approx(fp32["val/loss"].item(), rel=0.02)  # only bf16 forward noise


@pytest.mark.slow
def test_compiled_training_matches_eager(run_cli, tiny_config, tmp_path):
    eager = run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps", "4").trainer.callback_metrics
    compiled = run_cli(
        "fit", "--config", str(tiny_config), "--trainer.max_steps", "4", "--model.compile", "true"
    ).trainer.callback_metrics
    assert compiled["val/loss"].item() == pytest.approx(eager["val/loss"].item(), rel=1e-3)
    ckpt = torch.load(version_dir(tmp_path, 1) / "checkpoints" / "last.ckpt", weights_only=False)
    assert not any("_orig_mod" in k for k in ckpt["state_dict"])  # checkpoints stay loadable without compile


@pytest.mark.parametrize("n_train", ["null", "64"])
def test_training_sample_is_evaluated_under_its_own_tags(run_cli, tiny_config, tmp_path, n_train):
    cli = run_cli(
        "fit", "--config", str(tiny_config), "--trainer.max_steps", "4", "--data.init_args.n_train_eval", "40",
        "--data.init_args.n_train", n_train,
    )
    scalars = read_scalars(version_dir(tmp_path))
    assert {"train_eval/exact_match", "train_eval/tf/pos_1", "train_eval/decision_acc"} <= set(scalars)
    assert scalars["train_eval/loss"][-1][1] != pytest.approx(scalars["val/loss"][-1][1])  # a different set
    train_loaders = cli.datamodule.val_dataloader()
    assert len(train_loaders) == 2 and sum(len(b[1]) for b in train_loaders[1]) == 40


def test_last_ckpt_holds_the_final_step_when_max_steps_is_not_a_multiple(run_cli, tiny_config, tmp_path):
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps", "6")  # checkpoints every 4 steps
    last = torch.load(version_dir(tmp_path) / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 6
