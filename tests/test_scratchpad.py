"""Scratchpads (the tasks' ``scratchpad`` option): what the model writes, files unchanged, metrics read the path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nfl.tasks.codec import NumeralCodec
from nfl.data.datamodule import TaskDataModule, _to_batch
from nfl.errors import UserInputError
from nfl.models import GPT
from nfl.objectives import (
    BeliefState, MaskedDiffusion, MultiTokenHeads, NextLat, Registers, TeacherForcing, Teacherless,
)
from nfl.system import GraphSystem
from nfl.tasks import DagSearch, InfeasibleGraphError, PathStar, TreeStar
from nfl.tasks.base import IGNORE_INDEX
from nfl.tasks.scratchpad import write_scratchpads
from nfl.tasks.scratchpad_metrics import ScratchpadMatch
from tests.conftest import SPEC_LINE, SPEC_PREFIX, SPEC_TARGET, TaskMetrics, read_scalars, version_dir
from tests.test_bad_input import one_error_line

PAD = "goal_to_start"
SEP = 54  # N + 4 for the fixed-size G(2,5,50)
SPEC_WRITTEN = [12, 16, 6, 34, 32, SEP, 32, 34, 6, 16, 12]  # the goal's arm backwards, the separator, the path


def spec_task(**kw) -> PathStar:
    return PathStar(2, 5, 50, scratchpad=PAD, **kw)


# --- what the model writes ------------------------------------------------------------------------------
def test_the_spec_graph_is_written_as_its_arm_backwards_a_separator_and_the_path(tmp_path):
    task = spec_task()
    assert (task.sep, task.vocab_size, task.answer_len, task.target_len) == (SEP, 55, 5, 11)
    prefix, target = task.parse_lines([SPEC_LINE])
    assert prefix.tolist() == [SPEC_PREFIX] and target.tolist() == [SPEC_TARGET]  # files hold the plain answer
    assert write_scratchpads(task, target).tolist() == [SPEC_WRITTEN]
    # ... and so do the data module's batches read from a file
    path = tmp_path / "test.txt"
    path.write_text(SPEC_LINE + "\n")
    data = TaskDataModule(task, batch_size=1, test_file=str(path), exclude_test=False)
    data.setup("test")
    batch_prefix, batch_target = next(iter(data.test_dataloader()))
    assert batch_prefix.tolist() == [SPEC_PREFIX] and batch_target.tolist() == [SPEC_WRITTEN]
    assert task.answer_part(batch_target).tolist() == [SPEC_TARGET]


def test_variable_length_answers_get_scratchpads_of_their_own_length():
    task = PathStar(2, num_nodes=20, arm_lengths=(2, 4), scratchpad=PAD)  # end 24, pad 25, separator 26
    assert (task.end, task.sep, task.vocab_size, task.target_len) == (24, 26, 27, 10)
    E, I = task.end, IGNORE_INDEX
    target = np.array([[1, 2, 3, 4, E], [5, 6, E, I, I], [7, 8, 9, E, I]])
    assert write_scratchpads(task, target).tolist() == [
        [4, 3, 2, 1, 26, 1, 2, 3, 4, E],
        [6, 5, 26, 5, 6, E, I, I, I, I],
        [9, 8, 7, 26, 7, 8, 9, E, I, I],
    ]
    written = torch.from_numpy(write_scratchpads(task, target))
    assert task.answer_part(written).tolist() == target.tolist()
    nodes, lengths, ok = task.parse_generated(written)  # what the model would write if it were right
    assert lengths.tolist() == [4, 2, 3] and ok.all()
    assert nodes.tolist() == [[1, 2, 3, 4], [5, 6, -1, -1], [7, 8, 9, -1]]


@pytest.mark.parametrize(
    "task",
    [spec_task(), PathStar(3, num_nodes=30, arm_lengths=(2, 5), goal="any", query_first=True, scratchpad=PAD),
     TreeStar(scratchpad=PAD), DagSearch(scratchpad=PAD)],
    ids=["path_star", "path_star_varied", "tree_star", "dag_search"],
)
def test_files_and_graphs_are_those_of_the_plain_task(task, tmp_path):
    plain = type(task)(**{**{f: getattr(task, f) for f in task.__dataclass_fields__}, "scratchpad": None})
    graphs = task.sample(np.random.default_rng(3), 50)
    for a, b in zip(graphs, plain.sample(np.random.default_rng(3), 50)):
        np.testing.assert_array_equal(a, b)  # the same graphs for a seed
    task.write_file(tmp_path / "pad.txt", *graphs)
    plain.write_file(tmp_path / "plain.txt", *graphs)
    assert (tmp_path / "pad.txt").read_bytes() == (tmp_path / "plain.txt").read_bytes()
    for a, b in zip(task.read_file(tmp_path / "plain.txt"), graphs):
        np.testing.assert_array_equal(a, b)  # a plain file reads back as the same forward answers
    written = write_scratchpads(task, graphs[1])
    assert written.shape == (50, task.target_len)
    np.testing.assert_array_equal(task.answer_part(torch.from_numpy(written)).numpy(), graphs[1])
    # the scratchpad is the answer's nodes from the goal back to the start
    n = task.answer_lengths(graphs[1])
    for row, k in zip(range(50), n):
        assert written[row, :k].tolist() == graphs[1][row, :k][::-1].tolist() and written[row, k] == task.sep


def test_without_a_scratchpad_nothing_changes():
    plain = PathStar(2, 5, 50)
    assert (plain.sep, plain.vocab_size, plain.answer_len, plain.target_len, plain.seq_len) == (None, 54, 5, 5, 31)
    varied = PathStar(2, num_nodes=20, arm_lengths=(2, 4))
    assert (varied.sep, varied.vocab_size, varied.target_len) == (None, 26, 5)
    target = torch.tensor([SPEC_TARGET])
    assert plain.answer_part(target) is target
    assert "scratchpad" not in plain.describe() and "scratchpad=goal_to_start" in spec_task().describe()


# --- metrics on hand-made predictions -------------------------------------------------------------------
GENERATED = [
    [12, 16, 6, 34, 32, SEP, 32, 3, 19, 47, 28],  # right scratchpad, then the wrong arm (a valid path)
    [12, 16, 6, 3, 32, SEP, 32, 34, 6, 16, 12],  # wrong scratchpad, then the right path
    [12, 16, 6, 34, 32, 32, 34, 6, 16, 12, 12],  # no separator: no path written
    [12, 16, 6, 34, 32, 32, SEP, 32, 34, 6, 16],  # a separator one late: the path runs out of budget
]


def evaluate(task, generated, tf_pred):
    """The system's evaluation path for numeral backbones, on hand-made tokens."""
    prefix = torch.tensor([SPEC_PREFIX] * len(generated))
    target = torch.from_numpy(write_scratchpads(task, np.array([SPEC_TARGET] * len(generated))))
    codec = NumeralCodec(task)
    free, free_len, well_formed = codec.generated_nodes(torch.tensor(generated))
    tf = codec.teacher_forced_nodes(torch.tensor(tf_pred), codec.encode(prefix, target), target)
    metric = TaskMetrics(task)
    metric.update(prefix, target, free, tf, torch.tensor(1.0), well_formed, free_len)
    pad = ScratchpadMatch(task)
    pad.update(prefix, target, torch.tensor(generated))
    return {**{k: v.item() for k, v in metric.compute().items()}, **{k: v.item() for k, v in pad.compute().items()}}


def test_answer_metrics_read_the_path_after_the_separator_and_the_scratchpad_is_scored_apart():
    task = spec_task()
    tf_pred = [SPEC_WRITTEN] * 4
    got = evaluate(task, GENERATED, tf_pred)
    assert got["scratchpad/exact_match"] == pytest.approx(1 / 4)  # row 0 only
    assert got["exact_match"] == pytest.approx(1 / 4)  # row 1 only
    expect_free = [3 / 4, 2 / 4, 2 / 4, 2 / 4, 1 / 4]  # rows 0, 1, 3 start right; row 3 lacks its goal
    assert [got[f"free/pos_{i}"] for i in range(1, 6)] == pytest.approx(expect_free)
    assert "free/pos_6" not in got and "tf/pos_6" not in got  # positions are the path's, not the scratchpad's
    assert got["decision_acc"] == pytest.approx(2 / 4)
    assert got["valid_path_rate"] == pytest.approx(2 / 4) and got["reaches_goal_rate"] == pytest.approx(1 / 4)
    assert got["wrong_arm_rate"] == pytest.approx(1 / 4)
    assert got["edge_follow_rate"] == pytest.approx(11 / 12)  # row 2 wrote no path, so no pairs of it count
    assert all(got[f"tf/pos_{i}"] == 1.0 for i in range(1, 6))


def test_teacher_forced_metrics_read_the_data_columns_of_the_path():
    task = spec_task()
    right_pad_wrong_path = [SPEC_WRITTEN[:6] + [32, 3, 19, 47, 28]] * 4
    got = evaluate(task, GENERATED, right_pad_wrong_path)
    assert [got[f"tf/pos_{i}"] for i in range(1, 6)] == [1.0, 0.0, 0.0, 0.0, 0.0]
    wrong_pad_right_path = [[0] * 6 + SPEC_TARGET] * 4
    got = evaluate(task, GENERATED, wrong_pad_right_path)
    assert got["tf/pos_ge3"] == 1.0 and got["tf/decision_acc"] == 1.0


def test_any_shortest_path_read_backwards_is_a_right_scratchpad():
    task = DagSearch(distribution="naive", num_nodes=10, max_vertices=4, max_edges=4, max_path_len=3, scratchpad=PAD)
    sep, end = task.sep, task.end
    # edges 0->1, 0->2, 1->3, 2->3: two shortest paths 0,1,3 and 0,2,3; the data wrote 0,1,3
    edges = np.array([[0, 0, 1, 2]]), np.array([[1, 2, 3, 3]])
    prefix = torch.from_numpy(task.encode_prefix(*edges, np.array([0]), np.array([3])))
    target = torch.from_numpy(write_scratchpads(task, task.encode_answers(np.array([[0, 1, 3]]), np.array([3]))))
    assert target.tolist() == [[3, 1, 0, sep, 0, 1, 3, end]]

    def score(generated):
        metric = ScratchpadMatch(task)
        metric.update(prefix, target, torch.tensor([generated]))
        return metric.compute()["scratchpad/exact_match"].item()

    assert score([3, 1, 0, sep, 0, 1, 3, end]) == 1.0
    assert score([3, 2, 0, sep, 0, 2, 3, end]) == 1.0  # the other shortest path, backwards
    assert score([3, 2, 1, sep, 0, 1, 3, end]) == 0.0  # 1 -> 2 is no edge
    assert score([3, 1, sep, 0, 1, 3, end, end]) == 0.0  # stops short of the start
    assert score([3, 1, 0, 0, 1, 3, end, end]) == 0.0  # no separator


# --- objectives and the system --------------------------------------------------------------------------
OBJECTIVES = [TeacherForcing, Teacherless, lambda: MultiTokenHeads(k=2), NextLat, MaskedDiffusion, BeliefState, Registers]


@pytest.mark.parametrize("make", OBJECTIVES, ids=["tf", "teacherless", "mtp", "nextlat", "mdm", "bst", "registers"])
def test_every_objective_trains_and_evaluates_on_what_the_model_writes(make):
    task = PathStar(2, num_nodes=20, arm_lengths=(2, 4), scratchpad=PAD)
    system = GraphSystem(lambda v, t: GPT(v, t, n_layer=1, d_model=16, n_head=2), objective=make(), task=task)
    assert system.backbone.max_seq_len >= task.prefix_len + task.target_len - 1
    batch = _to_batch(*task.sample(np.random.default_rng(0), 8), False, task)
    out = system.objective(system.backbone, *batch)
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    system.eval()
    system._evaluate(batch, "val")
    values = {**system.metrics["val"].compute(), **system.scratchpad_metrics["val"].compute()}
    assert {"exact_match", "scratchpad/exact_match", "free/pos_4"} <= set(values) and "free/pos_5" not in values


def test_teacher_forcing_loss_is_next_token_cross_entropy_over_scratchpad_separator_and_path():
    task = spec_task()
    backbone = GPT(task.vocab_size, task.seq_len, n_layer=1, d_model=16, n_head=2)
    objective = TeacherForcing()
    objective.bind(task, backbone)
    prefix, target = _to_batch(*task.sample(np.random.default_rng(1), 3), False, task)
    loss = objective(backbone, prefix, target).loss
    total, count = 0.0, 0
    for b in range(3):  # the slow way: one forward pass per predicted token, on the true tokens before it
        seq = prefix[b].tolist()
        for token in target[b].tolist():
            logits = backbone.unembed(backbone(torch.tensor([seq])))[0, -1]
            total += torch.nn.functional.cross_entropy(logits[None], torch.tensor([token])).item()
            count += 1
            seq.append(token)
    assert count == 3 * 11
    assert loss.item() == pytest.approx(total / count, rel=1e-5)


def test_a_bad_scratchpad_a_reversed_one_and_a_tokenizer_backbone_are_refused_in_one_line(hf_folders):
    with pytest.raises(InfeasibleGraphError, match="scratchpad must be null or goal_to_start"):
        PathStar(scratchpad="bfs")
    with pytest.raises(UserInputError, match=r"TaskDataModule\.reverse=true: .*set reverse: false, or scratchpad"):
        TaskDataModule(spec_task(), reverse=True)
    with pytest.raises(UserInputError, match=r"GraphSystem\.reverse=true"):
        GraphSystem(lambda v, t: GPT(v, t, n_layer=1, d_model=16, n_head=2), task=spec_task(), reverse=True)
    from nfl.models.hf import HFCausalLM

    with pytest.raises(UserInputError, match="separator token of its own, which HFCausalLM's tokenizer does not have"):
        GraphSystem(lambda v, t: HFCausalLM(v, t, str(hf_folders["gpt2"])), task=spec_task())


# --- through the CLI ------------------------------------------------------------------------------------
def test_a_cli_run_logs_the_scratchpad_tag_beside_the_usual_ones(run_cli, tiny_config, tmp_path, capsys):
    common = ["--config", str(tiny_config), "--data.init_args.scratchpad", PAD, "--data.init_args.n_test", "32"]
    run_cli("fit", *common, "--trainer.max_steps", "4", "--data.init_args.n_train_eval", "32")
    logged = set(read_scalars(version_dir(tmp_path)))
    usual = {"val/loss", "val/exact_match", "val/free/pos_4", "val/tf/pos_4", "val/tf/pos_ge3", "val/decision_acc"}
    assert usual | {"val/scratchpad/exact_match", "train_eval/scratchpad/exact_match"} <= logged
    assert "val/free/pos_5" not in logged  # G(2,4,20): four path positions, whatever the scratchpad adds
    with pytest.raises(SystemExit) as done:
        run_cli("fit", *common, "--data.init_args.reverse", "true")
    assert "data.init_args.reverse=true" in one_error_line(done, capsys)
