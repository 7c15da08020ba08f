"""The named presets (configs/presets/): each says which published setting it follows, has that setting's numbers,
and runs through the real CLI at a tiny size."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nfl.lab.sweep.spec import load_sweep
from tests.conftest import ROOT, tiny_fit

PRESETS = sorted((ROOT / "configs" / "presets").glob("*.yaml"))
STEPS_PER_EPOCH = 782  # the reference loader's batches of 256 over 200,000 graphs, the last one partial


def test_the_presets_are_shipped():
    names = {p.name for p in PRESETS}
    for kind in ("tf", "reverse", "teacherless"):
        assert {f"readme_{kind}.yaml", f"paper_{kind}.yaml"} <= names
    assert {"paper_mamba_tf.yaml", "paper_mamba_reverse.yaml"} <= names


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_each_preset_has_its_settings_numbers(preset):
    first = preset.read_text().splitlines()[0]
    config = yaml.safe_load(preset.read_text())
    model, data = config["model"], config["data"]["init_args"]
    assert (data["batch_size"], data["n_train"], data["n_test"]) == (256, 200_000, 20_000)
    backbone = model["backbone"]["init_args"]
    if preset.name.startswith("readme_"):
        assert first.startswith("# Preset: the reference README's setting (github.com/gregorbachmann/")
        assert (backbone["n_layer"], backbone["d_model"], backbone["n_head"], model["lr"]) == (6, 384, 6, 1e-4)
        assert config["trainer"]["max_steps"] == 100 * STEPS_PER_EPOCH
    else:
        assert first.startswith("# Preset: the paper's from-scratch setting") and "issue #3" in first
        assert model["lr"] == 5e-4 and config["trainer"]["max_steps"] == 500 * STEPS_PER_EPOCH
        if "mamba" in preset.name:
            assert model["backbone"]["class_path"] == "nfl.models.Mamba" and backbone["d_model"] == 384
        else:
            assert (backbone["n_layer"], backbone["d_model"], backbone["n_head"]) == (12, 384, 6)
    assert data["reverse"] == ("reverse" in preset.name)
    teacherless = model["objective"]["class_path"] == "nfl.objectives.Teacherless"
    assert teacherless == ("teacherless" in preset.name)


# One preset of each objective runs through the CLI; the others differ from these only in numbers (sizes, lr,
# steps) or in the backbone (which configs/reference_mamba_*.yaml run in test_cli), and are parsed: every value
# type-checked against the classes, without training.
RUN = sorted(p for p in PRESETS if p.name.startswith("readme_"))
PARSE = sorted(set(PRESETS) - set(RUN))


@pytest.mark.parametrize("preset", RUN, ids=lambda p: p.name)
def test_each_objectives_preset_runs_a_step_at_a_tiny_size(preset, run_cli):
    cli = run_cli(*tiny_fit(preset, 1, n_test=8))
    assert cli.trainer.global_step == 1
    assert "test/exact_match" in cli.trainer.callback_metrics  # test_after_fit: true


@pytest.mark.parametrize("preset", PARSE, ids=lambda p: p.name)
def test_the_other_presets_parse(preset, run_cli, capsys):
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", str(preset), "--print_config")
    assert done.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    backbone = yaml.safe_load(preset.read_text())["model"]["backbone"]["class_path"]
    assert printed["model"]["backbone"]["class_path"] == backbone
    assert printed["trainer"]["max_steps"] == 500 * STEPS_PER_EPOCH


@pytest.mark.parametrize("sweep", sorted((ROOT / "configs" / "presets" / "sweeps").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_the_preset_sweeps_expand_over_their_presets(sweep):
    spec, runs = load_sweep(str(sweep))
    assert Path(spec["base"]).resolve().parent == ROOT / "configs" / "presets"
    assert len(runs) == 3 * len(next(iter(spec["grid"].values())))
