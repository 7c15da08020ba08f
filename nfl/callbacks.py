"""Callbacks nfl adds to Lightning's: keep the work of an interrupted run, log the last step, report progress as
lines where no terminal shows a bar, stop on a non-finite loss, stop a solved run, record what a run ran with, write
predictions, draw TensorBoard's HPARAMS, IMAGES and TEXT views."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import Any, Optional, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException

from nfl.engine.metrics import read_answers
from nfl.errors import UserInputError, at_least, require
from nfl.run.provenance import RUN_INFO, provenance
from nfl.run.tensorboard import PER_POSITION, config_text, hparams_summaries, key_settings, per_position_image

log = logging.getLogger(__name__)


class KeepLastCheckpoint(Callback):
    """Keep ``last.ckpt`` (where ModelCheckpoint writes it) current when ``fit`` ends or is stopped by a signal.

    ModelCheckpoint saves every ``every_n_train_steps``; without this, the steps after the last multiple are
    lost when ``max_steps`` is not a multiple, and so is everything since the last save on Ctrl-C or SIGTERM
    (:class:`nfl.run.signals.StopOnSignal` turns those into a stop between steps). Resume with
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


class LogLastStep(Callback):
    """Log the training tags (``train/loss``, ...) at the last step of ``fit``, whatever ``log_every_n_steps`` is.

    Lightning logs a training step only when its 1-based index is a multiple of ``log_every_n_steps``, so the end
    of a curve is missing when ``max_steps`` is not a multiple, and a run shorter than the interval logs no
    ``train/loss`` at all. On the step that reaches ``max_steps`` the interval is set to 1 (until ``fit`` ends).
    """

    def __init__(self) -> None:
        self.interval: Optional[int] = None  # the trainer's own, while this step's is 1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if 0 < trainer.max_steps <= trainer.global_step and self.interval is None and trainer.log_every_n_steps > 0:
            self.interval, trainer.log_every_n_steps = trainer.log_every_n_steps, 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interval is not None:
            trainer.log_every_n_steps, self.interval = self.interval, None


class LineProgress(ProgressBar):
    """Progress as one line per logging interval (``log_every_n_steps``) and per validation: for output that is
    not a terminal (a file, a pipe, a batch system's log), where a bar's redraws would pile up.

    ``step 100/600: train/loss=0.693, val/exact_match=0.500``, on standard error, from rank 0 only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def _line(self, trainer: pl.Trainer, pl_module: pl.LightningModule, what: str) -> None:
        if not self.enabled or not trainer.is_global_zero:
            return
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items()))
        total = f"/{trainer.max_steps}" if trainer.max_steps > 0 else ""
        print(f"{what} {trainer.global_step}{total}" + (f": {shown}" if shown else ""), file=sys.stderr, flush=True)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if trainer.log_every_n_steps > 0 and (step % trainer.log_every_n_steps == 0 or step == trainer.max_steps):
            self._line(trainer, pl_module, "step")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._line(trainer, pl_module, "validated at step")


def progress_bar() -> ProgressBar:
    """The progress display: tqdm's bar on a terminal (whether or not ``rich`` is installed), lines otherwise."""
    return TQDMProgressBar() if sys.stderr.isatty() else LineProgress()


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


class StopWhenSolved(Callback):
    """Stop ``fit`` once ``monitor`` has stayed at or above ``threshold`` for ``patience`` validations in a row.

    Saves compute in grids: a run that has solved its task stops right after that validation instead of
    training on to ``max_steps``. It ends like any finished ``fit``: ``last.ckpt`` holds the final step, and
    ``test_after_fit`` tests the final weights. The count of validations in a row is saved in checkpoints, so
    a run resumed after an interruption continues it rather than starting again at 0. Add it in YAML::

        trainer:
          callbacks:
            - class_path: nfl.callbacks.StopWhenSolved
              init_args: {threshold: 0.95, patience: 2}

    or ``--trainer.callbacks+=nfl.callbacks.StopWhenSolved`` on the command line (a sweep's ``args``).

    Args:
        threshold: the value ``monitor`` must reach (at or above).
        monitor: a tag logged at validation, e.g. ``val/exact_match`` or ``val/decision_acc``.
        patience: validations in a row at or above ``threshold`` before stopping.
    """

    def __init__(self, threshold: float = 0.95, monitor: str = "val/exact_match", patience: int = 2) -> None:
        me = type(self)
        require(isinstance(threshold, (int, float)) and math.isfinite(threshold), me, "threshold", threshold,
                "give a finite number, e.g. 0.95 for val/exact_match")
        require(bool(monitor), me, "monitor", monitor, "name a tag logged at validation, e.g. val/exact_match")
        at_least(me, "patience", patience, 1, "validations in a row at or above the threshold")
        self.threshold, self.monitor, self.patience = float(threshold), monitor, patience
        self.in_a_row = 0  # validations in a row at or above the threshold, so far

    @property
    def state_key(self) -> str:
        # Another monitor or threshold counts something else: its saved count is not this one's.
        return self._generate_state_key(monitor=self.monitor, threshold=self.threshold)

    def state_dict(self) -> dict[str, Any]:
        return {"in_a_row": self.in_a_row}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.in_a_row = int(state_dict.get("in_a_row", 0))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is None:  # a fresh run; a resumed one has its count from the checkpoint by now
            self.in_a_row = 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            logged = ", ".join(sorted(k for k in trainer.callback_metrics if k.startswith("val/"))) or "none"
            raise UserInputError(
                f"StopWhenSolved.monitor={self.monitor}: not logged at validation; choose one of the val/ tags "
                f"({logged})."
            )
        self.in_a_row = self.in_a_row + 1 if float(value) >= self.threshold else 0
        # Every rank stops at the same step (they log the same reduced value, but say so explicitly).
        stop = trainer.strategy.reduce_boolean_decision(self.in_a_row >= self.patience, all=False)
        if stop and not trainer.should_stop:
            trainer.should_stop = True
            log.info(
                "%s has been >= %g for %d validations in a row: stopping at step %d.",
                self.monitor, self.threshold, self.in_a_row, trainer.global_step,
            )


class RecordRun(Callback):
    """Write ``run_info.json`` into the run's log folder at the start of ``fit``: what the run ran with.

    Holds the parameter count (each shared tensor once), the number of held-out graphs (the ``n`` of a
    binomial standard error on ``test/exact_match``), the number of processes, and
    :func:`nfl.run.provenance.provenance`: the nfl commit (``"unknown"`` outside git), whether the checkout had
    uncommitted changes, and the nfl, torch, lightning and python versions. A resumed run rewrites it.
    """

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.loggers:
            return
        folder = trainer.log_dir  # on every rank: it is a broadcast from rank 0
        if not trainer.is_global_zero or folder is None:
            return
        held_out = getattr(trainer.datamodule, "test_graphs", None)
        record = {
            "n_parameters": sum(p.numel() for p in pl_module.parameters()),
            "n_test_graphs": len(held_out[1]) if held_out is not None else None,
            "world_size": trainer.world_size,
            **provenance(),
        }
        with open(os.path.join(folder, RUN_INFO), "w") as f:
            json.dump(record, f, indent=2)


class TensorBoardViews(Callback):
    """TensorBoard's HPARAMS, IMAGES and TEXT tabs for every ``TensorBoardLogger`` of the run (see
    :mod:`nfl.run.tensorboard`): at the start of ``fit``, the HParams summaries (the run's key settings, with its
    final validation and test metrics as columns) and a ``run/config`` text card (nfl's provenance and the resolved
    config); after each validation (not the sanity check) and each test, the image ``{stage}/plots/per_position``
    of accuracy per answer position, free-running against teacher-forced, with the chance line of the decisions.
    Written by rank 0 only; no scalar is logged.
    """

    @staticmethod
    def _writers(trainer: pl.Trainer) -> list:
        from lightning.pytorch.loggers import TensorBoardLogger

        if not trainer.is_global_zero:
            return []
        return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = trainer.log_dir if trainer.loggers else None  # on every rank: a broadcast from rank 0 under DDP
        writers = self._writers(trainer)
        if not writers or not hasattr(pl_module, "task"):
            return
        summaries = hparams_summaries(key_settings(pl_module, trainer))
        text = config_text(folder, dict(pl_module.hparams), provenance())
        for writer in writers:
            for summary in summaries:
                writer.file_writer.add_summary(summary)
            writer.add_text("run/config", text, global_step=trainer.global_step)
            writer.flush()

    def _image(self, trainer: pl.Trainer, stage: str) -> None:
        writers = self._writers(trainer)
        if not writers or trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{stage}/")}
        image = per_position_image(metrics, stage, trainer.global_step)
        if image is None:
            return
        for writer in writers:
            writer.add_image(f"{stage}/{PER_POSITION}", image, global_step=trainer.global_step, dataformats="HWC")
            writer.flush()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._image(trainer, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._image(trainer, "test")


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
