"""Shared fixtures: seeded RNGs, the SPEC example graph, and a helper that runs the real CLI in-process."""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

# Nothing a test runs may reach the network: W&B logs offline, Hugging Face datasets read local files only.
os.environ["WANDB_MODE"] = "offline"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from nfl.cli import main
from nfl.tasks import PathStar
from nfl.report import read_scalars  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in glob.glob(str(ROOT / "configs" / "*.yaml")) if Path(p).name != "atlas.yaml")  # atlas: claims, not a run

SPEC_LINE = "32,3|16,12|3,19|32,34|34,6|6,16|19,47|47,28/32,12=32,34,6,16,12"
SPEC_PREFIX = [32, 3, 50, 16, 12, 50, 3, 19, 50, 32, 34, 50, 34, 6, 50, 6, 16, 50, 19, 47, 50, 47, 28, 52, 32, 12, 51]
SPEC_TARGET = [32, 34, 6, 16, 12]

# A tiny G(2,4,20) run for the CLI: small GPT, a few steps, small held-out set.
TINY_CONFIG = """
seed_everything: 0
trainer:
  max_steps: 12
  val_check_interval: 4
  check_val_every_n_epoch: null
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {save_last: true, every_n_train_steps: 4, save_top_k: -1}
model:
  backbone:
    class_path: nfl.models.GPT
    init_args: {n_layer: 1, d_model: 32, n_head: 2}
  objective:
    class_path: nfl.objectives.TeacherForcing
  lr: 1.0e-3
data:
  class_path: nfl.data.PathStarDataModule
  init_args: {degree: 2, path_len: 4, num_nodes: 20, batch_size: 32, n_test: 64}
"""


def tiny_fit(config, steps: int, n_test: int = 16) -> list[str]:
    """``fit`` arguments that run a GPU-sized GPT config for ``steps`` steps at a tiny size (1 layer, width 32)."""
    return [
        "fit", "--config", str(config), "--trainer.fast_dev_run", str(steps), "--data.init_args.batch_size", "8",
        "--data.init_args.n_train", "64", "--data.init_args.n_test", str(n_test), "--trainer.enable_progress_bar",
        "false", "--model.backbone.init_args.n_layer", "1", "--model.backbone.init_args.d_model", "32",
        "--model.backbone.init_args.n_head", "2",
    ]


def bind_objective(objective, task, backbone_cls=None, backbone=None, std=None, **size):
    """An objective wired to a tiny backbone as the system wires it: its reserved tokens right after the task's
    and its extra length on top. ``std`` re-draws the weight matrices wider, so logits are not all alike."""
    from nfl.models import GPT

    backbone_cls = backbone_cls or GPT
    reservation = objective.reserve(task)
    objective.token_ids = {name: task.vocab_size + i for i, name in enumerate(reservation.tokens)}
    if backbone is None:
        size = size or {"n_layer": 1, "d_model": 16, **({"n_head": 2} if backbone_cls is GPT else {})}
        backbone = backbone_cls(task.vocab_size + len(reservation.tokens), task.seq_len + reservation.extra_len, **size)
    if std is not None:
        with torch.no_grad():
            for p in backbone.parameters():
                if p.ndim >= 2:
                    p.normal_(0.0, std)
    objective.bind(task, backbone, stop=task.end)
    return objective, backbone


def sample_batch(task, n=6, seed=0):
    """``n`` graphs of ``task`` as torch tensors ``(prefix, target)``."""
    prefix, target = task.sample(np.random.default_rng(seed), n)
    return torch.from_numpy(prefix), torch.from_numpy(target)


class TaskMetrics:
    """The system's evaluation metrics for a task (answer metrics, graph diagnostics and the task's own), fed
    node predictions the way the system feeds them."""

    def __init__(self, task, reverse: bool = False) -> None:
        from nfl.engine.metrics import AnswerMetrics

        self.task, self.reverse = task, reverse
        self.metrics = [AnswerMetrics(task, reverse)] + [m for m in [task.diagnostics(reverse)] if m is not None]

    def update(self, prefix, target, free, tf, loss, well_formed=None, free_len=None) -> None:
        from nfl.engine.metrics import read_answers

        read = read_answers(self.task, self.reverse, prefix, target, free, tf, free_len, well_formed)
        for metric in self.metrics:
            metric.update(read, loss)

    def compute(self) -> dict:
        return {k: v for metric in self.metrics for k, v in metric.compute().items()}

    def reset(self) -> None:
        for metric in self.metrics:
            metric.reset()


@pytest.fixture
def task() -> PathStar:
    return PathStar(degree=2, path_len=5, num_nodes=50)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _torch_seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def hf_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny local stand-ins for the hub models (tests/hf_tiny.py): architecture -> folder."""
    pytest.importorskip("transformers")
    from tests.hf_tiny import gpt2_like, pythia_like

    root = tmp_path_factory.mktemp("hf")
    return {"gpt2": gpt2_like(root / "gpt2"), "gpt_neox": pythia_like(root / "pythia")}


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path


@pytest.fixture
def run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run ``python -m nfl`` in-process inside ``tmp_path``; returns the CLI object."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["nfl"])  # pytest's own arguments are not the CLI's

    def run(*args: str):
        return main(list(args))

    return run


def version_dir(root: Path, version: int = 0) -> Path:
    return root / "lightning_logs" / f"version_{version}"


def logged(root: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of every version folder under ``root`` (a resumed run may write a folder of its own)."""
    merged: dict[str, list[tuple[int, float]]] = {}
    for folder in sorted((root / "lightning_logs").iterdir()):
        for tag, points in read_scalars(str(folder)).items():
            merged.setdefault(tag, []).extend(points)
    return {tag: sorted(points) for tag, points in merged.items()}


def assert_same_series(resumed: dict, uninterrupted: dict) -> None:
    for tag in ("val/loss", "val/exact_match", "train/loss"):
        steps = [s for s, _ in uninterrupted[tag]]
        assert [s for s, _ in resumed[tag]] == steps, tag
        for (_, a), (_, b) in zip(resumed[tag], uninterrupted[tag]):
            assert abs(a - b) < 1e-6, (tag, a, b)
