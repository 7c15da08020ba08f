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
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from typing import IO, Any, Optional, Sequence

from nfl.errors import ArgumentParser, UserInputError
from nfl.lab.sweep.processes import Signals, free_port, slot_environments, visible_gpus, wait_for
from nfl.lab.sweep.spec import DONE, Run, command, load_sweep, run_dir, shard_of


def resume_checkpoint(folder: str) -> tuple[Optional[str], list[str]]:
    """The checkpoint a run in ``folder`` resumes from: its newest one that loads (last.ckpt, or a periodic one
    when a failed save or a crash left last.ckpt broken), and a line for each newer one that was skipped."""
    checkpoints = os.path.join(folder, "checkpoints")
    if not os.path.isdir(checkpoints):
        return None, []
    from nfl.run.checkpoints import newest_loadable  # torch: only when there is something to resume

    return newest_loadable(checkpoints)



def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(
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
        if args.only:
            try:
                only = re.compile(args.only)
            except re.error as err:
                raise UserInputError(f"--only {args.only!r} is not a regular expression ({err}); e.g. --only 'seed=0'.") from None
            runs = [r for r in runs if only.search(r.name)]
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
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
                env = {**os.environ, **slots[slot], "MASTER_PORT": str(free_port())}
            where = "".join(f", {k}={v}" for k, v in slots[slot].items() if k == "CUDA_VISIBLE_DEVICES")
            print(f"{tag}: {doing} (output in {folder}/stdout.log{where})", flush=True)
            out = open(os.path.join(folder, "stdout.log"), "a")
            child = signals.start(cmd, out, env)
            running[child] = _Running(tag, run, folder, slot, cmd, resumed, time.time(), out)
        if not running:
            break
        for child, code in wait_for(list(running), signals, save_timeout=300.0, until_all=False).items():
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
