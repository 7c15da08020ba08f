"""``python -m nfl.data generate``: write graphs of any task to a text file (the reference format for path-star),
or a dataset of JSON lines or parquet files with train, validation and test splits.

Examples (the reference training set, a tree-star set described by a config's ``data`` section, and a path-star
dataset that ``datasets``, pandas or plain ``json`` read)::

    python -m nfl.data generate --degree 2 --path-len 5 --num-nodes 50 --n 200000 --seed 0 \\
        --out data/deg_2_path_5_nodes_50_train_200000.txt
    python -m nfl.data generate --config configs/quickstart_tree_star.yaml --n 20000 --seed 1 --out data/test.txt
    python -m nfl.data generate --degree 2 --path-len 5 --num-nodes 50 --n 200000 --seed 0 --format parquet \\
        --n-test 2000 --out data/path_star_2_5_50

Add ``--exclude FILE`` to keep the graphs of an existing file (e.g. the test set) out of the new one.

``--format jsonl`` or ``parquet`` writes a folder: ``test`` holds the held-out set a data module with the same
``n_test`` and ``test_seed`` evaluates on (drawn from the same seeded stream), ``validation`` its first ``n_val``
graphs (what each validation pass uses), ``train`` ``--n`` graphs from ``--seed`` with every held-out graph left
out, and ``README.md`` a dataset card. The records' columns are in :mod:`nfl.tasks.records`. Only numpy (and
pyarrow, for parquet) is imported, so the command starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Optional, Sequence

import numpy as np

from nfl.errors import ArgumentParser, UserInputError
from nfl.run.preflight import host_memory, human, sampling_bytes
from nfl.tasks.base import GraphTask, check_task, checked_sample
from nfl.tasks.path_star import PathStar
from nfl.tasks.records import FORMATS, RecordWriter
from nfl.tasks.sampling import TEST
from nfl.tasks.spec import task_from_data
from nfl.tasks.text import format_text

CHUNK = 1 << 16  # graphs drawn and written at a time: the sampler's and the formatter's fast batch size
LABELS_AT_A_TIME = 1 << 27  # fewer graphs at a time where their label shuffles would hold more than this


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m nfl.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(parser_class=ArgumentParser, dest="command", required=True)
    gen = sub.add_parser("generate", help="write COUNT graphs of a task to FILE, or a dataset folder")
    gen.add_argument("--config", metavar="YAML", help="take the task from this config's data section")
    gen.add_argument("--degree", type=int, metavar="D", help="path-star: arms of the star")
    gen.add_argument("--path-len", type=int, metavar="L", help="path-star: nodes on the answer path")
    gen.add_argument("--num-nodes", type=int, metavar="N", help="path-star: labels are drawn from 0..N-1")
    gen.add_argument("--n", type=int, required=True, metavar="COUNT", help="number of graphs")
    gen.add_argument("--seed", type=int, required=True, metavar="S", help="random seed")
    gen.add_argument("--out", required=True, metavar="PATH",
                     help="output file for --format text, output folder for jsonl and parquet (parents are created)")
    gen.add_argument("--exclude", metavar="FILE", help="leave out every graph that also appears in this file")
    gen.add_argument("--format", choices=("text", *FORMATS), default="text",
                     help="text: one file in the reference format; jsonl or parquet: a folder of train, validation "
                          "and test files and a dataset card (default: text)")
    gen.add_argument("--n-test", type=int, metavar="COUNT",
                     help=f"jsonl/parquet: held-out graphs (default: the config's n_test, else {N_TEST})")
    gen.add_argument("--test-seed", type=int, metavar="S",
                     help=f"jsonl/parquet: seed of the held-out set (default: the config's test_seed, else {TEST_SEED})")
    gen.add_argument("--n-val", type=int, metavar="COUNT",
                     help="jsonl/parquet: graphs of the validation split, the first of the held-out set (default: "
                          "the config's n_val, else all of them)")
    return parser


N_TEST, TEST_SEED = 20000, 1  # TaskDataModule's defaults of n_test and test_seed


def task_of(args: argparse.Namespace) -> tuple[GraphTask, dict]:
    """The task, and the config's ``data.init_args`` (empty without ``--config``)."""
    sizes = {"degree": args.degree, "path_len": args.path_len, "num_nodes": args.num_nodes}
    if args.config:
        if any(v is not None for v in sizes.values()):
            raise UserInputError("give either --config or --degree/--path-len/--num-nodes, not both.")
        import yaml

        try:
            with open(args.config) as f:
                config = yaml.safe_load(f)
        except (OSError, UnicodeDecodeError) as err:
            raise UserInputError(f"cannot read --config {args.config}: {getattr(err, 'strerror', None) or err}.") from None
        except yaml.YAMLError as err:
            raise UserInputError(f"{args.config} is not valid YAML: {str(err).splitlines()[0]}") from None
        data = (config or {}).get("data") if isinstance(config, dict) else None
        init = data.get("init_args") if isinstance(data, dict) else None
        return task_from_data(data, args.config), dict(init) if isinstance(init, dict) else {}
    missing = [f"--{k.replace('_', '-')}" for k, v in sizes.items() if v is None]
    if missing:
        raise UserInputError(f"give --config FILE, or all of --degree, --path-len and --num-nodes (missing {', '.join(missing)}).")
    return PathStar(**sizes), {}


def text_bytes(task: GraphTask, n: int) -> int:
    """An upper bound on the size of ``n`` graphs of ``task`` as text: every token a label of the most digits,
    each followed by one separator (``,``, ``|``, ``/``, ``=`` or the newline)."""
    tokens = 2 * task.max_edges + 2 + task.target_len
    return n * tokens * (len(str(max(task.num_nodes - 1, 0))) + 1)


def fit_on_this_machine(task: GraphTask, n: int, out: str, factor: int = 1, what: Optional[str] = None) -> int:
    """Refuse output larger than the free disk under ``out``, or graphs the sampler cannot hold in memory;
    return how many graphs to draw at a time (:data:`CHUNK`, fewer for a task of very many labels)."""
    folder = os.path.dirname(os.path.abspath(out))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)  # the folders to create do not exist yet: their disk is the parent's
    size, free = factor * text_bytes(task, n), shutil.disk_usage(folder).free
    if os.path.isfile(out):
        free += os.path.getsize(out)  # replaced by the new file
    if size > free:
        raise UserInputError(
            f"{what or f'--n {n}'}: {task.describe()} graphs would take about {human(size)}, more than the {human(free)} free "
            f"on the disk of {folder}; lower --n or choose another --out."
        )
    chunk = max(1, min(CHUNK, LABELS_AT_A_TIME // max(task.num_nodes, 1)))  # the task's alone: files stay seeded
    memory, need = host_memory(), sampling_bytes(task, min(chunk, n))
    if need > memory.total:
        raise UserInputError(
            f"--num-nodes {task.num_nodes}: drawing graphs of {task.describe()} needs about {human(need)} "
            f"(each one shuffles all {task.num_nodes} labels), more than {memory.what}; lower --num-nodes."
        )
    if need > memory.free:
        print(f"warning: drawing these graphs needs about {human(need)}, more than the {human(memory.free)} free "
              "now; the command may run out of memory.", file=sys.stderr)
    return chunk


def generate(task: GraphTask, n: int, seed: int, out: str, exclude: Optional[str] = None) -> None:
    """Write ``n`` graphs of ``task`` drawn from ``seed`` to ``out``, outside the graphs of ``exclude``."""
    if os.path.isdir(out):
        raise UserInputError(f"--out {out} is a folder; give the path of the file to write.")
    if exclude and not os.path.isfile(exclude):
        raise UserInputError(f"--exclude {exclude}: no such file; give an existing data file (e.g. the test set).")
    chunk = fit_on_this_machine(task, n, out)
    checked_sample(task, np.random.default_rng([seed, 1]), 1)  # the sampler keeps the contract (own stream)
    excluded = np.unique(task.graph_keys(task.read_file(exclude)[0])) if exclude else None
    rng = np.random.default_rng(seed)

    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "wb") as f:
            for start in range(0, n, chunk):
                prefix, target = task.sample_excluding(rng, min(chunk, n - start), excluded)
                f.write(format_text(task, prefix, target))
    except OSError as err:
        raise UserInputError(f"--out {out}: cannot write it ({err.strerror}); choose a writable path.") from None


def split_sizes(args: argparse.Namespace, init: dict) -> tuple[int, int, int]:
    """``(n_test, test_seed, n_val)`` of a dataset: the flags, else the config's, else the data module's."""
    if args.format == "text":
        given = [f for f, v in (("--n-test", args.n_test), ("--test-seed", args.test_seed), ("--n-val", args.n_val))
                 if v is not None]
        if given:
            raise UserInputError(f"{given[0]} is for --format jsonl or parquet (a dataset folder with a held-out split); "
                                 "with --format text, write the test set as a file of its own and pass it to --exclude.")
        return 0, 0, 0

    def pick(flag: Optional[int], key: str, default: Optional[int], name: str, low: int) -> Optional[int]:
        value = flag if flag is not None else init.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            where = name if flag is not None else f"{key} in --config"
            raise UserInputError(f"{where} must be an integer >= {low}, got {value!r}.")
        return value

    n_test = pick(args.n_test, "n_test", N_TEST, "--n-test", 1)
    test_seed = pick(args.test_seed, "test_seed", TEST_SEED, "--test-seed", 0)
    n_val = pick(args.n_val, "n_val", None, "--n-val", 1)
    n_val = n_test if n_val is None else n_val
    if n_val > n_test:
        raise UserInputError(f"--n-val {n_val} is more than the {n_test} held-out graphs; lower it or raise --n-test.")
    return n_test, test_seed, n_val


def dataset_card(task: GraphTask, args: argparse.Namespace, argv: Sequence[str], sizes: dict[str, int]) -> str:
    import dataclasses
    import shlex

    n_test, test_seed, n_val = sizes["test"], sizes["test_seed"], sizes["validation"]
    options = ", ".join(f"{f.name}={getattr(task, f.name)!r}" for f in dataclasses.fields(task)) if (
        dataclasses.is_dataclass(task)) else task.describe()
    ext = args.format
    return f"""# {type(task).__name__} graphs: {task.describe()}

Generated by nfl (`python -m nfl.data generate`), a framework for studying where next-token prediction fails at
planning (Bachmann & Nagarajan, *The Pitfalls of Next-Token Prediction*, ICML 2024, arXiv 2403.06963).

    python -m nfl.data {shlex.join(argv)}

- task: `{type(task).__module__}.{type(task).__name__}({options})`
- splits: `train.{ext}` ({sizes["train"]} graphs, seed {args.seed}), `validation.{ext}` ({n_val} graphs),
  `test.{ext}` ({n_test} graphs, test seed {test_seed})
- `test` is the held-out set an nfl data module with `n_test: {n_test}` and `test_seed: {test_seed}` evaluates on;
  `validation` is its first {n_val} graphs, the ones each validation pass uses (a subset of `test`, not disjoint
  from it); `train` holds no graph of `test` (graphs compare by their edge set and query, whatever the order).

## Columns

| column | what it holds |
|---|---|
| `prefix` | the graph and the query in the reference text format, up to and including `=` |
| `answer` | the answer path as text, start to goal |
| `text` | the whole line: `prefix` + `answer` |
| `edges` | the graph's edges as `[parent, child]` pairs, in the order the line lists them |
| `start`, `goal` | the query's nodes |
| `path` | the answer's node ids, start to goal |

## Loading

    from datasets import load_dataset
    ds = load_dataset("{'parquet' if ext == 'parquet' else 'json'}", data_files={{"train": "train.{ext}", "validation": "validation.{ext}", "test": "test.{ext}"}})

pandas: `pandas.read_{'parquet' if ext == 'parquet' else 'json'}("test.{ext}"{'' if ext == 'parquet' else ', lines=True'})`. nfl reads the
files back: `--data.init_args.train_file train.{ext} --data.init_args.test_file test.{ext}`.
"""


def generate_dataset(task: GraphTask, args: argparse.Namespace, argv: Sequence[str], n_test: int, test_seed: int,
                     n_val: int) -> dict[str, int]:
    """Write the train, validation and test files and the dataset card into the folder ``args.out``."""
    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserInputError(f"--out {out} is a file; --format {args.format} writes a folder (train, validation and "
                             "test files and README.md), so give a folder path.")
    if args.exclude and not os.path.isfile(args.exclude):
        raise UserInputError(f"--exclude {args.exclude}: no such file; give an existing data file.")
    chunk = fit_on_this_machine(task, args.n + n_test + n_val, os.path.join(out, "x"), RECORD_BYTES_PER_TEXT_BYTE,
                                f"--n {args.n} with --n-test {n_test}")
    held_out = checked_sample(task, np.random.default_rng([test_seed, TEST]), n_test)  # as the data module draws it
    keys = [task.graph_keys(held_out[0])]
    if args.exclude:
        keys.append(task.graph_keys(task.read_file(args.exclude)[0]))
    excluded = np.unique(np.concatenate(keys))
    rng = np.random.default_rng(args.seed)
    ext = args.format
    try:
        os.makedirs(out, exist_ok=True)
        for split, graphs in (("test", held_out), ("validation", (held_out[0][:n_val], held_out[1][:n_val]))):
            writer = RecordWriter(task, os.path.join(out, f"{split}.{ext}"), ext)
            for start in range(0, len(graphs[0]), chunk):
                writer.write(graphs[0][start : start + chunk], graphs[1][start : start + chunk])
            writer.close()
        writer = RecordWriter(task, os.path.join(out, f"train.{ext}"), ext)
        for start in range(0, args.n, chunk):
            writer.write(*task.sample_excluding(rng, min(chunk, args.n - start), excluded))
        writer.close()
        sizes = {"train": args.n, "validation": n_val, "test": n_test, "test_seed": test_seed}
        with open(os.path.join(out, "README.md"), "w") as f:
            f.write(dataset_card(task, args, argv, sizes))
    except OSError as err:
        raise UserInputError(f"--out {out}: cannot write it ({err.strerror}); choose a writable folder.") from None
    return sizes


RECORD_BYTES_PER_TEXT_BYTE = 4  # a record repeats the line three times over, plus its integers


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.n < 1:
            raise UserInputError(f"--n must be >= 1, got {args.n}.")
        if args.seed < 0:
            raise UserInputError(f"--seed must be >= 0, got {args.seed}.")
        task, init = task_of(args)
        check_task(task)
        n_test, test_seed, n_val = split_sizes(args, init)
        if args.format == "text":
            generate(task, args.n, args.seed, args.out, args.exclude)
        else:
            generate_dataset(task, args, argv, n_test, test_seed, n_val)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.format == "text":
        print(f"wrote {args.n} graphs of {task.describe()} to {args.out}")
    else:
        print(f"wrote {args.n} training, {n_val} validation and {n_test} test graphs of {task.describe()} to "
              f"{args.out}/ ({args.format}, with a dataset card README.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
