"""A new task and a new objective, each one file with only the imports its own code needs, work through the CLI:
option validation, ``--help``, a training step, and a one-line error for a bad value (docs/architecture.md)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import yaml

from nfl.errors import UserInputError
from nfl.tasks.base import GraphTask, checked_sample
from tests.conftest import TINY_CONFIG
from tests.test_bad_input import one_error_line
from tests.test_task_matrix import has_decisions, step

# Written the way a newcomer would: postponed annotations, no `Optional` import, no validation of `length`.
TASK_MODULE = '''
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nfl.tasks import GraphTask


@dataclass(frozen=True)
class Chain(GraphTask):
    """One path of `length` nodes with its edges shuffled; the answer is the path (no node branches)."""

    length: int = 4
    num_nodes: int = 20

    @property
    def max_edges(self) -> int:
        return self.length - 1

    @property
    def max_path_len(self) -> int:
        return self.length

    @property
    def variable(self) -> bool:
        return False

    def sample(self, rng, n):
        nodes = np.stack([rng.permutation(self.num_nodes)[: self.length] for _ in range(n)])
        order = np.argsort(rng.random((n, self.length - 1)), axis=1)
        parents = np.take_along_axis(nodes[:, :-1], order, 1)
        children = np.take_along_axis(nodes[:, 1:], order, 1)
        return self.encode_prefix(parents, children, nodes[:, 0], nodes[:, -1]), self.encode_answers(nodes)

    def describe(self) -> str:
        return f"Chain(length={self.length}, num_nodes={self.num_nodes})"
'''

OBJECTIVE_MODULE = '''
from __future__ import annotations

from nfl.errors import above
from nfl.objectives import ObjectiveOutput
from nfl.objectives.teacher_forcing import TeacherForcing


class ScaledTeacherForcing(TeacherForcing):
    """Teacher forcing with its loss multiplied by `scale`."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        above(type(self), "scale", scale, 0.0, "a positive loss weight")
        self.scale = scale

    def forward(self, backbone, prefix, target):
        out = super().forward(backbone, prefix, target)
        return ObjectiveOutput(out.loss * self.scale, out.logits)
'''


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "my_task.py").write_text(textwrap.dedent(TASK_MODULE))
    (folder / "my_objective.py").write_text(textwrap.dedent(OBJECTIVE_MODULE))
    monkeypatch.syspath_prepend(str(folder))
    return folder


def write_config(tmp_path, task_args=None, objective=None) -> str:
    spec = yaml.safe_load(TINY_CONFIG)
    spec["trainer"].pop("callbacks")
    spec["model"]["backbone"]["init_args"] = {"n_layer": 1, "d_model": 16, "n_head": 2}
    spec["model"]["objective"] = objective or {"class_path": "nfl.objectives.TeacherForcing"}
    spec["data"] = {"class_path": "nfl.data.TaskDataModule",
                    "init_args": {"task": {"class_path": "my_task.Chain", "init_args": task_args or {}},
                                  "batch_size": 8, "n_test": 16}}
    path = tmp_path / "plugin.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_a_task_in_its_own_file_trains_and_leaves_decision_acc_out(plugins, run_cli, tmp_path):
    metrics = step(run_cli, write_config(tmp_path))
    assert "val/decision_acc" not in metrics and metrics["val/tf/non_decision_acc"] >= 0
    import my_task

    assert not has_decisions(my_task.Chain())


def test_a_task_in_its_own_file_gets_typed_options_in_help(plugins, run_cli, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli("fit", "--config", write_config(tmp_path), "--data.init_args.task.help", "my_task.Chain")
    out = capsys.readouterr().out
    assert "--task.length LENGTH" in out and "type: int" in out and "Unvalidated" not in out


@pytest.mark.parametrize("args, says", [
    ({"num_nodes": -4}, "data.init_args.task.init_args.num_nodes=-4: must be >= 2"),
    ({"length": -4}, "these options give max_edges=-5"),
    ({"length": 30}, "sampling a graph failed (IndexError"),
])
def test_bad_options_of_a_task_in_its_own_file_are_one_line(plugins, run_cli, tmp_path, capsys, args, says):
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", write_config(tmp_path, args))
    assert says in one_error_line(done, capsys)


def test_a_mistyped_option_of_a_task_in_its_own_file_is_refused_by_the_parser_in_one_line(plugins, run_cli, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", write_config(tmp_path, {"length": "four"}))
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(err) == 1 and err[0].startswith("error: data.task.length: Expected a <class 'int'>")


def test_an_objective_in_its_own_file_trains_and_refuses_a_bad_value_in_one_line(plugins, run_cli, tmp_path, capsys):
    objective = {"class_path": "my_objective.ScaledTeacherForcing", "init_args": {"scale": 2.0}}
    cli = run_cli("fit", "--config", write_config(tmp_path, objective=objective), "--trainer.fast_dev_run", "1",
                  "--trainer.enable_progress_bar", "false")
    assert cli.trainer.global_step == 1 and cli.model.objective.scale == 2.0
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", write_config(tmp_path), "--model.objective", "my_objective.ScaledTeacherForcing",
                "--model.objective.init_args.scale", "-1")
    assert one_error_line(done, capsys) == "error: model.objective.init_args.scale=-1.0: must be > 0.0 (a positive loss weight)."


class Wrong(GraphTask):
    """Declares sizes but samples arrays that break the contract (set per test)."""

    num_nodes = 10
    max_edges = 2
    max_path_len = 3
    variable = False

    def __init__(self, sample):
        self._sample = sample

    def sample(self, rng, n):
        return self._sample(self, n)

    def describe(self):
        return "Wrong"


@pytest.mark.parametrize("sample, says", [
    (lambda t, n: (t.encode_prefix(*_edges(n), [0] * n, [2] * n)[:, :-1], t.encode_answers(_path(n))), "shape"),
    (lambda t, n: (t.encode_prefix(*_edges(n), [0] * n, [2] * n) + 100, t.encode_answers(_path(n))), "prefix tokens"),
    (lambda t, n: (t.encode_prefix(*_edges(n), [0] * n, [2] * n), t.encode_answers(_path(n)) + 50), "answer tokens"),
    (lambda t, n: (t.encode_prefix(*_edges(n), [0] * n, [2] * n).astype(float), t.encode_answers(_path(n))), "integer"),
])
def test_the_contract_checks_the_first_batch_against_the_declared_sizes(sample, says):
    good = Wrong(lambda t, n: (t.encode_prefix(*_edges(n), [0] * n, [2] * n), t.encode_answers(_path(n))))
    assert checked_sample(good, np.random.default_rng(0), 4)[0].shape == (4, good.prefix_len)
    with pytest.raises(UserInputError, match=says):
        checked_sample(Wrong(sample), np.random.default_rng(0), 4)


def _edges(n):
    return np.tile([[0, 1]], (n, 1)), np.tile([[1, 2]], (n, 1))


def _path(n):
    return np.tile([[0, 1, 2]], (n, 1))
