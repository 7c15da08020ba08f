"""``python -m nfl.sweep --config SWEEP.yaml``: run a grid of experiments resumably, one at a time or several at once.

A sweep file names a base config, the seeds, and grid axes; every combination of one named setting per axis
and one seed is a run. A setting is a mapping of CLI keys to values, passed to ``python -m nfl fit`` as
``--key=value`` on top of the base config::

    # Teacher forcing vs reverse on G(2,5,50), 3 seeds.
    name: my_sweep
    base: configs/quickstart.yaml
    seeds: [0, 1, 2]
    args: ["--trainer.max_steps=600"]          # optional, added to every run
    grid:
      objective:
        teacher_forcing: {model.objective: nfl.objectives.TeacherForcing}
        reverse: {data.init_args.reverse: true}
    exclude:                                   # optional: combinations that are not runs
      - {objective: reverse, seed: 1}

Run ``objective=reverse,seed=1`` logs to ``lightning_logs/my_sweep/objective=reverse,seed=1/`` (TensorBoard events,
config.yaml, run_info.json with the commit and package versions, checkpoints/). Each run is a subprocess that fits
and then tests; when it succeeds the sweep writes ``sweep_run.json`` into its folder. Running the sweep again
skips those runs and resumes an interrupted one from its ``last.ckpt`` (or, if that does not load, its newest
checkpoint that does), so a sweep can be stopped and restarted at any time: Ctrl-C or SIGTERM is forwarded to
the running training processes, which save their ``last.ckpt``, and the sweep then exits with 130 or 143.

``--parallel K`` runs up to K runs at once: on GPUs each gets ``--gpus-per-run`` of them (1 by default; a run
that is itself DDP uses all it is given) in its own ``CUDA_VISIBLE_DEVICES``, on CPU each gets ``cores // K``
threads. A run that fails is reported and the others go on; the exit status is 1 if any failed. ``--shard I/N``
runs every N-th run of the grid starting at the I-th (by default the SLURM job array task's shard, see
:func:`shard_of`), so N processes on N machines share one sweep folder without running a run twice.
``python -m nfl.report`` turns the finished runs into a table and plots.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import IO, Any, Mapping, Optional, Sequence

import yaml

from nfl.errors import UserInputError

DONE = "sweep_run.json"


@dataclass
class Run:
    """One combination of settings and seed."""

    name: str  # e.g. "objective=reverse,seed=1": the run's folder name
    settings: dict[str, str]  # axis -> setting name
    seed: int
    overrides: list[str]  # CLI arguments for the settings


def _cli_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else yaml.safe_dump(value).strip().removesuffix("\n...")


def load_sweep(path: str) -> tuple[dict[str, Any], list[Run]]:
    """Parse and check a sweep file; returns its spec and the expanded list of runs."""
    try:
        with open(path) as f:
            spec = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        raise UserInputError(f"Cannot read sweep file {path!r}: {err}") from None
    if not isinstance(spec, dict) or not {"name", "base", "grid"} <= set(spec):
        raise UserInputError(f"{path}: a sweep file needs 'name', 'base' and 'grid' (see python -m nfl.sweep --help).")
    unknown = set(spec) - {"name", "base", "grid", "seeds", "args", "exclude"}
    if unknown:
        raise UserInputError(f"{path}: unknown keys {sorted(unknown)}; allowed: name, base, seeds, args, grid, exclude.")
    spec["base"] = _find_base(spec["base"], path)
    grid = spec["grid"]
    if not isinstance(grid, dict) or not all(isinstance(v, dict) and v for v in grid.values()):
        raise UserInputError(f"{path}: 'grid' maps each axis name to named settings, each a mapping of CLI keys.")
    runs = []
    axes = list(grid)
    for combo in itertools.product(*(list(grid[a].items()) for a in axes)):
        for seed in spec.get("seeds", [0]):
            settings = {axis: name for axis, (name, _) in zip(axes, combo)}
            overrides = [f"--{k}={_cli_value(v)}" for _, values in combo for k, v in (values or {}).items()]
            name = ",".join([f"{a}={n}" for a, n in settings.items()] + [f"seed={seed}"])
            runs.append(Run(name, settings, int(seed), overrides))
    excluded = _exclusions(spec.get("exclude") or [], grid, path)
    return spec, [r for r in runs if not any(_matches(r, rule) for rule in excluded)]


def _exclusions(rules: Any, grid: dict[str, Any], path: str) -> list[dict[str, set[str]]]:
    """``exclude``: a list of mappings ``{axis: setting or [settings], seed: n or [n]}``; a run matching every
    key of one mapping is left out (e.g. an objective a backbone cannot run)."""
    if not isinstance(rules, list) or not all(isinstance(r, dict) and r for r in rules):
        raise UserInputError(f"{path}: 'exclude' is a list of mappings such as {{backbone: mamba, objective: registers}}.")
    out = []
    for rule in rules:
        checked = {}
        for axis, names in rule.items():
            names = names if isinstance(names, list) else [names]
            if axis != "seed":
                if axis not in grid:
                    raise UserInputError(f"{path}: exclude names axis {axis!r}; the grid's axes are {sorted(grid)} (and seed).")
                missing = [n for n in names if n not in grid[axis]]
                if missing:
                    raise UserInputError(f"{path}: exclude names {axis}={missing[0]}, which is not a setting of {axis} ({', '.join(grid[axis])}).")
            checked[axis] = {str(n) for n in names}
        out.append(checked)
    return out


def _matches(run: Run, rule: dict[str, set[str]]) -> bool:
    return all((str(run.seed) if axis == "seed" else run.settings[axis]) in names for axis, names in rule.items())


def _find_base(base: str, sweep_path: str) -> str:
    """The base config: as given (relative to the working directory), or relative to the sweep file's folder or
    one of its parents (so ``configs/quickstart.yaml`` works from anywhere for a sweep inside the repository)."""
    if os.path.isfile(base):
        return base
    folder = os.path.dirname(os.path.abspath(sweep_path))
    while True:
        candidate = os.path.join(folder, base)
        if os.path.isfile(candidate):
            return candidate
        parent = os.path.dirname(folder)
        if parent == folder:
            raise UserInputError(f"{sweep_path}: base config {base!r} not found from the working directory or the sweep file's folders.")
        folder = parent


def run_dir(logs: str, sweep_name: str, run: Run) -> str:
    return os.path.join(logs, sweep_name, run.name)


def resume_checkpoint(folder: str) -> tuple[Optional[str], list[str]]:
    """The checkpoint a run in ``folder`` resumes from: its newest one that loads (last.ckpt, or a periodic one
    when a failed save or a crash left last.ckpt broken), and a line for each newer one that was skipped."""
    checkpoints = os.path.join(folder, "checkpoints")
    if not os.path.isdir(checkpoints):
        return None, []
    from nfl.checkpoints import newest_loadable  # torch: only when there is something to resume

    return newest_loadable(checkpoints)


def command(spec: dict[str, Any], run: Run, logs: str, ckpt_path: Optional[str] = None) -> list[str]:
    """The ``python -m nfl fit`` command of one run, resuming from ``ckpt_path`` if given."""
    cmd = [sys.executable, "-m", "nfl", "fit", "--config", spec["base"], *spec.get("args", []), *run.overrides]
    cmd += [
        f"--seed_everything={run.seed}",
        f"--data.init_args.seed={run.seed}",
        "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
        f"--trainer.logger.save_dir={logs}",
        f"--trainer.logger.name={spec['name']}",
        f"--trainer.logger.version={run.name}",
        "--trainer.logger.default_hp_metric=false",
        "--test_after_fit=true",
    ]
    if ckpt_path is not None:
        cmd += ["--ckpt_path", ckpt_path]
    return cmd


def shard_of(arg: Optional[str], environ: Mapping[str, str]) -> Optional[tuple[int, int]]:
    """The shard ``(I, N)`` to run: ``--shard I/N`` if given, else the SLURM job array's task, else None (all runs).

    A SLURM array task is shard ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP + 1`` of
    ``SLURM_ARRAY_TASK_COUNT`` (the step is 1 when unset), so ``--array=0-3`` and ``--array=1-7:2`` both make
    shards 1..4.
    """
    if arg is not None:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", arg)
        if not match:
            raise UserInputError(f"--shard {arg!r}: give I/N, shard I of N counted from 1, e.g. --shard 2/4.")
        i, n = int(match.group(1)), int(match.group(2))
        if n < 1 or not 1 <= i <= n:
            counts = f"1 to N={n}" if n >= 1 else "1 to N, and N is at least 1"
            raise UserInputError(f"--shard {arg}: I counts from {counts}, e.g. --shard 1/{max(n, 1)}.")
        return i, n
    if environ.get("SLURM_ARRAY_TASK_ID") is None:
        return None
    try:
        task, first = int(environ["SLURM_ARRAY_TASK_ID"]), int(environ["SLURM_ARRAY_TASK_MIN"])
        count, step = int(environ["SLURM_ARRAY_TASK_COUNT"]), int(environ.get("SLURM_ARRAY_TASK_STEP") or 1)
    except (KeyError, ValueError):
        names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_STEP")
        shown = ", ".join(f"{k}={environ.get(k)!r}" for k in names)
        raise UserInputError(f"a SLURM job array without whole-number task variables ({shown}); give --shard I/N.") \
            from None
    offset, rest = divmod(task - first, step) if step > 0 else (-1, 0)
    if rest or not 0 <= offset < count:
        raise UserInputError(
            f"SLURM array task {task} (min {first}, step {step}, count {count}) is not one of shards 1..{count}; "
            f"submit the array as one range (e.g. --array=0-{count - 1}) or give --shard I/N."
        )
    return offset + 1, count


def visible_gpus(environ: Mapping[str, str]) -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` as listed (up to an invalid entry, as CUDA reads
    it), else the NVIDIA GPUs ``nvidia-smi -L`` lists (none without it; torch is not imported for this)."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        try:
            done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return []
        return [str(i) for i in range(sum(line.startswith("GPU ") for line in done.stdout.splitlines()))]
    gpus = []
    for entry in (e.strip() for e in listed.split(",")):
        if not entry or entry.startswith("-"):
            break
        gpus.append(entry)
    return gpus


def slot_environments(parallel: int, gpus_per_run: int, gpus: list[str], cores: int) -> list[dict[str, str]]:
    """The environment each of ``parallel`` concurrent runs gets on top of the sweep's: ``gpus_per_run`` GPUs of
    its own in ``CUDA_VISIBLE_DEVICES`` (handed out round-robin, so that more runs than GPUs share them evenly),
    and ``cores // parallel`` CPU threads. One run at a time changes nothing."""
    if parallel == 1:
        return [{}]
    threads = str(max(1, cores // parallel))
    slots = [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(parallel)]
    for i, slot in enumerate(slots):
        if gpus:
            mine = [gpus[(i * gpus_per_run + j) % len(gpus)] for j in range(gpus_per_run)]
            slot["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    return slots


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Signals:
    """SIGINT and SIGTERM while the sweep runs: the first is forwarded once to every running child, then the sweep
    stops starting runs and waits for them.

    The children run in their own sessions so that a terminal's Ctrl-C reaches only the sweep; a second signal
    is not forwarded, since it could cut a child's save of ``last.ckpt`` short.
    """

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.at = 0.0  # when it was received (time.monotonic)
        self.children: set[subprocess.Popen] = set()

    def __call__(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received, self.at = signum, time.monotonic()
            for child in list(self.children):
                if child.poll() is None:
                    child.send_signal(signum)

    def start(self, cmd: list[str], out: IO, env: Optional[dict[str, str]] = None) -> subprocess.Popen:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.children.add(child)
        if self.received is not None:  # arrived between the sweep's last check and the child's start
            child.send_signal(self.received)
        return child


def run_child(cmd: list[str], log_path: str, signals: Signals, save_timeout: float = 300.0) -> int:
    """Run one training process and return its exit code; after a signal, wait up to ``save_timeout`` seconds
    for it to save ``last.ckpt`` and exit, then kill it."""
    with open(log_path, "a") as out:
        child = signals.start(cmd, out)
        return _wait([child], signals, save_timeout)[child]


def _wait(children: list[subprocess.Popen], signals: Signals, save_timeout: float, until_all: bool = True) -> dict:
    """Wait for ``children`` (all, or the first to end), killing any still running ``save_timeout`` seconds after a
    signal; their exit codes by child."""
    while True:
        ended = {c: c.poll() for c in children if c.poll() is not None}
        if ended and (not until_all or len(ended) == len(children)):
            signals.children.difference_update(ended)
            return ended
        if signals.received is not None and time.monotonic() > signals.at + save_timeout:
            for child in children:
                if child.poll() is None:
                    child.kill()
        try:
            next(c for c in children if c.poll() is None).wait(timeout=0.5 if len(children) > 1 else 1.0)
        except (subprocess.TimeoutExpired, StopIteration):
            pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nfl.sweep", description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="the sweep YAML")
    parser.add_argument("--logs", default="lightning_logs", help="root folder of the runs (default: lightning_logs)")
    parser.add_argument("--only", help="run only the runs whose name matches this regular expression")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their commands, run nothing")
    parser.add_argument("--parallel", type=int, default=1, metavar="K",
                        help="up to K runs at once, each with its own GPUs or share of the CPU threads (default 1)")
    parser.add_argument("--gpus-per-run", type=int, default=1, metavar="M",
                        help="GPUs each run gets under --parallel, e.g. 2 for runs that are DDP themselves (default 1)")
    parser.add_argument("--shard", metavar="I/N",
                        help="only shard I of N, a disjoint share of the grid (default: the SLURM array task's)")
    args = parser.parse_args(argv)
    try:
        if args.parallel < 1 or args.gpus_per_run < 1:
            bad = "--parallel" if args.parallel < 1 else "--gpus-per-run"
            raise UserInputError(f"{bad} must be at least 1, got {getattr(args, bad[2:].replace('-', '_'))}.")
        spec, runs = load_sweep(args.config)
        shard = shard_of(args.shard, os.environ)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.only:
        runs = [r for r in runs if re.search(args.only, r.name)]
    if shard is not None:
        i, n = shard
        mine = runs[i - 1 :: n]  # round-robin: every shard gets a share of each setting
        print(f"shard {i}/{n}: {len(mine)} of the {len(runs)} runs", flush=True)
        runs = mine
    signals = Signals()
    previous = {s: signal.signal(s, signals) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run_all(spec, runs, args, signals, shard)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass
class _Running:
    """A run whose training process is under way, and what its record needs."""

    tag: str  # "[i/n] name", as the sweep prints it
    run: Run
    folder: str
    slot: int
    cmd: list[str]
    resumed: bool
    started: float
    out: IO


def _slots(args: argparse.Namespace) -> list[dict[str, str]]:
    if args.parallel == 1 or args.dry_run:
        return [{}]
    gpus = visible_gpus(os.environ)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    slots = slot_environments(args.parallel, args.gpus_per_run, gpus, cores)
    if gpus:
        shared = "" if args.parallel * args.gpus_per_run <= len(gpus) else f" (the {len(gpus)} GPUs are shared)"
        print(f"{args.parallel} runs at once, {args.gpus_per_run} GPU(s) each{shared}", flush=True)
    else:
        print(f"{args.parallel} runs at once on CPU, {slots[0]['OMP_NUM_THREADS']} thread(s) each", flush=True)
    return slots


def _run_all(
    spec: dict[str, Any], runs: list[Run], args: argparse.Namespace, signals: Signals,
    shard: Optional[tuple[int, int]] = None,
) -> int:
    failed, finished, started = [], 0, time.time()
    slots = _slots(args)
    free, running = list(range(len(slots))), {}
    pending = list(enumerate(runs, start=1))
    while pending or running:
        while pending and free and signals.received is None:
            i, run = pending.pop(0)
            folder = run_dir(args.logs, spec["name"], run)
            tag = f"[{i}/{len(runs)}] {run.name}"
            if os.path.isfile(os.path.join(folder, DONE)):
                print(f"{tag}: finished earlier, skipped")
                finished += 1
                continue
            ckpt_path, skipped = resume_checkpoint(folder)
            for reason in skipped:
                print(f"{tag}: skipping a checkpoint: {reason}", flush=True)
            cmd = command(spec, run, args.logs, ckpt_path)
            if args.dry_run:
                print(f"{tag}: {' '.join(cmd)}")
                continue
            if signals.received is not None:
                break
            os.makedirs(folder, exist_ok=True)
            resumed = ckpt_path is not None
            doing = f"resuming from {os.path.basename(ckpt_path)}" if resumed else "running"
            slot = free.pop(0)
            env = None
            if slots[slot]:  # several runs at once: each its own GPUs, threads and DDP port
                env = {**os.environ, **slots[slot], "MASTER_PORT": str(_free_port())}
            where = "".join(f", {k}={v}" for k, v in slots[slot].items() if k == "CUDA_VISIBLE_DEVICES")
            print(f"{tag}: {doing} (output in {folder}/stdout.log{where})", flush=True)
            out = open(os.path.join(folder, "stdout.log"), "a")
            child = signals.start(cmd, out, env)
            running[child] = _Running(tag, run, folder, slot, cmd, resumed, time.time(), out)
        if not running:
            break
        for child, code in _wait(list(running), signals, save_timeout=300.0, until_all=False).items():
            r = running.pop(child)
            r.out.close()
            free.append(r.slot)
            free.sort()
            ok = _finish(spec, r, code, signals, slots[r.slot], shard)
            finished += ok
            if not ok and signals.received is None:
                failed.append(r.run.name)
    if signals.received is not None:
        return 128 + signals.received
    if not args.dry_run:
        print(f"sweep {spec['name']}: {finished}/{len(runs)} runs finished; {time.time() - started:.0f} s")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


ATTEMPTS = "sweep_attempts.json"  # every training process a run took: start time, seconds, exit code, environment


def _record_attempt(folder: str, attempt: dict[str, Any]) -> list[dict[str, Any]]:
    path = os.path.join(folder, ATTEMPTS)
    try:
        with open(path) as f:
            attempts = json.load(f)
    except (OSError, ValueError):  # the first attempt (or one of a sweep from before nfl kept them)
        attempts = []
    attempts.append(attempt)
    with open(path, "w") as f:
        json.dump(attempts, f, indent=2)
    return attempts


def _finish(spec: dict[str, Any], r: _Running, code: int, signals: Signals, env: dict[str, str],
            shard: Optional[tuple[int, int]]) -> bool:
    """Report one ended training process; write its run's ``sweep_run.json`` when it succeeded (True)."""
    seconds = time.time() - r.started
    attempt = {"started": round(r.started, 1), "seconds": round(seconds, 1), "exit_code": code, "environment": env}
    attempts = _record_attempt(r.folder, attempt)
    if code != 0 and signals.received is not None:
        name = signal.Signals(signals.received).name
        if code == 128 + signals.received:
            line = f"{r.tag}: stopped by {name}; its last.ckpt is saved. Run the sweep again to resume."
        else:
            line = f"{r.tag}: stopped by {name}; the run exited with {code} (see {r.folder}/stdout.log)."
        print(line, file=sys.stderr)
        return False
    if code != 0:
        print(f"{r.tag}: FAILED with exit code {code}; see {r.folder}/stdout.log", flush=True)
        return False
    record = {
        "sweep": spec["name"], "run": r.run.name, "settings": r.run.settings, "seed": r.run.seed,
        # Every attempt's time: a run resumed after an interruption took them all.
        "wall_seconds": round(sum(a["seconds"] for a in attempts), 1), "resumed": r.resumed, "command": r.cmd,
        "shard": f"{shard[0]}/{shard[1]}" if shard else None,
    }
    with open(os.path.join(r.folder, DONE), "w") as f:
        json.dump(record, f, indent=2)
    print(f"{r.tag}: done in {seconds:.0f} s", flush=True)
    return True


if __name__ == "__main__":
    sys.exit(main())
