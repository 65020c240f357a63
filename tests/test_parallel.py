"""common/parallel.py: tasks in forked workers give what they give in-process, in order, with one thread each;
and an experiment's figures do not depend on --workers."""
from __future__ import annotations

import argparse
import os
import signal
import time

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


def test_tasks_in_workers_return_in_order_with_the_callers_threads_in_other_processes(threads):
    threads(1)
    outs = parallel.run_tasks(threads_and_square, [(i,) for i in range(6)], workers=2)
    assert [o[0] for o in outs] == [0, 1, 4, 9, 16, 25]
    assert {o[1] for o in outs} == {1}
    pids = {o[2] for o in outs}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_in_process_tasks_run_here_with_the_callers_threads(threads):
    threads(2)
    outs = parallel.run_tasks(threads_and_square, [(2,), (3,)], workers=1)
    assert [o[:2] for o in outs] == [(4, 2), (9, 2)] and {o[2] for o in outs} == {os.getpid()}


def test_a_failing_task_raises_in_the_caller(threads):
    threads(1)
    with pytest.raises(RuntimeError, match="task three failed"):
        parallel.run_tasks(fails_on_three, [(i,) for i in range(5)], workers=2)


def test_a_divergence_in_a_worker_arrives_whole(threads):
    """Diverged pickles with its fields and a run's extra ones, so the caller can record it."""
    threads(1)
    with pytest.raises(results.Diverged) as info:
        parallel.run_tasks(diverges, [(0,), (1,), (2,)], workers=2)
    e = info.value
    assert (e.epoch, e.step, e.what, e.run) == (2, 7, "loss", "run 1") and str(e) == "loss became nan at epoch 2, step 7"


def test_a_worker_that_dies_raises_instead_of_waiting_for_its_task_forever(threads):
    """multiprocessing.Pool waits forever for the task of a worker that died; run_tasks says what happened."""
    threads(1)
    with pytest.raises(parallel.WorkerDied, match="a worker process died while running the runs .* --workers 1"):
        parallel.run_tasks(dies_on_one, [(0,), (1,), (2,)], workers=2)


def test_a_failing_task_stops_the_other_workers_at_once(threads, tmp_path):
    """Task 0 would sleep two minutes: the failure of task 1 ends its worker at once."""
    threads(1)
    pid_file = str(tmp_path / "sleeper.pid")
    with pytest.raises(RuntimeError, match="task one failed"):
        parallel.run_tasks(sleeps_unless_one, [(0, pid_file), (1, pid_file)], workers=2)
    sleeper = int(open(pid_file).read())
    deadline = time.monotonic() + 15
    while running(sleeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(sleeper)


def test_worker_lines_carry_their_task_label(capfd, threads):
    threads(1)
    parallel.run_tasks(threads_and_square, [(1,), (2,)], workers=2, labels=["first", "second"])
    out = capfd.readouterr().out
    assert "[first] task 1 says hello\n" in out and "[second] task 2 says hello\n" in out


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
