#!/usr/bin/env python
"""07_lstm_vs_gru: the course's LSTM vs GRU comparison for electricity forecasting, with the RNN as reference (transcript 634-767).

The course swaps the plain RNN of 06 for ``nn.LSTM`` (zero h0 and c0, passed as a tuple) and ``nn.GRU``
(zero h0), same hidden size 32, 2 layers, batch_first, last time step -> ``nn.Linear(32, 1)``, and concludes
that the GRU does as well as or slightly better than the LSTM at a lower cost. This script measures that
claim properly: the three models are trained with the same epochs, batch, learning rate and seeds (each
model seeded right before its initialisation, same shuffling order per seed), on the pipeline of 06
(imported: time split verified, 96-reading windows, ``TensorDataset`` + ``DataLoader``, torchmetrics MSE,
the persistence / seasonal-naive / training-mean baselines on the same test windows). It records, per
model, the test MSE mean ± std over the seeds (3 by default), the parameter count, the training time and
throughput (windows/s) and the ratio to persistence, in one table (JSON + bar plot with error bars), and
says whether this data agrees with the course's conclusion. Training settings (batch 512, lr 2e-3,
2 epochs, torch's default threads) are 06's; see its docstring for why.
"""
import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: find common/
import torch
import torch.nn as nn

from common import cli, data, plots, results
from common.device import DeviceError, choose_device

rnn06 = importlib.import_module("experiments.06_electricity_rnn")  # data pipeline, training loop, baselines
CourseRNN, SEQ_LEN, HIDDEN, LAYERS, UNITS = (rnn06.CourseRNN, rnn06.SEQ_LEN, rnn06.HIDDEN, rnn06.LAYERS,
                                             rnn06.UNITS)

EXPERIMENT = "07_lstm_vs_gru"


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
    base = rnn06.benchmark_cases()[0]
    return [{**base, "name": f"07.course_{name}", "make_model": cls} for name, cls in MODELS.items()]


def parse(argv=None):
    p = cli.base_parser(EXPERIMENT, __doc__.splitlines()[0], seeds=3)
    rnn06.add_training_options(p)
    return cli.parse_args(p, argv)


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


def main(argv=None) -> int:
    args = parse(argv)
    started = results.now_iso()
    t_wall = time.perf_counter()
    try:
        device = choose_device(args.device)
        cli.apply_threads(args, device)
        prep = rnn06.prepare(args)
    except (data.DataError, DeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info, base = prep["info"], prep["baselines"]
    persistence = base["baseline.persistence_mse"]
    print(f"{EXPERIMENT}: {info.sizes['train_windows']:,} train / {info.sizes['test_windows']:,} test windows "
          f"of {SEQ_LEN}; split at {prep['split']['cutoff']} verified; device {device}; "
          f"persistence MSE {persistence:.4f}", flush=True)

    run = rnn06.run_seeds(args, prep, MODELS, device)
    mean, std, per_seed = results.aggregate_seeds(run["per_seed"])
    timings = rnn06.timings_of(run, 0.0)
    if "gru.test_mse" in mean and "lstm.test_mse" in mean:
        pairs = [r["gru.test_mse"] / r["lstm.test_mse"] for r in run["per_seed"]
                 if "gru.test_mse" in r and "lstm.test_mse" in r]
        mean["gru_vs_lstm.mse_ratio"] = sum(pairs) / len(pairs)
        mean["gru_vs_lstm.params_ratio"] = mean["gru.params"] / mean["lstm.params"]
    mean.update(rnn06.data_metrics(prep))
    status = "diverged" if run["diverged"] else "ok"
    table = [{"model": name, "test_mse_mean": mean.get(f"{name}.test_mse"), "test_mse_std": std.get(f"{name}.test_mse"),
              "mse_vs_persistence": mean.get(f"{name}.mse_vs_persistence"), "params": run["params"].get(name),
              "train_s_mean": timings.get(f"{name}.train_s"), "train_windows_per_s": timings.get(f"{name}.train_windows_per_s")}
             for name in MODELS]
    if timings.get("gru.train_windows_per_s") and timings.get("lstm.train_windows_per_s"):
        timings["gru_vs_lstm.throughput_ratio"] = timings["gru.train_windows_per_s"] / timings["lstm.train_windows_per_s"]
    conclusion = verdict(mean, std, timings)

    pdir = plots.plot_dir(args.results_dir, EXPERIMENT)
    done = [row for row in table if row["test_mse_mean"] is not None]
    if done:
        plots.bar_with_errors([r["model"].upper() for r in done], [r["test_mse_mean"] for r in done],
                              [r["test_mse_std"] for r in done], pdir / "test_mse.png",
                              f"Test MSE, mean ± std over {len(run['seeds'])} seed(s)",
                              "test MSE (z-scored units²)",
                              baselines={"persistence": persistence,
                                         "seasonal naive": base["baseline.seasonal_naive_mse"]})
    curves = {k.replace(".train_loss", ""): v for k, v in run["history"].items()}
    if curves:
        plots.plot_curves(curves, pdir / "train_loss.png", "Training loss per epoch (MSE, z-scored units²)",
                          ylabel="train MSE")
    if run["preds"]:
        start = rnn06.week_start(prep["t_test"])
        preds = {f"{k.upper()} (seed {run['seeds'][0]})": v for k, v in run["preds"].items()}
        rnn06.plot_week(pdir / "test_week.png", prep["t_test"], prep["y_test"], preds,
                        "One test week: next-15-minute forecasts vs truth", start)

    mean.setdefault("gru.test_mse", None)        # the headline, even when every seed diverged
    timings["wall_s"] = wall = time.perf_counter() - t_wall
    results.write_result(
        EXPERIMENT, results_dir=args.results_dir, status=status, started_at=started, config=cli.config_of(args),
        seeds=run["seeds"], data=info, metrics=mean, std=std, per_seed=per_seed, headline="gru.test_mse",
        history=run["history"], device=device, script=__file__,
        timings=timings,
        extra={"table": table, "conclusion": conclusion, "split_check": prep["split"], "units": UNITS,
               "windows_note": rnn06.windows_note(prep), "diverged": run["diverged"],
               "notes": {"values": f"{UNITS}; MSE in squared z-units",
                         "course": "the course reports no MSE figures, only that GRU matched or slightly beat LSTM"}})

    print(f"\n{EXPERIMENT} ({info.source} data, {UNITS}), {len(run['seeds'])} seed(s), {wall:.0f}s wall")
    print(f"  {'model':5s} {'test MSE':>17s} {'x persistence':>13s} {'params':>7s} {'train s':>8s} {'windows/s':>10s}")
    for r in done:
        print(f"  {r['model']:5s} {r['test_mse_mean']:.4f} ± {r['test_mse_std']:.4f} {r['mse_vs_persistence']:13.3f} "
              f"{r['params']:7d} {r['train_s_mean']:8.1f} {r['train_windows_per_s']:10,.0f}")
    print(f"  baselines: persistence {persistence:.4f}, seasonal naive {base['baseline.seasonal_naive_mse']:.4f}, "
          f"train mean {base['baseline.train_mean_mse']:.4f}")
    print(f"  {conclusion}")
    if status == "diverged":
        print(f"  DIVERGED: {run['diverged']}")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
