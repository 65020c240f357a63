#!/usr/bin/env python
"""07_lstm_vs_gru: the course's LSTM vs GRU comparison for electricity forecasting, with the RNN as reference (transcript 634-767).

The course swaps the plain RNN of 06 for ``nn.LSTM`` (zero h0 and c0, passed as a tuple) and ``nn.GRU``
(zero h0), same hidden size 32, 2 layers, batch_first, last time step -> ``nn.Linear(32, 1)``, and concludes
that the GRU does as well as or slightly better than the LSTM at a lower cost. This script measures that
claim properly: the three models are trained with the same batch, learning rate, seeds (each model seeded
right before its initialisation, same shuffling order per seed) and candidate epochs, each keeping its best
epoch by validation MSE (Oct-Dec 2013, carved from the training years; the test year is read once, by that
checkpoint), on the pipeline of 06 (``experiments/electricity.py``, which both scripts import: time and
validation splits verified, 96-reading windows,
``TensorDataset`` + ``DataLoader``, torchmetrics MSE, the persistence / seasonal-naive / training-mean
baselines on the same test windows). It records, per
model, the test MSE mean ± std over the seeds (3 by default), the epochs kept, the parameter count, the training time and
throughput (windows/s) and the ratio to persistence, in one table (JSON + bar plot with error bars). The
verdict (JSON ``verdict``, printed last) judges the course's claim on accuracy and on cost separately: test
MSE (GRU lower, higher, or within noise: a difference no larger than the seeds' spread, the suite's rule
``common.schema.compare_means``), parameters, and the measured training throughput, which on a CPU need not
follow the parameter count. From one seed there is no spread, so accuracy and throughput are then "not
judged" against the course (the parameter counts still are). Training settings (``electricity.TRAINING``; up
to 3 epochs chosen on validation; one thread per run, runs spread over the cores) are 06's; see its docstring
for why, and ``DEVIATIONS``. ``--ablation`` tries 06's six (batch, lr) pairs with the LSTM and with the GRU on
the validation windows (``electricity.run_ablation``, one record per model): each chose 06's pair for the RNN.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: find common/ and experiments/
import torch
import torch.nn as nn

from common import cli, data, plots, schema
from common.device import DeviceError
from experiments import electricity
from experiments.electricity import UNITS, CourseRNN

EXPERIMENT = "07_lstm_vs_gru"

DEFAULTS = {"seeds": 3, "threads": 1, "max_epochs": 3, **electricity.TRAINING}   # 06's settings: see its docstring
DEVIATIONS = electricity.DEVIATIONS   # 06's: the same pipeline and settings
SMOKE = {"max_epochs": 2, "max_batches": 4,   # the last 2,048 training windows, the first validation week,
         "train_windows": 2048, "val_windows": 672, "test_windows": 3 * 672}   # the first three test weeks


class CourseLSTM(CourseRNN):
    """The course's LSTM: the RNN with ``nn.LSTM``, plus a zero long-term state c0 passed with h0 as a tuple."""
    cell = nn.LSTM
    training_cost = 1.2

    def initial_state(self, h0):
        return h0, torch.zeros_like(h0)


class CourseGRU(CourseRNN):
    """The course's GRU: the RNN with ``nn.GRU`` in place of ``nn.RNN`` (zero h0)."""
    cell = nn.GRU
    training_cost = 2.9   # step by step: no fused CPU kernel for the GRU (06's docstring)


MODELS = {"rnn": CourseRNN, "lstm": CourseLSTM, "gru": CourseGRU}


def benchmark_cases() -> list[dict]:
    return [electricity.benchmark_case(f"07.course_{name}", cls, DEFAULTS) for name, cls in MODELS.items()]


def parse(argv=None):
    p = cli.base_parser(EXPERIMENT, __doc__.splitlines()[0], seeds=DEFAULTS["seeds"], threads=DEFAULTS["threads"])
    electricity.add_training_options(p, DEFAULTS)
    return cli.parse_args(p, argv, smoke=SMOKE)


def gru_vs_lstm(mean: dict, per_seed: list[dict]) -> dict:
    """GRU / LSTM test MSE (mean of the per-seed ratios) and parameter ratio; empty if either diverged everywhere."""
    if "gru.test_mse" not in mean or "lstm.test_mse" not in mean:
        return {}
    pairs = [r["gru.test_mse"] / r["lstm.test_mse"] for r in per_seed if "gru.test_mse" in r and "lstm.test_mse" in r]
    return {"gru_vs_lstm.mse_ratio": sum(pairs) / len(pairs),
            "gru_vs_lstm.params_ratio": mean["gru.params"] / mean["lstm.params"]}


def comparison_table(mean: dict, std: dict, timings: dict, params: dict, per_seed: dict) -> list[dict]:
    """One row per model: test MSE mean ± std, ratio to persistence, the epochs kept per seed, parameters,
    training time and throughput."""
    return [{"model": name, "test_mse_mean": mean.get(f"{name}.test_mse"), "test_mse_std": std.get(f"{name}.test_mse"),
             "epochs": [int(e) for e in per_seed.get(f"{name}.epochs", [])],
             "mse_vs_persistence": mean.get(f"{name}.mse_vs_persistence"), "params": params.get(name),
             "train_s_mean": timings.get(f"{name}.train_s"),
             "train_windows_per_s": timings.get(f"{name}.train_windows_per_s")}
            for name in MODELS]


NOT_JUDGED = "not judged (one seed: no spread)"


def judge(gru: float, lstm: float, gru_std: float, lstm_std: float, *, lower_is_better: bool, words: tuple,
          course: str, within_noise: str, n_seeds: int | None = None) -> dict:
    """GRU against LSTM on one measure, from the means and stds over ``n_seeds`` seeds: the difference, the seeds'
    spread (the larger std) and the finding by the suite's rule (``schema.compare_means``): "within noise" when
    |difference| <= spread (plus its float tolerance), else "GRU <words[0]>" (the GRU is the better one) or "GRU <words[1]>", with
    compare_means' one-seed caveat below 2 seeds. ``with_course``: "agrees" when the GRU is the better one,
    "disagrees" when it is the worse one, ``within_noise`` otherwise; below 2 seeds ``NOT_JUDGED`` whatever the
    finding (one seed cannot tell a difference from noise). ``n_seeds=None``: a measure without seed noise
    (the parameter counts). ``course``: what the course claims."""
    diff, spread = gru - lstm, max(gru_std, lstm_std)
    found = schema.compare_means(gru, gru_std, lstm, lstm_std, n_seeds)
    if found == "within noise":
        finding, with_course = found, within_noise
    else:
        direction, _, caveat = found.partition(" ")   # "higher" | "lower", then compare_means' caveat if any
        better = (direction == "lower") == lower_is_better
        finding = " ".join(filter(None, (f"GRU {words[0] if better else words[1]}", caveat)))
        with_course = "agrees" if better else "disagrees"
    if n_seeds is not None and n_seeds < 2:
        with_course = NOT_JUDGED
    return {"gru": gru, "lstm": lstm, "gru_std": gru_std, "lstm_std": lstm_std, "difference": diff,
            "spread": spread, "ratio": gru / lstm, "finding": finding, "with_course": with_course, "course": course}


def verdict(mean: dict, std: dict, timings: dict, n_seeds: int | None = None) -> dict:
    """The course's claim (the GRU as accurate as the LSTM or slightly better, at a lower cost) judged on
    accuracy and on cost separately, each count with the figures it rests on (see ``judge``):

    * accuracy: test MSE mean ± std over seeds; agrees unless the GRU is higher beyond the seeds' spread;
    * params: the parameter counts; agrees if the GRU has fewer;
    * throughput: measured training windows/s, mean ± std over seeds; agrees only if the GRU is faster
      beyond the seeds' spread ("not shown" within it); its ``ratio`` is the result's
      ``timings["gru_vs_lstm.throughput_ratio"]``.

    ``n_seeds``: how many seeds the figures rest on; below 2, accuracy and throughput are ``NOT_JUDGED``.
    ``summary``: one printed line per count.
    """
    if mean.get("gru.test_mse") is None or mean.get("lstm.test_mse") is None:
        return {"accuracy": None, "params": None, "throughput": None,
                "summary": ["not judged: the GRU or the LSTM diverged in every seed"]}
    t_std = timings.get("std", {})
    a = judge(mean["gru.test_mse"], mean["lstm.test_mse"], std["gru.test_mse"], std["lstm.test_mse"],
              lower_is_better=True, words=("lower", "higher"), course="similar, GRU slightly lower",
              within_noise="agrees", n_seeds=n_seeds)
    p = judge(mean["gru.params"], mean["lstm.params"], 0.0, 0.0, lower_is_better=True, words=("fewer", "more"),
              course="GRU less complex", within_noise="not shown")
    t = judge(timings["gru.train_windows_per_s"], timings["lstm.train_windows_per_s"],
              t_std.get("gru.train_windows_per_s", 0.0), t_std.get("lstm.train_windows_per_s", 0.0),
              lower_is_better=False, words=("faster", "slower"), course="GRU needs less processing power",
              within_noise="not shown", n_seeds=n_seeds)

    def tail(j: dict) -> str:
        if j["with_course"] == NOT_JUDGED:
            return f"{j['finding']} -> {NOT_JUDGED} against the course ({j['course']})"
        return f"{j['finding']} -> {j['with_course'].upper()} with the course ({j['course']})"

    summary = [f"accuracy, test MSE (mean ± std over seeds): GRU {a['gru']:.4f} ± {a['gru_std']:.4f} vs LSTM "
               f"{a['lstm']:.4f} ± {a['lstm_std']:.4f}, difference {a['difference']:+.4f}, spread "
               f"{a['spread']:.4f}: {tail(a)}",
               f"cost, parameters: GRU {p['gru']:,.0f} vs LSTM {p['lstm']:,.0f} ({p['ratio']:.2f}x): {tail(p)}",
               f"cost, training throughput (windows/s, mean ± std over seeds): GRU {t['gru']:,.0f} ± "
               f"{t['gru_std']:,.0f} vs LSTM {t['lstm']:,.0f} ± {t['lstm_std']:,.0f} ({t['ratio']:.2f}x): {tail(t)}"]
    return {"accuracy": a, "params": p, "throughput": t, "summary": summary}


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
                                         "seasonal naive": base["baseline.seasonal_naive_mse"]},
                              top=1.3 * max(base["baseline.persistence_mse"],   # the models and persistence in view
                                            *(r["test_mse_mean"] + (r["test_mse_std"] or 0) for r in done)))
    electricity.plot_loss_curves(pdir / "train_loss.png", run["history"],
                                 "Training loss and validation MSE per epoch (z-scored units²)")
    if run["preds"]:
        preds = {f"{k.upper()} (seed {seeds[0]})": v for k, v in run["preds"].items()}
        electricity.plot_week(pdir / "test_week.png", prep["t_test"], prep["y_test"], preds,
                              "One test week: next-15-minute forecasts vs truth", electricity.week_start(prep["t_test"]))


def report(prep: dict, run: dict, table: list[dict], judged: dict, seeds: list[int], selection: dict,
           wall_s: float) -> None:
    """The summary: the epochs chosen on validation, one table row per model, the baselines, the verdict
    (accuracy, then cost), any divergence."""
    print(f"\n{EXPERIMENT} ({prep['info'].source} data, {UNITS}), {len(seeds)} seed(s), {wall_s:.0f}s wall")
    electricity.print_selection(selection)
    print(f"  {'model':5s} {'test MSE':>17s} {'x persistence':>13s} {'epochs':>9s} {'params':>7s} {'train s':>8s} "
          f"{'windows/s':>10s}")
    for r in table:
        if r["test_mse_mean"] is not None:
            print(f"  {r['model']:5s} {r['test_mse_mean']:.4f} ± {r['test_mse_std']:.4f} {r['mse_vs_persistence']:13.3f} "
                  f"{','.join(map(str, r['epochs'])):>9s} {r['params']:7d} {r['train_s_mean']:8.1f} "
                  f"{r['train_windows_per_s']:10,.0f}")
    electricity.print_baselines(prep["baselines"])
    print("  GRU vs LSTM, judged against the course's claim:")
    for line in judged["summary"]:
        print(f"    {line}")
    if run["diverged"]:
        print(f"  DIVERGED: {run['diverged']}")


def extra_record(prep: dict, run: dict, table: list[dict], judged: dict) -> dict:
    """The result JSON's fields beyond the suite's: the table, the verdict, the split check, notes, divergences."""
    return {"table": table, "verdict": judged, "split_check": prep["split"], "units": UNITS,
            "windows_note": electricity.windows_note(prep), "diverged": run["diverged"],
            "notes": {"values": f"{UNITS}; MSE in squared z-units",
                      "course": "the course reports no MSE figures, only that GRU matched or slightly beat LSTM"}}


def main(argv=None) -> int:
    args = parse(argv)
    if args.ablation:   # the RNN's record is 06's
        return electricity.run_ablation(EXPERIMENT, {n: MODELS[n] for n in ("lstm", "gru")}, args, SMOKE, __file__)
    try:
        study = electricity.run_study(EXPERIMENT, MODELS, args, SMOKE)
    except (data.DataError, DeviceError) as e:   # no usable data or device: one line on stderr, exit 2
        return cli.fail(e)
    mean, std = study.mean, study.std
    mean.update(gru_vs_lstm(mean, [r["metrics"] for r in study.per_seed]))
    timings = electricity.timings_of(study.run, study.per_seed)
    table = comparison_table(mean, std, timings, study.run["params"], study.per_seed_metrics)
    # the seeds both models have a figure from (a seed where one diverged gives the other's spread nothing)
    n_seeds = min(len(study.per_seed_metrics.get(f"{name}.test_mse", [])) for name in ("gru", "lstm"))
    judged = verdict(mean, std, timings, n_seeds)
    if judged["throughput"] is not None:   # computed once, by the verdict
        timings["gru_vs_lstm.throughput_ratio"] = judged["throughput"]["ratio"]

    make_plots(args.results_dir, table, study.run, study.prep, study.seeds)
    selection, wall_s = electricity.write_study(EXPERIMENT, study, args, headline="gru.test_mse", timings=timings,
                                                extra=extra_record(study.prep, study.run, table, judged),
                                                deviations=DEVIATIONS, script=__file__)
    report(study.prep, study.run, table, judged, study.seeds, selection, wall_s)
    return study.exit_code()


if __name__ == "__main__":
    sys.exit(main())
