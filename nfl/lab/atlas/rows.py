"""An atlas row: a setting as one nfl source measured it (or would), the published number, and its verdict.

The verdict follows the rule in :data:`RULE`, which every page prints.

A source without finished runs is "not run here", and its row gives the command that would produce it.

Graphs seen (the training budget) is ``train/graphs_seen`` at the end of a run. Runs made before nfl logged it
get it from their saved ``config.yaml``: ``max_steps`` x ``batch_size`` x ``accumulate_grad_batches`` x the
number of processes, which is what the tag counts when no run stops early (repeats of a finite training set
included); those rows are marked. A source without logs takes the same product from its sweep file.
"""

from __future__ import annotations

import csv
import os
import statistics
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from nfl.lab.atlas.spec import settings_name, sweep_runs, target_of
from nfl.lab.report.logs import NOT_SOLVED, SOLVED, binomial_se, load_runs, samples_to_solve, solve_cell, solve_text, value_at

COMPARABLE = 0.5  # nfl's budget counts as comparable to a published run's from this fraction of its graphs seen
VERDICTS = ("reproduced", "not reproduced at this budget", "contradicted", "not run here", "no published number")

RULE = f"""\
How a row's verdict is decided (the same rule on every page):

- **reproduced**: nfl's mean test exact match over seeds is within the tolerance of the published number. The
  tolerance is the standard deviation over nfl's seeds, plus the binomial standard error sqrt(p(1-p)/n) of the
  published number p on its test set of n graphs (0 where n is not published), plus the reading error where the
  number was read off a figure. A published "about 1/d" counts as the number 100/d %; a published "solves it"
  is reproduced when nfl's mean plus the tolerance reaches {100 * SOLVED:.0f}%.
- **not reproduced at this budget**: outside the tolerance, and nfl trained on fewer than {100 * COMPARABLE:.0f}% of
  the graphs the published run saw (or the published budget is unknown): the budget is too small to tell.
- **contradicted**: outside the tolerance although nfl trained on at least {100 * COMPARABLE:.0f}% of the published
  run's graphs: at a comparable budget nfl does not find the published result.
- **not run here**: no finished nfl runs for the row; it names the sweep that would produce them.
- **no published number**: nfl measured the setting, but no published number for it was found (the claim is
  quoted in words).

Budgets are in training graphs seen (repeats of a finite training set included), since published comparisons
differ by 500x in data."""


@dataclass
class Row:
    """One table row: a setting as one nfl source measured it (or would), beside the published number."""

    claim: str
    setting: str
    graph: str
    published: dict
    source: dict
    label: str = ""
    seeds: int = 0
    mean: float = float("nan")
    std: float = float("nan")
    decision: float = float("nan")
    tf_pos_ge3: float = float("nan")
    graphs_seen: float = float("nan")
    graphs_derived: bool = False
    solve: str = "–"
    runs: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def measured(self) -> bool:
        return self.seeds > 0


def _set_dotted(config: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        config = config.setdefault(part, {}) if isinstance(config.get(part, {}), dict) else {}
    config[last] = value


def planned_graphs(spec: dict, run: Any) -> float:
    """Graphs a sweep run would train on: its config's ``max_steps x batch_size x accumulate_grad_batches x
    devices`` after the sweep's ``args`` and the run's overrides (``--key=value`` on top of the base config)."""
    with open(spec["base"]) as f:
        config = yaml.safe_load(f) or {}
    for arg in [*spec.get("args", []), *run.overrides]:
        key, _, value = arg.removeprefix("--").partition("=")
        _set_dotted(config, key, yaml.safe_load(value))
    return config_graphs(config)


def config_graphs(config: dict, processes: Optional[int] = None) -> float:
    trainer = config.get("trainer") or {}
    data = (config.get("data") or {}).get("init_args") or {}
    steps, batch = trainer.get("max_steps"), data.get("batch_size")
    if not isinstance(steps, int) or steps < 0 or not isinstance(batch, int):
        return float("nan")
    devices = trainer.get("devices")
    processes = processes or (devices if isinstance(devices, int) and devices > 0 else 1)
    return float(steps * batch * (trainer.get("accumulate_grad_batches") or 1) * processes)


def _run_graphs(run: dict, folder: str) -> tuple[float, float, bool]:
    """``(graphs seen at the end, graphs seen when solved, derived)`` of a finished run: from ``train/graphs_seen``,
    or from its saved ``config.yaml`` (``derived``) for runs made before nfl logged it."""
    scalars = run["scalars"]
    steps, solved_graphs = samples_to_solve(scalars)
    last = max((s for s, _ in scalars.get("train/loss", [])), default=None)
    if scalars.get("train/graphs_seen") and last is not None:
        return value_at(scalars["train/graphs_seen"], last), solved_graphs, False
    with open(os.path.join(folder, run["run"], "config.yaml")) as f:
        config = yaml.safe_load(f) or {}
    total = config_graphs(config, run["info"].get("world_size"))
    steps_total = (config.get("trainer") or {}).get("max_steps")
    per_step = total / steps_total if steps_total else float("nan")
    return total, steps * per_step if steps != NOT_SOLVED else NOT_SOLVED, True


def _last(scalars: dict, tag: str) -> Optional[float]:
    return scalars[tag][-1][1] if scalars.get(tag) else None


def _mean(values: list[Optional[float]]) -> float:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else float("nan")


def measure(row: Row) -> Row:
    """Fill a row from its source: the finished runs in ``logs`` or a results.csv row; untouched when neither has
    anything (not run here)."""
    source = row.source
    spec, planned = sweep_runs(source, f"claim {row.claim!r}, {row.setting}")
    row.graphs_seen, row.graphs_derived = statistics.median(planned_graphs(spec, r) for r in planned), True
    if source.get("logs") and os.path.isdir(source["logs"]):
        runs = [r for r in load_runs(source["logs"]) if settings_name(r["settings"]) == source["runs"]]
        runs = [r for r in runs if r["scalars"].get("test/exact_match")]
        if runs:
            exact = [_last(r["scalars"], "test/exact_match") for r in runs]
            row.seeds, row.mean = len(runs), 100 * statistics.fmean(exact)
            row.std = 100 * statistics.stdev(exact) if len(exact) > 1 else 0.0
            row.decision = 100 * _mean([_last(r["scalars"], "test/decision_acc") for r in runs])
            row.tf_pos_ge3 = 100 * _mean([_last(r["scalars"], "test/tf/pos_ge3") for r in runs])
            budgets = [_run_graphs(r, source["logs"]) for r in runs]
            row.graphs_seen = statistics.median(b for b, _, _ in budgets)
            row.graphs_derived = any(d for _, _, d in budgets)
            row.solve = solve_cell([g for _, g, _ in budgets])
            row.runs = sorted(r["run"] for r in runs)
    elif source.get("csv") and os.path.isfile(source["csv"]):
        with open(source["csv"], newline="") as f:
            found = [r for r in csv.DictReader(f) if r.get("setting") == source["runs"]]
        if found:
            r = found[0]
            number = lambda key: 100 * float(r[key]) if r.get(key) not in (None, "") else float("nan")  # noqa: E731
            row.seeds, row.mean, row.std = int(r["seeds"]), number("exact_match_mean"), number("exact_match_std")
            row.decision, row.tf_pos_ge3 = number("decision_acc_mean"), number("tf_pos_ge3_mean")
            if r.get("graphs_to_solve_median") not in (None, ""):
                median, solved = float(r["graphs_to_solve_median"]), int(r.get("solved_runs") or 0)
                row.solve = solve_text(median, solved, row.seeds)
            else:
                row.solve = "– (not in the csv)"
            row.runs = [f"{source['csv']}: {source['runs']} ({row.seeds} seeds)"]
    return row


def tolerance(row: Row) -> float:
    """Percentage points: the seeds' spread + the published number's binomial SE + its reading error."""
    kind, value = target_of(row.published, row.graph)
    spread = row.std if row.std == row.std else 0.0
    se = binomial_se(value / 100, row.published.get("n_test")) if value is not None else float("nan")
    return spread + (100 * se if se == se else 0.0) + float(row.published.get("read_error") or 0)


def verdict(row: Row) -> str:
    """The row's verdict by :data:`RULE`."""
    if not row.measured:
        return "not run here"
    kind, value = target_of(row.published, row.graph)
    if kind is None:
        return "no published number"
    tol = tolerance(row)
    hit = row.mean + tol >= value if kind == "solved" else abs(row.mean - value) <= tol
    if hit:
        return "reproduced"
    budget = row.published.get("budget")
    if not budget or not row.graphs_seen == row.graphs_seen or row.graphs_seen < COMPARABLE * budget:
        return "not reproduced at this budget"
    return "contradicted"


def rows_of(claim: dict) -> list[Row]:
    rows = []
    for setting in claim["settings"]:
        sources = setting["nfl"] if isinstance(setting["nfl"], list) else [setting["nfl"]]
        for source in sources:
            row = Row(claim["id"], setting["name"], str(setting["graph"]), setting["published"], source,
                      label=source.get("label", ""), note=setting.get("note", ""))
            rows.append(measure(row))
    return rows
