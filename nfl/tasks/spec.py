"""The graph task a config describes, built from its ``data`` section without Lightning.

``python -m nfl.data generate --config FILE`` and ``python -m nfl.report`` need the task of a config (or of a
run's saved ``config.yaml``) but not the data module, whose import pulls in Lightning. Both data module
spellings are understood: ``nfl.data.PathStarDataModule`` with its ``degree``, ``path_len``, ``num_nodes`` and
``scratchpad``, and ``nfl.data.TaskDataModule`` with ``task: {class_path: ..., init_args: ...}``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from nfl.errors import UserInputError
from nfl.tasks.base import GraphTask
from nfl.tasks.path_star import PathStar

_PATH_STAR_KEYS = ("degree", "path_len", "num_nodes", "scratchpad")


def default_task() -> GraphTask:
    """The task of a model or checkpoint whose config names none: path-star G(2,5,50), the task of Bachmann &
    Nagarajan (2024) and every reference config. The one place nfl says what the default task is."""
    return PathStar()


def legacy_task_spec(sizes: dict[str, Any]) -> dict[str, Any]:
    """The task spec of a checkpoint written before tasks were pluggable: path-star with its saved sizes."""
    spec = task_spec(default_task())
    return {"class_path": spec["class_path"], "init_args": {**spec["init_args"], **sizes}}


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise UserInputError(f"task class_path {class_path!r} does not name a class; e.g. nfl.tasks.TreeStar.") from None


def task_spec(task: GraphTask) -> dict[str, Any]:
    """``{class_path, init_args}`` of a task: how checkpoints record it (plain data, loadable without
    unpickling nfl's classes), and how a config writes it."""
    cls = type(task)
    args = {f.name: getattr(task, f.name) for f in dataclasses.fields(task)}
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": args}


def task_from_spec(spec: Any, source: str = "the config") -> GraphTask:
    """The task of a ``{class_path, init_args}`` mapping (or a bare class path)."""
    if isinstance(spec, str):
        spec = {"class_path": spec}
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise UserInputError(f"{source}: data.init_args.task needs a class_path, e.g. nfl.tasks.TreeStar.")
    cls = _import(spec["class_path"])
    if not (isinstance(cls, type) and issubclass(cls, GraphTask)):
        raise UserInputError(f"{source}: {spec['class_path']} is not a graph task (a subclass of nfl.tasks.GraphTask).")
    try:
        return cls(**(spec.get("init_args") or {}))
    except TypeError as err:
        raise UserInputError(f"{source}: {spec['class_path']}: {err}.") from None


def task_from_data(data: Any, source: str = "the config") -> GraphTask:
    """The task of a config's ``data`` section (a mapping with ``class_path`` and ``init_args``)."""
    if not isinstance(data, dict) or "class_path" not in data:
        raise UserInputError(f"{source}: its 'data' section needs a class_path (nfl.data.PathStarDataModule or nfl.data.TaskDataModule).")
    args = data.get("init_args") or {}
    if data["class_path"].rsplit(".", 1)[-1] == "PathStarDataModule":
        return PathStar(**{k: args[k] for k in _PATH_STAR_KEYS if k in args})
    return task_from_spec(args.get("task"), source)


def reverse_of(data: Any) -> bool:
    return bool(((data or {}).get("init_args") or {}).get("reverse", False))
