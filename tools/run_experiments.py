"""``python -m tools.run_experiments [--jobs N] [--failed-file F] SCRIPT... -- SCRIPT_ARGS...``: what
``run_all.sh`` runs the experiments with.

Why not ``python SCRIPT`` per experiment: every fresh process pays for importing torch, torchvision and
torchmetrics (torchmetrics pulls in torchvision and torch._dynamo) before it does anything: about 3 s on a
2-core AVX-512 EPYC, more than half of a smoke run of the nine scripts. Here one process imports them once and
each script then runs in its own forked child (``runpy``, as ``__main__``, with its own ``sys.argv``), so a script
still starts from a fresh process state: nothing it sets (seeds, threads, determinism flags, globals) reaches the
next one. The parent runs no torch op before forking, so no thread pool is copied into a child.

``--jobs N`` runs N scripts at once (``run_all.sh``: one per usable core for ``--smoke``, else 1, because the full
scripts already use every core and their timings should be measured alone). With one job a script's output
passes through as it comes; with more, each script's output is held in a temporary file and printed in one block
when it ends, so lines of two scripts never interleave. A failing script does not stop the others. Exit status:
0 if every script exited 0, else 1, with one ``NAME (exit CODE)`` line per failed script, in the scripts' order,
in ``--failed-file``.
Ctrl-C or SIGTERM stops the running scripts and exits 130 / 143.
"""
from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
import tempfile
import time
from pathlib import Path

PRELOAD = ("torch", "torchvision", "torchmetrics")   # ~3 s per process otherwise (EPYC), paid once here


def run_child(script: Path, args: list[str]) -> int:
    """Run ``script`` as ``python script args`` would, in this (forked) process; its exit status."""
    sys.argv = [str(script), *args]
    sys.path.insert(0, str(script.parent))   # what `python script` puts first on the path
    try:
        runpy.run_path(str(script), run_name="__main__")
        return 0
    except SystemExit as e:
        code = e.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)   # sys.exit("message"): printed, status 1, as the interpreter does
        return 1
    except KeyboardInterrupt:
        return 130
    except BaseException:   # an uncaught exception: its traceback and status 1, as the interpreter does
        import traceback
        traceback.print_exc()
        return 1


def start(script: Path, args: list[str], log: Path | None) -> int:
    """Fork a child that runs ``script`` (its output into ``log`` when given); the child's pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if log is not None:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        code = run_child(script, args)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def exit_code(status: int) -> int:
    """A child's exit status as the shell reports it (128 + N when killed by signal N)."""
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(prog="python -m tools.run_experiments", description=__doc__.split("\n\n")[0],
                                usage="%(prog)s [--jobs N] [--failed-file F] SCRIPT... [-- SCRIPT_ARGS...]")
    p.add_argument("scripts", nargs="+", type=Path, help="experiment scripts, run in this order")
    p.add_argument("--jobs", type=int, default=1, help="scripts run at once (default 1)")
    p.add_argument("--failed-file", type=Path, help="where to write one 'NAME (exit CODE)' line per failed script")
    a = p.parse_args(argv[:split])
    script_args = argv[split + 1:]
    if a.jobs < 1:
        p.error(f"--jobs must be at least 1, got {a.jobs}")
    missing = [str(s) for s in a.scripts if not s.is_file()]
    if missing:
        p.error(f"no such script: {', '.join(missing)}")
    for name in PRELOAD:
        __import__(name)

    n, pending, running, failed = len(a.scripts), list(enumerate(a.scripts, 1)), {}, []
    logs = tempfile.TemporaryDirectory(prefix="run_experiments.")

    def stop(signum, _frame):
        for pid in running:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in list(running):
            os.waitpid(pid, 0)
        logs.cleanup()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while pending or running:
            while pending and len(running) < a.jobs:
                i, script = pending.pop(0)
                log = Path(logs.name, script.stem) if a.jobs > 1 else None
                print(f"== [{i}/{n}] {script.stem} {' '.join(script_args)}", flush=True)
                running[start(script, script_args, log)] = (i, script, log, time.monotonic())
            pid, status = os.wait()
            i, script, log, t0 = running.pop(pid)
            code = exit_code(status)
            if log is not None:
                sys.stdout.write(f"== [{i}/{n}] {script.stem}: its output\n{log.read_text(errors='replace')}")
            took = time.monotonic() - t0
            if code == 0:
                print(f"== [{i}/{n}] {script.stem} ok in {took:.0f}s", flush=True)
            else:
                failed.append((i, f"{script.stem} (exit {code})"))
                print(f"== [{i}/{n}] {script.stem} FAILED (exit {code}) after {took:.0f}s; carrying on", flush=True)
    finally:
        logs.cleanup()
    if a.failed_file is not None:
        a.failed_file.write_text("".join(f + "\n" for _, f in sorted(failed)))   # in the scripts' order
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
