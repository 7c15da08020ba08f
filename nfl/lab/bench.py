"""``python -m nfl.bench --config FILE``: throughput figures for a config on this machine.

Prints graphs/s generated, training ms/step, samples/s and tokens/s, peak memory, and evaluation graphs/s with
cached and uncached greedy decoding; on CUDA also the fraction of the GPU's peak FLOP/s (``--peak-tflops``).
Model and data come from the config through the same CLI as ``fit``, so the figures are for what ``fit`` runs.

Example::

    python -m nfl.bench --config configs/quickstart.yaml --steps 30
    python -m nfl.bench --config configs/reference_tf.yaml --precision bf16-mixed --compile
    python -m nfl.bench --config configs/quickstart_bst.yaml --versus nfl.objectives.TeacherForcing

``--versus OBJECTIVE`` also times training steps of the same config with that objective, interleaved with the
config's own in the same run, and prints the ratio of the two step times.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import time
from typing import Optional, Sequence

import numpy as np
import torch

from nfl.cli import NFLCLI, parse_error_line, user_error
from nfl.errors import ArgumentParser
from nfl.data.datamodule import TaskDataModule
from nfl.run.malloc import keep_freed_memory
from nfl.run.quiet import silence_dependency_noise
from nfl.system import GraphSystem
from nfl.tasks.scratchpad import write_scratchpads


def build(config: str, overrides: Sequence[str]) -> tuple[GraphSystem, TaskDataModule]:
    argv, sys.argv = sys.argv, sys.argv[:1]  # the bench's own arguments are not the CLI's
    try:
        cli = NFLCLI(
            GraphSystem, TaskDataModule, subclass_mode_data=True, run=False,
            args=["--config", config, *overrides], save_config_callback=None,
            parser_kwargs={"exit_on_error": False},
        )
    finally:
        sys.argv = argv
    return cli.model, cli.datamodule


def build_or_report(
    config: str, overrides: Sequence[str], context: str = ""
) -> Optional[tuple[GraphSystem, TaskDataModule]]:
    """:func:`build`, or None after printing a user's mistake as one ``error:`` line."""
    try:
        return build(config, overrides)
    except argparse.ArgumentError as err:  # a misspelt option or class, as python -m nfl reports it
        print(f"error: {context}{parse_error_line(str(err))}", file=sys.stderr)
        return None
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        print(f"error: {context}" + " ".join(str(cause).split()), file=sys.stderr)
        return None


def timed(fn, repeats: int, sync, warmup: int = 1) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` timed calls, after ``warmup`` untimed ones.

    The median, not the mean: one call slowed by another process on a shared machine (or a first-call
    allocation the warm-up missed) would otherwise move the figure, and could make cached decoding look
    slower than uncached.
    """
    for _ in range(warmup):
        fn()
    sync()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def model_flops_per_token(system: GraphSystem, seq_len: int) -> float:
    """Training FLOPs per token: 6 per non-embedding parameter plus attention (Kaplan et al. 2020)."""
    bb = system.backbone
    n = sum(p.numel() for name, p in bb.named_parameters() if "emb" not in name and "wte" not in name)
    config = getattr(getattr(bb, "lm", None), "config", None)  # a pretrained model's
    layers = getattr(bb, "n_layer", 0) or getattr(config, "num_hidden_layers", 0)
    return 6 * n + 12 * layers * bb.d_model * seq_len


def training_step(system: GraphSystem, data: TaskDataModule, device, args, dtype, autocast):
    """One training step of ``system`` as a function (and the input length it saw, filled on first call)."""
    system.to(device).train()
    backbone = torch.compile(system.backbone) if args.compile else system.backbone
    optimizer = system.make_optimizer(mixed_precision=dtype is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "16-mixed")
    data.setup("fit")
    stream = iter(data.train_batches())
    codec = system.codec  # numeral batches -> the backbone's tokens (the identity for GPT and Mamba)
    shape: list[int] = []

    def step() -> None:
        batch = codec.encode(*(t.to(device, non_blocking=True) for t in next(stream)))
        shape[:] = [batch.prefix.shape[1] + batch.target.shape[1] - 1]
        with autocast():
            loss = system.objective(backbone, batch.prefix, batch.target).loss
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step, shape


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python -m nfl.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="an nfl YAML config")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--eval-graphs", type=int, default=2000, help="held-out graphs decoded for eval timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each evaluation (median printed)")
    parser.add_argument("--precision", choices=["32", "bf16-mixed", "16-mixed"], default="32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone for training")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU peak dense TFLOP/s (H100 bf16: 989)")
    parser.add_argument("--versus", metavar="OBJECTIVE", help="also time training steps with this objective "
                        "(a class path, e.g. nfl.objectives.TeacherForcing) and print the step-time ratio")
    parser.add_argument("overrides", nargs="*", help="extra CLI overrides, e.g. --data.init_args.batch_size=64")
    args, extra = parser.parse_known_args(argv)  # CLI overrides such as --model.lr=1e-3 pass through
    args.overrides = [*args.overrides, *extra]
    for name in ("steps", "eval_graphs", "repeats"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.", file=sys.stderr)
            return 2
    keep_freed_memory()  # as python -m nfl does
    silence_dependency_noise()

    built = build_or_report(args.config, args.overrides)
    if built is None:
        return 2
    system, data = built
    task, device = system.task, torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    print(f"nfl.bench: {' '.join(sys.argv)}")
    print(f"device {device}{' (' + torch.cuda.get_device_name() + ')' if cuda else ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, precision {args.precision}, compile {args.compile}")
    print(f"task {task.describe()}, backbone {type(system.backbone).__name__} "
          f"{sum(p.numel() for p in system.parameters()) / 1e6:.2f}M params, objective {type(system.objective).__name__}")

    # --- data generation (numpy, one core) -------------------------------------------------------------
    for n in (data.batch_size, 65536):
        rng = np.random.default_rng(0)
        seconds = timed(lambda: task.sample(rng, n), max(3, 200000 // n), lambda: None)
        print(f"generate      batch {n:>6}: {n / seconds:>12,.0f} graphs/s")

    # --- training steps ------------------------------------------------------------------------------
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    step, shape = training_step(system, data, device, args, dtype, autocast)
    if args.versus:
        built = build_or_report(args.config, [*args.overrides, f"--model.objective={args.versus}"], "--versus: ")
        if built is None:
            return 2
        other, other_data = built
        other_step, _ = training_step(other, other_data, device, args, dtype, autocast)
        # Interleaved rounds, so that a slower stretch of a shared machine hits both alike.
        rounds: dict[str, list[float]] = {"own": [], "versus": []}
        for fn in (step, other_step):
            timed(fn, 1, sync, warmup=3)
        for _ in range(4):
            rounds["own"].append(timed(step, max(1, args.steps // 4), sync, warmup=0))
            rounds["versus"].append(timed(other_step, max(1, args.steps // 4), sync, warmup=0))
        seconds, versus = statistics.median(rounds["own"]), statistics.median(rounds["versus"])
    else:
        # Warm-up outside the timing: the first steps allocate (and, compiled, compile); median of per-step times.
        seconds = timed(step, args.steps, sync, warmup=3)
    tokens = data.batch_size * shape[0]  # input tokens of a step
    print(f"train         batch {data.batch_size:>6}: {seconds * 1e3:>9.1f} ms/step  {data.batch_size / seconds:>10,.0f} "
          f"samples/s  {tokens / seconds:>12,.0f} tokens/s")
    if args.versus:
        print(f"train versus  {args.versus.rsplit('.', 1)[-1]}: {versus * 1e3:.1f} ms/step; "
              f"{type(system.objective).__name__} / {args.versus.rsplit('.', 1)[-1]} = {seconds / versus:.2f}x")
    if cuda:
        achieved = model_flops_per_token(system, shape[0]) * tokens / seconds
        print(f"model FLOP/s  {achieved / 1e12:.1f} TFLOP/s = {100 * achieved / (args.peak_tflops * 1e12):.1f}% "
              f"of {args.peak_tflops:.0f} TFLOP/s peak")
        print(f"peak memory   {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB (CUDA allocated)")
    else:
        print(f"peak memory   {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB (process RSS)")

    # --- evaluation -----------------------------------------------------------------------------------
    # "decode": free-running prediction from the prefix alone, what the reference code's evaluation times.
    # "tf + free": what validation and test run, the teacher-forced pass and free-running decoding together
    # (TeacherForcing reuses the teacher-forced pass as the decoding's prefill).
    system.eval()
    codec = system.codec
    prefix, target = task.sample(np.random.default_rng(1), args.eval_graphs)
    if task.scratchpad is not None:  # what the model writes: the scratchpad, its separator, the answer
        target = write_scratchpads(task, target)
    graphs = (torch.from_numpy(a).to(device) for a in (prefix, target))
    batches = list(zip(*(g.split(data.eval_batch_size) for g in graphs)))
    objective = system.objective
    modes = [("cached", True), ("uncached", False)] if hasattr(objective, "use_cache") else [("own", None)]
    for name, use_cache in [*modes, ("tf + free", True)]:
        if use_cache is not None and hasattr(objective, "use_cache"):
            objective.use_cache = use_cache
        full = name == "tf + free"

        def evaluate_all() -> None:
            with torch.no_grad(), autocast():
                for b in batches:
                    batch = codec.encode(*b)
                    steps = codec.decode_steps(batch)
                    if full:
                        objective.evaluate(system.backbone, batch.prefix, batch.target, steps)
                    else:
                        objective.decode(system.backbone, batch.prefix, steps)

        seconds = timed(evaluate_all, args.repeats, sync)
        print(f"eval {'' if full else 'decode '}{name:>12}: {args.eval_graphs / seconds:>12,.0f} graphs/s  "
              f"({seconds:.2f} s for {args.eval_graphs} graphs, median of {args.repeats})")
    return 0
