"""Errors that mean "the input is wrong, here is what to change", and the checks of option values that raise them.

The CLI prints a :class:`UserInputError` as one ``error:`` line, without a traceback. An :class:`OptionError` names
the option it is about by the class that owns it (``GPT.n_head``); the CLI rewrites that prefix to the option's
path in the config (``model.backbone.init_args.n_head``), so the user can paste it back as ``--option=value``.

Constructors check their arguments with :func:`require`, :func:`at_least`, :func:`above` and :func:`in_range`, before
building anything, so a value that cannot work is refused before any data is generated or any step is trained.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, NoReturn, Optional, Union


class UserInputError(ValueError):
    """Base class of errors caused by a config value or data file, whose message says what to change."""


class OptionError(UserInputError):
    """One option's value cannot work. ``str()`` is ``prefix.option=value: advice``."""

    def __init__(self, owner: Union[type, str], option: str, value: Any, advice: str) -> None:
        super().__init__(owner, option, value, advice)  # all four in args, so the error pickles across processes
        self.owner, self.option, self.value, self.advice = owner, option, value, advice
        self.prefix = owner if isinstance(owner, str) else owner.__name__

    @property
    def path(self) -> str:
        return f"{self.prefix}.{self.option}" if self.prefix else self.option

    def __str__(self) -> str:
        return f"{self.path}={_show(self.value)}: {self.advice.rstrip('.')}."


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


def require(ok: bool, owner: Union[type, str], option: str, value: Any, advice: str) -> None:
    """Raise :class:`OptionError` with ``advice`` (what to change) unless ``ok``."""
    if not ok:
        raise OptionError(owner, option, value, advice)


def at_least(owner: Union[type, str], option: str, value: Optional[float], low: float, advice: str = "") -> None:
    """``value >= low``; ``None`` passes (an optional option left unset). NaN fails."""
    if value is not None and not value >= low:
        raise OptionError(owner, option, value, f"must be >= {low}" + (f" ({advice})" if advice else ""))


def above(owner: Union[type, str], option: str, value: Optional[float], low: float, advice: str = "") -> None:
    """``low < value < inf``; ``None`` passes. NaN fails."""
    if value is not None and not low < value < math.inf:
        raise OptionError(owner, option, value, f"must be > {low}" + (f" ({advice})" if advice else ""))


def in_range(
    owner: Union[type, str],
    option: str,
    value: Optional[float],
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
    advice: str = "",
) -> None:
    """``low <= value <= high`` (``<`` on an open side); ``None`` passes, NaN and infinities fail."""
    if value is None:
        return
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high
    )
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise OptionError(owner, option, value, f"must be in {interval}" + (f" ({advice})" if advice else ""))


def yaml_error_line(path: str, err: Exception, fix: str = "fix the file") -> str:
    """One line for a YAML parse error: the file, line and column, and what the parser found."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    what = getattr(err, "problem", None) or (str(err).splitlines() or [type(err).__name__])[0]
    return f"{where}: not valid YAML ({what}); {fix}."


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` for nfl's commands: a flag that does not parse ends in one ``error:`` line naming the
    command's ``--help`` (exit status 2), not a usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}; see {self.prog} --help.", file=sys.stderr)
        sys.exit(2)
