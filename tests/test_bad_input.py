"""Bad input gets one clear line naming what to change, never a traceback, and before any work is done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nfl.tasks import DataFileError, PathStar
from nfl.tasks.text import first_step_off_the_graph
from tests.conftest import ROOT, SPEC_LINE, version_dir

MAMBA = [
    "--model.backbone=nfl.models.Mamba", "--model.backbone.init_args.n_layer=1", "--model.backbone.init_args.d_model=16"
]
MTP = ["--model.objective=nfl.objectives.MultiTokenHeads"]

# (extra arguments to the tiny fit, the option the one error line must name)
BAD_VALUES = [
    (["--data.init_args.batch_size=0"], "data.init_args.batch_size=0"),
    (["--data.init_args.batch_size=-4"], "data.init_args.batch_size=-4"),
    (["--data.init_args.eval_batch_size=0"], "data.init_args.eval_batch_size=0"),
    (["--data.init_args.n_test=0"], "data.init_args.n_test=0"),
    (["--data.init_args.n_train=8"], "data.init_args.n_train=8"),  # less than one batch of 32
    (["--data.init_args.n_val=0"], "data.init_args.n_val=0"),
    (["--data.init_args.n_val=-5"], "data.init_args.n_val=-5"),
    (["--data.init_args.n_val=100"], "data.init_args.n_val=100"),  # more than n_test=64
    (["--data.init_args.n_train_eval=-1"], "data.init_args.n_train_eval=-1"),
    (["--data.init_args.seed=-1"], "data.init_args.seed=-1"),
    (["--data.init_args.test_seed=-2"], "data.init_args.test_seed=-2"),
    (["--data.init_args.num_workers=-1"], "data.init_args.num_workers=-1"),
    (["--data.init_args.degree=0"], "data.init_args.degree=0"),
    (["--data.init_args.path_len=1"], "data.init_args.path_len=1"),
    (["--data.init_args.train_file=TRAIN", "--data.init_args.n_train=64"], "data.init_args.n_train=64"),
    (["--data.init_args.train_file=missing.txt"], "data.init_args.train_file=missing.txt"),
    (["--model.lr=0"], "model.lr=0.0"),
    (["--model.lr=-1e-3"], "model.lr=-0.001"),
    (["--model.weight_decay=-0.1"], "model.weight_decay=-0.1"),
    (["--model.betas=[1.5,0.9]"], "model.betas[0]=1.5"),
    (["--model.betas=[0.9,1.0]"], "model.betas[1]=1.0"),
    (["--model.warmup_steps=-3"], "model.warmup_steps=-3"),
    (["--model.warmup_steps=5", "--model.decay_steps=2"], "model.decay_steps=2"),
    (["--model.min_lr_ratio=2"], "model.min_lr_ratio=2.0"),
    (["--model.lr_schedule=constant", "--model.decay_steps=20"], "model.decay_steps=20"),
    (["--model.backbone.init_args.pos_init_std=0"], "model.backbone.init_args.pos_init_std=0.0"),
    (["--model.min_lr_ratio=-0.5"], "model.min_lr_ratio=-0.5"),
    (["--model.backbone.init_args.n_head=3"], "model.backbone.init_args.n_head=3"),  # d_model is 32
    (["--model.backbone.init_args.n_head=0"], "model.backbone.init_args.n_head=0"),
    (["--model.backbone.init_args.d_model=0"], "model.backbone.init_args.d_model=0"),
    (["--model.backbone.init_args.n_layer=-1"], "model.backbone.init_args.n_layer=-1"),
    (["--model.backbone.init_args.dropout=1.5"], "model.backbone.init_args.dropout=1.5"),
    ([*MAMBA, "--model.backbone.init_args.d_state=0"], "model.backbone.init_args.d_state=0"),
    ([*MAMBA, "--model.backbone.init_args.d_conv=0"], "model.backbone.init_args.d_conv=0"),
    ([*MAMBA, "--model.backbone.init_args.expand=0"], "model.backbone.init_args.expand=0"),
    ([*MAMBA, "--model.backbone.init_args.dt_rank=0"], "model.backbone.init_args.dt_rank=0"),
    ([*MAMBA, "--model.backbone.init_args.dt_min=0"], "model.backbone.init_args.dt_min=0.0"),
    ([*MAMBA, "--model.backbone.init_args.dt_max=0.0001"], "model.backbone.init_args.dt_max=0.0001"),
    ([*MTP, "--model.objective.init_args.k=0"], "model.objective.init_args.k=0"),
    ([*MTP, "--model.objective.init_args.k=9"], "model.objective.init_args.k=9"),  # path_len is 4
    (["--model.objective=nfl.objectives.BeliefState", "--model.objective.init_args.min_gap=1"],
     "model.objective.init_args.min_gap=1"),
    (["--model.objective=nfl.objectives.NextLat", "--model.objective.init_args.horizon=0"],
     "model.objective.init_args.horizon=0"),
    (["--model.objective=nfl.objectives.MaskedDiffusion", "--model.objective.init_args.steps=0"],
     "model.objective.init_args.steps=0"),
    (["--model.objective=nfl.objectives.MaskedDiffusion", "--model.objective.init_args.noise=-0.5"],
     "model.objective.init_args.noise=-0.5"),
    ([*MAMBA, "--model.objective=nfl.objectives.MaskedDiffusion"], "MaskedDiffusion needs bidirectional attention"),
    ([*MTP, "--model.objective.init_args.head_weights=[1]"], "model.objective.init_args.head_weights=[1.0]"),
    ([*MTP, "--model.objective.init_args.head_weights=[-1,1]"], "model.objective.init_args.head_weights[0]=-1.0"),
    (["--trainer.max_steps=0"], "trainer.max_steps=0"),
    (["--trainer.max_steps=-1"], "trainer.max_steps=-1"),  # the training stream is endless
    (["--trainer.val_check_interval=0"], "trainer.val_check_interval=0"),
    (["--trainer.val_check_interval=0.5"], "trainer.val_check_interval=0.5"),
    (["--trainer.check_val_every_n_epoch=1"], "trainer.check_val_every_n_epoch=1"),
    (["--trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0"),
    (["--trainer.limit_val_batches=-1"], "limit_val_batches"),  # Lightning's own check, in one line
    (["--optimizer=torch.optim.SGD", "--optimizer.lr=0.1"], "optimizer=torch.optim.SGD"),
    (["--lr_scheduler=torch.optim.lr_scheduler.StepLR", "--lr_scheduler.step_size=1"], "lr_scheduler="),
    (["--trainer.default_root_dir=A_FILE/logs"], "trainer.default_root_dir"),
    (["--trainer.logger.init_args.save_dir=A_FILE/logs"], "trainer.logger.init_args.save_dir"),
]


def one_error_line(done: pytest.ExceptionInfo, capsys: pytest.CaptureFixture) -> str:
    """The message of a refused run, checked to be one ``error:`` line with no traceback anywhere."""
    message = done.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err
    assert "error:" not in printed.err  # the SystemExit message is the only one
    return message


@pytest.mark.parametrize("args, option", BAD_VALUES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_bad_value_is_refused_in_one_line_before_any_work(args, option, run_cli, tiny_config, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("a file where a folder should be\n")
    train = tmp_path / "train.txt"
    task = PathStar(2, 4, 20)
    task.write_file(train, *task.sample(np.random.default_rng(0), 100))
    args = [a.replace("TRAIN", str(train)).replace("A_FILE", str(a_file)) for a in args]
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", str(tiny_config), *args)
    message = one_error_line(done, capsys)
    assert option.replace("A_FILE", str(a_file)) in message
    assert not (tmp_path / "lightning_logs").exists()  # refused before any log, data or step


def test_the_real_program_prints_one_line_and_fails(tiny_config, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "nfl", "fit", "--config", str(tiny_config), "--model.backbone.init_args.n_head=3"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        "error: model.backbone.init_args.n_head=3: must divide d_model=32 (each head gets d_model / n_head channels); "
        "use one of [1, 2, 4, 8, 16, 32], or change d_model."
    ]


def test_a_yaml_syntax_error_names_the_config_file(run_cli, tiny_config, tmp_path, capsys):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("model:\n  lr: [1e-3,\ndata: {}\n")
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", str(tiny_config), "--config", str(overlay))
    message = one_error_line(done, capsys)
    assert message.startswith(f"error: {overlay}:") and "YAML syntax error" in message and "line 2" in message


def test_help_names_the_program_as_it_is_run(run_cli, capsys):
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--help")
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m nfl [options] fit")


# --- data files ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path, message",
    [
        ("32,3,6,16,12", r"32,3,6,16,12 is not a path of the graph: 3 -> 6 is not one of its edges"),
        ("32,34,6,34,12", r"6 -> 34 is not one of its edges"),  # starts and ends right, goes backwards
        ("32,34,6,12,12", r"6 -> 12 is not one of its edges"),  # skips a node
        ("34,6,16,12,32", r"from the query's start"),
    ],
)
def test_an_answer_that_is_not_a_path_of_its_graph_is_refused_with_file_and_line(path, message):
    task = PathStar(2, 5, 50)
    bad = SPEC_LINE.split("=")[0] + "=" + path
    with pytest.raises(DataFileError, match=rf"^data.txt:3: .*{message}"):
        task.parse_lines([SPEC_LINE, "", bad, SPEC_LINE], source="data.txt")


def test_path_checking_stays_fast_on_a_reference_sized_file():
    task = PathStar(2, 5, 50)
    prefix, target = task.sample(np.random.default_rng(0), 200_000)
    assert first_step_off_the_graph(task, prefix, target) == (None, None)
    target[150_000, 2] = target[150_001, 2]  # another graph's node
    start = time.perf_counter()
    assert first_step_off_the_graph(task, prefix, target) == (150_000, 1)
    assert time.perf_counter() - start < 2  # about 0.15 s on one core


def test_a_bad_training_file_is_refused_by_the_cli(run_cli, tiny_config, tmp_path, capsys):
    task = PathStar(2, 4, 20)
    lines = task.format_lines(*task.sample(np.random.default_rng(0), 40))
    head, path = lines[1].split("=")
    nodes = path.split(",")
    lines[1] = head + "=" + ",".join([nodes[0], nodes[2], nodes[1], nodes[3]])  # right ends, wrong order
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", str(tiny_config), "--data.init_args.train_file", str(tmp_path / "train.txt"))
    assert "train.txt:2: the path" in one_error_line(done, capsys)


def test_training_on_the_held_out_set_blames_the_exclusion_not_n_train(run_cli, tiny_config, tmp_path, capsys):
    task = PathStar(2, 4, 20)
    task.write_file(tmp_path / "graphs.txt", *task.sample(np.random.default_rng(0), 64))
    same = str(tmp_path / "graphs.txt")
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", str(tiny_config), f"--data.init_args.train_file={same}",
                f"--data.init_args.test_file={same}")
    message = one_error_line(done, capsys)
    assert "64 of its 64 graphs are in the held-out set" in message and "exclude_test" in message
    assert "n_train" not in message


# --- the other programs ------------------------------------------------------------------------------------
def test_data_generate_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    from nfl.data.__main__ import main

    base = ["generate", "--degree", "2", "--path-len", "4", "--num-nodes", "20", "--n", "10", "--seed", "0"]
    for extra, words in (
        (["--out", str(tmp_path / "x.txt"), "--exclude", str(tmp_path / "missing.txt")], "--exclude"),
        (["--out", str(tmp_path)], "is a folder"),
        (["--out", str(tmp_path / "x.txt"), "--seed", "-1"], "--seed"),
    ):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and words in err and "Traceback" not in err
    assert not (tmp_path / "x.txt").exists()


def test_report_refuses_runs_that_never_validated(run_cli, tiny_config, tmp_path, capsys):
    from nfl.report import main

    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
            "--test_after_fit=true")
    run = version_dir(tmp_path)
    (run / "sweep_run.json").write_text(json.dumps(
        {"sweep": "s", "run": "r0", "settings": {"a": 1}, "seed": 0, "wall_seconds": 1.0}
    ))
    capsys.readouterr()
    assert main(["--sweep", str(run.parent), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: runs without validation metrics: r0;") and err.count("\n") == 1
    assert not (tmp_path / "report").exists()


def test_bench_refuses_zero_steps(tiny_config, capsys):
    from nfl import bench

    assert bench.main(["--config", str(tiny_config), "--steps", "0"]) == 2
    assert capsys.readouterr().err == "error: --steps must be >= 1, got 0.\n"


# --- pretrained models offline -------------------------------------------------------------------------------
@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "hub-unreachable"])
def test_an_unavailable_hub_model_fails_fast_in_one_line(offline, run_cli, tiny_config, monkeypatch, capsys):
    hub = pytest.importorskip("huggingface_hub")
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # nothing listens on the discard port: the one request fails at once, deterministically
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", str(tiny_config), "--model.backbone=nfl.models.HFCausalLM",
                "--model.backbone.init_args.model=nfl-tests/no-such-model")
    assert time.perf_counter() - start < 15
    message = one_error_line(done, capsys)
    assert message.startswith("error: model.backbone.init_args.model=nfl-tests/no-such-model: is neither a local "
                              "folder nor in the local Hugging Face cache")
    if not hub.constants.HF_HUB_OFFLINE:
        assert ("HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached") in message


@pytest.mark.parametrize(
    "module, argv, names",
    [
        ("nfl.data.__main__", ["generate", "--degree", "two"], "--degree"),
        ("nfl.data.__main__", ["sample"], "sample"),
        ("nfl.lab.sweep.runner", ["--config", "x.yaml", "--parallel", "many"], "--parallel"),
        ("nfl.lab.report.sweep", ["--sweep", "a", "--runs", "b"], "--runs"),
        ("nfl.lab.bench", ["--config", "x.yaml", "--steps", "1.5"], "--steps"),
    ],
)
def test_a_flag_that_does_not_parse_is_one_error_line(module, argv, names, capsys):
    import importlib

    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and names in err[0], err
    assert "--help" in err[0]
