"""Callbacks nfl adds to Lightning's: keep the work of an interrupted run."""

from __future__ import annotations

import logging
import os

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

log = logging.getLogger(__name__)


class CheckpointOnInterrupt(Callback):
    """On Ctrl-C (KeyboardInterrupt) during ``fit``, write ``last.ckpt`` where ModelCheckpoint keeps it.

    Resume with ``--ckpt_path .../checkpoints/last.ckpt``: training continues at the interrupted step with
    the same data stream and learning-rate schedule. Other exceptions leave the last good checkpoint alone.
    """

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt) or trainer.state.fn != "fit":
            return
        checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        if checkpoint is None or checkpoint.dirpath is None:
            return
        path = os.path.join(checkpoint.dirpath, checkpoint.CHECKPOINT_NAME_LAST + checkpoint.FILE_EXTENSION)
        trainer.save_checkpoint(path)
        log.warning("Interrupted at step %d; saved %s (resume with --ckpt_path %s).", trainer.global_step, path, path)
