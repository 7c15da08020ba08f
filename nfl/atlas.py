"""``python -m nfl.report --atlas configs/atlas.yaml --out docs/atlas``: every published path-star claim next to what
nfl measured, one page per claim and an index.

The atlas file lists claims; each claim lists settings (a graph, a model, an objective), each with the published
number and its source, and one or more nfl sources: the sweep file whose runs measure that setting and the
folder where its finished runs are kept (TensorBoard events, read with :mod:`nfl.report`'s readers), or a
report's ``results.csv``. A source without finished runs is "not run here", and its row gives the command that
would produce it. Each row gets a plain verdict by the rule in :data:`RULE`, which every page prints.

Graphs seen (the training budget) is ``train/graphs_seen`` at the end of a run. Runs made before nfl logged it
get it from their saved ``config.yaml``: ``max_steps`` x ``batch_size`` x ``accumulate_grad_batches`` x the
number of processes, which is what the tag counts when no run stops early (repeats of a finite training set
included); those rows are marked. A source without logs takes the same product from its sweep file.
"""

from __future__ import annotations

import csv
import os
import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from nfl.errors import UserInputError
from nfl.run_logs import NOT_SOLVED, SOLVED, binomial_se, load_runs, samples_to_solve, value_at

COMPARABLE = 0.5  # nfl's budget counts as comparable to a published run's from this fraction of its graphs seen
VERDICTS = ("reproduced", "not reproduced at this budget", "contradicted", "not run here", "no published number")
DERIVED = "†"  # marks graphs seen computed from a config, where the run did not log train/graphs_seen

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

# Keys of each level of the atlas file: (required, optional).
CLAIM_KEYS = ({"id", "title", "paper", "claim", "settings"}, {"note"})
SETTING_KEYS = ({"name", "graph", "published", "nfl"}, {"note"})
PUBLISHED_KEYS = ({"value", "source"}, {"n_test", "budget", "read_error"})
SOURCE_KEYS = ({"sweep", "runs"}, {"logs", "csv", "label"})


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
    except (OSError, yaml.YAMLError) as err:
        raise UserInputError(f"cannot read atlas file {path!r}: {err}") from None
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
        if given is not None and (isinstance(given, bool) or not isinstance(given, (int, float)) or given <= 0):
            raise UserInputError(f"{where}, published.{key}={given!r}: a positive count of graphs, or null if unknown.")
    read_error = published.get("read_error", 0)
    if isinstance(read_error, bool) or not isinstance(read_error, (int, float)) or read_error < 0:
        raise UserInputError(f"{where}, published.read_error={read_error!r}: percentage points, at least 0.")
    sources = setting["nfl"] if isinstance(setting["nfl"], list) else [setting["nfl"]]
    for k, source in enumerate(sources):
        _check_keys(f"{where}, nfl[{k}]", source, SOURCE_KEYS)
        if "logs" in source and "csv" in source:
            raise UserInputError(f"{where}, nfl[{k}]: give 'logs' (a sweep's run folders) or 'csv' (a results.csv), "
                                 "not both.")
        _sweep_runs(source, f"{where}, nfl[{k}]")


def _sweep_runs(source: dict, where: str) -> tuple[dict, list]:
    """The sweep file's spec and its runs whose settings are ``source['runs']`` (refused when there are none)."""
    from nfl.sweep_file import load_sweep

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


def _solve_text(graphs: list[float]) -> str:
    """The median over seeds of the graphs seen when validation exact match first reached the bar, or
    ``not solved (k of n solved)`` when the median lies past the end of training."""
    solved, n = sum(g != NOT_SOLVED for g in graphs), len(graphs)
    median = statistics.median(graphs)
    if median == NOT_SOLVED:
        return f"not solved ({solved} of {n} solved)"
    return f"{median:,.0f}" + (f" ({solved} of {n} solved)" if solved < n else "")


def _last(scalars: dict, tag: str) -> Optional[float]:
    return scalars[tag][-1][1] if scalars.get(tag) else None


def _mean(values: list[Optional[float]]) -> float:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else float("nan")


def measure(row: Row) -> Row:
    """Fill a row from its source: the finished runs in ``logs`` or a results.csv row; untouched when neither has
    anything (not run here)."""
    source = row.source
    spec, planned = _sweep_runs(source, f"claim {row.claim!r}, {row.setting}")
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
            row.solve = _solve_text([g for _, g, _ in budgets])
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
                row.solve = (f"not solved ({solved} of {row.seeds} solved)" if median == NOT_SOLVED else
                             f"{median:,.0f}" + (f" ({solved} of {row.seeds} solved)" if solved < row.seeds else ""))
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


def _pct(value: float) -> str:
    return "–" if value != value else f"{value:.1f}"


def _graphs(value: Optional[float], derived: bool = False) -> str:
    if value is None or value != value:
        return "–"
    text = f"{value / 1e6:,.2f}M" if value >= 1e5 else f"{value:,.0f}"
    return text + (DERIVED if derived else "")


def published_cell(row: Row) -> str:
    kind, value = target_of(row.published, row.graph)
    if kind is None:
        return "published number not found"
    text = {"chance": f"about 1/d = {value:.1f}", "solved": "solves it (≥ 95)"}.get(kind, f"{value:.1f}")
    if row.published.get("read_error"):
        text += f" (±{row.published['read_error']:g}, read off a figure)"
    return text


def header(command: str) -> str:
    return f"<!-- Generated by `{command}`; do not edit by hand: edit configs/atlas.yaml and run it again. -->\n"


def claim_page(claim: dict, rows: list[Row], command: str) -> str:
    lines = [
        header(command),
        f"# {claim['title']}",
        "",
        f"**Paper**: {claim['paper']}",
        "",
        f"**Claim**: {claim['claim']}",
        "",
    ]
    if claim.get("note"):
        lines += [claim["note"], ""]
    lines += [
        "| setting | nfl run | seeds | nfl test exact match | decision acc | tf pos≥3 | published | source | "
        "published test set | tolerance | graphs seen: nfl / published | solved at (graphs seen) | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    previous = None
    for row in rows:
        exact = "–" if not row.measured else f"{row.mean:.1f}" + (f" ± {row.std:.1f}" if row.seeds > 1 else "")
        same = (row.setting, row.graph) == previous  # the published number and source are those of the row above
        previous = (row.setting, row.graph)
        tol = "–" if not row.measured or target_of(row.published, row.graph)[0] is None else f"±{tolerance(row):.1f}"
        budget = f"{_graphs(row.graphs_seen, row.graphs_derived)} / {_graphs(row.published.get('budget'))}"
        n_test = f"{row.published['n_test']:,}" if row.published.get("n_test") else "not published"
        solve = row.solve if row.measured else "–"
        lines.append(
            f"| {row.setting} on {row.graph} | {row.label or '–'} | {row.seeds or '–'} | {exact} | "
            f"{_pct(row.decision)} | {_pct(row.tf_pos_ge3)} | {'as above' if same else published_cell(row)} | "
            f"{'as above' if same else row.published['source']} | {n_test} | {tol} | "
            f"{budget} | {solve} | **{verdict(row)}** |"
        )
    lines += [
        "",
        "Test exact match, decision accuracy and teacher-forced accuracy at positions ≥ 3 in %, nfl's as the mean ±",
        "standard deviation over seeds. Teacher-forced accuracy high while the decision sits at 1/d is the",
        "Clever-Hans signature. `solved at`: the median over seeds of the training graphs seen when validation",
        f"exact match first reached {100 * SOLVED:.0f}%. {DERIVED}: graphs seen computed from the run's config "
        "(max_steps x batch_size x accumulate_grad_batches x processes),",
        "for runs made before nfl logged `train/graphs_seen`, or for rows not run here from the sweep file that",
        "would run them.",
        "",
        "## Where each nfl number comes from",
        "",
    ]
    for row in rows:
        source = row.source
        where = source.get("logs") or source.get("csv")
        if row.measured:
            lines.append(f"- {row.setting}, {row.label or source['runs']}: `{source['sweep']}`, runs "
                         f"`{source['runs']},seed=*` in `{where}` ({', '.join(row.runs)}).")
        else:
            missing = f" (no finished runs in `{where}` yet)" if where else ""
            lines.append(f"- {row.setting}, {row.label or source['runs']}: not run here{missing}; "
                         f"`python -m nfl.sweep --config {source['sweep']} --only '{source['runs']},'`.")
        if row.note:
            lines.append(f"  {row.note}")
    lines += ["", "## The rule", "", RULE, ""]
    return "\n".join(lines)


def index_page(claims: list[dict], all_rows: dict[str, list[Row]], command: str) -> str:
    lines = [
        header(command),
        "# The reproduction atlas",
        "",
        "Every published path-star claim nfl compares against, each setting's published number beside what nfl",
        "measured, and a plain verdict. The claims, settings and published numbers live in `configs/atlas.yaml`;",
        "these pages are generated from it and from the committed run logs.",
        "",
        "| claim | paper | settings | " + " | ".join(VERDICTS) + " |",
        "|---|---|---|" + "---|" * len(VERDICTS),
    ]
    for claim in claims:
        rows = all_rows[claim["id"]]
        counts = [sum(verdict(r) == v for r in rows) for v in VERDICTS]
        lines.append(f"| [{claim['title']}]({claim['id']}.md) | {claim['paper']} | {len(rows)} | "
                     + " | ".join(str(c) for c in counts) + " |")
    lines += ["", "## What was measured here", "",
              "| claim | setting | nfl run | nfl test exact match | published | verdict |", "|---|---|---|---|---|---|"]
    for claim in claims:
        for row in all_rows[claim["id"]]:
            if row.measured:
                spread = f" ± {row.std:.1f}" if row.seeds > 1 else ""
                exact = f"{row.mean:.1f}{spread} ({row.seeds} seed{'s' if row.seeds > 1 else ''})"
                lines.append(f"| [{claim['id']}]({claim['id']}.md) | {row.setting} on {row.graph} | "
                             f"{row.label or '–'} | {exact} | {published_cell(row)} | {verdict(row)} |")
    lines += ["", "## The rule", "", RULE, ""]
    return "\n".join(lines)


def write_atlas(path: str, out: str, command: Optional[str] = None) -> list[str]:
    """Write ``out/README.md`` and ``out/<claim id>.md``; returns the files written."""
    claims = load_atlas(path)
    command = command or f"python -m nfl.report --atlas {path} --out {out}"
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserInputError(f"--out {out} is a file; give a folder for the atlas pages.")
    all_rows = {claim["id"]: rows_of(claim) for claim in claims}
    os.makedirs(out, exist_ok=True)
    written = []
    for claim in claims:
        written.append(os.path.join(out, f"{claim['id']}.md"))
        with open(written[-1], "w") as f:
            f.write(claim_page(claim, all_rows[claim["id"]], command))
    written.append(os.path.join(out, "README.md"))
    with open(written[-1], "w") as f:
        f.write(index_page(claims, all_rows, command))
    return written

