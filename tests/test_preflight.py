"""The pre-flight size check, sizes no machine holds, and checkpoints from elsewhere: one line each, quickly."""

from __future__ import annotations

import logging
import resource
import subprocess
import sys
import time

import pytest
import torch

from nfl.run import preflight
from nfl.data.__main__ import main as data_main
from tests.conftest import ROOT, version_dir
from tests.test_bad_input import one_error_line

# (extra arguments to the tiny fit, words the one error line must hold): the table, and its kin
TOO_BIG = [
    (["--seed_everything=-5"], ["seed_everything=-5", "[0, 4294967295]"]),
    (["--data.init_args.num_nodes=1000000000"], ["more than", "data.init_args.num_nodes"]),
    (["--model.backbone.init_args.d_model=1000000", "--model.backbone.init_args.n_head=1"],
     ["parameters and AdamW state", "model.backbone.init_args.d_model"]),
    (["--data.init_args.batch_size=2000000000"], ["more than", "data.init_args.batch_size"]),
    (["--data.init_args.degree=10000000"], ["degree=10000000", "infeasible"]),
    (["--data.init_args.degree=10000000", "--data.init_args.num_nodes=100000000"], ["more than", "degree"]),
    (["--data.init_args.path_len=100000", "--data.init_args.num_nodes=1000000"], ["activations", "path_len"]),
    (["--data.init_args.n_test=1000000000"], ["held-out set", "data.init_args.n_test"]),
]


@pytest.mark.parametrize("args, words", TOO_BIG, ids=lambda v: " ".join(v) if isinstance(v, list) and "--" in v[0] else None)
def test_a_run_no_machine_holds_is_refused_in_one_line_within_seconds(args, words, run_cli, tiny_config, tmp_path, capsys):
    start = time.perf_counter()
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", str(tiny_config), *args)
    assert time.perf_counter() - start < 10
    message = one_error_line(done, capsys)
    assert all(w in message for w in words), message
    assert not (tmp_path / "lightning_logs").exists()


def test_the_estimate_counts_the_parameters_the_run_builds_and_is_logged(run_cli, tiny_config, caplog):
    with caplog.at_level(logging.INFO, logger="nfl.run.preflight"):
        cli = run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=1", "--trainer.limit_val_batches=0")
    lines = [r.getMessage() for r in caplog.records if r.name == "nfl.run.preflight"]
    count = sum(p.numel() for p in cli.model.parameters())
    assert len(lines) == 1 and lines[0].startswith("memory estimate: ") and f"{count:,} parameters" in lines[0]
    assert f"parameters and AdamW state {preflight.human(16 * count)}" in lines[0]  # 16 bytes a parameter


def test_a_slow_step_is_warned_about(run_cli, tiny_config, tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(preflight.FLOPS_PER_SECOND, "cpu", 1.0)  # a machine that does one FLOP a second
    with caplog.at_level(logging.WARNING, logger="nfl.run.preflight"):
        run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=1", "--trainer.limit_val_batches=0")
    assert any("a training step needs about" in r.getMessage() and "days" in r.getMessage() for r in caplog.records)


def test_the_address_space_limit_is_what_there_is():
    code = "from nfl.run.preflight import host_memory; m = host_memory(); print(m.total, m.what)"
    limit = 3 << 30

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, preexec_fn=cap,
                          env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    total, what = done.stdout.split(" ", 1)
    assert 0 < int(total) < limit and "RLIMIT_AS (3.0 GiB)" in what, done.stdout + done.stderr


def test_data_generate_refuses_a_file_the_disk_cannot_hold(tmp_path, capsys):
    def generate(num_nodes: str, n: str) -> str:
        args = ["generate", "--degree", "2", "--path-len", "5", "--num-nodes", num_nodes, "--n", n, "--seed", "0"]
        assert data_main(args + ["--out", str(tmp_path / "x.txt")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        return err

    err = generate("50", "100000000000")
    assert err.startswith("error: --n 100000000000: ") and "free on the disk" in err
    assert "lower --num-nodes" in generate("100000000000", "10")
    assert not (tmp_path / "x.txt").exists()


# --- checkpoints from elsewhere -------------------------------------------------------------------------------
def _variant(source, target, **changes) -> str:
    checkpoint = torch.load(source, weights_only=False)
    for key, value in changes.items():
        if key == "nfl_version":
            checkpoint[key] = value
        elif "." in key:
            part, field = key.split(".")
            checkpoint["hyper_parameters"][part][field] = value
        else:
            checkpoint["hyper_parameters"][key] = value
    torch.save(checkpoint, target)
    return str(target)


def test_a_checkpoint_from_elsewhere_is_one_line_saying_what_it_holds(run_cli, tiny_config, tmp_path, capsys):
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=2", "--trainer.limit_val_batches=0")
    last = version_dir(tmp_path) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["nfl_version"] == __import__("nfl").__version__
    cases = [
        ({"task.class_path": "x.Y"}, [], "holds a task of class x.Y, which cannot be imported here (no module x); "
         "the config asks for nfl.tasks.path_star.PathStar"),
        ({"backbone.class_path": "nfl.models.NoSuch"}, [], "holds a backbone of class nfl.models.NoSuch"),
        ({"future_option": 1, "nfl_version": "9.0.0"}, [], "holds model options this nfl does not have (future_option) "
         "(it was written by nfl 9.0.0"),
        ({}, ["--model.objective=nfl.objectives.Teacherless"],
         "--model.objective.class_path is 'nfl.objectives.TeacherForcing' in the checkpoint, 'nfl.objectives.Teacherless' here"),
        ({}, ["--data=nfl.data.TaskDataModule", "--data.init_args.task=nfl.tasks.TreeStar"],
         "task class is 'nfl.tasks.path_star.PathStar' in the checkpoint, 'nfl.tasks.tree_star.TreeStar' here"),
    ]
    capsys.readouterr()
    for i, (changes, args, words) in enumerate(cases):
        ckpt = _variant(last, tmp_path / f"v{i}.ckpt", **changes)
        for sub in ("fit", "test"):
            with pytest.raises(SystemExit) as done:
                run_cli(sub, "--config", str(tiny_config), "--ckpt_path", ckpt, *args)
            message = one_error_line(done, capsys)
            assert message.startswith(f"error: {ckpt} ") and words in message, message
