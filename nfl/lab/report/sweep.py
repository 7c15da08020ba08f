"""``python -m nfl.report --sweep lightning_logs/NAME --out docs/NAME``: a results table and plots from a sweep.

(``python -m nfl.report --atlas configs/atlas.yaml --out docs/atlas`` writes the reproduction atlas instead: see
:mod:`nfl.lab.atlas.page`; ``python -m nfl.report --run DIR [DIR ...]`` reports on single runs: see :mod:`nfl.lab.report.run`.)

Reads every finished run of a sweep (``sweep_run.json`` + TensorBoard events or a CSV log + ``run_info.json``, see
:mod:`nfl.lab.sweep.runner`; several ``--sweep`` folders, e.g. shards copied back from separate machines, are merged) and writes

- ``results.md`` and ``results.csv``: one row per setting (runs that differ only in seed), with the mean and
  standard deviation over seeds of test exact match, decision accuracy, teacher-forced accuracy at and off the
  decisions, the columns the run's task adds (path-star: teacher-forced accuracy at positions >= 3; read from
  the run's saved ``config.yaml``), the chance line, and a plain verdict (``solved``, ``beats chance, not
  solved``, ``at chance``, ``below chance: not learned``);
- ``<setting>.png``: validation accuracy per position over training, free-running (left) beside
  teacher-forced (right; masked diffusion: one-step denoising; nothing for teacherless, which has no
  teacher-forced pass), averaged over seeds, with the chance line: the Clever-Hans gap, and the order in
  which positions are learned;
- ``exact_match.png``: validation exact match over training, one line per setting, mean over seeds with a
  min-to-max band: the learning curves side by side.
"""

from __future__ import annotations

import csv
import os
import statistics
import sys
from collections import Counter, defaultdict
from typing import Optional, Sequence

from nfl.errors import ArgumentParser, UserInputError
from nfl.lab.atlas.page import write_atlas
from nfl.lab.report.logs import NOT_SOLVED, SOLVED, binomial_se, load_runs, samples_to_solve, solve_cell
from nfl.lab.report.plots import EXACT_PLOT, plot_exact_match, plot_name, plot_setting
from nfl.lab.report.run import REPORT, load_named_runs, write_run_report
from nfl.lab.sweep.spec import DONE


def _count(value: float) -> str:
    return "–" if value != value or value == NOT_SOLVED else f"{value:,.0f}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def verdict(exact: float, decision: float, chance: float) -> str:
    """Plain words for where the decision token stands against chance (5 points either way count as at)."""
    if exact >= SOLVED:
        return "solved"
    if decision != decision or chance != chance:  # NaN: the task's graphs have no decision positions
        return "not solved"
    if decision > chance + 0.05:
        return "beats chance, not solved"
    if decision < chance - 0.05:
        return "below chance: not learned"
    return "at chance"


def check_runs(runs: list[dict]) -> None:
    """Refuse runs the report cannot describe: no test metrics (for the table) or no validation (for the plots)."""
    for tags, what, fix in (
        (("test/exact_match",), "test metrics", "give them test_after_fit: true"),
        (("val/exact_match",), "validation metrics", "set trainer.val_check_interval to at most trainer.max_steps"),
    ):
        missing = [r["run"] for r in runs if not all(t in r["scalars"] for t in tags)]
        if missing:
            raise UserInputError(f"runs without {what}: {', '.join(missing)}; {fix} and re-run them.")


def summarise(runs: list[dict]) -> list[dict]:
    """One row per setting: means and spreads over seeds of the final test metrics."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        groups[",".join(f"{k}={v}" for k, v in run["settings"].items())].append(run)
    rows = []
    for setting, members in groups.items():
        row = {"setting": setting, "seeds": len(members)}
        missing = [r["run"] for r in members if "test/exact_match" not in r["scalars"]]
        if missing:
            raise ValueError(f"runs without test metrics (re-run them): {', '.join(missing)}")
        for column, tag, _ in members[0]["columns"]:
            values = [r["scalars"][tag][-1][1] for r in members if tag in r["scalars"]]
            mean, std = _mean_std(values) if values else (float("nan"), float("nan"))
            row[f"{column}_mean"], row[f"{column}_std"] = mean, std
        chance = members[0]["scalars"].get("test/chance")  # absent where the graphs have no decisions
        row["chance"] = chance[-1][1] if chance else float("nan")
        row["verdict"] = verdict(row["exact_match_mean"], row["decision_acc_mean"], row["chance"])
        n_test = [r["n_test"] for r in members if r["n_test"]]
        row["n_test"] = min(n_test) if n_test else None
        # What one run's exact match at this level is uncertain by, for comparison with another's number.
        row["exact_match_se"] = binomial_se(row["exact_match_mean"], row["n_test"])
        solve = [samples_to_solve(r["scalars"]) for r in members]
        row["solved_runs"] = sum(s != NOT_SOLVED for s, _ in solve)
        row["steps_to_solve_median"] = statistics.median(s for s, _ in solve)
        row["graphs_to_solve_median"] = statistics.median(g for _, g in solve)
        row["solve"] = solve_cell([s for s, _ in solve])
        params = [r["info"]["n_parameters"] for r in members if "n_parameters" in r["info"]]
        row["n_parameters"] = statistics.median(params) if params else float("nan")
        row["wall_seconds_mean"] = statistics.fmean(r["wall_seconds"] for r in members)
        rows.append(row)
    return rows


def run_rows(runs: list[dict]) -> list[dict]:
    """One row per run: its test exact match with the binomial standard error, samples to solve, size, time, commit."""
    rows = []
    for run in sorted(runs, key=lambda r: r["run"]):
        exact = run["scalars"]["test/exact_match"][-1][1]
        steps, graphs = samples_to_solve(run["scalars"])
        info = run["info"]
        rows.append({
            "run": run["run"], "seed": run["seed"], "exact_match": exact,
            "exact_match_se": binomial_se(exact, run["n_test"]), "n_test": run["n_test"],
            "steps_to_solve": steps, "graphs_to_solve": graphs,
            "n_parameters": info.get("n_parameters", float("nan")), "wall_seconds": run["wall_seconds"],
            "commit": info.get("commit", "unknown"), "dirty": info.get("dirty"),
        })
    return rows


def write_run_tables(rows: list[dict], out: str, title: str) -> None:
    with open(os.path.join(out, "runs.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# {title}: every run",
        "",
        "Test exact match ± its binomial standard error sqrt(p(1-p)/n), n the held-out graphs; the optimizer",
        f"steps and training graphs seen when validation exact match first reached {100 * SOLVED:.0f}%; the commit",
        "each run ran at (`+`: with uncommitted changes).",
        "",
        "| run | test exact match | held-out graphs | solved at step | graphs seen | params | wall time | commit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        se = "" if r["exact_match_se"] != r["exact_match_se"] else f" ± {100 * r['exact_match_se']:.1f}"
        solved = "not solved" if r["steps_to_solve"] == NOT_SOLVED else _count(r["steps_to_solve"])
        commit = r["commit"][:10] + ("+" if r["dirty"] else "")
        lines.append(
            f"| {r['run']} | {100 * r['exact_match']:.1f}{se} | {r['n_test'] or '–'} | {solved} | "
            f"{_count(r['graphs_to_solve'])} | {_count(r['n_parameters'])} | {r['wall_seconds']:.0f} s | {commit} |"
        )
    with open(os.path.join(out, "runs.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def write_tables(rows: list[dict], out: str, title: str, columns: list[tuple[str, str, str]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))  # settings of different tasks may differ
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)

    def pct(r: dict, c: str) -> str:
        if f"{c}_mean" not in r or r[f"{c}_mean"] != r[f"{c}_mean"]:  # not logged by this run (NaN)
            return "–"
        if r["seeds"] == 1:  # one seed has no spread to show
            return f"{100 * r[c + '_mean']:.1f}"
        return f"{100 * r[c + '_mean']:.1f} ± {100 * r[c + '_std']:.1f}"

    lines = [
        f"# {title}",
        "",
        "Mean ± standard deviation over seeds of the final test metrics, in % (one seed: its value). The decision positions are those",
        "whose predecessor on the path has more than one way on; teacher-forced (tf) accuracy high off them while",
        "the decision sits at chance is the Clever-Hans signature (`tf pos>=3`: path-star positions 3..l).",
        "`exact match SE`: the binomial standard error sqrt(p(1-p)/n) of one run's test exact match p on its n",
        "held-out graphs. `solved at step` and `graphs seen`: the median over seeds of the optimizer steps and",
        f"training graphs seen when validation exact match first reached {100 * SOLVED:.0f}% (\"not solved (k of n",
        "solved)\" when most seeds never did). Every run: [runs.md](runs.md).",
        "",
        "| setting | seeds | " + " | ".join(h for _, _, h in columns)
        + " | chance | verdict | exact match SE | solved at step | graphs seen | params | wall time / run |",
        "|---|---|" + "---|" * len(columns) + "---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = " | ".join(pct(r, c) for c, _, _ in columns)
        chance = "–" if r["chance"] != r["chance"] else f"{100 * r['chance']:.0f}"
        se = "–" if r["exact_match_se"] != r["exact_match_se"] else f"{100 * r['exact_match_se']:.1f}"
        lines.append(
            f"| {r['setting']} | {r['seeds']} | {cells} | {chance} | {r['verdict']} | {se} | {r['solve']} | "
            f"{_count(r['graphs_to_solve_median'])} | {_count(r['n_parameters'])} | {r['wall_seconds_mean']:.0f} s |"
        )
    lines += ["", "Validation exact match over training, every setting:", "", f"![exact match]({EXACT_PLOT})"]
    lines += ["", "Per-position validation accuracy over training (left: free-running; right: teacher-forced, or",
              "masked diffusion's one-step denoising from a fully masked answer):", ""]
    lines += [f"![{r['setting']}]({plot_name(r['setting'])})" for r in rows]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")




def prepare_out(out: str) -> None:
    """Create the report's folder, or refuse in one line naming ``--out`` when it cannot be written."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserInputError(f"--out {out} is a file; give a folder for the report.")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise UserInputError(f"--out {out}: cannot create it ({(err.strerror or str(err)).lower()}); give a writable folder.") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserInputError(f"--out {out}: cannot write there (permission denied); give a writable folder.")


def report_runs(folders: list[str], out: Optional[str]) -> int:
    """``--run``: print the runs' table and write their plots (into ``out``, or the one run's own folder)."""

    try:
        runs = load_named_runs(folders)
        if out is None and len(runs) > 1:
            raise UserInputError("--out: give a folder for the plots of several --run folders side by side.")
        out = out or folders[0]
        prepare_out(out)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(write_run_report(runs, out)))
    print(f"wrote {os.path.join(out, REPORT)} and the plots of {len(runs)} run{'s' if len(runs) > 1 else ''}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python -m nfl.report", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sweep", nargs="+",
                        help="a sweep's log folder, e.g. lightning_logs/cpu_grid; several are merged (shards)")
    source.add_argument("--run", nargs="+", help="run folders (TensorBoard or CSV), e.g. lightning_logs/version_0: "
                        "print a table of each one's final test metrics and write its plots (see nfl.lab.report.run)")
    source.add_argument("--atlas", help="an atlas file (configs/atlas.yaml): write the reproduction atlas's pages "
                        "(one per claim and an index, see nfl.lab.atlas.page) instead of one sweep's report")
    parser.add_argument("--out", help="folder for results.md/csv, runs.md/csv and the plots (with --atlas: for "
                        "README.md and one page per claim; with --run: report.md and the plots, by default the run's "
                        "own folder); required with --sweep and --atlas")
    args = parser.parse_args(argv)
    if args.run:
        return report_runs(args.run, args.out)
    if args.out is None:
        parser.error(f"--out is required with --{'atlas' if args.atlas else 'sweep'}")
    if args.atlas:

        try:
            written = write_atlas(args.atlas, args.out)
        except UserInputError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"wrote {len(written)} atlas pages to {args.out} from {args.atlas}")
        return 0
    runs = [run for folder in args.sweep for run in load_runs(folder)]
    if not runs:
        where = " ".join(args.sweep)
        print(f"error: no finished runs ({DONE}) under {where}; run python -m nfl.sweep first.", file=sys.stderr)
        return 2
    try:
        twice = sorted(name for name, n in Counter(r["run"] for r in runs).items() if n > 1)
        if twice:
            raise UserInputError(f"runs found in more than one --sweep folder: {', '.join(twice)}; give each run once.")
        check_runs(runs)
        prepare_out(args.out)
        rows = summarise(runs)
    except (UserInputError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    columns = list(dict.fromkeys(c for run in runs for c in run["columns"]))
    write_tables(rows, args.out, f"Sweep {runs[0]['sweep']}", columns)
    write_run_tables(run_rows(runs), args.out, f"Sweep {runs[0]['sweep']}")
    groups = defaultdict(list)
    for run in runs:
        groups[",".join(f"{k}={v}" for k, v in run["settings"].items())].append(run)
    for setting, members in groups.items():
        plot_setting(setting, members, args.out)
    plot_exact_match(groups, args.out)
    wrote = f"results.md, results.csv, runs.md, runs.csv, {EXACT_PLOT} and {len(groups)} plots"
    print(f"wrote {args.out}/{wrote} from {len(runs)} runs")
    return 0
