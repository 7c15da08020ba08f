"""Datasets others can load: ``python -m nfl.data generate --format jsonl|parquet`` writes train, validation and
test files whose columns match the text format, with the data module's held-out split, and nfl reads them back."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from nfl.data import TaskDataModule
from nfl.data.__main__ import main as data_main
from nfl.errors import UserInputError
from nfl.tasks import DagSearch, PathStar, TreeStar
from nfl.tasks.records import read_records
from tests.conftest import ROOT

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

SIZES = ["--degree", "2", "--path-len", "4", "--num-nodes", "20"]


def _generate(out, fmt, *extra, n=300, n_test=40, n_val=10):
    argv = ["generate", *SIZES, "--n", str(n), "--seed", "3", "--format", fmt, "--n-test", str(n_test),
            "--n-val", str(n_val), "--out", str(out), *extra]
    assert data_main(argv) == 0
    return out


def _records(path):
    if str(path).endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in open(path)]


def _slow_columns(line: str) -> dict:
    """The structured columns of a text line, by plain string splitting (the grammar u,v|u,v|.../s,g=p1,...)."""
    graph, answer = line.split("=")
    edges_text, query = graph.split("/")
    edges = [[int(x) for x in pair.split(",")] for pair in edges_text.split("|")]
    start, goal = (int(x) for x in query.split(","))
    return {"prefix": graph + "=", "answer": answer, "edges": edges, "start": start, "goal": goal,
            "path": [int(x) for x in answer.split(",")]}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_the_splits_are_the_data_modules_and_the_columns_match_the_text(fmt, tmp_path, capsys):
    out = _generate(tmp_path / "ds", fmt)
    assert sorted(p.name for p in out.iterdir()) == sorted([f"train.{fmt}", f"validation.{fmt}", f"test.{fmt}", "README.md"])
    task = PathStar(degree=2, path_len=4, num_nodes=20)
    data = TaskDataModule(task=task, batch_size=8, n_test=40, test_seed=1)
    data.setup("fit")
    test = task.read_file(str(out / f"test.{fmt}"))
    assert np.array_equal(test[0], data.test_graphs[0]) and np.array_equal(test[1], data.test_graphs[1])
    validation = task.read_file(str(out / f"validation.{fmt}"))
    assert np.array_equal(validation[0], test[0][:10]) and len(validation[0]) == 10
    train = task.read_file(str(out / f"train.{fmt}"))
    assert len(train[0]) == 300
    assert not np.isin(task.graph_keys(train[0]), task.graph_keys(test[0])).any()
    # The train split is what --format text writes with the test set passed to --exclude.
    text_test, text_train = tmp_path / "test.txt", tmp_path / "train.txt"
    task.write_file(text_test, *test)
    assert data_main(["generate", *SIZES, "--n", "300", "--seed", "3", "--exclude", str(text_test),
                      "--out", str(text_train)]) == 0
    lines = text_train.read_text().splitlines()
    records = _records(out / f"train.{fmt}")
    assert [r["text"] for r in records] == lines
    for record in records[:50]:
        assert set(record) == {"prefix", "answer", "text", "edges", "start", "goal", "path"}
        assert {k: record[k] for k in _slow_columns(record["text"])} == _slow_columns(record["text"])
    card = (out / "README.md").read_text()
    assert "--format " + fmt in card and "n_test: 40" in card and "PathStar(degree=2, path_len=4, num_nodes=20" in card
    assert "wrote 300 training, 10 validation and 40 test graphs" in capsys.readouterr().out


@pytest.mark.parametrize("task", [TreeStar(), DagSearch(), PathStar(degree=3, path_len=5, num_nodes=40, query_first=True)],
                         ids=["tree_star", "dag_search", "query_first"])
def test_every_task_writes_records_nfl_reads_back(task, tmp_path):
    from nfl.tasks.records import RecordWriter

    prefix, target = task.sample(np.random.default_rng(0), 64)
    for fmt in ("jsonl", "parquet"):
        path = str(tmp_path / f"g.{fmt}")
        writer = RecordWriter(task, path, fmt)
        writer.write(prefix[:40], target[:40])
        writer.write(prefix[40:], target[40:])
        writer.close()
        back = task.read_file(path)
        assert np.array_equal(back[0], prefix) and np.array_equal(back[1], target)
        for record, row in zip(_records(path), range(64)):
            parents, children = task.edges_of(prefix[row : row + 1])
            edges = [[int(p), int(c)] for p, c in zip(parents[0], children[0]) if 0 <= p < task.num_nodes]
            assert record["edges"] == edges and record["path"] == [int(x) for x in target[row] if 0 <= x < task.num_nodes]
            assert record["text"] == record["prefix"] + record["answer"]


def test_hugging_face_datasets_loads_both_formats(tmp_path):
    datasets = pytest.importorskip("datasets")
    for fmt, builder in (("parquet", "parquet"), ("jsonl", "json")):
        out = _generate(tmp_path / fmt, fmt)
        files = {split: str(out / f"{split}.{fmt}") for split in ("train", "validation", "test")}
        ds = datasets.load_dataset(builder, data_files=files, cache_dir=str(tmp_path / "cache"))
        assert {k: len(v) for k, v in ds.items()} == {"train": 300, "validation": 10, "test": 40}
        row = ds["test"][0]
        assert row["text"] == row["prefix"] + row["answer"] and row["path"][0] == row["start"]


def test_a_run_trains_and_tests_on_the_files(run_cli, tiny_config, tmp_path):
    out = _generate(tmp_path / "ds", "parquet", n=256, n_test=64, n_val=64)
    _generate(tmp_path / "js", "jsonl", n=256, n_test=64, n_val=64)
    cli = run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps=4", "--data.init_args.n_test=64",
                  f"--data.init_args.train_file={out / 'train.parquet'}",
                  f"--data.init_args.test_file={tmp_path / 'js' / 'test.jsonl'}")
    assert cli.trainer.global_step == 4 and len(cli.datamodule.train_graphs[0]) == 256


def test_bad_record_files_are_one_line(tmp_path):
    task = PathStar(degree=2, path_len=4, num_nodes=20)
    cases = {
        "bad.jsonl": ('{"text": "1,2|2,3"\n', "bad.jsonl:1: not a JSON object"),
        "notext.jsonl": ('{"line": 1}\n', "notext.jsonl:1: no 'text' field"),
        "garbage.parquet": ("not parquet at all", "garbage.parquet: not a parquet file"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(UserInputError) as err:
            task.read_file(str(tmp_path / name))
        assert message in str(err.value) and "\n" not in str(err.value)
    pq.write_table(pa.table({"line": ["1,2"]}), tmp_path / "nocol.parquet")
    with pytest.raises(UserInputError, match="no 'text' column"):
        task.read_file(str(tmp_path / "nocol.parquet"))
    # A file of another task's size: the text format's own error, naming the file.
    other = _generate(tmp_path / "big", "parquet")
    with pytest.raises(UserInputError) as err:
        PathStar(degree=3, path_len=4, num_nodes=20).read_file(str(other / "test.parquet"))
    assert "test.parquet" in str(err.value)
    with pytest.raises(UserInputError):
        read_records(task, str(tmp_path / "missing.parquet"))


@pytest.mark.parametrize("extra, message", [
    (["--format", "csv"], "argument --format: invalid choice: 'csv'"),
    (["--n-test", "5"], "--n-test is for --format jsonl or parquet"),
    (["--format", "parquet", "--n-test", "5", "--n-val", "6"], "--n-val 6 is more than the 5 held-out graphs"),
    (["--format", "parquet", "--n-test", "0"], "--n-test must be an integer >= 1"),
])
def test_bad_dataset_flags_are_one_line(extra, message, tmp_path, capsys):
    argv = ["generate", *SIZES, "--n", "10", "--seed", "0", "--out", str(tmp_path / "o"), *extra]
    try:
        code = data_main(argv)
    except SystemExit as done:
        code = done.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_a_dataset_is_not_written_over_a_file_or_into_an_unwritable_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    base = ["generate", *SIZES, "--n", "10", "--seed", "0", "--format", "jsonl", "--n-test", "5"]
    assert data_main([*base, "--out", str(tmp_path / "file")]) == 2
    assert "is a file; --format jsonl writes a folder" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if subprocess.run(["test", "-w", str(locked)]).returncode == 0:
        pytest.skip("running as a user who can write anywhere")
    assert data_main([*base, "--out", str(locked / "ds")]) == 2
    assert "cannot write it" in capsys.readouterr().err


def test_the_help_names_the_formats():
    help_text = subprocess.run([sys.executable, "-m", "nfl.data", "generate", "--help"], cwd=ROOT,
                               capture_output=True, text=True).stdout
    assert "{text,jsonl,parquet}" in help_text and "--n-test" in help_text


def test_the_held_out_defaults_are_the_data_modules():
    import inspect

    from nfl.data.__main__ import N_TEST, TEST_SEED

    params = inspect.signature(TaskDataModule.__init__).parameters
    assert (params["n_test"].default, params["test_seed"].default) == (N_TEST, TEST_SEED)
