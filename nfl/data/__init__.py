"""Data for graph tasks: the LightningDataModules, the codec for pretrained tokenizers, ``python -m nfl.data``.

The data modules import Lightning, which takes seconds; they are loaded on first use, so that
``python -m nfl.data generate`` (numpy only) starts fast.
"""

from typing import Any

__all__ = ["PathStarDataModule", "TaskDataModule"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from nfl.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'nfl.data' has no attribute {name!r}")
