"""A sweep file's runs: the grid's combinations x seeds less ``exclude``, their folders, commands and shards.

Each run is every grid combination x seed, less ``exclude``; it has its folder and its ``python -m nfl fit``
command, and a process runs one shard of them (``--shard I/N`` or a SLURM job array task).

The file's format is in :mod:`nfl.lab.sweep.runner`'s docstring (``python -m nfl.sweep --help``); that module runs the runs.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import yaml

from nfl.errors import UserInputError, yaml_error_line

DONE = "sweep_run.json"


@dataclass
class Run:
    """One combination of settings and seed."""

    name: str  # e.g. "objective=reverse,seed=1": the run's folder name
    settings: dict[str, str]  # axis -> setting name
    seed: int
    overrides: list[str]  # CLI arguments for the settings


def _cli_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else yaml.safe_dump(value).strip().removesuffix("\n...")


MAX_RUNS = 10_000  # a grid larger than this is almost surely a mistake, and listing it would take long


def _name_ok(value: Any) -> bool:
    """A name that can be part of a run's folder name ``axis=setting,seed=n``."""
    return isinstance(value, (str, int)) and not isinstance(value, bool) and re.fullmatch(r"[^/\\,=\s]+", str(value)) is not None


def load_sweep(path: str) -> tuple[dict[str, Any], list[Run]]:
    """Parse and check a sweep file; returns its spec and the expanded list of runs."""
    try:
        with open(path) as f:
            spec = yaml.safe_load(f)
    except OSError as err:
        raise UserInputError(f"cannot read sweep file {path!r}: {err.strerror or err}.") from None
    except yaml.YAMLError as err:
        raise UserInputError(yaml_error_line(path, err, "fix the sweep file")) from None
    if not isinstance(spec, dict) or not {"name", "base", "grid"} <= set(spec):
        raise UserInputError(f"{path}: a sweep file needs 'name', 'base' and 'grid' (see python -m nfl.sweep --help).")
    unknown = set(spec) - {"name", "base", "grid", "seeds", "args", "exclude"}
    if unknown:
        raise UserInputError(f"{path}: unknown keys {sorted(map(str, unknown))}; allowed: name, base, seeds, args, grid, exclude.")
    if not _name_ok(spec["name"]):
        raise UserInputError(f"{path}: name {spec['name']!r} names the sweep's folder; give one word without /, commas, = or spaces.")
    spec["name"] = str(spec["name"])
    if not isinstance(spec["base"], str) or not spec["base"]:
        raise UserInputError(f"{path}: base is the path of the config every run starts from, e.g. configs/quickstart.yaml.")
    spec["base"] = _find_base(spec["base"], path)
    seeds = spec.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in seeds)):
        raise UserInputError(f"{path}: seeds {seeds!r} is a list of seeds, whole numbers >= 0, e.g. seeds: [0, 1, 2].")
    if len(set(seeds)) != len(seeds):
        raise UserInputError(f"{path}: seeds {seeds} repeat a seed; each seed is one run folder, so list it once.")
    args = spec.get("args", [])
    if not (isinstance(args, list) and all(isinstance(a, str) for a in args)):
        raise UserInputError(f"{path}: args is a list of CLI arguments as strings, e.g. [\"--trainer.max_steps=100\"].")
    spec["args"] = args
    grid = spec["grid"]
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, dict) and v for v in grid.values()):
        raise UserInputError(f"{path}: 'grid' maps each axis name to named settings, each a mapping of CLI keys.")
    for axis, settings in grid.items():
        if not _name_ok(axis) or str(axis) == "seed":
            raise UserInputError(f"{path}: grid axis {axis!r}: an axis name is one word without /, commas, = or spaces, and not 'seed'.")
        for name, values in settings.items():
            if not _name_ok(name):
                raise UserInputError(f"{path}: grid setting {axis}: {name!r}: a setting name is one word without /, commas, = or spaces.")
            if values is not None and not (isinstance(values, dict) and all(isinstance(k, str) and k for k in values)):
                raise UserInputError(f"{path}: grid setting {axis}={name} maps CLI keys to values, e.g. {{model.lr: 1.0e-3}}.")
    size = len(seeds)
    for settings in grid.values():
        size *= len(settings)
    if size > MAX_RUNS:
        raise UserInputError(f"{path}: the grid makes {size:,} runs (more than {MAX_RUNS:,}); split it into several sweep files.")
    runs = []
    axes = list(grid)
    for combo in itertools.product(*(list(grid[a].items()) for a in axes)):
        for seed in seeds:
            settings = {str(axis): str(name) for axis, (name, _) in zip(axes, combo)}
            overrides = [f"--{k}={_cli_value(v)}" for _, values in combo for k, v in (values or {}).items()]
            name = ",".join([f"{a}={n}" for a, n in settings.items()] + [f"seed={seed}"])
            runs.append(Run(name, settings, int(seed), overrides))
    excluded = _exclusions(spec.get("exclude") or [], grid, path, seeds)
    return spec, [r for r in runs if not any(_matches(r, rule) for rule in excluded)]


def _exclusions(rules: Any, grid: dict[str, Any], path: str, seeds: list) -> list[dict[str, set[str]]]:
    """``exclude``: a list of mappings ``{axis: setting or [settings], seed: n or [n]}``; a run matching every
    key of one mapping is left out (e.g. an objective a backbone cannot run)."""
    if not isinstance(rules, list) or not all(isinstance(r, dict) and r for r in rules):
        raise UserInputError(f"{path}: 'exclude' is a list of mappings such as {{backbone: mamba, objective: registers}}.")
    out = []
    for rule in rules:
        checked = {}
        for axis, names in rule.items():
            names = names if isinstance(names, list) else [names]
            if axis == "seed":
                missing = [n for n in names if str(n) not in {str(s) for s in seeds}]
                if missing:
                    raise UserInputError(f"{path}: exclude names seed={missing[0]!r}, which is not one of the sweep's seeds {list(seeds)}.")
            else:
                if axis not in grid:
                    raise UserInputError(f"{path}: exclude names axis {axis!r}; the grid's axes are {sorted(grid)} (and seed).")
                missing = [n for n in names if str(n) not in {str(k) for k in grid[axis]}]
                if missing:
                    raise UserInputError(f"{path}: exclude names {axis}={missing[0]}, which is not a setting of {axis} ({', '.join(grid[axis])}).")
            checked[axis] = {str(n) for n in names}
        out.append(checked)
    return out


def _matches(run: Run, rule: dict[str, set[str]]) -> bool:
    return all((str(run.seed) if axis == "seed" else run.settings[axis]) in names for axis, names in rule.items())


def _find_base(base: str, sweep_path: str) -> str:
    """The base config: as given (relative to the working directory), or relative to the sweep file's folder or
    one of its parents (so ``configs/quickstart.yaml`` works from anywhere for a sweep inside the repository)."""
    if os.path.isfile(base):
        return base
    folder = os.path.dirname(os.path.abspath(sweep_path))
    while True:
        candidate = os.path.join(folder, base)
        if os.path.isfile(candidate):
            return candidate
        parent = os.path.dirname(folder)
        if parent == folder:
            raise UserInputError(f"{sweep_path}: base config {base!r} not found from the working directory or the sweep file's folders.")
        folder = parent


def run_dir(logs: str, sweep_name: str, run: Run) -> str:
    return os.path.join(logs, sweep_name, run.name)


def command(spec: dict[str, Any], run: Run, logs: str, ckpt_path: Optional[str] = None) -> list[str]:
    """The ``python -m nfl fit`` command of one run, resuming from ``ckpt_path`` if given."""
    cmd = [sys.executable, "-m", "nfl", "fit", "--config", spec["base"], *spec.get("args", []), *run.overrides]
    cmd += [
        f"--seed_everything={run.seed}",
        f"--data.init_args.seed={run.seed}",
        "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
        f"--trainer.logger.save_dir={logs}",
        f"--trainer.logger.name={spec['name']}",
        f"--trainer.logger.version={run.name}",
        "--trainer.logger.default_hp_metric=false",
        "--test_after_fit=true",
    ]
    if ckpt_path is not None:
        cmd += ["--ckpt_path", ckpt_path]
    return cmd


def shard_of(arg: Optional[str], environ: Mapping[str, str]) -> Optional[tuple[int, int]]:
    """The shard ``(I, N)`` to run: ``--shard I/N`` if given, else the SLURM job array's task, else None (all runs).

    A SLURM array task is shard ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP + 1`` of
    ``SLURM_ARRAY_TASK_COUNT`` (the step is 1 when unset), so ``--array=0-3`` and ``--array=1-7:2`` both make
    shards 1..4.
    """
    if arg is not None:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", arg)
        if not match:
            raise UserInputError(f"--shard {arg!r}: give I/N, shard I of N counted from 1, e.g. --shard 2/4.")
        i, n = int(match.group(1)), int(match.group(2))
        if n < 1 or not 1 <= i <= n:
            counts = f"1 to N={n}" if n >= 1 else "1 to N, and N is at least 1"
            raise UserInputError(f"--shard {arg}: I counts from {counts}, e.g. --shard 1/{max(n, 1)}.")
        return i, n
    if environ.get("SLURM_ARRAY_TASK_ID") is None:
        return None
    try:
        task, first = int(environ["SLURM_ARRAY_TASK_ID"]), int(environ["SLURM_ARRAY_TASK_MIN"])
        count, step = int(environ["SLURM_ARRAY_TASK_COUNT"]), int(environ.get("SLURM_ARRAY_TASK_STEP") or 1)
    except (KeyError, ValueError):
        names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_STEP")
        shown = ", ".join(f"{k}={environ.get(k)!r}" for k in names)
        raise UserInputError(f"a SLURM job array without whole-number task variables ({shown}); give --shard I/N.") \
            from None
    offset, rest = divmod(task - first, step) if step > 0 else (-1, 0)
    if rest or not 0 <= offset < count:
        raise UserInputError(
            f"SLURM array task {task} (min {first}, step {step}, count {count}) is not one of shards 1..{count}; "
            f"submit the array as one range (e.g. --array=0-{count - 1}) or give --shard I/N."
        )
    return offset + 1, count
