"""``python -m nfl.bench``: warm-up outside the timing, medians of repeats, a line for every figure."""

from __future__ import annotations

import time

from nfl import bench


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
