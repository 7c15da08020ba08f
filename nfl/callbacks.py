"""Callbacks nfl adds to Lightning's: keep the work of an interrupted run, stop on a non-finite loss, write predictions."""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from nfl.errors import UserInputError
from nfl.metrics import read_answers

log = logging.getLogger(__name__)


class KeepLastCheckpoint(Callback):
    """Keep ``last.ckpt`` (where ModelCheckpoint writes it) current when ``fit`` ends or is stopped by a signal.

    ModelCheckpoint saves every ``every_n_train_steps``; without this, the steps after the last multiple are
    lost when ``max_steps`` is not a multiple, and so is everything since the last save on Ctrl-C or SIGTERM
    (:class:`nfl.signals.StopOnSignal` turns those into a stop between steps). Resume with
    ``--ckpt_path .../checkpoints/last.ckpt``: training continues at that step with the same data stream,
    learning-rate schedule and logged steps. Other exceptions (a second Ctrl-C included) leave the last good
    checkpoint alone.
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
        # Recorded before saving, as ModelCheckpoint does, so that this file is its last checkpoint in the
        # saved state too: later saves (in this run or a resumed one) replace it instead of adding last-v1.ckpt.
        checkpoint.last_model_path = path
        trainer.save_checkpoint(path, weights_only=False)  # the full state, to resume from
        return path

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Resuming from a checkpoint of this folder: its last.ckpt is this run's, to be replaced, not kept
        # beside a new last-v1.ckpt (ModelCheckpoint's guard against another run's file).
        checkpoint, resumed = self._checkpoint(trainer), trainer.ckpt_path
        if checkpoint is not None and resumed and os.path.isfile(resumed) and os.path.isdir(checkpoint.dirpath):
            if os.path.samefile(os.path.dirname(os.path.abspath(resumed)), checkpoint.dirpath):
                checkpoint.last_model_path = os.path.join(checkpoint.dirpath, checkpoint.CHECKPOINT_NAME_LAST + checkpoint.FILE_EXTENSION)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        checkpoint = self._checkpoint(trainer)
        # ModelCheckpoint records the step it last saved on every rank, so all ranks agree here (a file
        # check could differ across nodes and leave the collective save waiting). When it has saved nothing
        # yet (max_steps below every_n_train_steps) it writes last.ckpt itself right after this hook.
        if (
            checkpoint is not None
            and trainer.global_step > 0
            and checkpoint._last_global_step_saved != trainer.global_step
            and checkpoint._last_checkpoint_saved
        ):
            self._save_last(trainer, checkpoint)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit" or trainer.global_step == 0:
            return
        checkpoint = self._checkpoint(trainer)
        if checkpoint is None:
            return
        path = self._save_last(trainer, checkpoint)
        log.warning("Interrupted at step %d; saved %s (resume with --ckpt_path %s).", trainer.global_step, path, path)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == "fit" and trainer.training and not trainer.sanity_checking:
            as_saved_at_batch_end(checkpoint, trainer.accumulate_grad_batches)


_COUNTERS = ("ready", "started", "processed", "completed")


def as_saved_at_batch_end(checkpoint: dict[str, Any], accumulate_grad_batches: int = 1) -> None:
    """Record a checkpoint taken between two steps as if taken in the first one's ``on_train_batch_end``.

    Lightning resumes exactly from the state ModelCheckpoint saves in ``on_train_batch_end`` (the batch not
    yet counted completed, ``_batches_that_stepped`` not yet incremented): it finishes that bookkeeping on
    load. A checkpoint written once the step is fully counted (at the end of ``fit``, or when a signal stops
    it before the next step begins) has all four batch counters equal, once the next batch's fetch is
    undone. Lightning reads that as "saved at the end of validation, before the step was counted" and, when
    the step was a validation step, counts it a second time: every later logged step is one too high and
    validation runs one step early. Rolling the counters back one step gives the single form that resumes
    identically, whichever callback wrote the file.
    """
    loop = checkpoint.get("loops", {}).get("fit_loop")
    if not loop:
        return
    progress = loop["epoch_loop.batch_progress"]
    total, current = progress["total"], progress["current"]
    for p in (total, current):  # saved in on_train_batch_start: the next batch was fetched, nothing more
        if p["ready"] == p["started"] + 1 and p["started"] == p["processed"] == p["completed"]:
            p["ready"] -= 1
    fully_counted = all(len({p[k] for k in _COUNTERS}) == 1 and p["completed"] > 0 for p in (total, current))
    if not fully_counted or total["completed"] % accumulate_grad_batches != 0:
        return  # mid-step, mid-validation or mid-accumulation: Lightning's own restart logic applies
    total["completed"] -= 1
    current["completed"] -= 1
    loop["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1


class NonFiniteLoss(UserInputError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(Callback):
    """Stop ``fit`` at the first step whose training loss is NaN or infinite, before it reaches the weights.

    The check runs before the backward pass, so the optimizer never steps on that loss and nothing is saved
    after it: ``last.ckpt`` and the periodic checkpoints are the ones already written (weights a non-finite
    gradient spoiled one step earlier, with a finite loss, are not caught here).
    """

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(finite, all=True):  # every rank stops at the same step
            return
        value = loss.detach().float().cpu()
        raise NonFiniteLoss(
            f"The training loss became {value.item() if value.numel() == 1 else 'non-finite'} at step "
            f"{trainer.global_step} (lr {pl_module.hparams.get('lr')}); training stopped before that step changed "
            "the weights, and the checkpoints already written are kept. Try a lower --model.lr, gradient clipping "
            "(--trainer.gradient_clip_val=1.0), more --model.warmup_steps, or bf16-mixed rather than 16-mixed "
            "--trainer.precision."
        )


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
                answer = task.answer_part(target)  # the answer after a scratchpad, if the task has one
                forward = task.reverse_answers(answer) if reverse else answer
                lines = task.format_lines(prefix.numpy(), forward.numpy())
                for line, pred, n, ok in zip(lines, read.fwd_free.tolist(), read.free_len.tolist(), read.exact.tolist()):
                    f.write(f"{line}\t{','.join(map(str, pred[:n]))}\t{int(ok)}\n")
        log.info("Wrote %d predictions to %s.", sum(len(b["target"]) for b in predictions), path)
