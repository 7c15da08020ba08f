"""Where a run writes, and what a run started from a checkpoint takes from it, settled before anything is built.

- ``--trainer.default_root_dir DIR`` holds the run's TensorBoard events and checkpoints, as in plain
  Lightning: the default logger's ``save_dir`` (``.``) follows it.
- ``fit --ckpt_path .../<name>/<version>/checkpoints/X.ckpt`` continues that TensorBoard run (same version
  folder, so curves continue and last.ckpt is replaced in place) unless a logger version was chosen.
- ``validate``, ``test`` and ``predict --ckpt_path <run>/checkpoints/X.ckpt`` log into ``<run>/<subcommand>/``
  (TensorBoard or CSV), so the run's folder holds its training and its evaluations together.
- :func:`run_folder` names the folder a run writes, which the CLI prints first and last.
- Model options given with ``--ckpt_path`` must agree with the checkpoint's (:func:`refuse_contradictions`).
"""

from __future__ import annotations

import glob
import importlib
import os
import re
from typing import Any, Optional

from jsonargparse import Namespace

from nfl.errors import UserInputError
from nfl.tasks.spec import task_from_spec

# Lightning's names for checkpoints it finds itself; they are not files to inspect here.
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")
# Sub-folders of a run where an evaluation of one of its checkpoints logs (named after the subcommand).
STAGE_FOLDERS = ("validate", "test", "predict")
CSV_LOG = "metrics.csv"  # what Lightning's CSVLogger writes into a run folder
# Files that mark a folder as a run's log folder (besides TensorBoard's event files).
RUN_FILES = ("config.yaml", "hparams.yaml", CSV_LOG)


def checkpoint_file(ckpt_path: Optional[str]) -> Optional[str]:
    """``ckpt_path`` when it names a file (not one of Lightning's ``last``, ``best``, ``hpc``, ``registry...``)."""
    if not ckpt_path or str(ckpt_path).split(":")[0] in SPECIAL_CKPT_PATHS:
        return None
    return str(ckpt_path)


def _folder_logger_class(class_path: str) -> bool:
    """Whether ``class_path`` is a logger that writes into ``save_dir/name/version`` (TensorBoard, CSV)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    module, _, name = str(class_path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, (TensorBoardLogger, CSVLogger))


def _logger_args(trainer: Namespace) -> Optional[Namespace]:
    """The init_args of the one configured logger, if it has a ``save_dir``."""
    logger = trainer.get("logger")
    if isinstance(logger, Namespace) and isinstance(logger.get("init_args"), Namespace):
        if "save_dir" in vars(logger.init_args):
            return logger.init_args
    return None


def is_run_folder(folder: str) -> bool:
    """Whether ``folder`` holds a run's logs: TensorBoard events, a CSV log or a saved config."""
    return any(os.path.isfile(os.path.join(folder, f)) for f in RUN_FILES) or bool(
        glob.glob(os.path.join(glob.escape(folder), "events.out.tfevents.*"))
    )


def run_of_checkpoint(ckpt: str) -> Optional[str]:
    """The run folder a checkpoint was saved in (``<run>/checkpoints/X.ckpt``), or None."""
    folder = os.path.dirname(os.path.abspath(ckpt))
    run = os.path.dirname(folder)
    if os.path.basename(folder) != "checkpoints" or not is_run_folder(run):
        return None
    relative = os.path.relpath(run)
    return run if relative.startswith("..") else relative


def settle_log_folder(config: Namespace, subcommand: str) -> None:
    """Point the logger at ``default_root_dir``; for a resumed ``fit``, at its checkpoint's version; for an
    evaluation of a run's checkpoint, at ``<run>/<subcommand>/``."""
    trainer = config.trainer
    args = _logger_args(trainer)
    if args is None:
        return
    if trainer.get("default_root_dir") is not None and args.save_dir == ".":
        args.save_dir = str(trainer.default_root_dir)
    ckpt = checkpoint_file(config.get("ckpt_path"))
    if ckpt is None or args.get("version") is not None or not _folder_logger_class(trainer.logger.get("class_path", "")):
        return
    if subcommand != "fit":
        run = run_of_checkpoint(ckpt)
        if run is not None:
            args.save_dir, args.name, args.version = os.path.dirname(run) or ".", os.path.basename(run), subcommand
        return
    folder = os.path.dirname(os.path.abspath(ckpt))
    run = os.path.dirname(folder)
    if os.path.basename(folder) != "checkpoints":
        return
    experiment = os.path.join(str(args.save_dir), str(args.name or ""))
    if os.path.isdir(experiment) and os.path.samefile(os.path.dirname(run), experiment):
        version = os.path.basename(run)
        match = re.fullmatch(r"version_(\d+)", version)
        args.version = int(match.group(1)) if match else version


def run_folder(logger: Any) -> Optional[str]:
    """The folder ``logger`` writes (a run's ``log_dir``; for an evaluation, the run it logs into), or None."""
    if isinstance(logger, (list, tuple)):
        logger = logger[0] if logger else None
    if logger is None or isinstance(logger, bool):
        return None
    folder = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
    return None if folder is None else os.path.normpath(str(folder))


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts and Namespaces as ``{"a.b.c": leaf}``; tuples as lists, as a checkpoint stores them."""
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: list(value) if isinstance(value, tuple) else value}


def contradictions(saved: dict[str, Any], given: Namespace, keys: tuple[str, ...]) -> list[tuple[str, Any, Any]]:
    """``(option, checkpoint value, given value)`` for each model option under ``keys`` that differs.

    Options the checkpoint does not record (added to nfl after it was written) are not compared.
    """
    saved_flat = _flat({k: saved[k] for k in keys if k in saved})
    given_flat = _flat({k: given.get(k) for k in keys if k in saved})
    return [(k, saved_flat.get(k), v) for k, v in given_flat.items() if saved_flat.get(k) != v]


def _option(key: str, linked: dict[str, str]) -> str:
    """The option a user types for a flattened model key: ``task.init_args.degree`` is the data's ``degree``."""
    head, _, rest = key.partition(".")
    if key == "task.class_path":
        return "data task class"
    if head == "task":  # linked["task"]: where the task's options sit in the data section
        return f"{linked.get('task', 'data.init_args.task.init_args')}.{rest.removeprefix('init_args.')}"
    return linked.get(head, "model." + key)


def refuse_contradictions(ckpt: str, saved: dict[str, Any], given: Namespace, keys: tuple[str, ...], linked: dict[str, str]) -> None:
    """Raise :class:`UserInputError` naming every model option under ``keys`` that differs from the checkpoint.

    LightningCLI would otherwise replace them silently by the checkpoint's (or fail to load the weights).
    ``linked`` maps a model option set from the data module (``degree``) to the option the user types.
    """
    differ = contradictions(saved, given, keys)
    if not differ:
        return
    if any(k == "task.class_path" for k, _, _ in differ):  # another task altogether: its options say nothing more
        differ = [d for d in differ if not d[0].startswith("task.") or d[0] == "task.class_path"]
    shown = "; ".join(f"--{_option(k, linked)} is {old!r} in the checkpoint, {new!r} here" for k, old, new in differ)
    graph = ""
    if any(k.split(".")[0] == "task" for k, _, _ in differ) and isinstance(saved.get("task"), dict):

        graph = f" The checkpoint is for {task_from_spec(saved['task']).describe()}."
    raise UserInputError(
        f"{ckpt} does not match this command line: {shown}.{graph} Drop these options or set them as in the "
        "checkpoint, or start a new run without --ckpt_path."
    )
