"""What 01_tensors_and_layers and 02_loss_and_gradients share: they read no dataset and train nothing.

Not an experiment (run_all.sh and the benchmarks pick only ``experiments/NN_*.py``). Each script runs its
sections once per seed (``run_seeds``, timed as evaluation) and writes a result whose data record is
"none" and whose training time is zero (``write_result``).
"""
from __future__ import annotations

import time

from common import cli, data, results
from common.device import synchronize


def run_seeds(run_seed, seeds: list[int], device) -> tuple[list, float]:
    """``run_seed(seed) -> (metrics, examples)`` for every seed, in order; also the seconds they took."""
    t0 = time.perf_counter()
    runs = [run_seed(seed) for seed in seeds]
    synchronize(device)
    return runs, time.perf_counter() - t0


def write_result(experiment: str, args, start: cli.Start, seeds: list[int], runs: list, eval_s: float,
                 notes: str, **fields) -> dict:
    """Aggregate the seeds' metrics of ``runs`` and write the result JSON (data "none", no training time);
    ``fields`` go to ``results.write_result`` as they are (headline, history, script, extra, deviations, ...).
    Returns the means over seeds."""
    info = data.DataInfo(name="none", source="synthetic" if args.synthetic else "real", fingerprint="none",
                         sizes={}, notes=notes)
    mean, std, per_seed = results.aggregate_seeds([metrics for metrics, _ in runs])
    results.write_result(
        experiment, results_dir=args.results_dir, status="ok", started_at=start.started_at,
        config=cli.config_of(args), seeds=seeds, data=info, metrics=mean, std=std, per_seed=per_seed,
        timings={"wall_s": start.wall_s(), "train_s": 0.0, "train_samples_per_s": None, "eval_s": eval_s},
        device=start.device, **fields)
    return mean
