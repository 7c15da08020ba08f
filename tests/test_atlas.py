"""The reproduction atlas (nfl.lab.atlas.page, ``python -m nfl.report --atlas``): the verdict rule on hand-made numbers, the
tables written from a small sweep folder of real TensorBoard event files, one-line refusals of a bad atlas file,
and the committed pages being what the committed atlas file and logs give."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from nfl.lab.atlas.page import Row, load_atlas, tolerance, verdict, write_atlas
from nfl.errors import UserInputError
from nfl.report import main
from tests.conftest import ROOT, TINY_CONFIG


def row(value, mean=50.0, std=0.0, seeds=3, graphs=1e6, graph="G(2,5,50)", **published) -> Row:
    return Row("c", "s", graph, {"value": value, "source": "a paper", **published}, {}, seeds=seeds, mean=mean, std=std,
               graphs_seen=graphs)


def test_a_mean_within_the_seeds_spread_plus_the_published_binomial_se_is_reproduced():
    se = 100 * math.sqrt(0.5 * 0.5 / 100)  # 5 points: the published 50% measured on 100 graphs
    assert verdict(row(50.0, mean=50.0 + 1.0 + se - 0.01, std=1.0, n_test=100)) == "reproduced"
    assert tolerance(row(50.0, std=1.0, n_test=100)) == pytest.approx(1.0 + se)
    # Just past it, or with the test set unknown (no SE), it is a miss, decided by the budget.
    assert verdict(row(50.0, mean=50.0 + 1.0 + se + 0.01, std=1.0, n_test=100, budget=1e8)) != "reproduced"
    assert verdict(row(50.0, mean=52.0, std=1.0, budget=1e8)) == "not reproduced at this budget"
    # A figure's reading error widens the tolerance.
    assert verdict(row(49.4, mean=50.0, std=0.2, read_error=0.5)) == "reproduced"
    assert verdict(row(49.4, mean=50.0, std=0.2)) == "not reproduced at this budget"


def test_a_miss_is_not_reproduced_at_a_small_budget_and_contradicted_at_a_comparable_one():
    assert verdict(row(97.1, mean=48.0, graphs=1e6, budget=10.24e6)) == "not reproduced at this budget"
    assert verdict(row(97.1, mean=48.0, graphs=5.2e6, budget=10.24e6)) == "contradicted"  # at least half
    assert verdict(row(97.1, mean=48.0, graphs=5.0e6, budget=10.24e6)) == "not reproduced at this budget"
    assert verdict(row(97.1, mean=48.0, graphs=5.2e6)) == "not reproduced at this budget"  # budget not published


def test_chance_solved_not_run_and_no_number():
    assert verdict(row("chance", mean=20.5, std=0.4, graph="G(5,5,100)", n_test=20000)) == "reproduced"  # 100/5
    assert verdict(row("chance", mean=50.0, std=0.4, graph="G(5,5,100)", budget=1e6)) == "contradicted"
    se = 100 * math.sqrt(0.95 * 0.05 / 20000)
    assert verdict(row("solved", mean=95.0 - 1.0 - se + 0.01, std=1.0, n_test=20000)) == "reproduced"
    assert verdict(row("solved", mean=95.0 - 1.0 - se - 0.01, std=1.0, n_test=20000, budget=1e9)) == \
        "not reproduced at this budget"
    assert verdict(row("solved", mean=100.0)) == "reproduced"
    assert verdict(row(50.0, seeds=0)) == "not run here"
    assert verdict(row(None, mean=12.0)) == "no published number"


# A small sweep: setting a logged train/graphs_seen and solves, b did not log it (an older run) and never solves,
# c has no finished runs.
EXACT = {("a", 0): 0.97, ("a", 1): 0.99, ("b", 0): 0.50, ("b", 1): 0.52}
SOLVED_AT = {("a", 0): 49, ("a", 1): 69}  # the logged step of the first validation at >= 95%
BATCH, STEPS = 32, 100


def _write_run(folder: Path, objective: str, seed: int) -> None:
    from torch.utils.tensorboard import SummaryWriter

    run = f"objective={objective},seed={seed}"
    path = folder / run
    path.mkdir(parents=True)
    config = yaml.safe_load(TINY_CONFIG)
    config["trainer"]["max_steps"] = STEPS
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    writer = SummaryWriter(str(path))
    for step in range(STEPS):
        writer.add_scalar("train/loss", 1.0, step)
        if objective == "a" and step % 10 == 9:
            writer.add_scalar("train/graphs_seen", float((step + 1) * BATCH), step)
    for step in range(9, STEPS, 10):
        solved = (objective, seed) in SOLVED_AT and step >= SOLVED_AT[objective, seed]
        writer.add_scalar("val/exact_match", 0.96 if solved else 0.5, step)
    for tag, value in (("test/exact_match", EXACT[objective, seed]), ("test/decision_acc", EXACT[objective, seed]),
                       ("test/tf/pos_ge3", 1.0)):
        writer.add_scalar(tag, value, STEPS)
    writer.close()
    marker = {"sweep": "demo", "run": run, "settings": {"objective": objective}, "seed": seed, "wall_seconds": 1.0}
    (path / "sweep_run.json").write_text(json.dumps(marker))


@pytest.fixture
def demo(tmp_path: Path) -> dict[str, Path]:
    base = tmp_path / "base.yaml"
    base.write_text(TINY_CONFIG)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "demo", "base": str(base), "seeds": [0, 1], "args": [f"--trainer.max_steps={STEPS}"],
        "grid": {"objective": {k: {"model.objective": "nfl.objectives.TeacherForcing"} for k in "abc"}},
    }))
    logs = tmp_path / "logs" / "demo"
    for objective, seed in EXACT:
        _write_run(logs, objective, seed)
    source = lambda name: {"sweep": str(sweep), "runs": f"objective={name}", "logs": str(logs)}  # noqa: E731
    atlas = {"claims": [{
        "id": "demo_claim", "title": "A demo claim", "paper": "Someone 2025", "claim": "a solves it, b does too",
        "settings": [
            {"name": "a", "graph": "G(2,4,20)", "nfl": source("a"),
             "published": {"value": 98.0, "source": "Fig. 1", "n_test": 1000, "budget": 3000}},
            {"name": "b", "graph": "G(2,4,20)", "nfl": [source("b")],
             "published": {"value": 90.0, "source": "Table 2", "budget": 4000}},
            {"name": "c", "graph": "G(2,4,20)", "nfl": source("c"),
             "published": {"value": "chance", "source": "in words"}},
        ]}]}
    path = tmp_path / "atlas.yaml"
    path.write_text(yaml.safe_dump(atlas, sort_keys=False))
    return {"atlas": path, "out": tmp_path / "pages", "sweep": sweep, "root": tmp_path}


def _table(page: str) -> dict[str, list[str]]:
    """The claim table's rows by setting name: the cells of each row."""
    lines = [line for line in page.splitlines() if line.startswith("| ") and not line.startswith("| setting")]
    return {cells[0].split(" on G(")[0]: cells for cells in (line.strip("| ").split(" | ") for line in lines)}


def test_the_pages_give_each_settings_measured_and_published_numbers(demo, capsys):
    assert main(["--atlas", str(demo["atlas"]), "--out", str(demo["out"])]) == 0
    page = (demo["out"] / "demo_claim.md").read_text()
    assert page.startswith("<!-- Generated by `python -m nfl.report --atlas")
    assert "do not edit by hand" in page.splitlines()[0]
    assert "within the tolerance of the published number" in page  # the rule is printed on the page
    rows = _table(page)

    a = [100 * EXACT["a", s] for s in (0, 1)]
    cells = rows["a"]
    assert cells[2] == "2" and cells[3] == f"{statistics.fmean(a):.1f} ± {statistics.stdev(a):.1f}"
    assert cells[6:9] == ["98.0", "Fig. 1", "1,000"]
    tol = statistics.stdev(a) + 100 * math.sqrt(0.98 * 0.02 / 1000)
    assert cells[9] == f"±{tol:.1f}"
    assert cells[10] == f"{STEPS * BATCH:,} / 3,000"  # logged: no † mark
    solved = [(SOLVED_AT["a", s] + 1) * BATCH for s in (0, 1)]  # graphs seen at the first validation >= 95%
    assert cells[11] == f"{statistics.median(solved):,.0f}"
    assert cells[12] == "**reproduced**"

    b = [100 * EXACT["b", s] for s in (0, 1)]
    cells = rows["b"]
    assert cells[3] == f"{statistics.fmean(b):.1f} ± {statistics.stdev(b):.1f}" and cells[8] == "not published"
    assert cells[10] == f"{STEPS * BATCH:,}† / 4,000"  # derived from the runs' config.yaml
    assert cells[11] == "not solved (0 of 2 solved)"
    assert cells[12] == "**contradicted**"  # 3,200 graphs is at least half of 4,000, and 51% misses 90%

    cells = rows["c"]
    assert cells[2] == "–" and cells[6] == "about 1/d = 50.0" and cells[12] == "**not run here**"
    assert f"`python -m nfl.sweep --config {demo['sweep']} --only 'objective=c,'`" in page
    assert cells[10].startswith(f"{STEPS * BATCH:,}†")  # what the sweep file would train on

    index = (demo["out"] / "README.md").read_text()
    assert "[A demo claim](demo_claim.md)" in index
    counts = next(line for line in index.splitlines() if line.startswith("| [A demo claim]")).split(" | ")
    assert counts[3:8] == ["1", "0", "1", "1", "0 |"]


@pytest.mark.parametrize("change, message", [
    (lambda a: a["claims"][0].update(titel="x"),
     "claims[0]: unknown key 'titel'; allowed: claim, id, note, paper, settings, title."),
    (lambda a: a["claims"][0].pop("paper"), "claims[0]: missing 'paper'"),
    (lambda a: a["claims"][0]["settings"][0]["published"].pop("source"),
     "settings[0] (a), published: missing 'source'"),
    (lambda a: a["claims"][0]["settings"][1]["nfl"][0].update(run="x"), "settings[1] (b), nfl[0]: unknown key 'run'"),
    (lambda a: a["claims"][0]["settings"][0]["published"].update(value="high"), "published.value='high': give a %"),
    (lambda a: a["claims"][0]["settings"][0].update(graph="G2,4"), "graph 'G2,4' is not G(d,l) or G(d,l,n)"),
    (lambda a: a["claims"][0]["settings"][0]["nfl"].update(runs="objective=z"), "has the settings 'objective=z'; its "
     "settings are: objective=a, objective=b, objective=c."),
    (lambda a: a.update(extra=1), "an atlas file has one key, 'claims'"),
    (lambda a: a["claims"][0]["settings"][0]["published"].update(n_test=float("nan")),
     "published.n_test=nan: a positive count of graphs"),
    (lambda a: a["claims"][0]["settings"][0]["published"].update(read_error=float("inf")),
     "published.read_error=inf: percentage points"),
    (lambda a: a["claims"][0]["settings"][0]["nfl"].update(sweep=3), "nfl[0].sweep=3: give a non-empty string"),
])
def test_a_bad_atlas_file_is_one_clear_line(demo, capsys, change, message):
    atlas = yaml.safe_load(demo["atlas"].read_text())
    change(atlas)
    demo["atlas"].write_text(yaml.safe_dump(atlas, sort_keys=False))
    with pytest.raises(UserInputError) as err:
        load_atlas(str(demo["atlas"]))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert main(["--atlas", str(demo["atlas"]), "--out", str(demo["out"])]) == 2
    printed = capsys.readouterr().err.strip()
    assert printed.startswith("error: ") and message in printed and "\n" not in printed
    assert not demo["out"].exists()  # nothing written


def test_the_committed_pages_are_what_the_atlas_file_gives(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the atlas file's paths are from the repository root
    command = "python -m nfl.report --atlas configs/atlas.yaml --out docs/atlas"
    write_atlas("configs/atlas.yaml", str(tmp_path), command=command)
    committed = sorted(p.name for p in (ROOT / "docs" / "atlas").glob("*.md"))
    assert committed == sorted(p.name for p in tmp_path.glob("*.md"))
    for name in committed:
        assert (tmp_path / name).read_text() == (ROOT / "docs" / "atlas" / name).read_text(), \
            f"docs/atlas/{name} differs from what configs/atlas.yaml gives: run {command}"


def test_an_atlas_file_that_is_not_yaml_is_one_line_with_its_place(demo, capsys):
    demo["atlas"].write_text("claims:\n  - id: a\n    title: [unclosed\n")
    assert main(["--atlas", str(demo["atlas"]), "--out", str(demo["out"])]) == 2
    printed = capsys.readouterr().err.strip()
    assert printed.startswith(f"error: {demo['atlas']}:") and "not valid YAML" in printed and "\n" not in printed
