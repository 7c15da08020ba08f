"""Path-star task data: token ids, generation, the reference text format and the LightningDataModule."""

from nfl.data.datamodule import PathStarDataModule
from nfl.data.path_star import DataFileError, read_file, sample_graphs, write_file
from nfl.data.vocab import InfeasibleGraphError, PathStarTask

__all__ = [
    "DataFileError",
    "InfeasibleGraphError",
    "PathStarDataModule",
    "PathStarTask",
    "read_file",
    "sample_graphs",
    "write_file",
]
