"""What the task contract and its helpers (text files, scratchpads) share: the ignored label and the task errors."""

from nfl.errors import UserInputError

IGNORE_INDEX = -100  # answer columns past a row's end: no loss, no metric


class InfeasibleGraphError(UserInputError):
    """Task options that cannot produce a graph (too few labels for the nodes it needs, empty ranges)."""


class DataFileError(UserInputError):
    """A data file that cannot be read as the configured task."""
