"""``python -m nfl.report --run DIR [DIR ...]``: a table of each run's final test metrics, and its plots.

For one run or a few side by side, without a sweep: test exact match with its binomial standard error, decision
accuracy against chance, and per-position free-running and teacher-forced accuracy, printed as a markdown table
(and written to ``report.md``), with the report's per-position plot for each run and validation exact match over
training for all of them.
"""

from __future__ import annotations

import glob
import os

from nfl.errors import UserInputError
from nfl.lab.report.logs import binomial_se, load_run
from nfl.lab.report.plots import EXACT_PLOT, plot_exact_match, plot_name, plot_setting
from nfl.run.folders import CSV_LOG, STAGE_FOLDERS

REPORT = "report.md"


def load_named_runs(folders: list[str]) -> list[dict]:
    """Each ``--run`` folder's logs, named by the folder; refused in one line where there are none to read."""
    runs = []
    for folder in folders:
        where = [folder] + [os.path.join(folder, stage) for stage in STAGE_FOLDERS]
        if not any(glob.glob(os.path.join(glob.escape(f), "events.out.tfevents.*")) or os.path.isfile(os.path.join(f, CSV_LOG))
                   for f in where):
            raise UserInputError(
                f"--run {folder}: no TensorBoard event files (events.out.tfevents.*) or CSV log ({CSV_LOG}) in it or its "
                f"{'/, '.join(STAGE_FOLDERS)}/ folders; give a run folder, e.g. the one fit printed (Run folder: ...)."
            )
        runs.append({"run": os.path.normpath(folder), **load_run(folder)})
    for run in runs:
        if "test/exact_match" not in run["scalars"]:
            raise UserInputError(
                f"--run {run['run']}: no test metrics (test/exact_match), so no finished run; test it with python -m nfl "
                f"test --config {run['run']}/config.yaml --ckpt_path {run['run']}/checkpoints/last.ckpt, or fit with "
                "--test_after_fit true."
            )
    return runs


def _final(scalars: dict, tag: str) -> float:
    return scalars[tag][-1][1] if tag in scalars else float("nan")


def _pct(value: float) -> str:
    return "–" if value != value else f"{100 * value:.1f}"


def _positions(scalars: dict, kind: str) -> str:
    tags = sorted((t for t in scalars if t.startswith(f"test/{kind}/pos_") and t.rsplit("_", 1)[1].isdigit()),
                  key=lambda t: int(t.rsplit("_", 1)[1]))
    return ", ".join(_pct(_final(scalars, t)) for t in tags) or "–"


def run_table(runs: list[dict]) -> list[str]:
    """The markdown table of the runs' final test metrics, in %."""
    lines = [
        "| run | test exact match ± SE | held-out graphs | decision acc | chance | free-running acc per position "
        "| teacher-forced acc per position |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        s, n = run["scalars"], run["n_test"]
        exact = _final(s, "test/exact_match")
        se = binomial_se(exact, n)
        lines.append(
            f"| {run['run']} | {_pct(exact)}{'' if se != se else f' ± {100 * se:.1f}'} | {n or '–'} | "
            f"{_pct(_final(s, 'test/decision_acc'))} | {_pct(_final(s, 'test/chance'))} | {_positions(s, 'free')} | "
            f"{_positions(s, 'tf')} |"
        )
    return lines


def write_run_report(runs: list[dict], out: str) -> list[str]:
    """Print-ready table lines; writes ``report.md``, one per-position plot per run with validation, and
    ``exact_match.png`` into ``out``."""
    table = run_table(runs)
    plotted = [r for r in runs if "val/exact_match" in r["scalars"]]
    for run in plotted:
        plot_setting(run["run"], [run], out)
    if plotted:
        plot_exact_match({r["run"]: [r] for r in plotted}, out)
    lines = ["# Runs", "", "Final test metrics, in %; SE: the binomial standard error sqrt(p(1-p)/n) of exact match.", "",
             *table]
    if plotted:
        lines += ["", f"![exact match]({EXACT_PLOT})", "", *(f"![{r['run']}]({plot_name(r['run'])})" for r in plotted)]
    with open(os.path.join(out, REPORT), "w") as f:
        f.write("\n".join(lines) + "\n")
    return table
