"""A sweep's finished runs read back from their folders, and what follows from the logs alone.

Read: TensorBoard or CSV scalars, ``sweep_run.json``, ``run_info.json`` and the held-out set size. Derived: samples to
solve, binomial standard errors, values between logged steps.

:mod:`nfl.lab.report.sweep` writes its tables and plots from these, and :mod:`nfl.lab.atlas.rows` measures the atlas's rows.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import statistics
from typing import Optional

from nfl.errors import UserInputError
from nfl.lab.sweep.spec import DONE
from nfl.run.folders import CSV_LOG, STAGE_FOLDERS
from nfl.run.provenance import RUN_INFO
from nfl.tasks.spec import task_from_data

# (csv column, test tag, markdown header) of every task; a task adds its own (GraphTask.report_columns).
COLUMNS = [
    ("exact_match", "test/exact_match", "test exact match"),
    ("decision_acc", "test/decision_acc", "decision acc"),
    ("tf_decision_acc", "test/tf/decision_acc", "tf decision acc"),
    ("tf_non_decision_acc", "test/tf/non_decision_acc", "tf off-decision acc"),
]
HEADERS = {"tf_pos_ge3": "tf pos>=3"}  # markdown headers of task columns, where the csv name is not enough
SOLVED = 0.95  # exact match at which a run counts as solved (verdicts and samples to solve)
NOT_SOLVED = math.inf  # the steps and graphs to solve of a run that never solved: past any end of training


def task_columns(run_dir: str) -> list[tuple[str, str, str]]:
    """The report columns of the task in a run's saved ``config.yaml`` (none when it cannot be read)."""
    import yaml

    try:
        with open(os.path.join(run_dir, "config.yaml")) as f:
            task = task_from_data(yaml.safe_load(f).get("data"))
    except (OSError, yaml.YAMLError, AttributeError, UserInputError):
        return []
    return [(name, tag, HEADERS.get(name, name)) for name, tag in task.report_columns]


def log_folders(run_dir: str) -> list[str]:
    """A run folder and the folders its evaluations logged into (``validate/``, ``test/``, ``predict/``)."""
    return [run_dir] + [os.path.join(run_dir, stage) for stage in STAGE_FOLDERS if os.path.isdir(os.path.join(run_dir, stage))]


def read_scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """All scalars of a run folder, its training and the evaluations of its checkpoints (``test/`` etc.) together,
    logged with TensorBoard or Lightning's ``CSVLogger`` (``metrics.csv``): tag -> [(step, value), ...] sorted by
    step (values logged at the same step in the order they were written)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for folder in log_folders(run_dir):
        for tag, points in [*_tensorboard_scalars(folder), *_csv_scalars(folder)]:
            out.setdefault(tag, []).extend(points)
    return {k: sorted(v, key=lambda point: point[0]) for k, v in out.items()}


def _tensorboard_scalars(folder: str) -> list[tuple[str, list[tuple[int, float]]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = []
    for event_file in sorted(glob.glob(os.path.join(glob.escape(folder), "events.out.tfevents.*"))):
        acc = EventAccumulator(event_file, size_guidance={"scalars": 0})
        acc.Reload()
        found += [(tag, [(e.step, e.value) for e in acc.Scalars(tag)]) for tag in acc.Tags()["scalars"]]
    return found


def _csv_scalars(folder: str) -> list[tuple[str, list[tuple[int, float]]]]:
    """The columns of a ``CSVLogger``'s ``metrics.csv``: one row per logging call, empty where a tag was not logged."""
    path = os.path.join(folder, CSV_LOG)
    if not os.path.isfile(path):
        return []
    out: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.pop("step")))
            for tag, value in row.items():
                if value not in ("", None):
                    out.setdefault(tag, []).append((step, float(value)))
    return list(out.items())


def load_run(folder: str) -> dict:
    """One run folder's logs: ``scalars``, ``columns`` (the report's, with its task's), ``info`` (its
    ``run_info.json``, empty for runs written before nfl recorded one) and ``n_test`` (held-out graphs, or None)."""
    info = _read_json(os.path.join(folder, RUN_INFO))
    return {
        "scalars": read_scalars(folder),
        "columns": COLUMNS + task_columns(folder),
        "info": info,
        "n_test": info.get("n_test_graphs") or _configured_n_test(folder),
    }


def load_runs(sweep_dir: str) -> list[dict]:
    """Finished runs of a sweep folder, each its ``sweep_run.json`` plus what :func:`load_run` reads."""
    runs = []
    for marker in sorted(glob.glob(os.path.join(sweep_dir, "*", DONE))):
        with open(marker) as f:
            run = json.load(f)
        runs.append({**run, **load_run(os.path.dirname(marker))})
    return runs


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _configured_n_test(run_dir: str) -> Optional[int]:
    """The held-out set size a run's saved ``config.yaml`` asks for (None with a test file: its lines decide)."""
    import yaml

    try:
        with open(os.path.join(run_dir, "config.yaml")) as f:
            data = (yaml.safe_load(f).get("data") or {}).get("init_args") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return None if data.get("test_file") else data.get("n_test")


def binomial_se(p: float, n: Optional[int]) -> float:
    """Standard error ``sqrt(p (1 - p) / n)`` of an accuracy ``p`` measured on ``n`` graphs (NaN without ``n``)."""
    return math.sqrt(p * (1 - p) / n) if n and p == p else float("nan")


def value_at(series: list[tuple[int, float]], step: int) -> float:
    """A quantity that grows linearly with the step (graphs seen) at ``step``: logged there, or interpolated
    between the logged steps around it, or scaled from the nearest one (a step ``k`` has seen ``k + 1`` batches)."""
    if not series:
        return float("nan")
    below = [(s, v) for s, v in series if s <= step]
    above = [(s, v) for s, v in series if s > step]
    if below and below[-1][0] == step:
        return below[-1][1]
    if below and above:
        (s0, v0), (s1, v1) = below[-1], above[0]
        return v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    s0, v0 = below[-1] if below else above[0]
    return v0 * (step + 1) / (s0 + 1)


def samples_to_solve(scalars: dict[str, list[tuple[int, float]]], threshold: float = SOLVED) -> tuple[float, float]:
    """``(steps, graphs seen)`` when ``val/exact_match`` first reached ``threshold``: optimizer steps trained (the
    logged step + 1) and ``train/graphs_seen`` there (NaN where it was not logged); ``NOT_SOLVED`` for both when
    it never did."""
    for step, value in scalars.get("val/exact_match", []):
        if value >= threshold:
            return step + 1, value_at(scalars.get("train/graphs_seen", []), step)
    return NOT_SOLVED, NOT_SOLVED


def solve_text(median: float, solved: int, n: int) -> str:
    """A 'solved at' cell from the median over ``n`` seeds and how many of them solved: the median, or ``not solved
    (k of n solved)`` when it lies past the end of training."""
    if median == NOT_SOLVED:
        return f"not solved ({solved} of {n} solved)"
    return f"{median:,.0f}" + (f" ({solved} of {n} solved)" if solved < n else "")


def solve_cell(values: list[float]) -> str:
    """The 'solved at' cell of the steps (or graphs seen) until solved, one value per seed."""
    return solve_text(statistics.median(values), sum(v != NOT_SOLVED for v in values), len(values))
