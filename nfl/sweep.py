"""``python -m nfl.sweep --config SWEEP.yaml``: run a grid of experiments one after another, resumably.

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

Run ``objective=reverse,seed=1`` logs to ``lightning_logs/my_sweep/objective=reverse,seed=1/`` (TensorBoard events,
config.yaml, checkpoints/). Each run is a subprocess that fits and then tests; when it succeeds the sweep writes
``sweep_run.json`` into its folder. Running the sweep again skips those runs and resumes an interrupted one
from its ``last.ckpt`` (or, if that does not load, its newest checkpoint that does), so a sweep can be
stopped and restarted at any time: Ctrl-C or SIGTERM is forwarded to the running training process, which
saves its ``last.ckpt``, and the sweep then exits with 130 or 143. ``python -m nfl.report`` turns the
finished runs into a table and plots.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

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
    unknown = set(spec) - {"name", "base", "grid", "seeds", "args"}
    if unknown:
        raise UserInputError(f"{path}: unknown keys {sorted(unknown)}; allowed: name, base, seeds, args, grid.")
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
    return spec, runs


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
    from nfl.checkpoints import newest_loadable  # torch: only when there is something to resume

    checkpoints = os.path.join(folder, "checkpoints")
    return newest_loadable(checkpoints) if os.path.isdir(checkpoints) else (None, [])


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


class Signals:
    """SIGINT and SIGTERM while the sweep runs: the first is forwarded once to the running child, then the sweep stops.

    The child runs in its own session so that a terminal's Ctrl-C reaches only the sweep; a second signal is
    not forwarded, since it could cut the child's save of ``last.ckpt`` short.
    """

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.child: Optional[subprocess.Popen] = None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum
            if self.child is not None and self.child.poll() is None:
                self.child.send_signal(signum)


def run_child(cmd: list[str], log_path: str, signals: Signals, save_timeout: float = 300.0) -> int:
    """Run one training process and return its exit code; after a signal, wait up to ``save_timeout`` seconds
    for it to save ``last.ckpt`` and exit, then kill it."""
    with open(log_path, "a") as out:
        signals.child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if signals.received is not None:  # arrived between the sweep's last check and the child's start
            signals.child.send_signal(signals.received)
        deadline = None
        while True:
            try:
                return signals.child.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                if signals.received is not None:
                    deadline = deadline or time.monotonic() + save_timeout
                    if time.monotonic() > deadline:
                        signals.child.kill()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nfl.sweep", description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="the sweep YAML")
    parser.add_argument("--logs", default="lightning_logs", help="root folder of the runs (default: lightning_logs)")
    parser.add_argument("--only", help="run only the runs whose name matches this regular expression")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their commands, run nothing")
    args = parser.parse_args(argv)
    try:
        spec, runs = load_sweep(args.config)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.only:
        runs = [r for r in runs if re.search(args.only, r.name)]
    signals = Signals()
    previous = {s: signal.signal(s, signals) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run_all(spec, runs, args, signals)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run_all(spec: dict[str, Any], runs: list[Run], args: argparse.Namespace, signals: Signals) -> int:
    failed, started = [], time.time()
    for i, run in enumerate(runs, start=1):
        if signals.received is not None:
            return 128 + signals.received
        folder = run_dir(args.logs, spec["name"], run)
        tag = f"[{i}/{len(runs)}] {run.name}"
        if os.path.isfile(os.path.join(folder, DONE)):
            print(f"{tag}: finished earlier, skipped")
            continue
        ckpt_path, skipped = resume_checkpoint(folder)
        for reason in skipped:
            print(f"{tag}: skipping a checkpoint: {reason}", flush=True)
        cmd = command(spec, run, args.logs, ckpt_path)
        if args.dry_run:
            print(f"{tag}: {' '.join(cmd)}")
            continue
        if signals.received is not None:
            return 128 + signals.received
        os.makedirs(folder, exist_ok=True)
        resumed = ckpt_path is not None
        doing = f"resuming from {os.path.basename(ckpt_path)}" if resumed else "running"
        print(f"{tag}: {doing} (output in {folder}/stdout.log)", flush=True)
        t0 = time.time()
        code = run_child(cmd, os.path.join(folder, "stdout.log"), signals)
        if signals.received is not None:
            name = signal.Signals(signals.received).name
            if code == 128 + signals.received:
                print(f"{tag}: stopped by {name}; its last.ckpt is saved. Run the sweep again to resume.", file=sys.stderr)
            else:
                print(f"{tag}: stopped by {name}; the run exited with {code} (see {folder}/stdout.log).", file=sys.stderr)
            return 128 + signals.received
        if code != 0:
            print(f"{tag}: FAILED with exit code {code}; see {folder}/stdout.log", flush=True)
            failed.append(run.name)
            continue
        record = {"sweep": spec["name"], "run": run.name, "settings": run.settings, "seed": run.seed,
                  "wall_seconds": round(time.time() - t0, 1), "resumed": resumed, "command": cmd}
        with open(os.path.join(folder, DONE), "w") as f:
            json.dump(record, f, indent=2)
        print(f"{tag}: done in {time.time() - t0:.0f} s", flush=True)
    if not args.dry_run:
        print(f"sweep {spec['name']}: {len(runs) - len(failed)}/{len(runs)} runs finished; {time.time() - started:.0f} s")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
