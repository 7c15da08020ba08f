"""A callback for the DDP test: each rank writes the graph keys of the training batches it sees."""

from __future__ import annotations

import os

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback



class BatchRecorder(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        keys = pl_module.task.graph_keys(batch[0].cpu().numpy())
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.txt"), "a") as f:
            f.write("\n".join(map(str, keys.tolist())) + "\n")
