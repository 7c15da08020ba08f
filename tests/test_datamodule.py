"""The data module: reproducible, rank- and worker-distinct, resumable streams; held-out sets; files."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from nfl.data.datamodule import EvalBatches, PathStarDataModule, TrainBatches
from nfl.tasks import DataFileError, InfeasibleGraphError, PathStar


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_stream_is_reproducible_and_independent_of_worker_count(task):
    ds = TrainBatches(task, batch_size=16, seed=3)
    serial = take(DataLoader(ds, batch_size=None), 6)
    parallel = take(DataLoader(ds, batch_size=None, num_workers=2), 6)
    assert all(same(a, b) for a, b in zip(serial, parallel))
    assert not same(serial[0], serial[1])  # workers/batches are not copies of each other
    again = take(DataLoader(TrainBatches(task, batch_size=16, seed=3), batch_size=None), 6)
    assert all(same(a, b) for a, b in zip(serial, again))
    other_seed = take(DataLoader(TrainBatches(task, batch_size=16, seed=4), batch_size=None), 1)
    assert not same(serial[0], other_seed[0])


def test_ranks_see_different_graphs(task):
    keys = []
    for rank in (0, 1):
        ds = TrainBatches(task, batch_size=64, seed=0, rank=rank, world_size=2)
        keys.append(np.concatenate([task.graph_keys(ds.batch(b)[0].numpy()) for b in range(10)]))
    assert not np.isin(keys[0], keys[1]).any()


def test_stream_restarts_at_start_batch(task):
    full = take(DataLoader(TrainBatches(task, 8, seed=1), batch_size=None), 7)
    resumed = take(DataLoader(TrainBatches(task, 8, seed=1, start_batch=4), batch_size=None, num_workers=2), 3)
    assert all(same(a, b) for a, b in zip(full[4:], resumed))


def test_training_never_sees_held_out_graphs_when_excluded():
    task = PathStar(2, 2, 6)  # a small graph space: collisions are common without exclusion
    dm = PathStarDataModule(degree=2, path_len=2, num_nodes=6, batch_size=64, n_test=40)
    dm.setup("fit")
    test_keys = task.graph_keys(dm.test_graphs[0])
    seen = np.concatenate([task.graph_keys(dm.train_batches().batch(b)[0].numpy()) for b in range(20)])
    assert not np.isin(seen, test_keys).any()
    dm_all = PathStarDataModule(degree=2, path_len=2, num_nodes=6, batch_size=64, n_test=40, exclude_test=False)
    dm_all.setup("fit")
    seen_all = np.concatenate([task.graph_keys(dm_all.train_batches().batch(b)[0].numpy()) for b in range(20)])
    assert np.isin(seen_all, test_keys).any()


def test_finite_mode_covers_each_graph_once_per_epoch_split_across_ranks(task):
    dm = PathStarDataModule(batch_size=25, n_train=200, n_test=10)
    dm.setup("fit")
    train_keys = task.graph_keys(dm.train_graphs[0])
    assert len(np.unique(train_keys)) == 200
    ranks = [TrainBatches(task, 25, 0, rank=r, world_size=2, graphs=dm.train_graphs) for r in (0, 1)]
    assert ranks[0].batches_per_epoch == 4
    epoch0 = [task.graph_keys(ds.batch(b)[0].numpy()) for ds in ranks for b in range(4)]
    assert np.array_equal(np.sort(np.concatenate(epoch0)), np.sort(train_keys))  # one epoch = every graph once
    first, second = ranks[0].batch(0)[0], ranks[0].batch(4)[0]
    assert not torch.equal(first, second)  # reshuffled each epoch


def test_eval_set_is_split_not_duplicated_across_ranks(task, rng):
    graphs = task.sample(rng, 103)
    shards = [list(EvalBatches(graphs, 10, rank=r, world_size=2)) for r in (0, 1)]
    seen = np.concatenate([b[0].numpy() for shard in shards for b in shard])
    assert len(seen) == 103
    assert np.array_equal(np.sort(task.graph_keys(seen)), np.sort(task.graph_keys(graphs[0])))
    assert len(EvalBatches(graphs, 10, rank=0, world_size=2)) == len(shards[0]) == 6


def test_reverse_reverses_the_target_only(task):
    fwd = PathStarDataModule(n_test=8, batch_size=8)
    rev = PathStarDataModule(n_test=8, batch_size=8, reverse=True)
    for dm in (fwd, rev):
        dm.setup("fit")
    (p1, t1), (p2, t2) = next(iter(fwd.train_dataloader())), next(iter(rev.train_dataloader()))
    assert torch.equal(p1, p2) and torch.equal(t1.flip(1), t2)
    assert (t2[:, 0] == p2[:, -2]).all()  # reversed paths start at the goal


def test_train_and_test_files(tmp_path, task, rng):
    train, test = task.sample(rng, 300), task.sample(rng, 50)
    task.write_file(tmp_path / "train.txt", *train)
    task.write_file(tmp_path / "test.txt", *test)
    dm = PathStarDataModule(
        batch_size=32, train_file=str(tmp_path / "train.txt"), test_file=str(tmp_path / "test.txt")
    )
    dm.setup("fit")
    assert np.array_equal(dm.test_graphs[0], test[0]) and len(dm.train_graphs[1]) == 300
    prefix, _ = next(iter(dm.train_dataloader()))
    assert np.isin(task.graph_keys(prefix.numpy()), task.graph_keys(train[0])).all()
    wrong_size = PathStarDataModule(degree=3, batch_size=32, test_file=str(tmp_path / "test.txt"))
    with pytest.raises(DataFileError, match=r"test.txt:1: .*G\(degree=3, path_len=5, num_nodes=50\)"):
        wrong_size.setup("fit")


def test_bad_sizes_are_refused_at_construction():
    with pytest.raises(InfeasibleGraphError, match="num_nodes"):
        PathStarDataModule(degree=5, path_len=11, num_nodes=50)
    with pytest.raises(ValueError, match="batch_size"):
        PathStarDataModule(batch_size=0)
    with pytest.raises(ValueError, match="n_train=10: fewer graphs than one batch .* raise n_train"):
        PathStarDataModule(batch_size=64, n_train=10, n_test=4)  # refused before any graph is drawn
    dm = PathStarDataModule(batch_size=8, n_train=10, n_test=4)
    dm.setup("fit")
    with pytest.raises(ValueError, match="10 training graphs cannot fill one batch of 8 on each of 2 rank"):
        TrainBatches(dm.task, 8, 0, world_size=2, graphs=dm.train_graphs)  # one batch per rank is 16 graphs
