#!/usr/bin/env python
"""06_electricity_rnn: the course's sequence-to-vector RNN forecasting electricity use (transcript 634-767).

Reproduces the course's sequential-data chapter on one client of UCI ElectricityLoadDiagrams20112014
(15-minute readings; the course files hold z-scored values, not kW): a time-based split (train 2011-2013,
test 2014; verified, not assumed), a validation period carved from the end of the training years (below),
windows of 96 readings (24 h) predicting the next reading (built with the vectorised ``common.timeseries.make_sequences``), ``TensorDataset`` + ``DataLoader``, the course's
``nn.RNN(input_size=1, hidden_size=32, num_layers=2, batch_first=True)`` with a zero initial state, last
time step -> ``nn.Linear(32, 1)``, ``view`` to (batch, 96, 1), ``squeeze`` to match the labels, ``MSELoss``,
Adam, and the test MSE with torchmetrics ``MeanSquaredError``. Beside the model it computes, on the same
test windows, three baselines (persistence = last reading, seasonal naive = same time yesterday, training
mean) and records ``rnn.mse_vs_persistence`` (< 1 means the RNN beats persistence).

Training choices (the transcript states batch 32 but neither learning rate nor epochs; the
architecture is the course's, unchanged):
  * Epochs are chosen on validation data, never on the test year: the windows whose target lies in Oct-Dec
    2013 (8,832; the last 3 months before 2014: the most recent data, the season the test year starts in,
    and 92 % of the windows left to train on) are the validation windows; the models train on the 96,287
    windows before (inputs and targets all before 2013-10-01; verified like the test split) for up to 3
    epochs, the validation MSE after each, and each model and seed keeps its best epoch's weights (ties ->
    fewer), which alone are read on the 2014 test windows, once. The result's ``selection`` records the
    chosen epochs, the validation MSE per epoch and the baselines' validation MSE. (The 2 epochs used before
    had been picked by looking at test MSE after 1/2/3 epochs.)
  * The batch and Adam lr (``electricity.TRAINING``) are what ``--ablation`` chose on the validation windows
    (``electricity.BATCH_LR_ABLATIONS``; its rule: ``electricity.ABLATION_CRITERION``): of six pairs from the
    course's batch 32 at lr 1e-3 to batch 512 at 5e-3, the quickest to reach 0.90 x persistence's validation MSE
    in every seed. 07's ``--ablation`` made the same choice for the LSTM and for the GRU.
    ``--batch-size 32 --lr 1e-3`` runs the course's batch.
  * One torch thread per run, the runs (models x seeds) spread over the cores (``--workers``,
    ``common/parallel.py``; the figures do not depend on it). Measured on the 2-core AVX2 EPYC (training step,
    batch 512, median of 15): RNN 78 / 80 ms with 1 / 2 threads, GRU 246 / 228 ms, LSTM 325 / 196 ms. The
    RNN and GRU gain nothing from a second thread (torch runs them one time step at a time, ops too small to
    split), so two runs on two cores do twice the work. The LSTM alone goes to oneDNN's fused kernel, which
    uses both threads, and whose workspace is large: with glibc's default allocator it came from fresh pages
    every step in some processes and not in others (27 or 13 ms at batch 128, one thread, AVX-512 EPYC), which
    ``common.device.tune_cpu_allocator`` now settles at the faster one. At batch 128, one thread each, the LSTM
    (fused) trains about 2x faster than the GRU (step by step), although the GRU has 25 % fewer parameters.
    There is no fused GRU to move to: torch 2.14's oneDNN layer (``torch.mkldnn_rnn_layer``) builds LSTM
    primitives only (with the GRU's or the RNN's mode it fails to create one: tried), so 07 starts the GRU's
    runs first (``training_cost``), lest the last to finish be a GRU started late.
  * The DataLoader draws whole batches: a ``BatchSampler`` is its sampler, so ``TensorDataset`` is
    indexed once per batch (one gather) instead of once per window plus a collate.
  * Test windows are built from the 2014 file alone, as in the course (34,944 windows); the first 96
    readings of 2014 only serve as inputs.
Records: test MSE per seed (mean/std), the baselines, ratios, parameter count, training time and
throughput (windows/s), the split checks, window counts; plots of the training and validation MSE per epoch and of one
test week of predictions against the truth. The pipeline (data, model, training loop, plots) is in
``experiments/electricity.py``, shared with 07_lstm_vs_gru.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: find common/ and experiments/
from common import cli, data, plots
from common.device import DeviceError
from experiments import electricity
from experiments.electricity import QUANTUM, UNITS, CourseRNN

EXPERIMENT = "06_electricity_rnn"
MODELS = {"rnn": CourseRNN}

DEFAULTS = {"seeds": 3, "threads": 1, "max_epochs": 3, **electricity.TRAINING}   # why these: see the docstring
DEVIATIONS = electricity.DEVIATIONS   # 06 departs from the transcript only where 07 does too
SMOKE = {"max_epochs": 2, "max_batches": 4,   # the last 2,048 training windows, the first validation week,
         "train_windows": 2048, "val_windows": 672, "test_windows": 3 * 672}   # the first three test weeks


def benchmark_cases() -> list[dict]:
    return [electricity.benchmark_case("06.course_rnn", CourseRNN, DEFAULTS)]


def parse(argv=None):
    p = cli.base_parser(EXPERIMENT, __doc__.splitlines()[0], seeds=DEFAULTS["seeds"], threads=DEFAULTS["threads"])
    electricity.add_training_options(p, DEFAULTS)
    return cli.parse_args(p, argv, smoke=SMOKE)


def make_plots(results_dir, run: dict, prep: dict, seeds: list[int]) -> None:
    """The training and validation MSE per epoch, and one test week of the first seed's forecasts against the truth."""
    pdir = plots.plot_dir(results_dir, EXPERIMENT)
    electricity.plot_loss_curves(pdir / "train_loss.png", run["history"],
                                 "RNN training loss and validation MSE (z-scored units²)")
    if "rnn" in run["preds"]:
        electricity.plot_week(pdir / "test_week.png", prep["t_test"], prep["y_test"],
                              {"RNN (seed %d)" % seeds[0]: run["preds"]["rnn"], "persistence": prep["X_test"][:, -1]},
                              "One test week: RNN forecasts of the next 15 minutes vs truth",
                              electricity.week_start(prep["t_test"]))


def extra_record(prep: dict, run: dict, mean: dict) -> dict:
    """The result JSON's fields beyond the suite's: the split check, units, notes, divergences."""
    ratio = mean.get("rnn.mse_vs_persistence")
    return {"split_check": prep["split"], "units": UNITS, "windows_note": electricity.windows_note(prep),
            "diverged": run["diverged"],
            "notes": {"values": f"{UNITS}; MSE in squared z-units. Readings are quantised (grid step {QUANTUM}); "
                                f"quantisation alone costs ~{QUANTUM ** 2 / 12:.1e} of MSE, negligible.",
                      "course": "the course reports no MSE figure for the RNN; its batch was 32",
                      "beats_persistence": None if ratio is None else bool(ratio < 1)}}


def report(prep: dict, run: dict, mean: dict, std: dict, timings: dict, seeds: list[int], selection: dict,
           wall_s: float) -> None:
    """The summary: the epochs chosen on validation, the RNN against persistence, the baselines, the window
    counts, any divergence."""
    info, ratio = prep["info"], mean.get("rnn.mse_vs_persistence")
    print(f"\n{EXPERIMENT} ({info.source} data, {UNITS}), {len(seeds)} seed(s), {wall_s:.0f}s wall")
    electricity.print_selection(selection)
    if ratio is not None:
        print(f"  RNN test MSE {mean['rnn.test_mse']:.4f} ± {std['rnn.test_mse']:.4f}  "
              f"= {ratio:.3f} x persistence -> {'BEATS' if ratio < 1 else 'DOES NOT BEAT'} persistence")
        print(f"  training {timings['rnn.train_windows_per_s']:,.0f} windows/s, {mean['rnn.params']:.0f} parameters")
    electricity.print_baselines(prep["baselines"])
    print(f"  windows: {info.sizes['train_windows_full']:,} train (course: almost 35,000; one year's worth; the last "
          f"{info.sizes['validation_windows_full']:,} validate), {info.sizes['test_windows_full']:,} test")
    if run["diverged"]:
        print(f"  DIVERGED: {run['diverged']}")


def main(argv=None) -> int:
    args = parse(argv)
    if args.ablation:
        return electricity.run_ablation(EXPERIMENT, MODELS, args, SMOKE, __file__)
    try:
        study = electricity.run_study(EXPERIMENT, MODELS, args, SMOKE)
    except (data.DataError, DeviceError) as e:   # no usable data or device: one line on stderr, exit 2
        return cli.fail(e)
    make_plots(args.results_dir, study.run, study.prep, study.seeds)
    timings = electricity.timings_of(study.run, study.per_seed)
    selection, wall_s = electricity.write_study(EXPERIMENT, study, args, headline="rnn.test_mse", timings=timings,
                                                extra=extra_record(study.prep, study.run, study.mean),
                                                deviations=DEVIATIONS, script=__file__)
    report(study.prep, study.run, study.mean, study.std, timings, study.seeds, selection, wall_s)
    return study.exit_code()


if __name__ == "__main__":
    sys.exit(main())
