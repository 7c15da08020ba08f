"""Runs command-line cases of nfl's programs, each in its own forked process under a memory and time limit.

A process start costs several seconds (importing torch and Lightning), so this process imports the programs
once and forks a child per case: the child gets its own address-space limit (``RLIMIT_AS``), its own process
group, and the program's real entry point; an exit is reported as the interpreter would make it (a
``SystemExit`` message printed to stderr with status 1, an uncaught exception as its traceback).

Protocol: one JSON object per line on stdin, ``{"program": "nfl" | "nfl.data" | "nfl.sweep" | "nfl.report",
"args": [...], "cwd": DIR, "timeout": SECONDS, "limit": BYTES}``; one JSON line per case on stdout,
``{"status": int (negative: killed by that signal), "timed_out": bool, "seconds": float, "stdout": str,
"stderr": str}``.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import signal
import sys
import tempfile
import time
import traceback

PROGRAMS = {"nfl": "nfl.cli", "nfl.data": "nfl.data.__main__", "nfl.sweep": "nfl.sweep", "nfl.report": "nfl.report"}


def _run(program: str, args: list[str]) -> int:
    """The program's ``main(args)`` with the interpreter's handling of how it ends."""
    sys.argv = [f"python -m {program}", *args]
    try:
        returned = importlib.import_module(PROGRAMS[program]).main(args)
        code = returned if isinstance(returned, int) else 0
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            code = done.code or 0
        else:
            print(done.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - what the interpreter would print
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def run_case(case: dict) -> dict:
    out, err = (tempfile.TemporaryFile() for _ in range(2))
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the case
        try:
            os.setpgid(0, 0)
            os.chdir(case["cwd"])
            resource.setrlimit(resource.RLIMIT_AS, (case["limit"], case["limit"]))
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            code = _run(case["program"], case["args"])
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            code = 1
        os._exit(code)
    timed_out, status = False, None
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
        elif time.monotonic() - start > case["timeout"]:
            timed_out = True
            os.killpg(pid, signal.SIGKILL)
        else:
            time.sleep(0.02)
    try:
        os.killpg(pid, signal.SIGKILL)  # whatever the case left running
    except ProcessLookupError:
        pass
    text = []
    for f in (out, err):
        f.seek(0)
        text.append(f.read().decode("utf-8", "replace"))
        f.close()
    return {"status": status, "timed_out": timed_out, "seconds": time.monotonic() - start,
            "stdout": text[0], "stderr": text[1]}


def main() -> None:
    for name in PROGRAMS.values():  # imported once, before any fork
        importlib.import_module(name)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(run_case(json.loads(line))), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:  # started again by Lightning's DDP launcher (it re-runs ``python -m <this> <args>``)
        sys.exit(_run("nfl", sys.argv[1:]))
    main()
