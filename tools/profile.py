"""``python -m tools.profile NN [--top 15] [--python] [--out DIR] [-- SCRIPT_ARGS...]``: where a script's time goes.

Runs ``experiments/NN_*.py`` (with SCRIPT_ARGS) in this process under torch.profiler and prints the ops that took
the most time on the CPU (self time: an op's own work, not the ops it calls), each with its share of all op time,
its calls and its mean time per call (a ``record_function`` region's, such as ``Optimizer.step#Adam.step``: the
Python work in it between its ops); ``--python`` uses cProfile instead and prints the Python functions with the
most cumulative time (which phase of the script: loading, training, evaluation, plots). Both go to
``DIR/<NN>.profile.txt`` (default: a fresh temporary folder), and the script's own results and plots to
``DIR/results``: profiling never touches ``results/``.

The script runs with ``--workers 1`` (where it has the option): a forked worker's ops are not in this process's
profile. Its figures are those of ``--workers 1``, which are the default's (``common.parallel``), but its timings
are of one core, and the profiler's own cost is in them: use its shares, not its seconds. The profiler keeps every
op event of the run in memory and writes them to a temporary trace (about 150 MB for 03's 10-s smoke run), so
profile a short configuration, e.g. ``-- --seeds 1 --epochs 2`` (each script's
``--help`` names its options) or ``-- --smoke``.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

from .run_experiments import run_child

REPO = Path(__file__).resolve().parent.parent


def find_script(name: str) -> Path:
    """``experiments/NN_*.py`` for ``NN`` (or a script's name or path); SystemExit naming the choices if none."""
    scripts = sorted((REPO / "experiments").glob("[0-9][0-9]_*.py"))
    found = [s for s in scripts if name in (s.name[:2], s.stem, s.name, str(s))]
    if len(found) != 1:
        raise SystemExit(f"profile: no experiment {name!r}; one of: {', '.join(s.name[:2] for s in scripts)}")
    return found[0]


def script_arguments(script: Path, args: list[str], out: Path) -> list[str]:
    """``args`` plus ``--results-dir OUT/results`` and, where the script has the option, ``--workers 1``, unless
    given."""
    args = list(args)
    if "--results-dir" not in args:
        args += ["--results-dir", str(out / "results")]
    if "--workers" not in args and "--workers" in help_text(script):
        args += ["--workers", "1"]
    return args


def help_text(script: Path) -> str:
    """What ``python script --help`` prints (its options may come from a module it imports)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        run_child(script, ["--help"])
    return out.getvalue()


def self_times(trace: Path) -> tuple[dict, dict]:
    """``({op: [self µs, calls]}, {GPU kernel: [µs, calls]})`` from a Chrome trace of torch.profiler. An op's self
    time is its duration less that of the ops it called (nested on the same thread). torch's own ``key_averages``
    gives the same table but builds a Python object per event: 40 s for 03's smoke run, against a few here."""
    events = json.loads(trace.read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    ops, kernels, by_thread = {}, {}, {}
    for e in events:
        if e.get("ph") != "X":
            continue
        if e.get("cat") in ("cpu_op", "user_annotation"):
            by_thread.setdefault((e["pid"], e["tid"]), []).append((e["ts"], -e["dur"], e["name"]))
        elif e.get("cat") == "kernel":
            k = kernels.setdefault(e["name"], [0.0, 0])
            k[0], k[1] = k[0] + e["dur"], k[1] + 1
    for spans in by_thread.values():
        spans.sort()
        roots, stack = [], []   # a node: [name, µs, children]; the stack: (end, node) of the open ops
        for ts, neg_dur, name in spans:
            while stack and stack[-1][0] <= ts:
                stack.pop()
            node = [name, -neg_dur, []]
            (stack[-1][1][2] if stack else roots).append(node)
            stack.append((ts - neg_dur, node))
        todo = roots
        while todo:
            node = todo.pop()
            # torch's key_averages folds an op into its parent of the same name when it is the only child (an op
            # dispatched through its autograd wrapper appears twice, nested): one call, not two
            while len(node[2]) == 1 and node[2][0][0] == node[0]:
                node[2] = node[2][0][2]
            o = ops.setdefault(node[0], [0.0, 0])
            o[0] += max(node[1] - sum(child[1] for child in node[2]), 0.0)
            o[1] += 1
            todo.extend(node[2])
    return ops, kernels


def op_table(times: dict, top: int, what: str = "op") -> str:
    """The ``top`` rows by time: name, share of the total, seconds, calls, mean ms a call."""
    rows = sorted(times.items(), key=lambda kv: kv[1][0], reverse=True)
    total = sum(us for us, _ in times.values()) or 1.0
    lines = [f"{what:48s} {'share':>6s} {'self s':>8s} {'calls':>9s} {'ms/call':>8s}"]
    for name, (us, calls) in rows[:top]:
        lines.append(f"{name[:48]:48s} {us / total:6.1%} {us / 1e6:8.2f} {calls:9d} {us / 1e3 / calls:8.3f}")
    lines.append(f"{'all':48s} {1:6.0%} {total / 1e6:8.2f}")
    return "\n".join(lines)


def python_table(prof: cProfile.Profile, top: int) -> str:
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue().strip()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(prog="python -m tools.profile", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", help="NN (e.g. 04) or the script's name")
    p.add_argument("--top", type=int, default=15, help="rows to show (default 15)")
    p.add_argument("--python", action="store_true", help="cProfile's Python functions instead of torch's ops")
    p.add_argument("--out", type=Path, default=None, help="where the profile and the script's results go "
                   "(default: a new temporary folder)")
    a = p.parse_args(argv[:split])
    if a.top < 1:
        p.error(f"--top must be at least 1, got {a.top}")
    script = find_script(a.experiment)
    out = a.out or Path(tempfile.mkdtemp(prefix="profile."))
    out.mkdir(parents=True, exist_ok=True)
    script_args = script_arguments(script, argv[split + 1:], out)
    import torch   # after the checks above: a wrong name answers at once
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    if a.python:
        prof = cProfile.Profile()
        code = prof.runcall(run_child, script, script_args)
        table = python_table(prof, a.top)
    else:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with profile(activities=activities) as prof:
            code = run_child(script, script_args)
            run_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            prof.export_chrome_trace(str(Path(tmp, "trace.json")))
            ops, kernels = self_times(Path(tmp, "trace.json"))
        in_ops = sum(us for us, _ in ops.values()) / 1e6
        table = (f"# the script ran {run_s:.1f} s; its ops' self time adds up to {in_ops:.1f} s "
                 f"({in_ops / run_s:.0%}; the rest: Python between ops, reading files, waiting)\n"
                 + op_table(ops, a.top) + (f"\n\n{op_table(kernels, a.top, 'GPU kernel')}" if kernels else ""))
    wall = time.perf_counter() - t0
    head = (f"# {script.name} {' '.join(script_args)}\n# exit status {code}, {wall:.1f} s under the profiler, "
            f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}\n")
    path = out / f"{script.name[:2]}.profile.txt"
    path.write_text(head + table + "\n")
    print(f"\n{head}{table}\n(written to {path})")
    return code


if __name__ == "__main__":
    sys.exit(main())
