"""The dependency messages that ``python -m nfl`` silences, each matched exactly, and why.

Every run used to print a handful of lines that are not the user's business: an advertisement, deprecation
notices between Lightning and its own dependencies, and notes about state nfl never asks Lightning to
restore. Each filter below matches one message by its text (or one warning class), so any other warning,
including a new one from the same library, still reaches the user.
"""

from __future__ import annotations

import logging
import warnings

# Lightning's suggestion to install its cloud logger, printed on every run.
_ADVERTISEMENTS = ("💡 Tip:",)

# Warnings raised inside dependencies about how they call each other; nothing a user of nfl can act on.
_DEPENDENCY_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's own use of torch's pytree
    r"Precision .* is not supported by the model summary",  # the summary's size estimate under mixed precision
    r"Couldn't infer the batch indices fetched from your dataloader",  # PredictionWriter does not use them
)

# Evaluating a checkpoint writes to a folder of its own (its run's test/, say), so its ModelCheckpoint state (best scores, which nfl does
# not use) is not restored: Lightning says so on every test/validate/predict.
_EVALUATION_WARNINGS = (r"The dirpath has changed from",)


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def silence_dependency_noise() -> None:
    """Install the filters for a run of ``fit``, ``validate``, ``test`` or ``predict`` (idempotent)."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropPrefixes) for f in logger.filters):
        logger.addFilter(_DropPrefixes(_ADVERTISEMENTS))
    for message in _DEPENDENCY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    try:  # jsonargparse's notices about the API Lightning's CLI still calls
        from jsonargparse._deprecated import JsonargparseDeprecationWarning
    except ImportError:
        pass
    else:
        warnings.filterwarnings("ignore", category=JsonargparseDeprecationWarning)


# A fit resumed from a checkpoint continues its own run folder, which of course already holds checkpoints.
_RESUME_WARNINGS = (r"Checkpoint directory .* exists and is not empty",)


def silence_resume_noise() -> None:
    """Filters for ``fit --ckpt_path``, which writes into the folder it resumes from."""
    for message in _RESUME_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def silence_evaluation_noise() -> None:
    """Filters for evaluating a saved checkpoint (not for ``fit``, where a changed folder may matter)."""
    for message in _EVALUATION_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
