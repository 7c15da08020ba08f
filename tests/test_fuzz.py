"""Every option fuzzed: whatever value a user types, nfl runs or refuses it in one ``error:`` line, in time.

The option surface is read from the CLI itself (``--print_config`` of the tiny run with each backbone, objective,
data module and task), so an option added to any class is fuzzed without being listed here. Each case sets one
or two options to values drawn from hostile lists by the type of the option's default (negative, zero, huge,
NaN and infinities, the wrong type, empty) or to class paths that do not exist, and runs in its own process
under a 4 GiB address-space limit (``tests/cli_cases.py``). A case passes when it exits 0, 1 (refused) or 2
(unparseable), with a last stderr line starting ``error:`` when not 0, no traceback, and a refusal within
:data:`REFUSE_SECONDS`. The default run draws :data:`DEFAULT_CASES` cases; ``pytest -m slow`` draws
:data:`SLOW_CASES` over every class's options, and ``python -m nfl.data generate``, sweep files and atlas files.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.conftest import ROOT, TINY_CONFIG

LIMIT = 4 << 30  # RLIMIT_AS of every case: one that escapes the size check cannot take the test run down
REFUSE_SECONDS = 10.0
CASE_TIMEOUT = 90.0  # a case still running then is a hang
DEFAULT_CASES, SLOW_CASES = 8, 400
DEFAULT_FILE_CASES, SLOW_FILE_CASES = 2, 150  # each one generate, one sweep file and one atlas file case

# The tiny run's own options, which every case starts from (the fuzzed ones come after and override).
BASE = ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--data.init_args.n_test=16"]

INTS = ["-1", "0", "1", "3", "1000000000000", "9223372036854775808", "-9223372036854775809", "nan", "inf", "abc",
        "1.5", "", "[]", "null"]
FLOATS = ["nan", "inf", "-inf", "-1", "0", "1e300", "-1e-300", "abc", "", "0.5", "[]", "null"]
BOOLS = ["maybe", "", "2", "-1", "true", "false", "null", "[]"]
STRINGS = ["", "x", "null", "a" * 300, "dir/" * 3 + "x", "{}", "[1]", "nan", "-1", "\u00e9\u2202"]
LISTS = ["[]", "[nan]", "[-1,-1]", "[1000000000000,1000000000000]", "abc", "[1,2,3]", "[0.5]", "[null]", ""]
CLASSES = ["no.such.Class", "builtins.int", "os.system", "", "nfl", "nfl.tasks.PathStar", "nfl.models.GPT",
           "nfl.objectives.Teacherless", "nfl.data.TaskDataModule", "lightning.pytorch.callbacks.ModelCheckpoint"]
# Options a large value of which asks, legitimately, for a long run: fuzzed with every hostile value but the huge.
LONG_RUN = {"trainer.max_steps", "trainer.min_steps", "trainer.fast_dev_run", "trainer.max_epochs",
            "trainer.min_epochs", "trainer.max_time", "trainer.val_check_interval", "trainer.limit_train_batches",
            "model.objective.init_args.steps", "data.init_args.n_test", "data.init_args.n_train_eval"}
HUGE = {"1000000000000", "9223372036854775808", "1e300", "inf", "[1000000000000,1000000000000]"}
# Options whose values name where to write: a relative hostile path only (a case runs as whoever runs pytest).
PATHS = {"trainer.default_root_dir", "trainer.logger.init_args.save_dir"}

# The class choices whose options make up the surface (the tiny run's, then one switch each).
VARIANTS = [
    [],
    ["--model.backbone=nfl.models.Mamba", "--model.backbone.init_args.d_model=16", "--model.backbone.init_args.n_layer=1"],
    *[[f"--model.objective=nfl.objectives.{name}"] for name in (
        "Teacherless", "MultiTokenHeads", "BeliefState", "NextLat", "MaskedDiffusion", "TokenOrder",
        "SequentialMultiToken", "Registers", "Trelawney", "MaskedTeacherForcing", "RankIntoFuture")],
    ["--data=nfl.data.TaskDataModule", "--data.init_args.task=nfl.tasks.TreeStar"],
    ["--data=nfl.data.TaskDataModule", "--data.init_args.task=nfl.tasks.DagSearch"],
]


class Cases:
    """The forked case runner (``tests/cli_cases.py``), started once."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.cli_cases"], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def run(self, program: str, args: list[str], cwd: Path, timeout: float = CASE_TIMEOUT) -> dict[str, Any]:
        case = {"program": program, "args": args, "cwd": str(cwd), "timeout": timeout, "limit": LIMIT}
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cases() -> Iterator[Cases]:
    runner = Cases()
    yield runner
    runner.close()


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else key)
    elif not isinstance(value, list) or not any(isinstance(v, dict) for v in value):  # not a list of classes
        yield path, value


def surface(cases: Cases, tmp: Path, variant: list[str]) -> dict[str, Any]:
    """Every option of the tiny run with ``variant``'s classes, with its default: ``{path: value}``."""
    done = cases.run("nfl", ["fit", "--config", str(tmp / "tiny.yaml"), *variant, "--print_config"], tmp)
    assert done["status"] == 0, done["stderr"]
    options = dict(_leaves(yaml.safe_load(done["stdout"])))
    for key in ("model.backbone", "model.objective", "data", "data.init_args.task"):  # the class choices
        options[key] = "class"
    options.pop("config", None)
    return options


def values_for(option: str, default: Any) -> list[str]:
    if default == "class" or option.endswith("class_path"):
        values = CLASSES
    elif isinstance(default, bool):
        values = BOOLS
    elif isinstance(default, int):
        values = INTS
    elif isinstance(default, float):
        values = FLOATS
    elif isinstance(default, list):
        values = LISTS
    elif default is None:
        values = INTS + FLOATS[:4] + STRINGS[:3]
    else:
        values = STRINGS
    if option in LONG_RUN:
        values = [v for v in values if v not in HUGE]
    if option in PATHS:
        values = [v for v in values if not v.startswith("/")]
    return values


def draw(rng: random.Random, surfaces: list[tuple[list[str], dict[str, Any]]], n: int) -> list[list[str]]:
    """``n`` cases: a variant's classes, then one or two of its options set to hostile values."""
    drawn = []
    for _ in range(n):
        variant, options = rng.choice(surfaces)
        chosen = rng.sample(sorted(options), k=rng.choice((1, 1, 2)))
        drawn.append(variant + [f"--{o}={rng.choice(values_for(o, options[o]))}" for o in chosen])
    return drawn


def check(done: dict[str, Any], what: str) -> str:
    """The case's verdict: '' when it ran or was refused as promised, else what went wrong."""
    lines = [line for line in done["stderr"].splitlines() if line.strip()]
    if done["timed_out"]:
        return f"still running after {CASE_TIMEOUT:.0f} s"
    if done["status"] not in (0, 1, 2):
        return f"exit status {done['status']}"
    if "Traceback" in done["stderr"]:
        return "a traceback"
    if done["status"] != 0 and not (lines and lines[-1].startswith("error:")):
        return "no error: line last"
    if done["status"] != 0 and done["seconds"] > REFUSE_SECONDS:
        return f"refused after {done['seconds']:.1f} s"
    return ""


def fuzz(cases: Cases, tmp: Path, n: int, seed: int, variants: list[list[str]]) -> list[str]:
    (tmp / "tiny.yaml").write_text(TINY_CONFIG)
    surfaces = [(v, surface(cases, tmp, v)) for v in variants]
    plain = cases.run("nfl", ["fit", "--config", str(tmp / "tiny.yaml"), *BASE], tmp)
    assert plain["status"] == 0, plain["stderr"][-3000:]  # the cases start from a run that works
    failures: list[str] = []
    for i, args in enumerate(draw(random.Random(seed), surfaces, n)):
        folder = tmp / f"case{i}"
        folder.mkdir()
        done = cases.run("nfl", ["fit", "--config", str(tmp / "tiny.yaml"), *BASE, *args], folder)
        judge(done, f"case {i}", " ".join(args), failures)
    return failures


def judge(done: dict[str, Any], name: str, what: str, failures: list[str]) -> None:
    """Print a case's verdict; add it, with the last lines of its stderr, to ``failures`` when it failed."""
    problem = check(done, what)
    print(f"{name}: status {done['status']} in {done['seconds']:.1f} s {problem or 'ok'}: {what}")
    if problem:
        tail = "\n    ".join(done["stderr"].splitlines()[-6:])
        failures.append(f"{what}: {problem}\n    {tail}")


def test_a_few_hostile_option_values(cases, tmp_path):
    failures = fuzz(cases, tmp_path, DEFAULT_CASES, seed=0, variants=VARIANTS[:1])
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_many_hostile_option_values(cases, tmp_path):
    seed = int(os.environ.get("NFL_FUZZ_SEED", "1"))
    failures = fuzz(cases, tmp_path, int(os.environ.get("NFL_FUZZ_CASES", SLOW_CASES)), seed, VARIANTS)
    assert not failures, f"{len(failures)} cases failed:\n" + "\n".join(failures)


# python -m nfl.data generate: a run that works, then one or two of its flags hostile or left out.
GENERATE = {"--degree": "2", "--path-len": "4", "--num-nodes": "20", "--n": "10", "--seed": "0", "--out": "g.txt"}
GENERATE_VALUES = {
    "--degree": INTS, "--path-len": INTS, "--num-nodes": INTS, "--n": INTS, "--seed": INTS,
    "--out": ["", ".", "missing/dir/g.txt", "a" * 300, "\u00e9.txt", "g.txt/", "/dev/null/x"],
    "--exclude": ["", "nothing.txt", ".", "g.txt"],
    "--config": ["", "nothing.yaml", ".", "bad.yaml", "empty.yaml"],
}
# The sweep file and the atlas file: a valid file, then one key set to a hostile value, deleted, or added.
FILE_VALUES = [None, "", "x", -1, 0, 1e300, float("nan"), float("inf"), [], [None], [-1], {}, {"x": 1}, "[", "a" * 300,
               True, "configs/nothing.yaml", "(", "../../etc", 10 ** 30]
SWEEP = {
    "name": "fuzz", "base": "tiny.yaml", "seeds": [0, 1], "args": ["--trainer.max_steps=2"],
    "grid": {"objective": {"tf": {"model.objective": "nfl.objectives.TeacherForcing"},
                           "rev": {"data.init_args.reverse": True}},
             "width": {"w32": {"model.backbone.init_args.d_model": 32}}},
    "exclude": [{"objective": "rev", "seed": 1}],
}


def _paths(doc: Any, path: tuple = ()) -> Iterator[tuple]:
    """Every key path of a YAML document, the root's children first."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield (*path, key)
        yield from _paths(value, (*path, key))


def mutate(doc: Any, rng: random.Random) -> tuple[Any, str]:
    """A deep copy of ``doc`` with one key set to a hostile value, deleted, or an unknown key added beside it."""
    doc = json.loads(json.dumps(doc))
    path = rng.choice(list(_paths(doc)))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    how = rng.choice(("set", "set", "set", "delete", "add"))
    if how == "delete":
        del parent[path[-1]]
        return doc, f"{path}: deleted"
    if how == "add" and isinstance(parent, dict):
        parent["not_an_option"] = 1
        return doc, f"{path[:-1]}: not_an_option added"
    value = rng.choice(FILE_VALUES)
    parent[path[-1]] = value
    return doc, f"{path} = {value!r}"


def fuzz_files(cases: Cases, tmp: Path, n: int, seed: int) -> list[str]:
    """``n`` cases of each of: generate flags, a sweep file (``--dry-run``), an atlas file (one claim)."""
    rng = random.Random(seed)
    (tmp / "tiny.yaml").write_text(TINY_CONFIG)
    (tmp / "bad.yaml").write_text("data: [\n")
    (tmp / "empty.yaml").write_text("")
    atlas = yaml.safe_load((ROOT / "configs" / "atlas.yaml").read_text())
    claim = atlas["claims"][0]
    claim["settings"] = [dict(s, nfl=[e for e in s["nfl"] if "csv" in e][:1]) for s in claim["settings"][:2]]
    atlas = {"claims": [claim]}
    drawn = []
    for i in range(n):
        flags = dict(GENERATE)
        for flag in rng.sample(sorted(GENERATE_VALUES), k=rng.choice((1, 1, 2))):
            value = rng.choice(GENERATE_VALUES[flag] + [None])  # None: the flag left out
            flags.pop(flag, None) if value is None else flags.__setitem__(flag, value)
        drawn.append(("nfl.data", ["generate", *[x for kv in flags.items() for x in kv]], tmp, " ".join(
            f"{k} {v}" for k, v in flags.items())))
        doc, what = mutate(SWEEP, rng)
        (tmp / f"sweep{i}.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True))
        drawn.append(("nfl.sweep", ["--config", str(tmp / f"sweep{i}.yaml"), "--dry-run", "--logs", str(tmp / "logs")],
                      tmp, f"sweep file: {what}"))
        doc, what = mutate(atlas, rng)
        (tmp / f"atlas{i}.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True))
        drawn.append(("nfl.report", ["--atlas", str(tmp / f"atlas{i}.yaml"), "--out", str(tmp / f"atlas{i}")], ROOT,
                      f"atlas file: {what}"))
    failures: list[str] = []
    for program, args, cwd, what in drawn:
        judge(cases.run(program, args, cwd), program, f"{program} {what}", failures)
    return failures


def test_a_few_hostile_flags_and_files(cases, tmp_path):
    failures = fuzz_files(cases, tmp_path, DEFAULT_FILE_CASES, seed=0)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_many_hostile_flags_and_files(cases, tmp_path):
    seed = int(os.environ.get("NFL_FUZZ_SEED", "1"))
    failures = fuzz_files(cases, tmp_path, int(os.environ.get("NFL_FUZZ_FILE_CASES", SLOW_FILE_CASES)), seed)
    assert not failures, f"{len(failures)} cases failed:\n" + "\n".join(failures)


def test_the_checker_fails_a_traceback_a_silent_exit_a_crash_and_a_hang():
    """The fuzz test can fail."""
    ran = {"timed_out": False, "status": 0, "stderr": "", "seconds": 1.0}
    assert check(ran, "") == "" and check({**ran, "status": 1, "stderr": "error: x=1: must be >= 2.\n"}, "") == ""
    assert check({**ran, "status": 1, "stderr": "Traceback (most recent call last):\nerror: x\n"}, "") == "a traceback"
    assert check({**ran, "status": 1, "stderr": "something\n"}, "") == "no error: line last"
    assert check({**ran, "status": -9}, "") == "exit status -9"
    assert check({**ran, "timed_out": True}, "").startswith("still running")
    assert check({**ran, "status": 1, "stderr": "error: x\n", "seconds": 30.0}, "") == "refused after 30.0 s"
