"""``python -m nfl.data generate``: write path-star graphs to a file in the reference text format.

Example (the reference training set)::

    python -m nfl.data generate --degree 2 --path-len 5 --num-nodes 50 --n 200000 --seed 0 \\
        --out data/deg_2_path_5_nodes_50_train_200000.txt

Add ``--exclude FILE`` to keep the graphs of an existing file (e.g. the test set) out of the new one.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np

from nfl.data.datamodule import sample_excluding
from nfl.data.path_star import graph_keys, read_file, write_file
from nfl.data.vocab import PathStarTask
from nfl.errors import UserInputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nfl.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write COUNT graphs of G(D, L, N) to FILE in the reference format")
    gen.add_argument("--degree", type=int, required=True, metavar="D", help="arms of the star")
    gen.add_argument("--path-len", type=int, required=True, metavar="L", help="nodes on the answer path")
    gen.add_argument("--num-nodes", type=int, required=True, metavar="N", help="labels are drawn from 0..N-1")
    gen.add_argument("--n", type=int, required=True, metavar="COUNT", help="number of graphs")
    gen.add_argument("--seed", type=int, required=True, metavar="S", help="random seed")
    gen.add_argument("--out", required=True, metavar="FILE", help="output file (parent folders are created)")
    gen.add_argument("--exclude", metavar="FILE", help="leave out every graph that also appears in this file")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        write_graphs(args)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def write_graphs(args: argparse.Namespace) -> None:
    """Check every argument, then generate and write; a bad argument raises :class:`UserInputError`."""
    task = PathStarTask(args.degree, args.path_len, args.num_nodes)
    if args.n < 1:
        raise UserInputError(f"--n must be >= 1, got {args.n}.")
    if args.seed < 0:
        raise UserInputError(f"--seed must be >= 0, got {args.seed}.")
    if os.path.isdir(args.out):
        raise UserInputError(f"--out {args.out} is a folder; give the path of the file to write.")
    if args.exclude and not os.path.isfile(args.exclude):
        raise UserInputError(f"--exclude {args.exclude}: no such file; give an existing data file (e.g. the test set).")
    excluded = np.unique(graph_keys(read_file(args.exclude, task)[0], task)) if args.exclude else None
    prefix, target = sample_excluding(np.random.default_rng(args.seed), args.n, task, excluded)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_file(args.out, prefix, target, task)
    except OSError as err:
        raise UserInputError(f"--out {args.out}: cannot write it ({err.strerror}); choose a writable path.") from None
    print(f"wrote {args.n} graphs of G({args.degree},{args.path_len},{args.num_nodes}) to {args.out}")

if __name__ == "__main__":
    sys.exit(main())
