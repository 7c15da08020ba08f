"""``python -m nfl.bench``: warm-up outside the timing, medians of repeats, a line for every figure."""

from __future__ import annotations

import time

from nfl.lab import bench


def test_timed_reports_the_median_after_warm_up():
    calls = []

    def fn() -> None:  # the first (warm-up) call and one timed call are slow, as on a busy machine
        calls.append(None)
        time.sleep(0.2 if len(calls) in (1, 3) else 0.01)

    seconds = bench.timed(fn, repeats=5, sync=lambda: None, warmup=1)
    assert len(calls) == 6
    assert 0.01 <= seconds < 0.05  # a mean over the timed calls would be >= 0.048, one with the warm-up far more


def test_bench_prints_every_figure_for_a_config(tiny_config, capsys):
    assert bench.main(["--config", str(tiny_config), "--steps", "2", "--eval-graphs", "64", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    for line in ("generate      batch", "ms/step", "peak memory", "eval decode       cached", "uncached",
                 "eval    tf + free", "median of 2"):
        assert line in out, line


def test_bench_times_an_objective_against_another_in_the_same_run(tiny_config, capsys):
    args = ["--config", str(tiny_config), "--steps", "4", "--eval-graphs", "32", "--repeats", "1",
            "--model.objective=nfl.objectives.BeliefState", "--versus", "nfl.objectives.TeacherForcing"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("train versus"))
    own = float(next(l for l in out.splitlines() if l.startswith("train  ")).split("ms/step")[0].split(":")[1])
    versus = float(line.split(": ")[1].split(" ms/step")[0])
    ratio = float(line.rsplit("= ", 1)[1].rstrip("x"))
    # The step times are printed to 0.1 ms and the ratio to 0.01: equal up to those roundings.
    rounding = own / versus * (0.05 / own + 0.05 / versus) + 0.005
    assert "BeliefState / TeacherForcing" in line and abs(ratio - own / versus) <= rounding
    assert bench.main([*args[:-1], "nfl.objectives.NoSuchThing"]) == 2
    assert "error: --versus:" in capsys.readouterr().err
