"""Independent training runs (seeds, models, protocols) on several CPU cores at once: ``run_tasks``.

Why: the suite's small models (03's and 05's MLPs, 06/07's recurrent nets) are bound by per-op overhead, so a
second torch thread inside one run buys little (measured on a 2-core EPYC: the RNN's and GRU's training step
1.0x and 1.08x faster with 2 threads), while two runs on the two cores do twice the work. Each task runs with
one torch thread whether it runs here or in a worker, so ``--workers`` changes the wall time, never a figure
(tests/test_parallel.py checks that bit for bit).

Workers are forked: they inherit the parent's prepared data without copying it through a pipe; only the task's
index goes out and its (picklable) result comes back. A worker's printed lines carry the task's label, so
interleaved progress stays readable. On a GPU there is one worker (a forked child cannot use the parent's CUDA
context); ``workers_for`` chooses.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence

import torch

_JOB: tuple | None = None   # (fn, tasks, labels): set before the fork, so workers inherit it


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask, e.g. a container's limit), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # not on Linux
        return max(1, os.cpu_count() or 1)


def add_option(p: argparse.ArgumentParser, what: str) -> None:
    """``--workers N``: how many ``what`` run at once (default: one per usable core on the CPU, 1 on CUDA)."""
    from .cli import positive_int
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help=f"{what} trained at once in forked processes, --threads torch threads each (default: one per "
                        f"usable CPU core, 1 on a GPU); changes the wall time, not the figures")


def workers_for(args: argparse.Namespace, device, n_tasks: int) -> int:
    """The number of workers for ``n_tasks`` tasks: ``--workers`` if given, else one per usable core; never more
    than the tasks; 1 on a GPU. Raises ``DeviceError`` for ``--workers`` > 1 on a GPU."""
    from .device import DeviceError
    asked = getattr(args, "workers", None)
    gpu = torch.device(device).type != "cpu"
    if asked is not None and asked > 1 and gpu:
        raise DeviceError(f"--workers {asked} needs the CPU: forked workers cannot share the parent's GPU context")
    if gpu:
        return 1
    return max(1, min(asked or usable_cores(), n_tasks))


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


def run_tasks(fn: Callable, tasks: Sequence[tuple], workers: int, labels: Sequence[str] | None = None,
              threads: int = 1) -> list:
    """``[fn(*task) for task in tasks]``, in that order, each with ``threads`` torch threads (the same here and in
    a worker, so the figures do not depend on ``workers``); with ``workers`` > 1 in that many forked worker
    processes (the first tasks start first). ``labels``: one per task, put before each line a worker prints.
    An exception in a task is raised here (the pool is shut down first)."""
    global _JOB
    from .repro import apply_determinism
    # the tasks set these flags as they seed themselves (seed_everything); set here too, before any fork, so the
    # parent, which records the result's environment.numerics, holds what its workers ran with
    apply_determinism()
    previous = torch.get_num_threads()
    if workers <= 1 or len(tasks) <= 1:
        torch.set_num_threads(threads)
        try:
            return [fn(*task) for task in tasks]
        finally:
            torch.set_num_threads(previous)
    _JOB = (fn, list(tasks), labels)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=torch.set_num_threads, initargs=(threads,)) as pool:
            return list(pool.map(_run_one, range(len(tasks))))
    finally:
        _JOB = None
