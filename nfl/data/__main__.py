"""``python -m nfl.data generate``: write graphs of any task to a text file (the reference format for path-star).

Examples (the reference training set, and a tree-star set described by a config's ``data`` section)::

    python -m nfl.data generate --degree 2 --path-len 5 --num-nodes 50 --n 200000 --seed 0 \\
        --out data/deg_2_path_5_nodes_50_train_200000.txt
    python -m nfl.data generate --config configs/quickstart_tree_star.yaml --n 20000 --seed 1 --out data/test.txt

Add ``--exclude FILE`` to keep the graphs of an existing file (e.g. the test set) out of the new one. Only
numpy is imported, so the command starts in a fraction of a second.
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
from nfl.tasks.spec import task_from_data
from nfl.tasks.text import format_text

CHUNK = 1 << 16  # graphs drawn and written at a time: the sampler's and the formatter's fast batch size
LABELS_AT_A_TIME = 1 << 27  # fewer graphs at a time where their label shuffles would hold more than this


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m nfl.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(parser_class=ArgumentParser, dest="command", required=True)
    gen = sub.add_parser("generate", help="write COUNT graphs of a task to FILE")
    gen.add_argument("--config", metavar="YAML", help="take the task from this config's data section")
    gen.add_argument("--degree", type=int, metavar="D", help="path-star: arms of the star")
    gen.add_argument("--path-len", type=int, metavar="L", help="path-star: nodes on the answer path")
    gen.add_argument("--num-nodes", type=int, metavar="N", help="path-star: labels are drawn from 0..N-1")
    gen.add_argument("--n", type=int, required=True, metavar="COUNT", help="number of graphs")
    gen.add_argument("--seed", type=int, required=True, metavar="S", help="random seed")
    gen.add_argument("--out", required=True, metavar="FILE", help="output file (parent folders are created)")
    gen.add_argument("--exclude", metavar="FILE", help="leave out every graph that also appears in this file")
    return parser


def task_of(args: argparse.Namespace) -> GraphTask:
    sizes = {"degree": args.degree, "path_len": args.path_len, "num_nodes": args.num_nodes}
    if args.config:
        if any(v is not None for v in sizes.values()):
            raise UserInputError("give either --config or --degree/--path-len/--num-nodes, not both.")
        import yaml

        try:
            with open(args.config) as f:
                config = yaml.safe_load(f)
        except OSError as err:
            raise UserInputError(f"cannot read --config {args.config}: {err.strerror}.") from None
        except yaml.YAMLError as err:
            raise UserInputError(f"{args.config} is not valid YAML: {str(err).splitlines()[0]}") from None
        return task_from_data((config or {}).get("data"), args.config)
    missing = [f"--{k.replace('_', '-')}" for k, v in sizes.items() if v is None]
    if missing:
        raise UserInputError(f"give --config FILE, or all of --degree, --path-len and --num-nodes (missing {', '.join(missing)}).")
    return PathStar(**sizes)


def text_bytes(task: GraphTask, n: int) -> int:
    """An upper bound on the size of ``n`` graphs of ``task`` as text: every token a label of the most digits,
    each followed by one separator (``,``, ``|``, ``/``, ``=`` or the newline)."""
    tokens = 2 * task.max_edges + 2 + task.target_len
    return n * tokens * (len(str(max(task.num_nodes - 1, 0))) + 1)


def fit_on_this_machine(task: GraphTask, n: int, out: str) -> int:
    """Refuse output larger than the free disk under ``out``, or graphs the sampler cannot hold in memory;
    return how many graphs to draw at a time (:data:`CHUNK`, fewer for a task of very many labels)."""
    folder = os.path.dirname(os.path.abspath(out))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)  # the folders to create do not exist yet: their disk is the parent's
    size, free = text_bytes(task, n), shutil.disk_usage(folder).free
    if os.path.isfile(out):
        free += os.path.getsize(out)  # replaced by the new file
    if size > free:
        raise UserInputError(
            f"--n {n}: {task.describe()} graphs would take about {human(size)}, more than the {human(free)} free "
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.n < 1:
            raise UserInputError(f"--n must be >= 1, got {args.n}.")
        if args.seed < 0:
            raise UserInputError(f"--seed must be >= 0, got {args.seed}.")
        task = task_of(args)
        check_task(task)
        generate(task, args.n, args.seed, args.out, args.exclude)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.n} graphs of {task.describe()} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
