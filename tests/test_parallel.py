"""common/parallel.py: tasks in forked workers give what they give in-process, in order, with one thread each;
and an experiment's figures do not depend on --workers.

The workers are forked from a fresh interpreter (``fresh``), as in a script's own process, not from this pytest
process: by then it has run hundreds of tests and holds their threads, locks and signal handlers, and a fork of
it is not what the suite's scripts do (a CI run once hung for an hour inside these tests)."""
from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from common import parallel, results
from common.device import DeviceError
from conftest import run_script


@pytest.fixture
def threads():
    """Set this process's torch threads for a test (the workers inherit them); put them back after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def run_tasks_here(threads: int, stdout_file: str | None, *args, **kw) -> tuple[int, list]:
    """In the fresh interpreter: ``parallel.run_tasks(*args, **kw)`` with ``threads`` torch threads, the workers'
    lines (fd 1) going to ``stdout_file`` if given; returns (this process's pid, the results)."""
    torch.set_num_threads(threads)
    if stdout_file is None:
        return os.getpid(), parallel.run_tasks(*args, **kw)
    saved = os.dup(1)
    with open(stdout_file, "w") as f:
        os.dup2(f.fileno(), 1)
    try:
        return os.getpid(), parallel.run_tasks(*args, **kw)
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class FreshPython:
    """One spawned interpreter, in its own process group, that runs ``run_tasks_here`` calls; a call that has not
    returned after ``timeout`` seconds kills the group (the interpreter and its workers) and fails the test."""

    def __init__(self, timeout: float = 120):
        self.timeout, self.pool, self.group = timeout, None, None

    def __call__(self, threads: int, *args, stdout_file: str | None = None, **kw) -> tuple[int, list]:
        if self.pool is None:
            self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=os.setsid)
            self.group = self.pool.submit(os.getpid).result(timeout=self.timeout)
        future = self.pool.submit(run_tasks_here, threads, stdout_file, *args, **kw)
        try:
            return future.result(timeout=self.timeout)
        except TimeoutError:
            self.close(kill=True)
            pytest.fail(f"run_tasks did not return within {self.timeout:.0f} s: a hang (its processes were killed)")

    def close(self, kill: bool = False) -> None:
        if self.pool is not None:
            if kill:
                os.killpg(self.group, signal.SIGKILL)
            self.pool.shutdown(wait=not kill, cancel_futures=True)
            self.pool = None


@pytest.fixture(scope="module")
def fresh():
    runner = FreshPython()
    yield runner
    runner.close()


def threads_and_square(x: int) -> tuple[int, int, int]:
    print(f"task {x} says hello")
    return x * x, torch.get_num_threads(), os.getpid()


def fails_on_three(x: int) -> int:
    if x == 3:
        raise RuntimeError("task three failed")
    return x


def diverges(x: int) -> int:
    """Task 1 diverges; the others return (were two to raise, which one arrives first would be a race)."""
    if x != 1:
        return x
    e = results.Diverged(2, 7, float("nan"))
    e.run = f"run {x}"
    raise e


def dies_on_one(x: int) -> int:
    if x == 1:
        os.kill(os.getpid(), signal.SIGKILL)   # as the kernel's OOM killer would
    return x


def sleeps_unless_one(x: int, pid_file: str) -> int:
    """Task 0 writes its worker's pid and sleeps two minutes; task 1 fails once task 0 is asleep."""
    if x == 1:
        while not os.path.exists(pid_file):
            time.sleep(0.01)
        raise RuntimeError("task one failed")
    with open(pid_file + ".part", "w") as f:
        f.write(str(os.getpid()))
    os.rename(pid_file + ".part", pid_file)
    time.sleep(120)
    return x


def running(pid: int) -> bool:
    """The process exists and is not a zombie (dead, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_tasks_in_workers_return_in_order_with_the_callers_threads_in_other_processes(fresh):
    caller, outs = fresh(1, threads_and_square, [(i,) for i in range(6)], workers=2)
    assert [o[0] for o in outs] == [0, 1, 4, 9, 16, 25]
    assert {o[1] for o in outs} == {1}
    pids = {o[2] for o in outs}
    assert caller not in pids and 1 <= len(pids) <= 2


def started_at(x: int) -> tuple[int, float]:
    """The task's number and when it started (CLOCK_MONOTONIC: one clock for every process on Linux)."""
    start = time.monotonic()
    time.sleep(0.3)
    return x, start


def test_the_costliest_tasks_start_first_and_results_keep_task_order(fresh):
    """With costs, two workers take tasks 2 and 3 (cost 5) before tasks 0 and 1 (cost 1): the longest do not
    start last. Without costs, tasks start in task order."""
    _, outs = fresh(1, started_at, [(i,) for i in range(4)], workers=2, cost=[1, 1, 5, 5])
    assert [x for x, _ in outs] == [0, 1, 2, 3]
    start = [t for _, t in outs]
    assert max(start[2], start[3]) < min(start[0], start[1])
    _, outs = fresh(1, started_at, [(i,) for i in range(4)], workers=2)
    start = [t for _, t in outs]
    assert max(start[0], start[1]) < min(start[2], start[3])
    with pytest.raises(ValueError, match="3 costs for 4 tasks"):
        parallel.run_tasks(started_at, [(i,) for i in range(4)], workers=2, cost=[1, 2, 3])


def test_in_process_tasks_run_here_with_the_callers_threads(threads):
    threads(2)
    outs = parallel.run_tasks(threads_and_square, [(2,), (3,)], workers=1)
    assert [o[:2] for o in outs] == [(4, 2), (9, 2)] and {o[2] for o in outs} == {os.getpid()}


def test_a_failing_task_raises_in_the_caller(fresh):
    with pytest.raises(RuntimeError, match="task three failed"):
        fresh(1, fails_on_three, [(i,) for i in range(5)], workers=2)


def test_a_divergence_in_a_worker_arrives_whole(fresh):
    """Diverged pickles with its fields and a run's extra ones, so the caller can record it."""
    with pytest.raises(results.Diverged) as info:
        fresh(1, diverges, [(0,), (1,), (2,)], workers=2)
    e = info.value
    assert (e.epoch, e.step, e.what, e.run) == (2, 7, "loss", "run 1") and str(e) == "loss became nan at epoch 2, step 7"


def test_a_worker_that_dies_raises_instead_of_waiting_for_its_task_forever(fresh):
    """multiprocessing.Pool waits forever for the task of a worker that died; run_tasks says what happened."""
    with pytest.raises(parallel.WorkerDied, match="a worker process died while running the runs .* --workers 1"):
        fresh(1, dies_on_one, [(0,), (1,), (2,)], workers=2)


def test_a_failing_task_stops_the_other_workers_at_once(fresh, tmp_path):
    """Task 0 would sleep two minutes: the failure of task 1 ends its worker at once."""
    pid_file = str(tmp_path / "sleeper.pid")
    with pytest.raises(RuntimeError, match="task one failed"):
        fresh(1, sleeps_unless_one, [(0, pid_file), (1, pid_file)], workers=2)
    sleeper = int(open(pid_file).read())
    deadline = time.monotonic() + 15
    while running(sleeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(sleeper)


def test_worker_lines_carry_their_task_label(fresh, tmp_path):
    lines = tmp_path / "stdout.txt"
    fresh(1, threads_and_square, [(1,), (2,)], workers=2, labels=["first", "second"], stdout_file=str(lines))
    out = lines.read_text()
    assert "[first] task 1 says hello\n" in out and "[second] task 2 says hello\n" in out
    assert "2 runs on 2 worker(s), 1 torch thread(s) each\n" in out


def test_workers_for_counts_cores_and_tasks_and_refuses_a_gpu_or_several_threads(threads):
    ns = lambda w: argparse.Namespace(workers=w)
    threads(1)
    assert parallel.workers_for(ns(None), "cpu", 3) == min(3, parallel.usable_cores())
    assert parallel.workers_for(ns(8), "cpu", 3) == 3            # never more workers than tasks
    assert parallel.workers_for(ns(1), "cpu", 9) == 1
    assert parallel.workers_for(ns(None), "cuda", 9) == 1
    with pytest.raises(DeviceError, match="--workers 2 needs the CPU"):
        parallel.workers_for(ns(2), "cuda", 9)
    threads(2)   # several threads a run: one after another in this process (no fork, no oversubscription)
    assert parallel.workers_for(ns(None), "cpu", 9) == 1
    with pytest.raises(DeviceError, match=r"--workers 2 needs one torch thread per run \(--threads 1\), not 2"):
        parallel.workers_for(ns(2), "cpu", 9)


def test_workers_with_several_threads_is_a_setup_error_exit_2(results_dir):
    proc, r = run_script("06_electricity_rnn", "--smoke", "--synthetic", "--workers", "2", "--threads", "2",
                         results_dir=results_dir, check=False)
    assert proc.returncode == 2 and "needs one torch thread per run" in proc.stderr and r is None
    assert "Traceback" not in proc.stderr


def test_bad_workers_value_is_refused_at_parse_time(results_dir):
    proc, r = run_script("06_electricity_rnn", "--smoke", "--synthetic", "--workers", "0", results_dir=results_dir,
                         check=False)
    assert proc.returncode == 2 and "--workers: must be >= 1, got 0" in proc.stderr and r is None


@pytest.mark.parametrize("script", ["06_electricity_rnn", "03_tabular_training", "08_omniglot_multi_input"])
def test_the_figures_do_not_depend_on_the_number_of_workers(script, tmp_path):
    """Each task runs with one torch thread in or out of a worker: same seeds -> the same metrics, bit for bit."""
    got = {}
    for w in ("1", "2"):
        d = tmp_path / w
        d.mkdir()
        _, got[w] = run_script(script, "--smoke", "--synthetic", "--workers", w, results_dir=d)
    assert got["1"]["timings"]["workers"] == 1 and got["2"]["timings"]["workers"] == 2
    for key in ("metrics", "std", "per_seed", "history", "selection"):
        assert got["1"][key] == got["2"][key], key
    assert len(got["1"]["seeds"]) == 2
