"""Checkpoint files: written atomically, read with one clear line when they cannot be, newest good one found.

Every checkpoint a run writes (ModelCheckpoint's, ``last.ckpt``, SLURM's ``hpc_ckpt_<n>.ckpt``) goes through
:class:`AtomicCheckpointIO`: serialised in memory (as Lightning does), written to a hidden temporary file in
the same folder, flushed to disk, then renamed over the target. A save that fails (disk full, read-only
folder) leaves the previous checkpoint intact and ends the run with one line naming the folder and the
cause. A checkpoint that does not load (missing, truncated, not a checkpoint) is reported in one line
naming the file; :func:`newest_loadable` skips such files when a sweep picks the one to resume from.
"""

from __future__ import annotations

import glob
import io
import os
import tempfile
from typing import Any, Callable, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from nfl.errors import UserInputError


class CheckpointWriteError(UserInputError):
    """A checkpoint could not be written; the ones already in its folder are untouched."""


class UnreadableCheckpoint(UserInputError):
    """A checkpoint file is missing or does not load."""


def write_atomically(data: bytes | memoryview, path: str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as open() would make it: mkstemp's 0600 would hide it from the group
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        cause = (err.strerror or str(err)).lower()
        raise CheckpointWriteError(
            f"Cannot save checkpoint {os.path.basename(path)} in {folder}: {cause}. The checkpoints already "
            "there are intact; free space or choose a writable folder (--trainer.default_root_dir) and resume."
        ) from None


def read_checkpoint(path: str, **load_args: Any) -> dict[str, Any]:
    """``torch.load`` a checkpoint (on CPU unless ``map_location`` says otherwise), or :class:`UnreadableCheckpoint`."""
    if not os.path.isfile(path):
        raise UnreadableCheckpoint(f"Checkpoint {path} does not exist{' (it is a folder)' if os.path.isdir(path) else ''}.")
    if load_args.get("map_location") is None:
        load_args["map_location"] = "cpu"
    if load_args.get("weights_only") is None:
        load_args["weights_only"] = False  # a run's own checkpoints hold hyper-parameters, not only tensors
    try:
        checkpoint = torch.load(path, **load_args)
    except Exception as err:  # torch reports a truncated or foreign file in many ways (RuntimeError, EOFError, ...)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnreadableCheckpoint(
            f"Checkpoint {path} does not load ({reason}): it is truncated, corrupt or not a checkpoint. "
            "Pass another --ckpt_path, e.g. a periodic checkpoint in the same folder."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UnreadableCheckpoint(f"{path} is not a Lightning checkpoint (no state_dict); pass another --ckpt_path.")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with atomic local writes and one-line load errors (remote URLs as before)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomically(buffer.getbuffer(), str(path))

    def load_checkpoint(
        self, path: Any, map_location: Optional[Callable] = lambda storage, loc: storage, weights_only: Optional[bool] = None
    ) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only)
        return read_checkpoint(str(path), map_location=map_location, weights_only=weights_only)


def use_atomic_checkpoints(trainer: Any) -> None:
    """Make ``trainer`` save through :class:`AtomicCheckpointIO`, unless a config chose its own checkpoint IO."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


def newest_loadable(folder: str) -> tuple[Optional[str], list[str]]:
    """The newest ``*.ckpt`` in ``folder`` that loads (last.ckpt first when as new), and why newer ones were skipped."""
    candidates = sorted(
        glob.glob(os.path.join(folder, "*.ckpt")),
        key=lambda p: (os.path.getmtime(p), os.path.basename(p) == "last.ckpt"),
        reverse=True,
    )
    skipped = []
    for path in candidates:
        try:
            read_checkpoint(path, mmap=True)  # maps the tensors rather than reading them
        except UnreadableCheckpoint as err:
            skipped.append(str(err))
            continue
        return path, skipped
    return None, skipped
