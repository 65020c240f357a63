#!/usr/bin/env python
"""07_lstm_vs_gru: the course's LSTM vs GRU comparison for electricity forecasting, with the RNN as reference (transcript 634-767).

The course swaps the plain RNN of 06 for ``nn.LSTM`` (zero h0 and c0, passed as a tuple) and ``nn.GRU``
(zero h0), same hidden size 32, 2 layers, batch_first, last time step -> ``nn.Linear(32, 1)``, and concludes
that the GRU does as well as or slightly better than the LSTM at a lower cost. This script measures that
claim properly: the three models are trained with the same epochs, batch, learning rate and seeds (each
model seeded right before its initialisation, same shuffling order per seed), on the pipeline of 06
(``experiments/electricity.py``, which both scripts import: time split verified, 96-reading windows,
``TensorDataset`` + ``DataLoader``, torchmetrics MSE, the persistence / seasonal-naive / training-mean
baselines on the same test windows). It records, per
model, the test MSE mean ± std over the seeds (3 by default), the parameter count, the training time and
throughput (windows/s) and the ratio to persistence, in one table (JSON + bar plot with error bars), and
says whether this data agrees with the course's conclusion. Training settings (batch 512, lr 2e-3,
2 epochs, torch's default threads) are 06's; see its docstring for why.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: find common/ and experiments/
import torch
import torch.nn as nn

from common import cli, data, plots, results
from common.device import DeviceError
from experiments import electricity
from experiments.electricity import HIDDEN, LAYERS, UNITS, CourseRNN

EXPERIMENT = "07_lstm_vs_gru"

DEFAULTS = {"seeds": 3, "epochs": 2, "batch_size": 512, "lr": 2e-3}   # 06's settings: see its docstring
SMOKE = {"epochs": 1, "max_batches": 4,
         "train_windows": 2048, "test_windows": 3 * 672}   # the last 2,048 training windows, the first three test weeks


class CourseLSTM(nn.Module):
    """The course's LSTM: like the RNN, plus a zero long-term state c0 passed with h0 as a tuple."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(input_size=1, hidden_size=HIDDEN, num_layers=LAYERS, batch_first=True)
        self.fc = nn.Linear(HIDDEN, 1)

    def forward(self, x):                                     # x: (batch, 96, 1)
        h0 = torch.zeros(LAYERS, x.size(0), HIDDEN, device=x.device)
        c0 = torch.zeros(LAYERS, x.size(0), HIDDEN, device=x.device)
        out, _ = self.lstm(x, (h0, c0))
        return self.fc(out[:, -1, :])                         # (batch, 1)


class CourseGRU(nn.Module):
    """The course's GRU: the RNN with ``nn.GRU`` in place of ``nn.RNN``."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(input_size=1, hidden_size=HIDDEN, num_layers=LAYERS, batch_first=True)
        self.fc = nn.Linear(HIDDEN, 1)

    def forward(self, x):                                     # x: (batch, 96, 1)
        h0 = torch.zeros(LAYERS, x.size(0), HIDDEN, device=x.device)
        out, _ = self.gru(x, h0)
        return self.fc(out[:, -1, :])                         # (batch, 1)


MODELS = {"rnn": CourseRNN, "lstm": CourseLSTM, "gru": CourseGRU}


def benchmark_cases() -> list[dict]:
    return [electricity.benchmark_case(f"07.course_{name}", cls, DEFAULTS) for name, cls in MODELS.items()]


def parse(argv=None):
    p = cli.base_parser(EXPERIMENT, __doc__.splitlines()[0], seeds=DEFAULTS["seeds"])
    electricity.add_training_options(p, DEFAULTS)
    return cli.parse_args(p, argv, smoke=SMOKE)


def gru_vs_lstm(mean: dict, per_seed: list[dict]) -> dict:
    """GRU / LSTM test MSE (mean of the per-seed ratios) and parameter ratio; empty if either diverged everywhere."""
    if "gru.test_mse" not in mean or "lstm.test_mse" not in mean:
        return {}
    pairs = [r["gru.test_mse"] / r["lstm.test_mse"] for r in per_seed if "gru.test_mse" in r and "lstm.test_mse" in r]
    return {"gru_vs_lstm.mse_ratio": sum(pairs) / len(pairs),
            "gru_vs_lstm.params_ratio": mean["gru.params"] / mean["lstm.params"]}


def comparison_table(mean: dict, std: dict, timings: dict, params: dict) -> list[dict]:
    """One row per model: test MSE mean ± std, ratio to persistence, parameters, training time and throughput."""
    return [{"model": name, "test_mse_mean": mean.get(f"{name}.test_mse"), "test_mse_std": std.get(f"{name}.test_mse"),
             "mse_vs_persistence": mean.get(f"{name}.mse_vs_persistence"), "params": params.get(name),
             "train_s_mean": timings.get(f"{name}.train_s"),
             "train_windows_per_s": timings.get(f"{name}.train_windows_per_s")}
            for name in MODELS]


def verdict(mean: dict, std: dict, timings: dict) -> str:
    """Does this data agree with the course (GRU matches or slightly beats LSTM at lower cost)?"""
    g, l = mean.get("gru.test_mse"), mean.get("lstm.test_mse")
    if g is None or l is None:
        return "not measured (a model diverged)"
    noise = max(std.get("gru.test_mse", 0.0), std.get("lstm.test_mse", 0.0))
    cheaper = mean["gru.params"] < mean["lstm.params"]
    faster = (timings.get("gru.train_windows_per_s") or 0) > (timings.get("lstm.train_windows_per_s") or 0)
    if g <= l:
        acc = "GRU's test MSE is lower than LSTM's"
    elif g - l <= noise:
        acc = "GRU's test MSE is within one seed-std of LSTM's"
    else:
        acc = "GRU's test MSE is higher than LSTM's by more than one seed-std"
    agrees = g <= l + noise and cheaper
    cost = (f"GRU has {mean['gru.params']:.0f} vs {mean['lstm.params']:.0f} parameters and trains "
            f"{'faster' if faster else 'slower'} ({timings.get('gru.train_windows_per_s') or 0:,.0f} vs "
            f"{timings.get('lstm.train_windows_per_s') or 0:,.0f} windows/s)")
    return f"{'AGREES' if agrees else 'DISAGREES'} with the course: {acc} ({g:.4f} vs {l:.4f}); {cost}"


def make_plots(results_dir, table: list[dict], run: dict, prep: dict, seeds: list[int]) -> None:
    """Test MSE per model with error bars and the baselines, the training losses, one test week of forecasts."""
    pdir = plots.plot_dir(results_dir, EXPERIMENT)
    done = [row for row in table if row["test_mse_mean"] is not None]
    base = prep["baselines"]
    if done:
        plots.bar_with_errors([r["model"].upper() for r in done], [r["test_mse_mean"] for r in done],
                              [r["test_mse_std"] for r in done], pdir / "test_mse.png",
                              f"Test MSE, mean ± std over {len(seeds)} seed(s)", "test MSE (z-scored units²)",
                              baselines={"persistence": base["baseline.persistence_mse"],
                                         "seasonal naive": base["baseline.seasonal_naive_mse"]})
    electricity.plot_loss_curves(pdir / "train_loss.png", run["history"],
                                 "Training loss per epoch (MSE, z-scored units²)")
    if run["preds"]:
        preds = {f"{k.upper()} (seed {seeds[0]})": v for k, v in run["preds"].items()}
        electricity.plot_week(pdir / "test_week.png", prep["t_test"], prep["y_test"], preds,
                              "One test week: next-15-minute forecasts vs truth", electricity.week_start(prep["t_test"]))


def extra_record(prep: dict, run: dict, table: list[dict], conclusion: str) -> dict:
    """The result JSON's fields beyond the suite's: the table, the verdict, the split check, notes, divergences."""
    return {"table": table, "conclusion": conclusion, "split_check": prep["split"], "units": UNITS,
            "windows_note": electricity.windows_note(prep), "diverged": run["diverged"],
            "notes": {"values": f"{UNITS}; MSE in squared z-units",
                      "course": "the course reports no MSE figures, only that GRU matched or slightly beat LSTM"}}


def report(prep: dict, run: dict, table: list[dict], conclusion: str, timings: dict, seeds: list[int]) -> None:
    """The summary: one table row per model, the baselines, the verdict, any divergence."""
    print(f"\n{EXPERIMENT} ({prep['info'].source} data, {UNITS}), {len(seeds)} seed(s), {timings['wall_s']:.0f}s wall")
    print(f"  {'model':5s} {'test MSE':>17s} {'x persistence':>13s} {'params':>7s} {'train s':>8s} {'windows/s':>10s}")
    for r in table:
        if r["test_mse_mean"] is not None:
            print(f"  {r['model']:5s} {r['test_mse_mean']:.4f} ± {r['test_mse_std']:.4f} {r['mse_vs_persistence']:13.3f} "
                  f"{r['params']:7d} {r['train_s_mean']:8.1f} {r['train_windows_per_s']:10,.0f}")
    electricity.print_baselines(prep["baselines"])
    print(f"  {conclusion}")
    if run["diverged"]:
        print(f"  DIVERGED: {run['diverged']}")


def main(argv=None) -> int:
    args = parse(argv)
    subset = (SMOKE["train_windows"], SMOKE["test_windows"]) if args.smoke else None
    try:
        start = cli.start(args)
        prep = electricity.prepare(args.data_dir, args.synthetic, start.device, subset)
    except (data.DataError, DeviceError) as e:
        return cli.fail(e)
    electricity.print_start(EXPERIMENT, prep, start.device)

    seeds = cli.seed_list(args)
    max_batches = SMOKE["max_batches"] if args.smoke else None
    per_seed = [electricity.run_seed(seed, MODELS, prep, args, start.device, max_batches) for seed in seeds]
    run = electricity.combine(per_seed)
    mean, std, per_seed_metrics = results.aggregate_seeds([r["metrics"] for r in per_seed])
    mean.update(gru_vs_lstm(mean, [r["metrics"] for r in per_seed]))
    mean.update(electricity.data_metrics(prep))
    status = "diverged" if run["diverged"] else "ok"
    timings = electricity.timings_of(run, per_seed, 0.0)
    table = comparison_table(mean, std, timings, run["params"])
    if timings.get("gru.train_windows_per_s") and timings.get("lstm.train_windows_per_s"):
        timings["gru_vs_lstm.throughput_ratio"] = timings["gru.train_windows_per_s"] / timings["lstm.train_windows_per_s"]
    conclusion = verdict(mean, std, timings)

    make_plots(args.results_dir, table, run, prep, seeds)
    mean.setdefault("gru.test_mse", None)        # the headline, even when every seed diverged
    timings["wall_s"] = start.wall_s()
    results.write_result(
        EXPERIMENT, results_dir=args.results_dir, status=status, started_at=start.started_at,
        config=cli.config_of(args), seeds=seeds, data=prep["info"], metrics=mean, std=std, per_seed=per_seed_metrics,
        headline="gru.test_mse", history=run["history"], device=start.device, script=__file__, timings=timings,
        extra=extra_record(prep, run, table, conclusion))
    report(prep, run, table, conclusion, timings, seeds)
    return 3 if status == "diverged" else 0


if __name__ == "__main__":
    sys.exit(main())
