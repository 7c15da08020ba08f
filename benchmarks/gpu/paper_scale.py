"""One prepared device command: nfl's CUDA checks and a paper-scale comparison inside a 15-minute GPU loan.

Run from the repository root, as one device command (docs/speed.md gives the exact call)::

    python3 benchmarks/gpu/paper_scale.py --wheels .whl --out "$OUT"

Steps, in order, each under its own time limit so that a hang costs only that step:

1. set-up: the carried wheels (jsonargparse and its signature extras, which the device image lacks) and nfl
   itself installed with ``--no-index --no-deps``; GPU, torch and CUDA versions printed; the bf16 rate of a
   large random matrix product measured (``steps/matmul_peak.py``), the ceiling MFU is read against beside
   the 989 TFLOP/s that ``nfl.bench`` assumes.
2. checks: ``python -m nfl.bench`` at the reference size (6 layers x 384) in fp32, bf16-mixed, 16-mixed and
   bf16-mixed with ``--compile``; a 50-step ``fit`` with ``configs/overlays/ddp.yaml`` on the one GPU; cached
   against uncached decoding of that run's checkpoint (``steps/decode_parity.py``); Mamba's pure-PyTorch scan
   on CUDA (the mamba-ssm kernel path too where ``mamba_ssm`` imports, else reported as skipped).
3. the paper-scale comparison: ``configs/sweeps/gpu_paper_scale.yaml`` (teacher forcing and reversed targets
   beside the objectives that plan) as one ``python -m nfl.sweep`` with every run at once on the GPU, each run
   capped by ``--trainer.max_time`` and tested on the full held-out set after its fit. It starts once the
   timed benches are done and runs beside the untimed checks of step 2.
4. what comes back: ``results.md`` (every step's status and time, the figures) and ``gpu_run.tar.gz``, the
   whole work folder less checkpoints (TensorBoard logs, the sweep's runs, every step's output), refreshed in
   ``--out`` after each step so that a command killed at its limit still returns what was done.
   ``tar xzf gpu_run.tar.gz -C docs/gpu`` and ``python -m nfl.report --sweep docs/gpu/runs/gpu_paper_scale
   --out docs/gpu`` regenerate the report here.

Every size is an option, so that a later loan can spend its minutes on another slice of the atlas (another
sweep file, more time for the comparison, fewer checks). ``--dry-run`` runs the same steps on this machine's
CPU at tiny sizes and installs nothing: it skips the matrix product, ``16-mixed`` and ``--compile``, and runs
the DDP step as two gloo processes on the CPU.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from typing import Optional

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "steps")
ARCHIVE = "gpu_run.tar.gz"
RESULTS = "results.md"
ARCHIVE_LIMIT = 15 * 2**20  # the device returns files of at most 16 MiB


class Runner:
    """Runs each step as a subprocess under its own time limit, logs it, and keeps the record of all steps."""

    def __init__(self, work: str, out: str, env: dict[str, str], deadline: float) -> None:
        self.work, self.out, self.env, self.deadline = work, out, env, deadline
        self.record: list[dict] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def start(self, name: str, cmd: list[str], env: Optional[dict[str, str]] = None) -> tuple[subprocess.Popen, str]:
        log = os.path.join(self.work, "logs", f"{name.replace(' ', '_')}.log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
        handle = open(log, "w")
        handle.write(" ".join(cmd) + "\n")
        handle.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**self.env, **(env or {})}, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)
        proc._nfl_log = handle  # type: ignore[attr-defined]
        proc._nfl_start = time.monotonic()  # type: ignore[attr-defined]
        return proc, log

    def finish(self, name: str, proc: subprocess.Popen, log: str, limit: float) -> dict:
        """Wait for ``proc`` up to ``limit`` seconds from its start (and the overall deadline); a process
        still running then gets SIGTERM (nfl saves last.ckpt and exits) and, 20 s later, SIGKILL."""
        started = proc._nfl_start  # type: ignore[attr-defined]
        limit = max(1.0, min(limit, time.monotonic() - started + self.left()))  # both counted from its start
        status = "ok"
        try:
            proc.wait(timeout=max(0.0, started + limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            status = "timed out"
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        proc._nfl_log.close()  # type: ignore[attr-defined]
        if status == "ok" and proc.returncode != 0:
            status = f"failed (exit {proc.returncode})"
        entry = {"step": name, "status": status, "seconds": round(time.monotonic() - started, 1), "log": log}
        self.record.append(entry)
        with open(log) as f:
            tail = f.read()[-3000:]
        print(tail, flush=True)
        print(f"=== {name}: {status} in {entry['seconds']} s", flush=True)
        return entry

    def run(self, name: str, cmd: list[str], limit: float, env: Optional[dict[str, str]] = None) -> dict:
        if self.left() < 5:
            entry = {"step": name, "status": "skipped: out of time", "seconds": 0.0, "log": ""}
            self.record.append(entry)
            print(f"=== {name}: skipped, the overall time limit is reached", flush=True)
            return entry
        proc, log = self.start(name, cmd, env)
        return self.finish(name, proc, log, limit)

    def skip(self, name: str, why: str) -> None:
        self.record.append({"step": name, "status": f"skipped: {why}", "seconds": 0.0, "log": ""})
        print(f"=== {name}: skipped ({why})", flush=True)


# --- reading the steps' output -----------------------------------------------------------------------------

def bench_figures(log: str) -> dict[str, float]:
    """ms/step, tokens/s, model TFLOP/s and decoding graphs/s from a ``python -m nfl.bench`` log."""
    figures: dict[str, float] = {}
    if not log or not os.path.exists(log):
        return figures
    text = open(log).read()
    patterns = {
        "ms_per_step": r"train\s+batch\s+\d+:\s+([\d.]+) ms/step",
        "tokens_per_s": r"samples/s\s+([\d,]+) tokens/s",
        "tflops": r"model FLOP/s\s+([\d.]+) TFLOP/s",
        "peak_mib": r"peak memory\s+([\d,]+) MiB",
        "decode_cached": r"eval decode\s+cached:\s+([\d,]+) graphs/s",
        "decode_uncached": r"eval decode\s+uncached:\s+([\d,]+) graphs/s",
        "tf_free": r"eval\s+tf \+ free:\s+([\d,]+) graphs/s",
    }
    for key, pattern in patterns.items():
        match = re.search(pattern, text)
        if match:
            figures[key] = float(match.group(1).replace(",", ""))
    return figures


def read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_results(runner: Runner, args, facts: dict) -> str:
    lines = ["# nfl on a GPU: checks and the paper-scale comparison", ""]
    lines += [f"- {k}: {v}" for k, v in facts.items()]
    lines += ["", f"Command: `{' '.join(sys.argv)}`", "", "## Steps", "", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {e['step']} | {e['status']} | {e['seconds']} |" for e in runner.record]
    peak = (read_json(os.path.join(runner.work, "matmul_peak.json")) or {}).get("tflops")
    rows = []
    for entry in runner.record:
        if entry["step"].startswith("bench"):
            fig = bench_figures(entry["log"])
            if "ms_per_step" not in fig:
                continue
            mfu = f"{100 * fig['tflops'] / args.peak_tflops:.1f}" if "tflops" in fig else "–"
            mfu_measured = f"{100 * fig['tflops'] / peak:.1f}" if "tflops" in fig and peak else "–"
            rows.append(f"| {entry['step'].removeprefix('bench ')} | {fig['ms_per_step']:.1f} | "
                        f"{fig.get('tokens_per_s', 0):,.0f} | {fig.get('tflops', float('nan')):.1f} | {mfu} | "
                        f"{mfu_measured} | {fig.get('peak_mib', float('nan')):,.0f} | "
                        f"{fig.get('decode_cached', 0):,.0f} | {fig.get('decode_uncached', 0):,.0f} | "
                        f"{fig.get('tf_free', 0):,.0f} |")
    if rows:
        lines += ["", f"## nfl.bench, {args.bench_config} (batch from the config)", "",
                  f"MFU against the {args.peak_tflops:.0f} TFLOP/s that nfl.bench assumes, and against the "
                  f"{peak:.0f} TFLOP/s a bf16 matrix product measured here." if peak else
                  f"MFU against the {args.peak_tflops:.0f} TFLOP/s that nfl.bench assumes (no matrix product "
                  "measured).", "",
                  "| precision | ms/step | tokens/s | model TFLOP/s | MFU % (assumed peak) | MFU % (measured) | "
                  "peak MiB | decode cached graphs/s | uncached | tf + free |", "|---|---|---|---|---|---|---|---|---|---|",
                  *rows]
    parity = read_json(os.path.join(runner.work, "decode_parity.json"))
    if parity:
        lines += ["", "## Cached against uncached decoding", ""]
        lines += [f"- {k}: {v['answers_differing']} of {parity['graphs']} answers differ "
                  f"({v['tokens_differing']} tokens)" for k, v in parity.items() if isinstance(v, dict)]
    report = os.path.join(runner.work, "report", "results.md")
    if os.path.exists(report):
        lines += ["", "## The comparison (python -m nfl.report)", "", open(report).read()]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(runner.work, RESULTS), "w") as f:
        f.write(text)
    return text


def pack(runner: Runner, args, facts: dict) -> None:
    """results.md and the archive of the work folder (no checkpoints) into --out; drops logs if too large."""
    write_results(runner, args, facts)
    os.makedirs(runner.out, exist_ok=True)
    shutil.copy(os.path.join(runner.work, RESULTS), os.path.join(runner.out, RESULTS))
    target = os.path.join(runner.out, ARCHIVE)
    for drop_logs in (False, True):
        with tarfile.open(target + ".part", "w:gz") as tar:
            def keep(info: tarfile.TarInfo) -> Optional[tarfile.TarInfo]:
                if info.name.endswith(".ckpt") or (drop_logs and info.name.endswith(("stdout.log", ".log"))):
                    return None
                return info
            tar.add(runner.work, arcname=".", filter=keep)
        if os.path.getsize(target + ".part") <= ARCHIVE_LIMIT:
            break
    os.replace(target + ".part", target)


# --- the steps -----------------------------------------------------------------------------------------------

def setup(runner: Runner, args) -> dict:
    facts: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    py = sys.executable
    if args.dry_run:
        runner.skip("install wheels and nfl", "dry run installs nothing")
    else:
        wheels = sorted(glob.glob(os.path.join(args.wheels, "*.whl"))) if args.wheels else []
        if wheels:
            runner.run("install wheels", [py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                                          "--no-cache-dir", "--upgrade", "--target", args.site, *wheels], 60)
        else:
            runner.skip("install wheels", f"no wheels in {args.wheels!r}")
        runner.run("install nfl", [py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                                   "--no-compile", "--no-cache-dir", "--upgrade", "--target", args.site, ROOT], 90)
    probe = ("import json, sys, torch, lightning, jsonargparse, nfl; "
             "print(json.dumps({'python': sys.version.split()[0], 'torch': torch.__version__, "
             "'cuda': torch.version.cuda, 'gpu': torch.cuda.get_device_name() if torch.cuda.is_available() else None, "
             "'lightning': lightning.__version__, 'jsonargparse': jsonargparse.__version__, 'nfl': nfl.__file__}))")
    entry = runner.run("versions", [py, "-c", probe], 60)
    if entry["status"] == "ok":
        for line in open(entry["log"]).read().splitlines():
            if line.startswith("{"):
                facts.update(json.loads(line))
    if args.dry_run:
        runner.skip("matmul peak", "dry run: no GPU")
    else:
        runner.run("matmul peak", [py, os.path.join(STEPS, "matmul_peak.py"),
                                   "--out", os.path.join(runner.work, "matmul_peak.json")], 60)
    return facts


def benches(runner: Runner, args) -> None:
    """The timed steps, alone on the GPU."""
    py = sys.executable
    cuda = not args.dry_run
    precisions = ["32", "bf16-mixed"] + (["16-mixed"] if cuda else [])
    bench = [py, "-m", "nfl.bench", "--config", args.bench_config, "--steps", str(args.bench_steps),
             "--eval-graphs", str(args.eval_graphs), "--repeats", str(args.bench_repeats),
             "--peak-tflops", str(args.peak_tflops), *args.bench_overrides]
    if not cuda:
        bench += ["--device", "cpu"]
    for precision in precisions:
        runner.run(f"bench {precision}", [*bench, "--precision", precision], args.bench_timeout)
    if cuda:
        runner.run("bench bf16-mixed compile", [*bench, "--precision", "bf16-mixed", "--compile"],
                   args.bench_timeout + 60)
    else:
        for what in ("16-mixed", "bf16-mixed compile"):
            runner.skip(f"bench {what}", "dry run: CPU")


def checks(runner: Runner, args) -> None:
    """The untimed checks: DDP fit and Mamba at once, then decoding parity on the DDP run's checkpoint."""
    py = sys.executable
    cuda = not args.dry_run
    ddp_dir = os.path.join(runner.work, "ddp")
    small = list(args.fit_overrides)
    ddp = [py, "-m", "nfl", "fit", "--config", args.bench_config, "--config", "configs/overlays/ddp.yaml",
           f"--trainer.max_steps={args.fit_steps}", f"--trainer.val_check_interval={args.fit_steps}",
           f"--data.init_args.n_test={args.fit_test_graphs}", f"--trainer.default_root_dir={ddp_dir}",
           "--trainer.enable_progress_bar=false", *small]
    if not cuda:
        ddp += ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.precision=32"]
    def mamba(kernels: str) -> list[str]:
        return [py, "-m", "nfl", "fit", "--config", "configs/quickstart_mamba.yaml",
                f"--trainer.max_steps={args.fit_steps}", f"--trainer.val_check_interval={args.fit_steps}",
                f"--data.init_args.n_test={args.fit_test_graphs}", f"--trainer.default_root_dir={os.path.join(runner.work, 'mamba_' + kernels)}",
                "--trainer.enable_progress_bar=false", f"--model.backbone.init_args.kernels={kernels}",
                f"--trainer.accelerator={'gpu' if cuda else 'cpu'}", "--trainer.devices=1"]

    started = [(name, *runner.start(name, cmd)) for name, cmd in (("ddp fit", ddp), ("mamba torch scan", mamba("torch")))]
    for name, proc, log in started:
        runner.finish(name, proc, log, args.fit_timeout)
    have_kernel = subprocess.run([py, "-c", "import mamba_ssm"], env=runner.env, capture_output=True).returncode == 0
    if cuda and have_kernel:
        runner.run("mamba cuda kernel", mamba("cuda"), args.fit_timeout)
    else:
        runner.skip("mamba cuda kernel", "mamba_ssm is not installed" if cuda else "dry run: CPU")
    ckpts = sorted(glob.glob(os.path.join(ddp_dir, "lightning_logs", "version_*", "checkpoints", "last.ckpt")))
    if ckpts:
        runner.run("decode parity", [py, os.path.join(STEPS, "decode_parity.py"), "--config", args.bench_config,
                                     "--ckpt", ckpts[-1], "--graphs", str(args.eval_graphs), "--out",
                                     os.path.join(runner.work, "decode_parity.json"),
                                     *(["--device", "cpu"] if not cuda else []), *small], 120)
    else:
        runner.skip("decode parity", "the DDP fit left no last.ckpt")


def start_comparison(runner: Runner, args) -> tuple[subprocess.Popen, str, float, str]:
    """The sweep file with this call's sizes, started with every run at once; :func:`finish_comparison` waits."""
    with open(args.sweep) as f:
        spec = yaml.safe_load(f)
    objectives = spec["grid"]["objective"]
    if args.objectives:
        unknown = [o for o in args.objectives if o not in objectives]
        if unknown:
            raise SystemExit(f"error: --objectives {unknown} not in {args.sweep} (it has {', '.join(objectives)})")
        spec["grid"]["objective"] = {o: objectives[o] for o in args.objectives}
    spec["base"] = os.path.join(ROOT, spec["base"]) if not os.path.isabs(spec["base"]) else spec["base"]
    seconds = max(30, int(min(args.compare_seconds, runner.left() - args.compare_margin)))
    spec["args"] = [*spec.get("args", []), f"--trainer.max_steps={args.compare_steps}",
                    f"--trainer.max_time=00:00:{seconds // 60:02d}:{seconds % 60:02d}", *args.compare_overrides]
    if args.dry_run:
        spec["args"] += ["--trainer.accelerator=cpu", "--trainer.precision=32"]
    sweep_file = os.path.join(runner.work, "sweep.yaml")
    with open(sweep_file, "w") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    runs = len(spec["grid"]["objective"]) * len(spec.get("seeds", [0]))
    py = sys.executable
    proc, log = runner.start("comparison", [py, "-m", "nfl.sweep", "--config", sweep_file, "--logs",
                                            os.path.join(runner.work, "runs"), "--parallel", str(args.parallel or runs)])
    return proc, log, seconds + args.compare_margin - 20, spec["name"]


def finish_comparison(runner: Runner, started: tuple[subprocess.Popen, str, float, str]) -> None:
    proc, log, limit, name = started
    runner.finish("comparison", proc, log, limit)
    py = sys.executable
    runner.run("report", [py, "-m", "nfl.report", "--sweep", os.path.join(runner.work, "runs", name),
                          "--out", os.path.join(runner.work, "report")], 60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_out"), help="where results.md and the archive go")
    parser.add_argument("--work", default=None, help="work folder (default: a fresh one under /tmp)")
    parser.add_argument("--wheels", default=".whl", help="folder of carried wheels (jsonargparse and its extras)")
    parser.add_argument("--site", default="/tmp/nfl_site", help="where the wheels are installed")
    parser.add_argument("--budget", type=float, default=530, help="seconds for the whole script")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on this CPU at tiny sizes")
    parser.add_argument("--skip", nargs="*", default=[], choices=["checks", "comparison"], help="steps to leave out")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--bench-config", default="configs/reference_tf.yaml")
    parser.add_argument("--bench-steps", type=int, default=20)
    parser.add_argument("--bench-repeats", type=int, default=2)
    parser.add_argument("--bench-timeout", type=float, default=60)
    parser.add_argument("--eval-graphs", type=int, default=2000)
    parser.add_argument("--fit-steps", type=int, default=50)
    parser.add_argument("--fit-timeout", type=float, default=90)
    parser.add_argument("--fit-test-graphs", type=int, default=2000, help="held-out graphs of the DDP and Mamba fits")
    parser.add_argument("--sweep", default="configs/sweeps/gpu_paper_scale.yaml", help="the comparison's sweep file")
    parser.add_argument("--objectives", nargs="*", help="only these of the sweep's objectives")
    parser.add_argument("--compare-steps", type=int, default=100000, help="max_steps of each comparison run")
    parser.add_argument("--compare-seconds", type=float, default=600, help="max_time of each comparison run "
                        "(at most what the budget leaves, less --compare-margin)")
    parser.add_argument("--compare-margin", type=float, default=90, help="seconds kept for the runs' start-up "
                        "(about 30 s with six starting at once), their tests, the report and packing")
    parser.add_argument("--parallel", type=int, default=0, help="comparison runs at once (default: all)")
    args = parser.parse_args()
    args.bench_overrides, args.fit_overrides, args.compare_overrides = [], [], []
    if args.dry_run:  # tiny sizes: a 2-layer width-64 model, few steps and graphs
        tiny = ["--model.backbone.init_args.n_layer=2", "--model.backbone.init_args.d_model=64",
                "--model.backbone.init_args.n_head=2"]
        args.bench_overrides = tiny
        args.fit_overrides = [*tiny, "--data.init_args.batch_size=32"]
        args.compare_overrides = [*tiny, "--data.init_args.batch_size=32", "--data.init_args.n_test=200",
                                  "--data.init_args.n_val=100", "--trainer.val_check_interval=10"]
        args.bench_steps, args.bench_repeats, args.eval_graphs, args.fit_steps = 2, 1, 200, 10
        args.fit_test_graphs = 200
        args.compare_steps = min(args.compare_steps, 20)
    work = args.work or os.path.join("/tmp", f"nfl_gpu_{int(time.time())}")
    os.makedirs(work, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not args.dry_run:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (args.site, ROOT, env.get("PYTHONPATH")) if p)
    runner = Runner(work, args.out, env, time.monotonic() + args.budget)
    facts = setup(runner, args)
    facts["dry run"] = args.dry_run
    pack(runner, args, facts)
    if "checks" not in args.skip:
        benches(runner, args)
        pack(runner, args, facts)
    # The comparison starts once the timed benches are done, and runs beside the untimed checks.
    started = start_comparison(runner, args) if "comparison" not in args.skip else None
    if "checks" not in args.skip:
        checks(runner, args)
        pack(runner, args, facts)
    if started is not None:
        finish_comparison(runner, started)
    facts["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    pack(runner, args, facts)
    print("\n" + open(os.path.join(work, RESULTS)).read())
    failed = [e["step"] for e in runner.record if not (e["status"] == "ok" or e["status"].startswith("skipped"))]
    print(f"{len(runner.record)} steps, {len(failed)} not ok{': ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
