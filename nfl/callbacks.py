"""Callbacks nfl adds to Lightning's: keep the work of an interrupted run; write predictions to a file."""

from __future__ import annotations

import logging
import os

from typing import Any, Optional, Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint

from nfl.metrics import read_answers

log = logging.getLogger(__name__)


class KeepLastCheckpoint(Callback):
    """Keep ``last.ckpt`` (where ModelCheckpoint writes it) current when ``fit`` ends or is interrupted.

    ModelCheckpoint saves every ``every_n_train_steps``; without this, the steps after the last multiple are
    lost when ``max_steps`` is not a multiple, and so is everything since the last save on Ctrl-C. Resume with
    ``--ckpt_path .../checkpoints/last.ckpt``: training continues at that step with the same data stream and
    learning-rate schedule. Exceptions other than KeyboardInterrupt leave the last good checkpoint alone.
    """

    @staticmethod
    def _checkpoint(trainer: pl.Trainer) -> Optional[ModelCheckpoint]:
        checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        if checkpoint is None or checkpoint.dirpath is None or not checkpoint.save_last:
            return None
        return checkpoint

    @staticmethod
    def _save_last(trainer: pl.Trainer, checkpoint: ModelCheckpoint) -> str:
        path = os.path.join(checkpoint.dirpath, checkpoint.CHECKPOINT_NAME_LAST + checkpoint.FILE_EXTENSION)
        trainer.save_checkpoint(path, weights_only=False)  # the full state, to resume from
        return path

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        checkpoint = self._checkpoint(trainer)
        # ModelCheckpoint records the step it last saved on every rank, so all ranks agree here (a file
        # check could differ across nodes and leave the collective save waiting).
        if checkpoint is not None and trainer.global_step > 0 and checkpoint._last_global_step_saved != trainer.global_step:
            self._save_last(trainer, checkpoint)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt) or trainer.state.fn != "fit":
            return
        checkpoint = self._checkpoint(trainer)
        if checkpoint is None:
            return
        path = self._save_last(trainer, checkpoint)
        log.warning("Interrupted at step %d; saved %s (resume with --ckpt_path %s).", trainer.global_step, path, path)


class PredictionWriter(BasePredictionWriter):
    """Write ``predict`` results as TSV: the graph in its task's text format, the predicted path, and 1/0 for
    correct (the test of ``exact_match``).

    The graph column is the held-out line itself (forward path, as in the data file); the prediction is also
    written start-first, so reversed-target models read the same way. Predicted tokens that are not node ids
    are written as they are (-1 where a pretrained model's text did not parse). Under DDP each rank writes
    ``<path>.rank<R>``.

    Args:
        path: output file, e.g. ``predictions.tsv``; its folder is created.
    """

    def __init__(self, path: str = "predictions.tsv") -> None:
        super().__init__(write_interval="epoch")
        self.path = path

    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Sequence[Any], batch_indices: Any
    ) -> None:
        task, reverse = pl_module.task, pl_module.hparams.reverse
        path = self.path if trainer.world_size == 1 else f"{self.path}.rank{trainer.global_rank}"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="ascii", newline="\n") as f:
            for batch in predictions:
                prefix, target, prediction = batch["prefix"], batch["target"], batch["prediction"]
                read = read_answers(task, reverse, prefix, target, prediction, prediction, batch.get("length"), batch.get("well_formed"))
                forward = task.reverse_answers(target) if reverse else target
                lines = task.format_lines(prefix.numpy(), forward.numpy())
                for line, pred, n, ok in zip(lines, read.fwd_free.tolist(), read.free_len.tolist(), read.exact.tolist()):
                    f.write(f"{line}\t{','.join(map(str, pred[:n]))}\t{int(ok)}\n")
        log.info("Wrote %d predictions to %s.", sum(len(b["target"]) for b in predictions), path)
