"""Where a run writes, and what a run started from a checkpoint takes from it, settled before anything is built.

- ``--trainer.default_root_dir DIR`` holds the run's TensorBoard events and checkpoints, as in plain
  Lightning: the default logger's ``save_dir`` (``.``) follows it.
- ``fit --ckpt_path .../<name>/<version>/checkpoints/X.ckpt`` continues that TensorBoard run (same version
  folder, so curves continue and last.ckpt is replaced in place) unless a logger version was chosen.
"""

from __future__ import annotations

import os
import re
from typing import Optional

from jsonargparse import Namespace

# Lightning's names for checkpoints it finds itself; they are not files to inspect here.
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def checkpoint_file(ckpt_path: Optional[str]) -> Optional[str]:
    """``ckpt_path`` when it names a file (not one of Lightning's ``last``, ``best``, ``hpc``, ``registry...``)."""
    if not ckpt_path or str(ckpt_path).split(":")[0] in SPECIAL_CKPT_PATHS:
        return None
    return str(ckpt_path)


def _logger_args(trainer: Namespace) -> Optional[Namespace]:
    """The init_args of the one configured logger that writes under ``save_dir/name/version``, if any."""
    logger = trainer.get("logger")
    if isinstance(logger, Namespace) and isinstance(logger.get("init_args"), Namespace):
        args = logger.init_args
        if {"save_dir", "name", "version"} <= set(vars(args)):
            return args
    return None


def settle_log_folder(config: Namespace, subcommand: str) -> None:
    """Point the logger at ``default_root_dir`` and, for a resumed ``fit``, at its checkpoint's version."""
    trainer = config.trainer
    args = _logger_args(trainer)
    if args is None:
        return
    if trainer.get("default_root_dir") is not None and args.save_dir == ".":
        args.save_dir = str(trainer.default_root_dir)
    ckpt = checkpoint_file(config.get("ckpt_path"))
    if subcommand != "fit" or ckpt is None or args.version is not None:
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
