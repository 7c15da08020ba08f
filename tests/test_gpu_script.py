"""benchmarks/gpu/paper_scale.py: its dry run on this CPU, and its reading of the figures of a real GPU run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile

import pytest

from conftest import ROOT
from nfl.report import read_scalars

SCRIPT = ROOT / "benchmarks" / "gpu" / "paper_scale.py"


def load_script():
    spec = importlib.util.spec_from_file_location("paper_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_entry_point_is_the_only_script_directly_in_benchmarks_gpu():
    scripts = sorted(p.name for p in (ROOT / "benchmarks" / "gpu").glob("*.py"))
    assert scripts == ["paper_scale.py"]


def test_bench_figures_read_the_committed_h200_logs():
    """The parser against nfl.bench's real output from the H200 run committed under docs/gpu/checks."""
    script = load_script()
    figures = script.bench_figures(str(ROOT / "docs" / "gpu" / "checks" / "bench_32.log"))
    text = (ROOT / "docs" / "gpu" / "checks" / "bench_32.log").read_text()
    step_line = next(line for line in text.splitlines() if line.startswith("train "))
    assert f"{figures['ms_per_step']:.1f} ms/step" in step_line
    assert f"{figures['tokens_per_s']:,.0f} tokens/s" in step_line
    assert set(figures) == {"ms_per_step", "tokens_per_s", "tflops", "peak_mib", "decode_cached",
                            "decode_uncached", "tf_free"}
    assert script.bench_figures(str(ROOT / "docs" / "gpu" / "checks" / "ddp_fit.log")) == {}


@pytest.mark.slow
def test_the_dry_run_runs_every_step_and_its_archive_regenerates_the_report(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--work", str(work)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = (out / "results.md").read_text()
    for step in ("bench 32", "bench bf16-mixed", "ddp fit", "mamba torch scan", "decode parity", "comparison",
                 "report"):
        assert f"| {step} | ok |" in results, results
    assert "| bench 16-mixed | skipped: dry run: CPU |" in results
    assert "fp32: 0 of 200 answers differ" in results
    unpacked = tmp_path / "unpacked"
    with tarfile.open(out / "gpu_run.tar.gz") as tar:
        names = tar.getnames()
        assert not [n for n in names if n.endswith(".ckpt")]
        tar.extractall(unpacked, filter="data")
    runs = unpacked / "runs" / "gpu_paper_scale"
    assert len(list(runs.iterdir())) == 6
    for run in runs.iterdir():
        assert "test/exact_match" in read_scalars(str(run))
    report = subprocess.run([sys.executable, "-m", "nfl.report", "--sweep", str(runs), "--out", str(tmp_path / "r")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    assert "objective=belief_state" in (tmp_path / "r" / "results.md").read_text()
