"""``python -m nfl fit|validate|test|predict --config FILE``: LightningCLI wiring of data, backbone and objective.

The graph task (``data.init_args.task``, or path-star's shorthand options on ``PathStarDataModule``) and its
encoding (``reverse``) are set once, on the data module, and linked into the system, which builds the backbone
for the task's vocabulary and sequence length.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import warnings
from typing import Any, Optional

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from nfl.callbacks import (
    KeepLastCheckpoint, LogLastStep, RecordRun, StopOnNonFiniteLoss, TensorBoardViews, progress_bar,
)
from nfl.run.checkpoint_origin import refuse_foreign
from nfl.run.checkpoints import read_checkpoint, use_atomic_checkpoints
from nfl.run.config_checks import (
    check_parsed_values, check_run_config, check_writable, check_yaml_syntax, locate, os_error_line,
)
from nfl.data.datamodule import TaskDataModule
from nfl.errors import OptionError, UserInputError
from nfl.run.folders import checkpoint_file, refuse_contradictions, run_folder, settle_log_folder
from nfl.run.malloc import keep_freed_memory
from nfl.run.option_types import check_config_values
from nfl.run.preflight import announce, size_check
from nfl.run.quiet import silence_dependency_noise, silence_evaluation_noise, silence_resume_noise
from nfl.run.signals import StopOnSignal
from nfl.system import GraphSystem
from nfl.tasks.spec import legacy_task_spec, reverse_of, task_from_data, task_spec

log = logging.getLogger(__name__)

LINKED = ("task", "reverse")  # data module attributes the system is built with
# Model options a checkpoint's weights were made with; on fit the optimizer state (lr, decay, betas) as well.
WEIGHT_OPTIONS = ("backbone", "objective", *LINKED)
OPTIMIZER_OPTIONS = ("lr", "weight_decay", "betas")


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

    def _add_arguments(self, parser: LightningArgumentParser) -> None:
        super()._add_arguments(parser)
        # Lightning's --optimizer and --lr_scheduler stay parsed, so that check_run_config can refuse them in
        # one line, but --help does not offer them (every torch optimizer and scheduler, which nfl refuses).
        refused = ("optimizer", "lr_scheduler")
        for action in parser._actions:
            if action.dest.split(".")[0] in refused:
                action.help = argparse.SUPPRESS
        parser._action_groups = [
            g for g in parser._action_groups
            if not g._group_actions or any(a.dest.split(".")[0] not in refused for a in g._group_actions)
        ]

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        check_parsed_values(self.config)  # before LightningCLI seeds with seed_everything
        # LightningCLI reads --ckpt_path next and replaces the model options by the checkpoint's: a missing or
        # broken file, or options that contradict it, are one line here, before anything is written.
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        ckpt = checkpoint_file(config.get("ckpt_path")) if config is not None else None
        if ckpt is not None:
            checkpoint = read_checkpoint(ckpt, mmap=True)
            saved = legacy_task(checkpoint.get("hyper_parameters") or {})
            keys = WEIGHT_OPTIONS + (OPTIMIZER_OPTIONS if subcommand == "fit" else ())
            given = config.model.clone()  # the task and encoding come from the data module, as the links will
            data = config.data.as_dict() if hasattr(config.data, "as_dict") else config.data
            given.task, given.reverse = task_spec(task_from_data(data)), reverse_of(data)
            refuse_foreign(ckpt, checkpoint, saved, given, GraphSystem)
            shorthand = str(data.get("class_path", "")).endswith("PathStarDataModule")  # degree etc. on the data
            where = "data.init_args" if shorthand else "data.init_args.task.init_args"
            refuse_contradictions(ckpt, saved, given, keys, {"task": where, "reverse": "data.init_args.reverse"})

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's own (the checkpoint's model options replace the config's), for checkpoints written
        before graph tasks were pluggable too: their ``degree``, ``path_len`` and ``num_nodes`` are path-star's."""
        subcommand = self.config.get("subcommand")
        ckpt = checkpoint_file(self.config[subcommand].get("ckpt_path")) if subcommand else None
        if ckpt is None:
            return
        hparams = legacy_task(dict(read_checkpoint(ckpt, mmap=True).get("hyper_parameters") or {}))
        hparams.pop("_instantiator", None)
        for linked in LINKED:  # set from the data module at instantiation, and checked equal above
            hparams.pop(linked, None)
        if hparams:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def before_validate(self) -> None:
        silence_evaluation_noise()

    before_test = before_predict = before_validate

    def before_fit(self) -> None:
        if self.config.fit.get("ckpt_path"):
            silence_resume_noise()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_config_values(config, GraphSystem, Trainer)
        check_run_config(config, self.subcommand)
        if self.subcommand:
            settle_log_folder(config, self.subcommand)

    def instantiate_classes(self) -> None:
        estimate = size_check(self.parser, self.config, self.subcommand) if self.subcommand else None
        super().instantiate_classes()
        if self.subcommand:
            check_writable(self.trainer)
            announce(estimate)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        self.run_folder = None
        config = self._get(self.config_init, "trainer", default={})
        if self.subcommand and rank_zero_only.rank == 0:  # before Lightning's own lines: where this run writes
            self.run_folder = run_folder(config.get("logger"))
            self._announce_run_folder()
        if config.get("enable_progress_bar") is not False and "callbacks" in config:
            callbacks = config["callbacks"] if isinstance(config["callbacks"], list) else [c for c in [config["callbacks"]] if c]
            if not any(isinstance(c, ProgressBar) for c in callbacks):  # one style, not rich's where installed
                config["callbacks"] = [*callbacks, progress_bar()]
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (ValueError, TypeError) as err:  # Lightning's own complaints about trainer options
            raise UserInputError(f"trainer: {' '.join(str(err).split())}") from err
        use_atomic_checkpoints(trainer)
        return trainer

    def _announce_run_folder(self) -> None:
        if self.run_folder is None:
            return
        folder, stage = os.path.split(os.path.normpath(self.run_folder))
        if stage == self.subcommand and self.subcommand != "fit":  # an evaluation logging into its run
            log.info("Run folder: %s (this %s logs into %s)", folder, self.subcommand, self.run_folder)
        else:
            log.info("Run folder: %s", self.run_folder)

    def _run_subcommand(self, subcommand: str) -> None:
        super()._run_subcommand(subcommand)
        self._announce_run_folder()  # again at the end, where the output has scrolled it away

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit"):
            self.trainer.test(self.model, datamodule=self.datamodule)


_NOISE = re.compile(
    r"^(- )?(Expected a <class 'NoneType'>|Given value|Subtypes:|Errors:|Does not validate|Parser key|"
    r"Problem with given class_path|Not a valid subclass)"
)


def parse_error_line(message: str) -> str:
    """jsonargparse's nested, multi-line parse error as one line: the option's path, then its innermost reason."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    keys = re.findall(r'Parser key "([^"]+)"', message)
    reasons = [line for line in lines if not _NOISE.match(line)]
    reason = reasons[-1] if reasons else (lines[-1] if lines else message)
    reason = reason.removeprefix("- ")
    where = f"{'.'.join(keys)}: " if keys and not reason.startswith(keys[0]) else ""
    return f"{where}{reason.rstrip('.')}. See python -m nfl fit --help, or --data.help / --model.backbone.help CLASS."


def legacy_task(hparams: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint hyperparameters with the ``degree``/``path_len``/``num_nodes`` of a checkpoint written before
    graph tasks were pluggable turned into the path-star task they describe."""
    if "task" in hparams or "degree" not in hparams:
        return hparams
    hparams = dict(hparams)
    sizes = {k: hparams.pop(k) for k in ("degree", "path_len", "num_nodes") if k in hparams}
    hparams["task"] = legacy_task_spec(sizes)
    return hparams


def trainer_defaults() -> dict:
    """Defaults a config can override: TensorBoard under lightning_logs/; last.ckpt kept current at the end and
    when Ctrl-C or SIGTERM stops the run; a NaN or infinite training loss stops it; ``run_info.json`` records
    the parameter count, commit and package versions; the last training step is always logged."""
    return {
        "logger": {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": ".", "name": "lightning_logs", "default_hp_metric": False},
        },
        # LightningCLI appends default callbacks to a config's own list, so only this one lives here; the
        # configs set ModelCheckpoint (save_last: true) themselves.
        "callbacks": [
            KeepLastCheckpoint(), StopOnSignal(), StopOnNonFiniteLoss(), RecordRun(), LogLastStep(), TensorBoardViews(),
        ],
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
    defaults = trainer_defaults()
    stop = next(c for c in defaults["callbacks"] if isinstance(c, StopOnSignal))
    try:
        check_yaml_syntax(sys.argv[1:] if args is None else args)
        return NFLCLI(
            GraphSystem,
            TaskDataModule,
            subclass_mode_data=True,
            trainer_defaults=defaults,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "python -m nfl", "exit_on_error": False},
            args=args,
        )
    except argparse.ArgumentError as err:  # jsonargparse's: a typo'd option, an unknown class, a bad type
        print(f"error: {parse_error_line(str(err))}", file=sys.stderr)
        sys.exit(2)  # argparse's exit code for a command line it cannot parse
    except SIGTERMException:  # a signal stopped fit between steps, after last.ckpt was written
        sys.exit(128 + (stop.signum or signal.SIGTERM))
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

