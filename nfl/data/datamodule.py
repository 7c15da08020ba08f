"""LightningDataModules for any graph task: seeded streaming or finite training data, a fixed held-out set.

Every dataset here yields whole batches (the generator is vectorised), indexed by a *batch number*. Batch
``b`` of rank ``r`` is a pure function of ``(seed, r, b)``, so the stream is

- reproducible for a seed, whatever the number of loader workers (worker ``w`` of ``W`` makes batches
  ``w, w+W, ...`` and the DataLoader interleaves them back in order);
- distinct across distributed ranks (the rank is part of every batch's seed, or picks its own slice of the
  finite set's per-epoch permutation);
- resumable: after ``--ckpt_path`` the stream restarts at batch ``global_step * accumulate_grad_batches``,
  exactly where the interrupted run stopped.

The held-out set comes from ``test_seed`` (or ``test_file``) and is split across ranks, never duplicated.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Any, Callable, Iterator, Literal, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from nfl.errors import UserInputError, at_least, require
from nfl.tasks.base import GraphTask, check_task, checked_sample
from nfl.tasks.path_star import PathStar
from nfl.tasks.sampling import EPOCH_ORDER, RESAMPLE, STREAM, TEST
from nfl.tasks.scratchpad import refuse_reverse, write_scratchpads

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]  # (prefix (B, P), target (B, target_len)), int64 on CPU



def _worker_slice() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _to_batch(prefix: np.ndarray, target: np.ndarray, reverse: bool, task: Optional[GraphTask]) -> Batch:
    """A model batch from graphs with forward answers: reversed with ``reverse``, after a scratchpad where the
    task has one (what the model writes; files and samplers keep the plain answer)."""
    if reverse:
        target = task.reverse_answers(target)
    if task is not None and task.scratchpad is not None:
        target = write_scratchpads(task, target)
    return torch.from_numpy(np.ascontiguousarray(prefix)), torch.from_numpy(np.ascontiguousarray(target))


def _apply(transform: Callable[[torch.Tensor, torch.Tensor], Any], batch: Batch) -> Any:
    return transform(*batch)


class TrainBatches(IterableDataset):
    """An endless sequence of training batches starting at ``start_batch``.

    With ``graphs`` (a finite set) each epoch is a fresh seeded permutation split across ranks (the last
    partial batch of an epoch is dropped); without, every batch is newly generated.
    """

    def __init__(
        self,
        task: GraphTask,
        batch_size: int,
        seed: int,
        reverse: bool = False,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        graphs: Optional[tuple[np.ndarray, np.ndarray]] = None,
        excluded: Optional[np.ndarray] = None,
    ) -> None:
        self.task, self.batch_size, self.seed, self.reverse = task, batch_size, seed, reverse
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self.graphs, self.excluded = graphs, excluded
        if graphs is not None:
            self.batches_per_epoch = len(graphs[1]) // (batch_size * world_size)
            if self.batches_per_epoch == 0:
                raise UserInputError(
                    f"{len(graphs[1])} training graphs cannot fill one batch of {batch_size} on each of "
                    f"{world_size} rank(s); raise n_train (or use a bigger train_file) or lower batch_size."
                )

    def batch(self, b: int) -> Batch:
        """Batch number ``b`` of this rank: deterministic in (seed, rank, b)."""
        return _to_batch(*self.graphs_of(b), self.reverse, self.task)

    def graphs_of(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """The graphs of batch ``b``, with their forward answers (as sampled or stored)."""
        if self.graphs is None:
            rng = np.random.default_rng([self.seed, STREAM, self.rank, b])
            return self.task.sample_excluding(rng, self.batch_size, self.excluded)
        epoch, j = divmod(b, self.batches_per_epoch)
        order = np.random.default_rng([self.seed, EPOCH_ORDER, epoch]).permutation(len(self.graphs[1]))
        first = (j * self.world_size + self.rank) * self.batch_size
        idx = order[first : first + self.batch_size]
        return self.graphs[0][idx], self.graphs[1][idx]

    def __iter__(self) -> Iterator[Batch]:
        worker, n_workers = _worker_slice()
        b = self.start_batch + worker
        while True:
            yield self.batch(b)
            b += n_workers


class EvalBatches(IterableDataset):
    """A fixed set of graphs in order, this rank's share only (graphs ``rank::world_size``), in batches."""

    def __init__(
        self,
        graphs: tuple[np.ndarray, np.ndarray],
        batch_size: int,
        reverse: bool = False,
        rank: int = 0,
        world_size: int = 1,
        task: Optional[GraphTask] = None,
    ) -> None:
        if reverse and task is None:
            raise ValueError("reversed evaluation batches need the task")
        self.prefix, self.target = graphs[0][rank::world_size], graphs[1][rank::world_size]
        self.batch_size, self.reverse, self.task = batch_size, reverse, task

    def __len__(self) -> int:
        return math.ceil(len(self.target) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        worker, n_workers = _worker_slice()
        for i in range(worker, len(self), n_workers):
            s = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield _to_batch(self.prefix[s], self.target[s], self.reverse, self.task)


class TaskDataModule(pl.LightningDataModule):
    """Training and held-out data of any graph task, chosen by ``class_path``::

        data:
          class_path: nfl.data.TaskDataModule
          init_args:
            task: {class_path: nfl.tasks.TreeStar, init_args: {degree: 2, branching: 2, depth: 2}}

    Args:
        task: the graph task (``nfl.tasks.PathStar``, ``nfl.tasks.TreeStar``, ``nfl.tasks.DagSearch``, ...).
        reverse: train and evaluate on the reversed answer (goal first).
        batch_size: training batch size per rank.
        eval_batch_size: batch size for validation/test/predict (default: ``batch_size``).
        n_train: finite training set size (epochs over it, reshuffled each epoch); ``null`` streams fresh
            graphs forever.
        n_test: held-out graphs drawn from ``test_seed`` (ignored with ``test_file``).
        n_val: how many of the held-out graphs each validation run uses (default: all).
        n_train_eval: also evaluate this many training graphs at validation time, logged under
            ``train_eval/`` (0 = off).
        seed: seed of the training data.
        test_seed: seed of the held-out set.
        exclude_test: never train on a graph of the held-out set (same edges and query, any edge order).
        train_file: train on this data file (finite mode) instead of generated graphs: the text format, or
            ``.jsonl``/``.parquet`` records as ``python -m nfl.data generate --format jsonl|parquet`` writes them.
        test_file: take the held-out set from this data file (any of the same formats).
        num_workers: DataLoader worker processes generating training batches (and tokenising them, for
            backbones with their own tokenizer).

    ``train_transform``, when set (the system sets it to its codec's ``encode`` when its backbone reads
    tokens other than the numerals), is applied to every training batch inside the loader, so with
    ``num_workers > 0`` the tokenising runs in the worker processes, beside the generating.
    """

    def __init__(
        self,
        task: GraphTask,
        reverse: bool = False,
        batch_size: int = 256,
        eval_batch_size: Optional[int] = None,
        n_train: Optional[int] = None,
        n_test: int = 20000,
        n_val: Optional[int] = None,
        n_train_eval: int = 0,
        seed: int = 0,
        test_seed: int = 1,
        exclude_test: bool = True,
        train_file: Optional[str] = None,
        test_file: Optional[str] = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        me = type(self)
        check_task(task)
        self.task = task
        at_least(me, "batch_size", batch_size, 1)
        at_least(me, "eval_batch_size", eval_batch_size, 1, "or null for batch_size")
        at_least(me, "n_test", n_test, 1)
        at_least(me, "n_train_eval", n_train_eval, 0, "0 turns the training sample off")
        at_least(me, "seed", seed, 0)
        at_least(me, "test_seed", test_seed, 0)
        at_least(me, "num_workers", num_workers, 0)
        require(
            n_train is None or train_file is None, me, "n_train", n_train,
            f"train_file={train_file} already sets the training set (all of its lines); set n_train: null, or "
            "cut the file to the size you want",
        )
        require(
            n_train is None or n_train >= batch_size, me, "n_train", n_train,
            f"fewer graphs than one batch (batch_size={batch_size}); raise n_train to at least {batch_size}, lower "
            "batch_size, or set n_train: null to stream fresh graphs",
        )
        at_least(me, "n_val", n_val, 1, "or null for the whole held-out set")
        require(
            n_val is None or test_file is not None or n_val <= n_test, me, "n_val", n_val,
            f"more than the n_test={n_test} held-out graphs; lower n_val or raise n_test",
        )
        for name, path in (("train_file", train_file), ("test_file", test_file)):
            require(
                path is None or os.path.isfile(path), me, name, path,
                "no such file; give a data file in the task's text format (python -m nfl.data generate writes one)",
            )
        refuse_reverse(task, reverse, me)
        self.reverse, self.batch_size = reverse, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.n_train, self.n_test, self.n_val, self.n_train_eval = n_train, n_test, n_val, n_train_eval
        self.seed, self.test_seed, self.exclude_test = seed, test_seed, exclude_test
        self.train_file, self.test_file, self.num_workers = train_file, test_file, num_workers
        self.test_graphs: Optional[tuple[np.ndarray, np.ndarray]] = None
        self.train_graphs: Optional[tuple[np.ndarray, np.ndarray]] = None
        self._excluded: Optional[np.ndarray] = None
        self.train_transform: Optional[Callable[[torch.Tensor, torch.Tensor], Any]] = None

    @property
    def vocab_size(self) -> int:
        return self.task.vocab_size

    # --- building the sets ---------------------------------------------------------------------------
    def setup(self, stage: Optional[str] = None) -> None:
        if self.test_graphs is None:
            if self.test_file:
                self.test_graphs = self.task.read_file(self.test_file)
                if not self.train_file:  # training graphs are sampled: check the sampler once on a graph of its own
                    checked_sample(self.task, np.random.default_rng([self.seed, TEST]), 1)
            else:
                rng = np.random.default_rng([self.test_seed, TEST])
                self.test_graphs = checked_sample(self.task, rng, self.n_test)  # the first batch, checked
            if self.exclude_test:
                self._excluded = np.unique(self.task.graph_keys(self.test_graphs[0]))
        if stage in (None, "fit", "validate") and self.train_graphs is None:
            if self.train_file:
                self.train_graphs = self._drop_test_graphs(self.task.read_file(self.train_file), self.train_file)
            elif self.n_train is not None:
                rng = np.random.default_rng([self.seed, RESAMPLE])
                self.train_graphs = self.task.sample_excluding(rng, self.n_train, self._excluded)

    def _drop_test_graphs(self, graphs: tuple[np.ndarray, np.ndarray], source: str) -> tuple[np.ndarray, np.ndarray]:
        if self._excluded is None:
            return graphs
        keep = ~np.isin(self.task.graph_keys(graphs[0]), self._excluded)
        dropped = int((~keep).sum())
        if keep.sum() < self.batch_size:
            raise UserInputError(
                f"{source}: {dropped} of its {len(keep)} graphs are in the held-out set (exclude_test: true), "
                f"leaving {int(keep.sum())}, less than one batch of {self.batch_size}; use a training file disjoint "
                "from the test set (python -m nfl.data generate --exclude TEST_FILE), or set exclude_test: false."
            )
        if dropped:
            log.warning("%s: dropped %d training graphs that are in the held-out set.", source, dropped)
        return graphs[0][keep], graphs[1][keep]

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)

    def train_batches(self, start_batch: int = 0) -> TrainBatches:
        rank, world = self._rank()
        return TrainBatches(
            self.task, self.batch_size, self.seed, self.reverse, rank, world, start_batch, self.train_graphs,
            self._excluded,
        )

    # --- loaders -------------------------------------------------------------------------------------
    def _loader(
        self, dataset: IterableDataset, workers: int = 0, transform: Optional[Callable[..., Any]] = None
    ) -> DataLoader:
        # batch_size=None: the datasets yield whole batches; collate_fn then sees one batch at a time.
        collate = None if transform is None else functools.partial(_apply, transform)
        return DataLoader(
            dataset, batch_size=None, num_workers=workers, persistent_workers=workers > 0, collate_fn=collate
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        start = 0 if trainer is None else trainer.global_step * trainer.accumulate_grad_batches
        if start:
            log.info("Resuming the training stream at batch %d.", start)
        return self._loader(self.train_batches(start), self.num_workers, self.train_transform)

    def _eval(self, graphs: tuple[np.ndarray, np.ndarray], n: Optional[int] = None) -> DataLoader:
        rank, world = self._rank()
        graphs = (graphs[0][:n], graphs[1][:n]) if n is not None else graphs
        if len(graphs[1]) < world:  # decided alike on every rank, so all of them stop with this line
            raise UserInputError(
                f"{len(graphs[1])} evaluation graphs cannot be shared by {world} ranks (each needs at least one); "
                f"raise n_test / n_val / n_train_eval to at least {world}."
            )
        return self._loader(EvalBatches(graphs, self.eval_batch_size, self.reverse, rank, world, self.task))

    def val_dataloader(self) -> list[DataLoader]:
        loaders = [self._eval(self.test_graphs, self.n_val)]
        if self.n_train_eval:
            if self.train_graphs is not None:
                sample = self.train_graphs
            else:  # the first training batches rank 0 sees, regenerated
                stream = TrainBatches(self.task, self.batch_size, self.seed, excluded=self._excluded)
                batches = [stream.graphs_of(b) for b in range(math.ceil(self.n_train_eval / self.batch_size))]
                sample = tuple(np.concatenate(parts) for parts in zip(*batches))  # forward answers, as stored
            loaders.append(self._eval(sample, self.n_train_eval))
        return loaders

    def test_dataloader(self) -> DataLoader:
        return self._eval(self.test_graphs)

    def predict_dataloader(self) -> DataLoader:
        return self._eval(self.test_graphs)


class PathStarDataModule(TaskDataModule):
    """Path-star G(degree, path_len, num_nodes) data: the shorthand for ``TaskDataModule`` with
    ``task: nfl.tasks.PathStar`` (Bachmann & Nagarajan 2024), which every reference config uses.

    Args:
        degree: number of arms ``d``.
        path_len: nodes on the answer path ``l`` (start and goal included).
        num_nodes: label range ``N``; the vocabulary is ``N + 4``.
        scratchpad: ``goal_to_start``: the model writes the goal's arm backwards, a separator (token
            ``N + 4``), then the path; metrics read the path (:mod:`nfl.tasks.scratchpad`). Default null.
        kwargs: every other option of :class:`TaskDataModule` (``reverse``, ``batch_size``, ``n_train``, ...);
            ``train_file`` and ``test_file`` are in the reference code's format.
    """

    def __init__(
        self,
        degree: int = 2,
        path_len: int = 5,
        num_nodes: int = 50,
        scratchpad: Optional[Literal["goal_to_start"]] = None,
        **kwargs: Any,
    ) -> None:
        at_least(type(self), "degree", degree, 1)
        at_least(type(self), "path_len", path_len, 2, "start and goal are distinct nodes")
        super().__init__(task=PathStar(degree, path_len, num_nodes, scratchpad=scratchpad), **kwargs)
