"""Every task trains and evaluates with every objective on every backbone: one real CLI step each, tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from nfl.tasks.spec import task_from_spec
from tests.conftest import TINY_CONFIG

TASKS = {
    "path_star_varied": {"class_path": "nfl.tasks.PathStar",
                         "init_args": {"degree": 2, "arm_lengths": [2, 4], "goal": "any", "num_nodes": 20}},
    "path_star_query_first": {"class_path": "nfl.tasks.PathStar",
                              "init_args": {"degree": 2, "path_len": 4, "num_nodes": 20, "query_first": True}},
    "tree_star": {"class_path": "nfl.tasks.TreeStar", "init_args": {"degree": 2, "depth": 2, "segment": 1, "num_nodes": 20}},
    "dag_search": {"class_path": "nfl.tasks.DagSearch",
                   "init_args": {"max_vertices": 10, "max_edges": 12, "max_lookahead": 2, "max_path_len": 5, "num_nodes": 20}},
    "maze": {"class_path": "nfl.tasks.Maze", "init_args": {"rows": 3, "cols": 3}},
}
OBJECTIVES = {
    "tf": "nfl.objectives.TeacherForcing",
    "teacherless": "nfl.objectives.Teacherless",
    "mtp": {"class_path": "nfl.objectives.MultiTokenHeads", "init_args": {"k": 2, "speculative": True}},
}
PLANNING = {  # objectives beyond one causal pass; on Mamba in tests/test_planning_objectives.py
    "bst": "nfl.objectives.BeliefState",
    "nextlat": "nfl.objectives.NextLat",
    "mdm": "nfl.objectives.MaskedDiffusion",
}
BACKBONES = {
    "gpt": {"class_path": "nfl.models.GPT", "init_args": {"n_layer": 1, "d_model": 16, "n_head": 2}},
    "mamba": {"class_path": "nfl.models.Mamba", "init_args": {"n_layer": 1, "d_model": 16}},
}


def config(tmp_path, task, objective, backbone, reverse=False):
    spec = yaml.safe_load(TINY_CONFIG)
    spec["trainer"].pop("callbacks")
    spec["model"]["objective"] = objective if isinstance(objective, dict) else {"class_path": objective}
    spec["model"]["backbone"] = backbone
    spec["data"] = {"class_path": "nfl.data.TaskDataModule",
                    "init_args": {"task": task, "reverse": reverse, "batch_size": 8, "n_test": 16}}
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def step(run_cli, path):
    cli = run_cli("fit", "--config", path, "--trainer.fast_dev_run", "1", "--trainer.enable_progress_bar", "false")
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 1
    for tag in ("val/exact_match", "val/free/pos_1", "val/valid_path_rate", "val/reaches_goal_rate",
                "val/edge_follow_rate", "val/loss"):
        assert tag in metrics, tag
    # tf/* only where the objective has a teacher-forced pass (teacherless has none)
    assert ("val/tf/pos_1" in metrics) == cli.model.objective.teacher_forced
    return metrics


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("task", list(TASKS))
def test_one_step_of_every_task_objective_and_backbone(task, objective, backbone, run_cli, tmp_path):
    step(run_cli, config(tmp_path, TASKS[task], OBJECTIVES[objective], BACKBONES[backbone]))


@pytest.mark.parametrize("objective", list(PLANNING))
@pytest.mark.parametrize("task", list(TASKS))
def test_one_step_of_every_task_with_the_planning_objectives(task, objective, run_cli, tmp_path):
    metrics = step(run_cli, config(tmp_path, TASKS[task], PLANNING[objective], BACKBONES["gpt"]))
    if objective == "mdm":
        assert "val/mdm/denoise_pos_1" in metrics and "val/mdm/steps" in metrics


@pytest.mark.parametrize("task", list(TASKS))
def test_reversed_answers_on_every_task(task, run_cli, tmp_path):
    metrics = step(run_cli, config(tmp_path, TASKS[task], OBJECTIVES["tf"], BACKBONES["gpt"], reverse=True))
    assert "val/tf/non_decision_acc" in metrics
    # decision_acc is logged where some answer position follows a branching node; a task without any leaves it out
    assert ("val/decision_acc" in metrics) == has_decisions(task_from_spec(TASKS[task]))


def has_decisions(task, n=64) -> bool:
    """Whether some answer node's predecessor has more than one way on (outgoing edges; on an undirected task
    its edges but the one the path came in by), in ``n`` sampled graphs."""
    prefix, target = task.sample(np.random.default_rng(0), n)
    parents, children = task.edges_of(prefix)
    for row in range(n):
        path = [v for v in target[row] if 0 <= v < task.num_nodes]
        for i, v in enumerate(path[:-1]):
            ways = (parents[row] == v).sum() + ((children[row] == v).sum() - (i > 0) if task.undirected else 0)
            if ways > 1:
                return True
    return False


@pytest.mark.parametrize("task", list(TASKS))
def test_pretrained_models_read_every_task_through_their_tokenizer(task, run_cli, tmp_path, hf_folders):
    backbone = {"class_path": "nfl.models.HFCausalLM", "init_args": {"model": str(hf_folders["gpt_neox"])}}
    step(run_cli, config(tmp_path, TASKS[task], OBJECTIVES["tf"], backbone))
