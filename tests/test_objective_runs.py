"""Every objective through the real CLI: a few steps lower its loss, it checkpoints and resumes, and the tags it
logs are the ones the README's objective table promises (that table is read here, so the two cannot drift)."""

from __future__ import annotations

import math
import re

import pytest

from tests.conftest import ROOT, read_scalars, version_dir


def readme_objective_table() -> dict[str, dict]:
    """README rows ``| `nfl.objectives.X` | yes/no | ... | `tag`, `tag` ... |`` -> {class path: row}."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"`nfl\.objectives\.\w+`", cells[0]):
            rows[cells[0].strip("`")] = {"tf": cells[1] == "yes", "own": re.findall(r"`(\w+/[^`]+)`", cells[3])}
    return rows


TABLE = readme_objective_table()
OPTIONS = {"nfl.objectives.MultiTokenHeads": ["--model.objective.init_args.k", "2"]}


def test_the_readme_table_lists_every_objective():
    import nfl.objectives as objectives

    shipped = {f"nfl.objectives.{name}" for name in objectives.__all__ if name not in ("Objective", "ObjectiveOutput")}
    missing, extra = sorted(shipped - set(TABLE)), sorted(set(TABLE) - shipped)
    assert not missing and not extra, (
        f"the README's objective table documents every objective nfl.objectives exports: add a row "
        f"(| `class path` | yes/no | what it trains | `own/tags` |) for {missing}, drop the rows of {extra}")


@pytest.mark.parametrize("objective", sorted(TABLE), ids=lambda o: o.rsplit(".", 1)[1])
def test_every_objective_learns_resumes_and_logs_the_tags_of_the_readme(objective, run_cli, tiny_config, tmp_path):
    common = ["--config", str(tiny_config), "--model.objective", objective, *OPTIONS.get(objective, []),
              "--model.lr", "3e-3", "--data.init_args.n_test", "32"]
    run_cli("fit", *common, "--trainer.max_steps", "16")
    scalars = read_scalars(version_dir(tmp_path))
    losses = [v for _, v in scalars["train/loss"]]
    assert len(losses) == 16 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) < sum(losses[:4])  # it learns something in a few steps

    row = TABLE[objective]
    logged = set(scalars)
    assert {"val/loss", "val/exact_match", "val/free/pos_1", "val/decision_acc"} <= logged
    tf_tags = {t for t in logged if t.startswith("val/tf/")}
    if row["tf"]:
        assert {"val/tf/pos_1", "val/tf/pos_ge3", "val/tf/decision_acc"} <= tf_tags
    else:
        assert not tf_tags, tf_tags  # no teacher-forced pass, so no tag claims one
    for tag in row["own"]:
        expanded = tag.replace("{j}", "2").replace("{i}", "1")
        assert expanded in logged, expanded
    own_prefixes = {t.split("/")[1] for t in row["own"]}
    every_prefix = {t.split("/")[1] for r in TABLE.values() for t in r["own"]}
    for other in sorted(every_prefix - own_prefixes):  # no objective logs another's tags
        assert not [t for t in logged if t.split("/")[1:2] == [other]], other

    # Resume: the run continues from its last checkpoint at the same step, in the same folder.
    ckpt = version_dir(tmp_path) / "checkpoints" / "last.ckpt"
    cli = run_cli("fit", *common, "--trainer.max_steps", "20", "--ckpt_path", str(ckpt))
    assert cli.trainer.global_step == 20
    resumed = read_scalars(version_dir(tmp_path))["train/loss"]
    assert [s for s, _ in resumed][-4:] == [16, 17, 18, 19] and all(math.isfinite(v) for _, v in resumed)
