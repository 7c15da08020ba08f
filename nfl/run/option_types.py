"""Each option's value checked against its class's signature: no null where the type has none, and options
without a type (keyword arguments a class passes on, such as TensorBoard's ``flush_secs``) given values of their
default's type, finite and of a sensible size.

jsonargparse accepts ``null`` for a typed option and any value for an untyped one; either would otherwise fail
deep inside a constructor or, worse, at the first step. The signatures are jsonargparse's own view of a class
(keyword arguments followed into the classes they reach), so what is checked is what ``--help`` lists.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from typing import Any, Iterator, Optional

from nfl.errors import OptionError

UNTYPED_MAX = 1e9  # an untyped number beyond this means nothing to any option that has one (seconds, counts)
NON_FINITE = {"nan", "inf", "-inf", "+inf", "infinity", "-infinity", ".inf", "-.inf", ".nan"}


def _parameters(cls: Any) -> dict[str, inspect.Parameter]:
    try:
        from jsonargparse._parameter_resolvers import get_signature_parameters  # follows **kwargs, as --help does

        params = get_signature_parameters(cls)
    except Exception:  # noqa: BLE001 - an older jsonargparse, or a class it cannot read: its own signature
        try:
            params = list(inspect.signature(cls).parameters.values())
        except (TypeError, ValueError):
            return {}
    return {p.name: p for p in params}


def _allows_none(annotation: Any) -> bool:
    """Whether null is one of the annotation's values: Optional, a Union or ``X | None`` holding None, a
    ``Literal`` listing None; an annotation left as a string cannot be read here and is given the benefit."""
    if annotation in (Any, None, type(None), inspect.Parameter.empty) or isinstance(annotation, str):
        return True
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return None in args
    return type(None) in args or any(_allows_none(a) for a in args if typing.get_origin(a) in (typing.Union, types.UnionType, typing.Literal))


def _class(class_path: Any) -> Optional[type]:
    module, _, name = str(class_path).rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return found if isinstance(found, type) else None


def _nodes(value: Any, path: str) -> Iterator[tuple[str, type, dict[str, Any]]]:
    """``(path of its init_args, class, init_args)`` of every ``class_path`` node under ``value``."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        if "class_path" in value and isinstance(value.get("init_args"), dict):
            cls = _class(value["class_path"])
            if cls is not None:
                yield f"{path}.init_args" if path else "init_args", cls, value["init_args"]
        for key, item in value.items():
            yield from _nodes(item, f"{path}.{key}" if path else key)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _nodes(item, f"{path}[{i}]")


def check_values(where: str, cls: type, values: dict[str, Any]) -> None:
    """Refuse a null that ``cls``'s signature does not allow, and an untyped option given a value unlike its
    default's (or non-finite, or huge); ``where`` is the config path of ``values``."""
    params = _parameters(cls)
    for name, value in values.items():
        param = params.get(name)
        if param is None or hasattr(value, "as_dict") or isinstance(value, dict):
            continue
        option, typed = f"{where}.{name}" if where else name, param.annotation is not inspect.Parameter.empty
        if typed:
            if value is None and param.default is not None and not _allows_none(param.annotation):
                raise OptionError("", option, value, f"needs a value (null is not one of its types: {_name(param.annotation)})")
            continue
        default = param.default
        if isinstance(value, str) and value.strip().lower() in NON_FINITE:
            raise OptionError("", option, value, "give a finite number")
        if default is None or default is inspect.Parameter.empty:
            continue
        kind = type(default)
        same = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            same = True
        if not same:
            article = "an" if kind.__name__[0] in "aeiou" else "a"
            raise OptionError("", option, value, f"give {article} {kind.__name__} like its default, {default!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not abs(value) <= UNTYPED_MAX:
            raise OptionError("", option, value, f"give a finite number of at most {UNTYPED_MAX:g}")


def _name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def check_config_values(section: Any, model_class: type, trainer_class: type) -> None:
    """:func:`check_values` for the trainer, the system (``model``) and every class a config names."""
    as_dict = section.as_dict() if hasattr(section, "as_dict") else dict(section)
    for key, cls in (("trainer", trainer_class), ("model", model_class)):
        if isinstance(as_dict.get(key), dict):
            check_values(key, cls, as_dict[key])
    for where, cls, values in _nodes(as_dict, ""):
        check_values(where, cls, values)
