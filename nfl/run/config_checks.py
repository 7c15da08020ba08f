"""Checks of a whole run config that no single constructor can make, and where each option lives in it.

The constructors check their own arguments (:mod:`nfl.errors`). What is left for the CLI: the config files'
YAML syntax, the trainer values nfl relies on (its training stream is endless, so a run stops at
``max_steps`` and validates every ``val_check_interval`` steps), Lightning's ``--optimizer`` and
``--lr_scheduler`` (which would replace the system's own optimiser without a word), and whether the run can
write its log folders. Each raises a :class:`~nfl.errors.UserInputError` before any data is generated.
"""

from __future__ import annotations

import datetime
import errno
import math
import os
from typing import Any, Optional, Sequence

import lightning.pytorch as pl
import yaml

from nfl.errors import OptionError, UserInputError, in_range, require
from nfl.models.base import Backbone
from nfl.objectives.base import Objective
from nfl.tasks.base import GraphTask

# Where the options of each kind of class sit in a ``python -m nfl`` config (first match wins).
CONFIG_PREFIXES: tuple[tuple[type, str], ...] = (
    (pl.LightningDataModule, "data.init_args"),
    (GraphTask, "data.init_args.task.init_args"),
    (Backbone, "model.backbone.init_args"),
    (Objective, "model.objective.init_args"),
    (pl.LightningModule, "model"),
)

OPTIMISER_OPTIONS = (
    "model.lr, model.weight_decay, model.betas, model.warmup_steps, model.lr_schedule, model.decay_steps, "
    "model.min_lr_ratio"
)


def locate(err: OptionError) -> OptionError:
    """Give ``err`` the config path of its option (``model.backbone.init_args.n_head`` rather than ``GPT.n_head``)."""
    if isinstance(err.owner, type):
        for base, prefix in CONFIG_PREFIXES:
            if issubclass(err.owner, base):
                err.prefix = prefix
                break
    return err


def config_files(args: Sequence[str]) -> list[str]:
    """The files given to ``--config`` / ``-c`` in ``args``."""
    files = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def check_yaml_syntax(args: Sequence[str]) -> None:
    """Refuse a ``--config`` file that is not valid YAML, naming the file, line and column."""
    for path in config_files(args):
        if not os.path.isfile(path):
            continue  # jsonargparse says so itself (and a value may be inline YAML rather than a file)
        try:
            with open(path, encoding="utf-8") as f:
                yaml.safe_load(f)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
            context = ""
            if err.context and err.context_mark and err.context_mark is not mark:
                context = f" ({err.context} at line {err.context_mark.line + 1}, column {err.context_mark.column + 1})"
            elif err.context:
                context = f" ({err.context})"
            raise UserInputError(f"{where}: YAML syntax error: {err.problem}{context}; fix the config file.") from None
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise UserInputError(f"{path}: not a YAML config file ({err}).") from None


SEED_MAX = 2**32 - 1  # numpy's seeds, which Lightning's seed_everything hands the value to


def check_parsed_values(config: Any) -> None:
    """Refuse, as soon as the command line is parsed, a ``seed_everything`` numpy cannot take and a NaN or
    infinite number anywhere in the config (no option of nfl or Lightning means anything by them)."""
    section = config[config.subcommand] if config.get("subcommand") else config
    seed = section.get("seed_everything")
    if not isinstance(seed, bool) and isinstance(seed, int):
        in_range("", "seed_everything", seed, 0, SEED_MAX, advice="or true for a random seed, false for none")
    for path, value in _leaves(section):
        require(not isinstance(value, float) or math.isfinite(value), "", path, value, "give a finite number")


def _leaves(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """``(option path, value)`` of every leaf of a parsed config (lists indexed as ``option[i]``)."""
    if hasattr(value, "__dict__") and type(value).__name__ == "Namespace":
        value = vars(value)
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, (list, tuple)):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, f"{path}[{i}]")]
    return [(path, value)]


def check_run_config(config: Any, subcommand: Optional[str]) -> None:
    """Refuse Lightning options that cannot work with nfl; ``config`` is the subcommand's parsed namespace."""
    for option in ("optimizer", "lr_scheduler"):
        value = config.get(option)
        if value is not None:
            raise OptionError(
                "", option, getattr(value, "class_path", value),
                "would replace the system's AdamW (its weight-decay groups) and warmup-cosine schedule, ignoring "
                f"the model's settings; set {OPTIMISER_OPTIONS} instead",
            )
    trainer = config.get("trainer")
    logger = trainer.get("logger") if trainer is not None else None
    suffix = logger.get("init_args", {}).get("filename_suffix") if hasattr(logger, "get") else None
    require(
        not isinstance(suffix, str) or "/" not in suffix and os.sep not in suffix, "trainer.logger.init_args",
        "filename_suffix", suffix, "is appended to the event file's name; give one without a path separator",
    )
    if subcommand != "fit" or trainer is None:
        return
    if not trainer.get("fast_dev_run"):  # fast_dev_run sets its own step count
        max_steps = trainer.get("max_steps")
        require(
            max_steps >= 1 or (max_steps == -1 and trainer.get("max_time") is not None),
            "trainer", "max_steps", max_steps,
            "a run trains for max_steps steps; set max_steps >= 1 (nfl's training stream is endless, so -1 would "
            "never stop unless trainer.max_time is set)",
        )
    require(
        trainer.get("check_val_every_n_epoch") is None, "trainer", "check_val_every_n_epoch",
        trainer.get("check_val_every_n_epoch"),
        "nfl's training epochs are endless, so validation would never run; set it to null and "
        "trainer.val_check_interval to a number of steps",
    )
    interval = trainer.get("val_check_interval")
    steps = isinstance(interval, int) and not isinstance(interval, bool)
    require(
        (steps and interval >= 1) or isinstance(interval, (str, dict, datetime.timedelta)),
        "trainer", "val_check_interval", interval,
        "validate every N training steps: give an integer N >= 1 (a fraction of an epoch does not work, "
        "nfl's epochs are endless)",
    )
    accumulate = trainer.get("accumulate_grad_batches")
    require(accumulate is None or accumulate >= 1, "trainer", "accumulate_grad_batches", accumulate, "must be >= 1")


def check_writable(trainer: pl.Trainer) -> None:
    """Refuse a run whose log or checkpoint folder cannot be created or written, before any work."""
    folders = [("trainer.default_root_dir", trainer.default_root_dir)]
    folders += [("trainer.logger.init_args.save_dir", logger.save_dir) for logger in trainer.loggers if logger.save_dir]
    folders += [
        ("ModelCheckpoint dirpath", cb.dirpath)
        for cb in trainer.callbacks
        if isinstance(cb, pl.callbacks.ModelCheckpoint) and cb.dirpath
    ]
    for option, folder in folders:
        problem = _unwritable(os.fspath(folder))
        if problem:
            raise UserInputError(
                f"{option}: cannot write to {os.path.abspath(folder)} ({problem}); choose a writable folder "
                "(e.g. --trainer.default_root_dir DIR) or run from one."
            )


def _unwritable(folder: str) -> Optional[str]:
    """Why ``folder`` cannot be created or written to, or None. Looks at its nearest existing ancestor."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    if not os.path.isdir(path):
        return f"{path} is a file, not a folder"
    if not os.access(path, os.W_OK | os.X_OK):
        return os.strerror(errno.EROFS if _read_only_mount(path) else errno.EACCES)
    return None


def _read_only_mount(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def os_error_line(err: OSError) -> Optional[str]:
    """One line for a permission, read-only-filesystem, name-too-long, full-disk or missing-folder error met while
    running, or None for other errors."""
    where = f" {err.filename}" if err.filename else ""
    if isinstance(err, PermissionError) or err.errno == errno.EROFS:
        return f"cannot write{where}: {err.strerror}; choose a writable folder (e.g. --trainer.default_root_dir DIR)."
    if err.errno in (errno.ENAMETOOLONG, errno.ENOSPC) or (err.errno == errno.ENOENT and err.filename):
        return f"cannot open{where}: {err.strerror}; check the folder and file names the run writes to (e.g. " \
               "--trainer.default_root_dir DIR, the logger's save_dir, name and filename_suffix)."
    return None
