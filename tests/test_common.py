"""Unit tests for common/: seeding, device, splits and windows, metrics, results writer, plots, CLI."""
from __future__ import annotations

import json
import os
import sys
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch

from common import cli, device, metrics, plots, repro, results, timeseries
from common.data import DataInfo


# ---------------------------------------------------------------- reproducibility
def test_seed_everything_gives_identical_tensors_twice():
    repro.seed_everything(123)
    a = (torch.randn(5), np.random.rand(3), torch.nn.Linear(4, 3).weight.detach().clone())
    repro.seed_everything(123)
    b = (torch.randn(5), np.random.rand(3), torch.nn.Linear(4, 3).weight.detach().clone())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and torch.equal(a[2], b[2])
    repro.seed_everything(124)
    assert not torch.equal(a[0], torch.randn(5))
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_seeded_loader_order_is_reproducible_and_seed_dependent():
    ds = torch.utils.data.TensorDataset(torch.arange(20))
    order = lambda seed: torch.cat([b[0] for b in repro.make_loader(ds, 4, True, seed)]).tolist()
    assert order(7) == order(7)
    assert order(7) != order(8)
    assert sorted(order(7)) == list(range(20))


# ---------------------------------------------------------------- device
def test_device_falls_back_to_cpu_without_cuda():
    with mock.patch("torch.cuda.is_available", return_value=False), \
         mock.patch.object(device, "_mps_available", return_value=False):
        assert device.choose_device("auto") == torch.device("cpu")
        with pytest.raises(device.DeviceError, match="CUDA is not available"):
            device.choose_device("cuda")


def test_unknown_device_is_refused():
    with pytest.raises(device.DeviceError, match="unknown device 'tpu'"):
        device.choose_device("tpu")


def test_describe_cpu():
    d = device.describe_device(torch.device("cpu"))
    assert d["type"] == "cpu" and d["torch_threads"] == torch.get_num_threads()
    # the name tells an AVX2 part from an AVX-512 part of the same model name ("AMD EPYC" is both)
    assert d["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and d["cpu_capability"]
    assert d["name"] == f"{d['cpu_model']} ({d['cpu_capability']})"


def test_cpu_identity_reads_family_and_model_numbers(tmp_path, monkeypatch):
    import builtins
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
                       "model name\t: AMD EPYC\n\nprocessor\t: 1\ncpu family\t: 99\nmodel\t\t: 7\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(cpuinfo if f == "/proc/cpuinfo" else f, *a, **k))
    ident = device.cpu_identity()
    assert (ident["cpu_family"], ident["cpu_model_number"]) == (26, 2)   # the first processor's, not the last's
    assert device.cpu_model() == "AMD EPYC"


# ---------------------------------------------------------------- time split and windows
def test_time_split_leaks_nothing():
    rng = np.random.default_rng(0)
    t = pd.date_range("2013-12-30", periods=400, freq="15min")
    df = pd.DataFrame({"timestamp": t[rng.permutation(400)], "v": rng.random(400)})
    train, test = timeseries.time_split(df, "2014-01-01")
    assert train["timestamp"].max() < test["timestamp"].min()
    assert len(train) + len(test) == 400
    assert (train["timestamp"] < pd.Timestamp("2014-01-01")).all()
    assert (test["timestamp"] >= pd.Timestamp("2014-01-01")).all()
    assert train["timestamp"].is_monotonic_increasing and test["timestamp"].is_monotonic_increasing


def test_windows_equal_a_naive_loop():
    values = np.random.default_rng(1).standard_normal(500).astype(np.float32)
    X, y = timeseries.make_sequences(values, 96)
    naive_X = np.stack([values[i:i + 96] for i in range(len(values) - 96)])
    naive_y = np.array([values[i + 96] for i in range(len(values) - 96)])
    assert X.shape == (404, 96) and y.shape == (404,)
    assert np.array_equal(X.numpy(), naive_X) and np.array_equal(y.numpy(), naive_y)


def test_windows_on_140k_points_run_no_per_sample_python():
    """Vectorised, checked by counting Python lines executed (the same on every CPU), not by a clock."""
    values = np.random.default_rng(2).standard_normal(140_000)
    lines = 0

    def tracer(frame, event, arg):
        nonlocal lines
        if event == "line":
            lines += 1
        return tracer

    sys.settrace(tracer)
    try:
        X, y = timeseries.make_sequences(values, 96)
    finally:
        sys.settrace(None)
    assert X.shape == (139_904, 96) and float(X[-1, -1]) == np.float32(values[-2]) and float(y[-1]) == np.float32(values[-1])
    # a per-sample loop runs >= 139,904 lines; the vectorised code runs a few dozen
    assert lines < 1_000, f"make_sequences ran {lines} Python lines for 139,904 windows"


def test_windows_reject_bad_input():
    with pytest.raises(ValueError, match="too short"):
        timeseries.make_sequences(np.zeros(5), 10)
    with pytest.raises(ValueError, match="1-D"):
        timeseries.make_sequences(np.zeros((5, 2)), 2)


# ---------------------------------------------------------------- metrics
def test_metrics_match_known_values():
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 2, 0])
    assert metrics.accuracy(preds, target, num_classes=3) == pytest.approx(4 / 6)
    p, r = metrics.precision_recall(preds, target, 3, None)
    assert torch.allclose(p, torch.tensor([0.5, 2 / 3, 1.0]))
    assert torch.allclose(r, torch.tensor([0.5, 1.0, 0.5]))
    pm, rm = metrics.precision_recall(preds, target, 3, "macro")
    assert pm == pytest.approx((0.5 + 2 / 3 + 1) / 3) and rm == pytest.approx(2 / 3)
    rep = metrics.classification_report(preds, target, ["a", "b", "c"])
    assert rep["recall.b"] == 1.0 and rep["precision.a"] == 0.5
    assert metrics.accuracy(torch.tensor([0.2, 0.7, 0.6]), torch.tensor([0, 1, 0])) == pytest.approx(2 / 3)
    assert metrics.mse(torch.tensor([1.0, 2.0]), torch.tensor([[0.0], [4.0]])) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        metrics.precision_recall(preds, target, 3, "bogus")


# ---------------------------------------------------------------- results writer
def _write(results_dir, **over):
    kw = dict(results_dir=results_dir, status="ok", started_at=results.now_iso(), config={"lr": 0.1},
              seeds=[0, 1], data=DataInfo("zoo", "real", "abc", {"train": 3}), metrics={"acc": 0.5},
              headline="acc", timings={"wall_s": 1.0}, device="cpu", script=__file__)
    kw.update(over)
    return results.write_result("99_test", **kw)


def test_result_json_has_every_contract_key(tmp_path):
    mean, std, per_seed = results.aggregate_seeds([{"acc": 0.4, "loss": 1.0}, {"acc": 0.6, "loss": 3.0}])
    assert mean == {"acc": 0.5, "loss": 2.0} and per_seed["acc"] == [0.4, 0.6]
    assert std["acc"] == pytest.approx(np.std([0.4, 0.6], ddof=1))
    path = _write(tmp_path, metrics=mean, std=std, per_seed=per_seed)
    r = json.loads(path.read_text())
    for k in results.REQUIRED_KEYS:
        assert k in r, k
    assert r["schema_version"] == 1 and r["data"]["source"] == "real" and r["data"]["fingerprint"] == "abc"
    for k in ("python", "torch", "torchvision", "torchmetrics", "device", "git_commit", "git_dirty",
              "script_sha256", "torch_threads", "float32_matmul_precision", "cpu_allocator"):
        assert k in r["environment"], k
    assert r["environment"]["device_info"]["cpu_model"]
    assert set(r["timings"]) >= {"wall_s", "train_s", "train_samples_per_s"}
    assert results.read_result(path)["metrics"]["acc"] == 0.5


ALLOCATOR_PROBE = ("import sys; sys.path.insert(0, '.'); from common import device, results; "
                   "print(device.tune_cpu_allocator(), device.tune_cpu_allocator() is device.ALLOCATOR, "
                   "results.environment('cpu')['cpu_allocator'])")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux")
def test_the_cpu_allocator_keeps_freed_memory_unless_the_user_set_malloc_options():
    """A fresh process: tune_cpu_allocator sets glibc's mmap and trim thresholds (mallopt accepted both), says so
    again when asked twice, and the result's environment records it; with a MALLOC_ variable of the user's it
    leaves the allocator alone and records None."""
    import subprocess
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    run = lambda extra: subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE], env={**env, **extra}, cwd=results.REPO_ROOT,
                                       capture_output=True, text=True, check=True).stdout.strip()
    tuned = "{'via': 'glibc mallopt', 'mmap_threshold': %d, 'trim_threshold': %d}" % (
        device.CPU_ALLOCATOR["mmap_threshold"][0], device.CPU_ALLOCATOR["trim_threshold"])
    assert run({}) == f"{tuned} True {tuned}"
    assert run({"MALLOC_ARENA_MAX": "2"}) == "None True None"


def test_writer_survives_an_exception_mid_write(tmp_path):
    path = _write(tmp_path)
    before = path.read_text()
    # An unserialisable value fails before any file is touched ...
    with pytest.raises(TypeError):
        _write(tmp_path, extra={"bad": object()})
    # ... and a crash during the write itself leaves the old file and no temporary behind.
    with mock.patch("os.fsync", side_effect=KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            _write(tmp_path, metrics={"acc": 0.9})
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["99_test.json"]


def test_writer_rejects_non_flat_metrics_and_unknown_status(tmp_path):
    with pytest.raises(TypeError, match="flat"):
        _write(tmp_path, metrics={"acc": {"nested": 1}}, headline="acc")
    with pytest.raises(ValueError, match="status"):
        _write(tmp_path, status="great")
    with pytest.raises(KeyError, match="headline"):
        _write(tmp_path, headline="nope")


def test_read_result_refuses_other_schemas(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("not json")
    with pytest.raises(ValueError, match="not a JSON file"):
        results.read_result(bad)
    bad.write_text(json.dumps({"schema_version": 2}))
    with pytest.raises(ValueError, match="schema_version 1"):
        results.read_result(bad)


def test_time_to_target_counts_training_seconds_to_the_first_epoch_at_the_target(tmp_path):
    secs = [10.0, 21.0, 30.5, 41.0]
    hit = results.time_to_target([0.5, 0.89, 0.91, 0.95], secs, 0.90)
    assert hit == {"time_to_target_s": 30.5, "epochs_to_target": 3, "best": 0.95, "best_epoch": 4, "train_s": 41.0}
    assert results.time_to_target([0.5, 0.9, 0.8], secs[:3], 0.90)["epochs_to_target"] == 2   # reaching it counts
    miss = results.time_to_target([0.5, 0.7, 0.7, 0.6], secs, 0.90)
    assert miss["time_to_target_s"] is None and miss["epochs_to_target"] is None
    assert (miss["best"], miss["best_epoch"]) == (0.7, 2)                                   # ties: the earlier epoch
    low = results.time_to_target([1.0, 0.4, 0.2], secs[:3], 0.3, higher_is_better=False)    # an MSE: lower is better
    assert (low["time_to_target_s"], low["best"]) == (30.5, 0.2)
    with pytest.raises(ValueError, match="one score per epoch"):
        results.time_to_target([0.5], secs, 0.9)
    rec = results.target_record("val_accuracy", 0.90, {"seed 0": hit, "seed 1": miss,
                                                       "seed 2": results.time_to_target([0.95], [50.0], 0.90)},
                                budget_s=40.0)
    assert (rec["reached"], rec["of"], rec["within_budget"], rec["median_time_to_target_s"], rec["best"]) == \
        (2, 3, 1, 40.25, 0.95)
    written = json.loads(_write(tmp_path, targets={"m": rec}).read_text())["targets"]
    assert written["m"]["runs"]["seed 1"]["time_to_target_s"] is None
    with pytest.raises(ValueError, match="lacks keys"):
        _write(tmp_path, targets={"m": {"metric": "x"}})
    with pytest.raises(ValueError, match=r"runs\['seed 0'\] lacks keys"):
        _write(tmp_path, targets={"m": {**rec, "runs": {"seed 0": {"best": 1.0}}}})


@pytest.mark.parametrize("scores, higher, epoch", [
    ([0.5, 0.9, 0.7], True, 2),                 # 1-based
    ([0.3], True, 1),
    ([0.5, 0.9, 0.9, 0.2], True, 2),            # a tie: the earlier epoch
    ([0.7, 0.7], True, 1),
    ([0.0, -0.0], False, 1),                    # 0.0 == -0.0: a tie too
    ([1.0, 0.4, 0.4, 0.6], False, 2),           # lower is better (an MSE), a tie: the earlier
    ([1.0, 0.4, 0.6], True, 1),                 # the same curve, higher is better
    ([-1.0, -3.0, -2.0], False, 2),             # the lowest, not the smallest in size
    ([2.0, float("inf"), 1.0], False, 3),
    ([float("-inf"), -5.0], True, 2),
    (np.array([0.2, 0.1, 0.1]), False, 2),      # an array; torch tensors too
    (torch.tensor([0.2, 0.6, 0.6]), True, 2),
])
def test_best_epoch_is_one_based_and_keeps_the_earlier_of_ties(scores, higher, epoch):
    assert results.best_epoch(scores, higher_is_better=higher) == epoch


@pytest.mark.parametrize("scores, higher, epoch", [
    ([float("nan"), 0.5, 0.7], True, 3),        # NaN is never best: not the first epoch, not "the lowest"
    ([float("nan"), 0.5, 0.7], False, 2),
    ([0.5, float("nan"), 0.4], False, 3),
    ([0.5, float("nan")], True, 1),
    (np.array([np.nan, 0.3, 0.2]), False, 3),   # numpy's argmin would say 1
    ([float("nan"), float("nan")], True, 1),    # nothing but NaN: no epoch better than another -> the first
])
def test_best_epoch_passes_over_nan(scores, higher, epoch):
    assert results.best_epoch(scores, higher_is_better=higher) == epoch


def test_best_epoch_refuses_an_empty_curve():
    for empty in ([], np.array([]), torch.tensor([])):
        with pytest.raises(ValueError, match="no epochs"):
            results.best_epoch(empty)
        with pytest.raises(ValueError, match="no epochs"):
            results.best_epoch(empty, higher_is_better=False)


def test_best_epoch_asked_after_each_epoch_marks_exactly_the_strict_records():
    """The online use (keep the weights when ``best_epoch(curve so far) == epoch``) keeps the epoch a plain
    "strictly better than the best so far" loop keeps, ties included (figures on a coarse grid: many ties)."""
    gen = np.random.default_rng(0)
    for higher in (True, False):
        for _ in range(200):
            curve = [float(v) for v in gen.integers(0, 4, size=int(gen.integers(1, 9)))]
            kept, record = [], None
            for epoch, v in enumerate(curve, 1):
                if record is None or (v > record if higher else v < record):
                    kept.append(epoch)
                    record = v
            asked = [e for e in range(1, len(curve) + 1) if results.best_epoch(curve[:e], higher) == e]
            assert asked == kept and results.best_epoch(curve, higher) == kept[-1]


def test_time_to_target_best_is_best_epochs():
    run = results.time_to_target([float("nan"), 0.8, 0.8, 0.6], [1.0, 2.0, 3.0, 4.0], 0.9)
    assert (run["best"], run["best_epoch"]) == (0.8, 2)
    low = results.time_to_target([0.5, 0.2, 0.2], [1.0, 2.0, 3.0], 0.1, higher_is_better=False)
    assert (low["best"], low["best_epoch"], low["epochs_to_target"]) == (0.2, 2, None)


def test_check_finite_raises_diverged():
    results.check_finite(torch.tensor(1.0), 0, 0)
    with pytest.raises(results.Diverged) as e:
        results.check_finite(torch.tensor(float("nan")), 3, 17)
    assert e.value.epoch == 3 and e.value.step == 17


# ---------------------------------------------------------------- plots
def test_plots_write_pngs(tmp_path):
    p1 = plots.plot_curves({"train": [3, 2, 1], "validation": [3, 2.5, 2.4]}, tmp_path / "c.png", "loss")
    p2 = plots.bar_with_errors(["a", "b"], [0.5, 0.7], [0.01, 0.02], tmp_path / "b.png", "acc", "accuracy",
                               baselines={"majority": 0.4})
    for p in (p1, p2):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["b.png", "c.png"]


def test_a_far_baseline_is_named_above_the_plot_not_drawn(monkeypatch, tmp_path):
    """``top`` ends the y axis: the bars (0.041, 0.042) and the near baseline stay readable, the far one (0.677, 07's
    seasonal naive) is named in the legend only."""
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figs.append(fig) or path)
    plots.bar_with_errors(["LSTM", "GRU"], [0.041, 0.042], [0.001, 0.002], tmp_path / "m.png", "MSE", "MSE",
                          baselines={"persistence": 0.040, "seasonal naive": 0.677}, top=0.06)
    ax = figs[0].axes[0]
    assert ax.get_ylim() == (0, 0.06)
    legend = {label: line for line, label in zip(*ax.get_legend_handles_labels())}
    assert list(legend) == ["persistence (0.04)", "seasonal naive (0.677, above the plot)"]
    assert [line.get_alpha() for line in legend.values()] == [1, 0]


# ---------------------------------------------------------------- CLI
def test_cli_rejects_bad_values(capsys):
    p = cli.base_parser("99_test", "test")
    p.add_argument("--epochs", type=cli.positive_int, default=3)
    for argv, msg in ((["--epochs", "-2"], "must be >= 1"), (["--device", "tpu"], "invalid choice"),
                      (["--seeds", "0"], "must be >= 1")):
        with pytest.raises(SystemExit):
            cli.parse_args(p, argv)
        assert msg in capsys.readouterr().err
    args = cli.parse_args(p, ["--seed", "5", "--seeds", "3"])
    assert cli.seed_list(args) == [5, 6, 7]


def test_cli_rerun_restores_recorded_config(tmp_path):
    p = cli.base_parser("99_test", "test")
    p.add_argument("--lr", type=float, default=0.1)
    first = cli.parse_args(p, ["--lr", "0.5", "--seed", "9"])
    rec = tmp_path / "r.json"
    rec.write_text(json.dumps({"experiment": "99_test", "config": cli.config_of(first)}))
    p2 = cli.base_parser("99_test", "test")
    p2.add_argument("--lr", type=float, default=0.1)
    again = cli.parse_args(p2, ["--rerun", str(rec)])
    assert again.lr == 0.5 and again.seed == 9
    p3 = cli.base_parser("98_other", "test")
    with pytest.raises(SystemExit):
        cli.parse_args(p3, ["--rerun", str(rec)])


def test_cli_rerun_of_a_result_with_options_since_renamed_says_it_is_not_exact(tmp_path, capsys):
    p = cli.base_parser("99_test", "test")
    p.add_argument("--max-epochs", type=int, default=3)
    rec = tmp_path / "old.json"
    config = {**cli.config_of(cli.parse_args(p, [])), "epochs": 2, "test_curve": True}   # renamed / removed since
    rec.write_text(json.dumps({"experiment": "99_test", "config": config}))
    p2 = cli.base_parser("99_test", "test")
    p2.add_argument("--max-epochs", type=int, default=3)
    args = cli.parse_args(p2, ["--rerun", str(rec)])
    err = capsys.readouterr().err
    assert args.max_epochs == 3 and "no option(s) ['epochs', 'test_curve']" in err and "not that result's exact" in err


def test_rerun_warns_about_recorded_options_this_version_lacks_but_not_about_derived_keys(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "sigterm_as_interrupt", lambda: None)   # parse_args would install them in pytest
    monkeypatch.setattr(cli.repro, "configure_numerics", lambda **kwargs: None)
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"config": {"experiment": "xx_demo", "seeds": 4, "old_option": 7, "epochs_used": 30}}))
    args = cli.parse_args(cli.base_parser("xx_demo", "demo"), ["--rerun", str(path)])
    err = capsys.readouterr().err
    assert args.seeds == 4   # the recorded option is applied
    assert "this version has no option(s) ['old_option']" in err   # renamed or removed: said, not silent
    assert "epochs_used" not in err                                  # a derived outcome, not an option
