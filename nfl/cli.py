"""``python -m nfl fit|validate|test|predict --config FILE``: LightningCLI wiring of data, backbone and objective.

The graph task (``data.init_args.task``, or path-star's shorthand options on ``PathStarDataModule``) and its
encoding (``reverse``) are set once, on the data module, and linked into the system, which builds the backbone
for the task's vocabulary and sequence length.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Optional

from lightning.pytorch.cli import ArgsType, LightningCLI

from nfl.callbacks import KeepLastCheckpoint
from nfl.data.datamodule import TaskDataModule
from nfl.errors import UserInputError
from nfl.memory import keep_freed_memory
from nfl.quiet import silence_dependency_noise, silence_evaluation_noise
from nfl.system import GraphSystem

LINKED = ("task", "reverse")  # data module attributes the system is built with


class NFLCLI(LightningCLI):
    """LightningCLI with the data -> model links and an optional test run right after ``fit``."""

    def add_arguments_to_parser(self, parser) -> None:
        for name in LINKED:  # from the instantiated data module, whichever class it is
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, run the test set on the final weights and log test/* to the same run.",
        )

    def before_validate(self) -> None:
        silence_evaluation_noise()

    before_test = before_predict = before_validate

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit"):
            self.trainer.test(self.model, datamodule=self.datamodule)


def trainer_defaults() -> dict:
    """Defaults a config can override: TensorBoard under lightning_logs/; last.ckpt kept current at the end and on Ctrl-C."""
    return {
        "logger": {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": ".", "name": "lightning_logs", "default_hp_metric": False},
        },
        # LightningCLI appends default callbacks to a config's own list, so only this one lives here; the
        # configs set ModelCheckpoint (save_last: true) themselves.
        "callbacks": [KeepLastCheckpoint()],
        "check_val_every_n_epoch": None,
    }


def main(args: ArgsType = None) -> Optional[NFLCLI]:
    """Run the CLI; ``args`` (a list of strings) lets tests call it in-process."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    keep_freed_memory()  # CPU training: reuse activation memory across steps instead of re-faulting it
    silence_dependency_noise()
    # Evaluation datasets shard themselves across loader workers, so their __len__ is exact.
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
    # Evaluation tags come from torchmetrics, already summed across ranks; Lightning cannot tell and suggests
    # sync_dist, which would only average identical values again.
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test|train_eval)/")
    try:
        return NFLCLI(
            GraphSystem,
            TaskDataModule,
            subclass_mode_data=True,
            trainer_defaults=trainer_defaults(),
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        sys.exit(f"error: {cause}")


def user_error(err: BaseException) -> Optional[UserInputError]:
    """The :class:`UserInputError` behind ``err`` (jsonargparse and Lightning wrap them), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserInputError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None

