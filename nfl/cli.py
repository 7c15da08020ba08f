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

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import ArgsType, LightningCLI

from nfl.callbacks import KeepLastCheckpoint
from nfl.config_checks import check_run_config, check_writable, check_yaml_syntax, locate, os_error_line
from nfl.data.datamodule import TaskDataModule
from nfl.errors import OptionError, UserInputError
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

    def before_instantiate_classes(self) -> None:
        check_run_config(self.config[self.subcommand] if self.subcommand else self.config, self.subcommand)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if self.subcommand:
            check_writable(self.trainer)

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
        check_yaml_syntax(sys.argv[1:] if args is None else args)
        return NFLCLI(
            GraphSystem,
            TaskDataModule,
            subclass_mode_data=True,
            trainer_defaults=trainer_defaults(),
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "python -m nfl"},
            args=args,
        )
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        sys.exit("error: " + " ".join(str(cause).split()))  # one line, whatever the message


def user_error(err: BaseException) -> Optional[UserInputError]:
    """The :class:`UserInputError` behind ``err`` (jsonargparse and Lightning wrap them), if any; Lightning's own
    complaints about a trainer value, and permission or read-only-filesystem errors, count as one."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OptionError):
            return locate(err)
        if isinstance(err, UserInputError):
            return err
        if isinstance(err, MisconfigurationException):
            return UserInputError(str(err))
        if isinstance(err, OSError) and os_error_line(err):
            return UserInputError(os_error_line(err))
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None

