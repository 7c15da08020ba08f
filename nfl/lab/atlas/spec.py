"""The atlas file (``configs/atlas.yaml``) loaded and checked: claims, settings, published numbers, nfl sources.

Every mistake is one line naming the entry and what to change.

The atlas file lists claims; each claim lists settings (a graph, a model, an objective), each with the published
number and its source, and one or more nfl sources: the sweep file whose runs measure that setting and the
folder where its finished runs are kept (TensorBoard events or CSV logs, read with :mod:`nfl.lab.report.logs`), or a report's
``results.csv``. :mod:`nfl.lab.atlas.rows` measures each setting; :mod:`nfl.lab.atlas.page` writes the pages.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Optional

import yaml

from nfl.errors import UserInputError, yaml_error_line
from nfl.lab.report.logs import SOLVED
from nfl.lab.sweep.spec import load_sweep

# Keys of each level of the atlas file: (required, optional).
CLAIM_KEYS = ({"id", "title", "paper", "claim", "settings"}, {"note"})
SETTING_KEYS = ({"name", "graph", "published", "nfl"}, {"note"})
PUBLISHED_KEYS = ({"value", "source"}, {"n_test", "budget", "read_error"})
SOURCE_KEYS = ({"sweep", "runs"}, {"logs", "csv", "label"})


def _check_keys(where: str, entry: Any, keys: tuple[set, set]) -> None:
    required, optional = keys
    if not isinstance(entry, dict):
        raise UserInputError(f"{where}: expected a mapping with keys {', '.join(sorted(required))}.")
    unknown = sorted(set(entry) - required - optional)
    if unknown:
        raise UserInputError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(required | optional))}.")
    missing = sorted(required - set(entry))
    if missing:
        raise UserInputError(f"{where}: missing {missing[0]!r} (needs {', '.join(sorted(required))}).")


def degree_of(graph: str, where: str) -> int:
    match = re.fullmatch(r"G\((\d+),\s*(\d+)(?:,\s*(\d+))?\)", graph.strip())
    if not match:
        raise UserInputError(f"{where}: graph {graph!r} is not G(d,l) or G(d,l,n), e.g. G(2,5,50).")
    return int(match.group(1))


def target_of(published: dict, graph: str) -> tuple[Optional[str], Optional[float]]:
    """``(kind, value in %)`` of a published entry: ``("number", v)``, ``("chance", 100/d)``, ``("solved", 95)``
    or ``(None, None)`` when no published number was found."""
    value = published["value"]
    if value is None:
        return None, None
    if value == "chance":
        return "chance", 100.0 / degree_of(graph, "graph")
    if value == "solved":
        return "solved", 100.0 * SOLVED
    return "number", float(value)


def load_atlas(path: str) -> list[dict]:
    """Parse and check an atlas file; every mistake is one line naming the entry and what to change."""
    try:
        with open(path) as f:
            spec = yaml.safe_load(f)
    except OSError as err:
        raise UserInputError(f"cannot read atlas file {path!r}: {err.strerror or err}.") from None
    except yaml.YAMLError as err:
        raise UserInputError(yaml_error_line(path, err, "fix the atlas file")) from None
    if not isinstance(spec, dict) or set(spec) != {"claims"} or not isinstance(spec["claims"], list):
        keys = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
        raise UserInputError(f"{path}: an atlas file has one key, 'claims', a list of claims (found {keys}).")
    ids = set()
    for i, claim in enumerate(spec["claims"]):
        where = f"{path}: claims[{i}]"
        _check_keys(where, claim, CLAIM_KEYS)
        where = f"{path}: claim {claim['id']!r}"
        if not re.fullmatch(r"[a-z0-9_]+", str(claim["id"])) or claim["id"] in ids:
            raise UserInputError(f"{where}: ids are unique and made of a-z, 0-9 and _ (they name the pages).")
        ids.add(claim["id"])
        if not isinstance(claim["settings"], list) or not claim["settings"]:
            raise UserInputError(f"{where}: 'settings' is a non-empty list of settings.")
        for j, setting in enumerate(claim["settings"]):
            _check_setting(f"{where}, settings[{j}]", setting)
    return spec["claims"]


def _check_setting(where: str, setting: Any) -> None:
    _check_keys(where, setting, SETTING_KEYS)
    where = f"{where} ({setting['name']})"
    degree_of(str(setting["graph"]), where)
    published = setting["published"]
    _check_keys(f"{where}, published", published, PUBLISHED_KEYS)
    value = published["value"]
    if not (value is None or value in ("chance", "solved") or
            (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 100)):
        raise UserInputError(f"{where}, published.value={value!r}: give a % in 0..100, 'chance', 'solved' or null "
                             "(no published number found).")
    for key in ("n_test", "budget"):
        given = published.get(key)
        if given is not None and (isinstance(given, bool) or not isinstance(given, (int, float)) or
                                  not 0 < given < math.inf):
            raise UserInputError(f"{where}, published.{key}={given!r}: a positive count of graphs, or null if unknown.")
    read_error = published.get("read_error", 0)
    if isinstance(read_error, bool) or not isinstance(read_error, (int, float)) or not 0 <= read_error < math.inf:
        raise UserInputError(f"{where}, published.read_error={read_error!r}: percentage points, at least 0.")
    sources = setting["nfl"] if isinstance(setting["nfl"], list) else [setting["nfl"]]
    for k, source in enumerate(sources):
        _check_keys(f"{where}, nfl[{k}]", source, SOURCE_KEYS)
        for key in ("sweep", "runs", "logs", "csv", "label"):
            if key in source and not (isinstance(source[key], str) and source[key]):
                raise UserInputError(f"{where}, nfl[{k}].{key}={source[key]!r}: give a non-empty string "
                                     "(a path, or the runs' settings such as objective=reverse).")
        if "logs" in source and "csv" in source:
            raise UserInputError(f"{where}, nfl[{k}]: give 'logs' (a sweep's run folders) or 'csv' (a results.csv), "
                                 "not both.")
        sweep_runs(source, f"{where}, nfl[{k}]")


def sweep_runs(source: dict, where: str) -> tuple[dict, list]:
    """The sweep file's spec and its runs whose settings are ``source['runs']`` (refused when there are none)."""

    if not os.path.isfile(source["sweep"]):
        raise UserInputError(f"{where}: sweep file {source['sweep']!r} not found "
                             "(paths are from the working directory).")
    spec, runs = load_sweep(source["sweep"])
    chosen = [r for r in runs if settings_name(r.settings) == source["runs"]]
    if not chosen:
        names = sorted({settings_name(r.settings) for r in runs})
        raise UserInputError(f"{where}: no run of {source['sweep']} has the settings {source['runs']!r}; "
                             f"its settings are: {', '.join(names)}.")
    return spec, chosen


def settings_name(settings: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in settings.items())
