"""Signals during ``fit``: SIGINT, SIGTERM and SLURM's requeue signal stop training between steps, resumably.

Left to themselves, Lightning stops on SIGTERM between steps but exits 0 (or halfway through a validation,
whose results are then never logged), and Ctrl-C raises KeyboardInterrupt wherever the process happens to
be, so a checkpoint written then holds half a step. Here a signal is only recorded; training stops when
the next step would begin (the current step and its validation done and logged),
:class:`nfl.callbacks.KeepLastCheckpoint` writes ``last.ckpt``, and the process exits with
``128 + signal number`` (130 for Ctrl-C, 143 for SIGTERM). A second Ctrl-C stops at once, keeping only the
checkpoints already written.

Under SLURM with Lightning's auto-requeue (``SLURMEnvironment(auto_requeue=True)``, the default there), the
requeue signal (SIGUSR1) stops the same way, and at that boundary Lightning's own requeue handler runs: it
saves ``hpc_ckpt_<n>.ckpt`` in ``default_root_dir``, which Lightning restores automatically when the
requeued job starts without ``--ckpt_path``, and calls ``scontrol requeue``.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any, Callable, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

Handler = Callable[[int, Optional[FrameType]], Any]


class StopOnSignal(Callback):
    """Turn SIGINT, SIGTERM (and under SLURM auto-requeue, the requeue signal) into a stop between steps.

    ``signum`` is the signal that stopped the run (None while none came): the CLI exits with
    ``128 + signum``.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._requeue: Optional[Handler] = None  # Lightning's SLURM handler, run once training has stopped
        self._requeue_signal: Optional[int] = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning registers its handlers just before training starts and restores the previous ones at
        # teardown, which undoes these too.
        if threading.current_thread() is not threading.main_thread():
            return
        self.signum, self._requeue = None, None
        environment = trainer._accelerator_connector.cluster_environment
        requeue_signal = getattr(environment, "requeue_signal", None)
        if getattr(environment, "auto_requeue", False) and requeue_signal is not None:
            current = signal.getsignal(requeue_signal)
            if callable(current):  # Lightning's save-and-requeue handler
                self._requeue, self._requeue_signal = current, int(requeue_signal)
                signal.signal(requeue_signal, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
            return
        self.signum = signum
        log.warning(
            "Received %s: stopping after this step (and its validation) to save last.ckpt%s.",
            signal.Signals(signum).name, "; Ctrl-C again stops at once, without saving" if signum == signal.SIGINT else "",
        )

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        # The previous step is fully done here (validation logged, counters advanced) and the next has not
        # begun. Any rank's signal stops every rank at the same step.
        if trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False):
            raise SIGTERMException()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.signum is not None:  # came during the last step: fit is done, but the process still stops
            raise SIGTERMException()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and self._requeue is not None and self.signum == self._requeue_signal:
            self._requeue(self.signum, None)
