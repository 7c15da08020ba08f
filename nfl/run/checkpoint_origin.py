"""Checkpoints from elsewhere: classes this nfl cannot import, or options of a newer nfl, refused in one line.

``--ckpt_path`` rebuilds the model from the checkpoint's hyperparameters. A checkpoint written by another
installation (a plugin's task or backbone, a newer nfl) can name a class that does not import here, or model
options this nfl's system does not have; either would surface as a complaint about the config. Here it is one
line that says what the checkpoint holds and what the config asks for.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Optional

import nfl
from nfl.errors import UserInputError

NFL_VERSION = "nfl_version"  # the checkpoint key of the nfl version that wrote it (GraphSystem.on_save_checkpoint)
PARTS = ("task", "backbone", "objective")  # the model's parts a checkpoint names by class_path


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def written_by_newer(checkpoint: dict[str, Any]) -> Optional[str]:
    """The version of nfl that wrote ``checkpoint`` when it is newer than this one, else None."""
    version = checkpoint.get(NFL_VERSION)
    if isinstance(version, str) and _version(version) > _version(nfl.__version__):
        return version
    return None


def import_problem(class_path: str) -> Optional[str]:
    """Why ``class_path`` does not import as a class, or None when it does."""
    module, _, name = str(class_path).rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except ImportError as err:
        return f"no module {err.name or module}"
    except (AttributeError, ValueError):
        return f"{module or class_path} has no {name or class_path}"
    return None if isinstance(found, type) else f"{class_path} is not a class"


def _class_path(spec: Any) -> Optional[str]:
    if isinstance(spec, str):
        return spec
    getter = getattr(spec, "get", None)
    return getter("class_path") if getter is not None else None


def refuse_foreign(ckpt: str, checkpoint: dict[str, Any], saved: dict[str, Any], given: Any, system: type) -> None:
    """Raise :class:`UserInputError` when the checkpoint's task, backbone or objective class does not import, or
    its hyperparameters hold options ``system`` does not take. ``saved``: its hyperparameters; ``given``: the
    config's model options (with its task)."""
    newer = written_by_newer(checkpoint)
    origin = f" (it was written by nfl {newer}; this is nfl {nfl.__version__})" if newer else ""
    for part in PARTS:
        held = _class_path(saved.get(part))
        problem = import_problem(held) if held else None
        if problem:
            asked = _class_path(given.get(part)) or "its default"
            raise UserInputError(
                f"{ckpt} holds a {part} of class {held}, which cannot be imported here ({problem}){origin}; the "
                f"config asks for {asked}. Install what defines {held}"
                + (" (a newer nfl)" if newer else "") + ", or start a new run without --ckpt_path."
            )
    accepted = set(inspect.signature(system.__init__).parameters) - {"self"}
    unknown = sorted(k for k in saved if k not in accepted and not k.startswith("_"))
    if unknown:
        raise UserInputError(
            f"{ckpt} holds model options this nfl does not have ({', '.join(unknown)}){origin or ', probably a newer nfl'}"
            "; upgrade nfl to load it, or start a new run without --ckpt_path."
        )
