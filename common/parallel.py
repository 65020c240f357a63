"""Independent training runs (seeds, models, protocols) on several CPU cores at once: ``run_tasks``.

Why: the suite's small models (03's and 05's MLPs, 06/07's recurrent nets, 08/09's image nets) are bound by
per-op overhead, so a second torch thread inside one run buys little (measured on a 2-core EPYC: the RNN's and
GRU's training step 1.0x and 1.08x faster with 2 threads), while two runs on two cores do more work. Each task
runs with the parent's torch threads (``--threads``, 1 by default in these scripts, set by ``cli.start``) whether
it runs here or in a worker, so ``--workers`` changes the wall time, never a figure in ``metrics``
(tests/test_parallel.py checks that bit for bit). Timings made while runs share the cores (throughput) do
depend on it; the result records ``timings.workers``.

Workers are forked only with one torch thread per run (forking a process whose OpenMP pool ran several threads
is not safe with GNU OpenMP, and several threads per worker would oversubscribe the cores): with ``--threads``
above 1 the runs go one after another in this process. They inherit the parent's prepared data without
copying it through a pipe; only the task's index goes out and its (picklable) result comes back. A worker's
printed lines can carry the task's label. On a GPU there is one worker (a forked child cannot use the parent's
CUDA context). Ctrl-C, SIGTERM or a task's exception stops the workers at once (each is sent SIGTERM); a worker
that dies (the OOM killer, a crash in native code) raises ``WorkerDied`` instead of a wait without end. Results are
written only after all runs are back, so nothing is half-written.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Sequence

import torch

_JOB: tuple | None = None   # (fn, tasks, labels): set before the fork, so workers inherit it


class WorkerDied(RuntimeError):
    """A worker process ended without returning its task's result (killed by a signal, the kernel's OOM killer, a
    crash in native code)."""


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask, e.g. a container's limit), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # not on Linux
        return max(1, os.cpu_count() or 1)


def add_option(p: argparse.ArgumentParser, what: str) -> None:
    """``--workers N``: how many ``what`` run at once (default: one per usable core on the CPU, 1 on a GPU)."""
    from .cli import positive_int
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help=f"{what} trained at once in forked processes, one torch thread each (default: one per "
                        f"usable CPU core with --threads 1, else 1; 1 on a GPU); changes the wall time, not the "
                        f"figures")


def check_workers(args: argparse.Namespace, device) -> None:
    """Raise ``DeviceError`` where ``--workers`` above 1 cannot be honoured: on a GPU, or with more than one torch
    thread per run (called by ``cli.start``, inside every script's setup error handling)."""
    from .device import DeviceError
    asked = getattr(args, "workers", None)
    if asked is None or asked <= 1:
        return
    if torch.device(device).type != "cpu":
        raise DeviceError(f"--workers {asked} needs the CPU: forked workers cannot share the parent's GPU context")
    if torch.get_num_threads() > 1:
        raise DeviceError(f"--workers {asked} needs one torch thread per run (--threads 1), not "
                          f"{torch.get_num_threads()}: forking after multi-threaded OpenMP work is unsafe, and "
                          f"{asked} x {torch.get_num_threads()} threads would oversubscribe the cores")


def workers_for(args: argparse.Namespace, device, n_tasks: int) -> int:
    """The number of workers for ``n_tasks`` tasks: ``--workers`` if given, else one per usable core; never more
    than the tasks; 1 on a GPU or with more than one torch thread per run (``check_workers`` refuses an explicit
    ``--workers`` above 1 there)."""
    check_workers(args, device)
    if torch.device(device).type != "cpu" or torch.get_num_threads() > 1:
        return 1
    return max(1, min(getattr(args, "workers", None) or usable_cores(), n_tasks))


class _Labelled:
    """A text stream that writes whole lines, each starting with ``[label] `` and flushed at once (one write of a
    line: two workers' lines do not interleave mid-line); a worker's stdout or stderr."""

    def __init__(self, stream, label: str):
        self.stream, self.prefix, self.partial = stream, f"[{label}] ", ""

    def write(self, text: str) -> int:
        *lines, self.partial = (self.partial + text).split("\n")
        if lines:
            self.stream.write("".join(f"{self.prefix}{line}\n" for line in lines))
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        if self.partial:
            self.write("\n")
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _run_one(i: int):
    fn, tasks, labels = _JOB
    if labels is None:
        return fn(*tasks[i])
    sys.stdout, sys.stderr = _Labelled(sys.__stdout__, labels[i]), _Labelled(sys.__stderr__, labels[i])
    try:   # in a worker: its lines labelled
        return fn(*tasks[i])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _worker_init(threads: int) -> None:
    """A worker: the parent's torch threads; Ctrl-C and SIGTERM left to the parent, which stops the workers (the
    suite's SIGTERM handler, inherited, would make each print a traceback)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(threads)


def run_tasks(fn: Callable, tasks: Sequence[tuple], workers: int, labels: Sequence[str] | None = None,
              what: str = "runs", cost: Sequence[float] | None = None) -> list:
    """``[fn(*task) for task in tasks]``, in that order, each with this process's torch threads (the same here
    and in a worker, so the figures do not depend on ``workers``); with ``workers`` > 1 in that many forked
    worker processes (the first tasks start first). ``cost``: one estimate per task (any unit); the workers then
    start the costliest first (ties in task order) and the results still come back in task order: with unequal
    tasks, the last to finish is a short one instead of a long one started late (longest-processing-time
    scheduling). ``labels``: one per task, put before each line a worker
    prints (None: lines as printed); ``what`` names the tasks in the one line said before they start. An
    exception in a task, or Ctrl-C, stops the workers at once and is raised here; a worker that dies (killed,
    out of memory) raises ``WorkerDied`` here instead of leaving the caller waiting for its task forever."""
    global _JOB
    if cost is not None and len(cost) != len(tasks):
        raise ValueError(f"run_tasks: {len(cost)} costs for {len(tasks)} tasks")
    from .repro import apply_determinism
    # the tasks set these flags as they seed themselves (seed_everything); set here too, before any fork, so the
    # parent, which records the result's environment.numerics, holds what its workers ran with
    apply_determinism()
    print(f"{len(tasks)} {what} on {workers} worker(s), {torch.get_num_threads()} torch thread(s) each", flush=True)
    if workers <= 1 or len(tasks) <= 1:
        return [fn(*task) for task in tasks]
    _JOB = (fn, list(tasks), labels)
    sys.stdout.flush()
    sys.stderr.flush()
    others = set(multiprocessing.active_children())
    # ProcessPoolExecutor, not multiprocessing.Pool: with "fork" it forks every worker before it starts a thread
    # of its own, and a worker that dies breaks the pool (BrokenProcessPool) where Pool waits for its task forever
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_init,
                               initargs=(torch.get_num_threads(),))
    finished = False
    try:
        order = sorted(range(len(tasks)), key=lambda i: -cost[i]) if cost is not None else range(len(tasks))
        submitted = {i: pool.submit(_run_one, i) for i in order}
        futures = [submitted[i] for i in range(len(tasks))]   # task order, for the results and the first failure
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f.done() and f.exception() is not None]
        if failed:
            failed[0].result()   # raises the task's own exception (the first task's, of those that failed)
        finished = True
        return [f.result() for f in futures]
    except BrokenProcessPool:
        raise WorkerDied(f"a worker process died while running the {what} (killed, or out of memory?); nothing "
                         f"was written: run with --workers 1 to run them one after another in this process") from None
    finally:
        if not finished:   # stop the workers at once: a task's error or Ctrl-C ends every run
            for p in set(multiprocessing.active_children()) - others:
                p.terminate()
        pool.shutdown(wait=finished, cancel_futures=True)
        _JOB = None
