"""06_electricity_rnn and its pipeline (experiments/electricity.py, shared with 07): time and validation
splits, windows, baselines, the course's RNN, the best-epoch checkpoint, the test windows read once per model,
smoke runs (real and synthetic)."""
from __future__ import annotations

import argparse
import importlib

import numpy as np
import pandas as pd
import pytest
import torch

from common import cli, data, schema
from conftest import check_deviations, real_data, run_script, smoke_fixture
from experiments import electricity as pipe

m = importlib.import_module("experiments.06_electricity_rnn")
SCRIPT = "06_electricity_rnn"


def course_create_sequences(df: pd.DataFrame, seq_length: int):
    """The course's loop, verbatim in spirit: the reference the vectorised windows must match."""
    xs, ys = [], []
    for i in range(len(df) - seq_length):
        xs.append(df.iloc[i:(i + seq_length), 1])
        ys.append(df.iloc[i + seq_length, 1])
    return np.array(xs), np.array(ys)


def toy_frame(n: int, start="2013-12-30 00:00") -> pd.DataFrame:
    t = pd.date_range(start, periods=n, freq="15min")
    return pd.DataFrame({"timestamp": t, "consumption": np.sin(np.arange(n) / 7.0) + np.arange(n) * 1e-3})


def test_windows_match_the_course_loop():
    df = toy_frame(300)
    X, y, t = pipe.make_windows(df)
    Xr, yr = course_create_sequences(df, 96)
    assert X.shape == (204, 96) and y.shape == (204,) and len(t) == 204
    np.testing.assert_allclose(X.numpy(), Xr, rtol=0, atol=1e-6)
    np.testing.assert_allclose(y.numpy(), yr, rtol=0, atol=1e-6)
    assert t[0] == df["timestamp"].iloc[96] and t[-1] == df["timestamp"].iloc[-1]


def test_split_check_refuses_overlap():
    df = toy_frame(400)
    info = pipe.verify_split(df.iloc[:300], df.iloc[300:])
    assert info["no_lookahead"] and info["cutoff"] == str(df["timestamp"].iloc[300])
    with pytest.raises(data.DataError, match="not a time split"):
        pipe.verify_split(df.iloc[:300], df.iloc[250:])


def test_baselines_are_the_named_forecasts():
    X = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    y = torch.tensor([4.0, 1.0])
    b = pipe.baselines(X, y, train_mean=2.0)
    assert b["baseline.persistence_mse"] == pytest.approx(((4 - 3) ** 2 + 0) / 2)
    assert b["baseline.seasonal_naive_mse"] == pytest.approx(((4 - 1) ** 2 + 1) / 2)
    assert b["baseline.train_mean_mse"] == pytest.approx((4 + 1) / 2)


def test_course_rnn_shapes_and_parameters():
    net = m.CourseRNN()
    out = net(torch.randn(5, 96).view(5, 96, 1))
    assert out.shape == (5, 1) and out.squeeze(1).shape == (5,)
    assert (net.rnn.input_size, net.rnn.hidden_size, net.rnn.num_layers, net.rnn.batch_first) == (1, 32, 2, True)
    assert pipe.n_params(net) == 3265   # 1,120 + 2,112 (two RNN layers) + 33 (Linear)
    case = m.benchmark_cases()[0]
    (x,), target = case["make_batch"](case["batch_size"], "cpu")
    assert case["loss_fn"](case["make_model"]()(x), target).ndim == 0
    assert case["batch_size"] == m.DEFAULTS["batch_size"]   # the script's settings, not a copy
    assert case["make_optimizer"](net.parameters()).defaults["lr"] == m.DEFAULTS["lr"]


def test_defaults_are_the_options_defaults_and_smoke_overrides_them(monkeypatch):
    # parse() also installs a SIGTERM handler and sets torch's numerics: not in the test process
    monkeypatch.setattr(cli, "sigterm_as_interrupt", lambda: None)
    monkeypatch.setattr(cli.repro, "configure_numerics", lambda **kwargs: None)
    args = m.parse([])
    assert (args.seeds, args.max_epochs, args.batch_size, args.lr) == tuple(
        m.DEFAULTS[k] for k in ("seeds", "max_epochs", "batch_size", "lr"))
    smoke = m.parse(["--smoke"])
    assert smoke.max_epochs == m.SMOKE["max_epochs"] == 2 and smoke.batch_size == m.DEFAULTS["batch_size"]


def test_device_batches_are_the_dataloaders_batches():
    X, y = torch.randn(23, pipe.SEQ_LEN), torch.randn(23)
    for shuffle in (True, False):
        want = list(pipe.make_loader(X, y, 5, shuffle, seed=3))
        got = list(pipe.DeviceBatches(pipe.make_loader(X, y, 5, shuffle, seed=3), X, y))
        assert len(got) == len(want) == 5
        assert all(torch.equal(gx, wx) and torch.equal(gy, wy) for (gx, gy), (wx, wy) in zip(got, want))


def test_loader_draws_whole_batches_reproducibly():
    X, y = torch.arange(20.0).view(10, 2), torch.arange(10.0)
    order = lambda seed: torch.cat([b[1] for b in pipe.make_loader(X, y, 4, True, seed)]).tolist()
    assert [len(b[1]) for b in pipe.make_loader(X, y, 4, True)] == [4, 4, 2]
    assert order(3) == order(3) and order(3) != order(4) and sorted(order(3)) == list(range(10))


@real_data("electricity")
def test_real_split_and_windows():
    train, test, _ = data.load_electricity()
    split = pipe.verify_split(train, test)
    assert split["cutoff"] == "2014-01-01 00:00:00" and split["train_last"] == "2013-12-31 23:45:00"
    assert split["regular_15min"]
    assert not (test["timestamp"] <= train["timestamp"].max()).any()
    X, y, t = pipe.make_windows(train)
    assert X.shape == (105_119, 96) and y.shape == (105_119,)
    vals = train["consumption"].to_numpy(np.float32)
    for i in (0, 12_345, 105_118):   # target alignment at a few places against direct indexing
        assert torch.equal(X[i], torch.from_numpy(vals[i:i + 96])) and y[i] == vals[i + 96]
    assert t[-1] == train["timestamp"].iloc[-1]
    Xt, _, _ = pipe.make_windows(test)
    assert Xt.shape == (34_944, 96)


def test_validation_check_refuses_overlap():
    t = pd.date_range("2013-09-30 00:00", periods=300, freq="15min").to_numpy()
    cutoff = t[200]
    info = pipe.verify_validation(t[:200], t[200:250], t[250:], cutoff, 250)
    assert info["no_lookahead"] and info["cutoff"] == str(pd.Timestamp(cutoff))
    for fit, val, test, n in ((t[:201], t[200:250], t[250:], 251),    # a validation target trained on
                              (t[:200], t[200:251], t[250:], 251),    # a validation target in the test period
                              (t[:200], t[201:250], t[250:], 250)):   # a window in neither part
        with pytest.raises(data.DataError, match="validation period"):
            pipe.verify_validation(fit, val, test, cutoff, n)


def test_validation_period_of_a_short_series_is_its_last_quarter():
    train, test, _ = data.synthetic_electricity()   # 60 days: 3 months before the test would leave nothing
    fit, val = pipe.carve_validation(train, test["timestamp"].min())
    assert val["timestamp"].min() == pd.Timestamp("2013-12-16") and fit["timestamp"].max() < val["timestamp"].min()
    assert len(fit) + len(val) == len(train)


def fake_evaluations(monkeypatch, val_mse: list[float], seen: list):
    """``pipe.evaluate`` replaced: ``val_mse`` in turn on the validation windows; each call's loader and a copy
    of the model's weights go to ``seen``."""
    scripted = iter(val_mse)

    def evaluate(model, loader, device):
        seen.append((loader, {k: v.clone() for k, v in model.state_dict().items()}))
        return next(scripted), torch.zeros(len(loader.y)), 0.0

    monkeypatch.setattr(pipe, "evaluate", evaluate)


@pytest.mark.parametrize("val_mse,best", [([0.5, 0.3, 0.3], 2), ([0.2, 0.3, 0.4], 1), ([0.5, 0.4, 0.1], 3)])
def test_training_keeps_the_weights_of_the_best_validation_epoch(monkeypatch, val_mse, best):
    X, y, seen = torch.randn(64, pipe.SEQ_LEN), torch.randn(64), []
    fake_evaluations(monkeypatch, val_mse, seen)
    torch.manual_seed(0)
    net, val = pipe.CourseRNN(), pipe.DeviceBatches(pipe.make_loader(X[:8], y[:8], 8, False), X[:8], y[:8])
    h = pipe.train(net, pipe.make_loader(X, y, 16, True), 3, 1e-2, "cpu", val)
    assert h["best_epoch"] == best and h["val_mse"] == val_mse and len(seen) == 3
    assert all(loader is val for loader, _ in seen)                      # only the validation windows
    kept = net.state_dict()
    assert all(torch.equal(kept[k], seen[best - 1][1][k]) for k in kept)   # that epoch's weights, restored
    assert not all(torch.equal(kept[k], seen[-1][1][k]) for k in kept) or best == 3


def test_test_windows_are_read_once_per_model_after_the_selection(monkeypatch):
    prep = pipe.prepare(None, synthetic=True, device="cpu", subset=(512, 256, 256))
    calls, evaluate = [], pipe.evaluate

    def counted(model, loader, device):
        calls.append("test" if loader.X.data_ptr() == prep["test_batches"].X.data_ptr() else
                     "val" if loader.X.data_ptr() == prep["val_batches"].X.data_ptr() else "other")
        return evaluate(model, loader, device)

    monkeypatch.setattr(pipe, "evaluate", counted)
    args = argparse.Namespace(max_epochs=3, batch_size=128, lr=1e-3)
    out = pipe.run_seed(0, m.MODELS, prep, args, "cpu", max_batches=2)
    assert calls == ["val", "val", "val", "test"]          # 3 candidate epochs on validation, then the test once
    assert out["metrics"]["rnn.epochs"] in (1, 2, 3)
    assert out["metrics"]["rnn.val_mse"] == min(out["history"]["rnn.val_mse.seed0"])


def test_ablation_reads_no_test_window_and_follows_its_rule(monkeypatch, tmp_path):
    """--ablation trains the RNN with every (batch, lr) of ABLATION, scores it on the validation windows only and
    chooses by its rule; the experiment's own result is not written."""
    calls, evaluate, prepare = [], pipe.evaluate, pipe.prepare
    preps = []

    def counted(model, loader, device):
        prep = preps[0]
        calls.append("test" if loader.X.data_ptr() == prep["test_batches"].X.data_ptr() else
                     "val" if loader.X.data_ptr() == prep["val_batches"].X.data_ptr() else "other")
        return evaluate(model, loader, device)
    monkeypatch.setattr(pipe, "evaluate", counted)
    monkeypatch.setattr(pipe, "prepare", lambda *a, **k: preps.append(prepare(*a, **k)) or preps[-1])
    rc = m.main(["--ablation", "--smoke", "--synthetic", "--results-dir", str(tmp_path), "--workers", "1"])
    assert rc == 0 and not (tmp_path / f"{SCRIPT}.json").exists()
    assert calls == ["val"] * (len(pipe.ABLATION) * 2 * 2)              # candidates x 2 seeds x 2 epochs (--smoke)
    r = schema.read_result(tmp_path / "ablation" / f"{SCRIPT}.ablation.json")
    sel = r["selection"]
    assert sel["candidates"] == {n: list(c) for n, c in pipe.ABLATION.items()} and "no model reads a test" in \
        sel["validation"]["method"]
    names = list(pipe.ABLATION)
    best = {n: r["metrics"][f"{n}.best"] for n in names}
    assert all(best[n] == pytest.approx(sum(sel["scores"][n]) / 2) and len(sel["scores"][n]) == 2 for n in names)
    from common import results
    chosen = results.choose_candidate(r["targets"], best, higher_is_better=False,
                                      spread={n: r["std"][f"{n}.best"] for n in names},
                                      cost={n: r["timings"][f"{n}.train_s"] for n in names})
    assert sel["chosen"] == {"batch_size, lr": list(pipe.ABLATION[chosen]), "candidate": chosen}
    assert r["headline"] == f"{chosen}.best"


@real_data("electricity")
def test_real_validation_windows_lie_between_the_training_and_test_targets():
    train, _, _ = data.load_electricity()
    prep = pipe.prepare(None, synthetic=False, device="cpu")
    v, sizes = prep["split"]["validation"], prep["info"].sizes
    assert v["cutoff"] == "2013-10-01 00:00:00" and v["train_last_target"] == "2013-09-30 23:45:00"
    assert (v["validation_first"], v["validation_last"]) == ("2013-10-01 00:00:00", "2013-12-31 23:45:00")
    assert (sizes["train_windows"], sizes["validation_windows"], sizes["test_windows"]) == (96_287, 8_832, 34_944)
    assert sizes["train_windows_full"] == 105_119 == sizes["train_windows"] + sizes["validation_windows"]
    # by position in the training file: the models' windows use readings before 2013-10-01 only (inputs and
    # targets), the validation targets are exactly the readings of Oct-Dec 2013
    vals = torch.from_numpy(train["consumption"].to_numpy(np.float32))
    cut = int((train["timestamp"] < "2013-10-01").sum())
    assert cut == 96_287 + 96 and torch.equal(prep["X_train"][-1], vals[cut - 97:cut - 1])
    assert torch.equal(prep["y_train"], vals[96:cut]) and torch.equal(prep["val_batches"].y, vals[cut:])
    assert torch.equal(prep["val_batches"].X[0], vals[cut - 96:cut])   # the first day's inputs: the end of September
    assert prep["val_baselines"]["baseline.persistence_val_mse"] > 0


runs = smoke_fixture(SCRIPT, {"seed0": ["--seeds", "2"], "seed0_again": ["--seeds", "2"]})


@pytest.mark.slow
@real_data("electricity")
def test_smoke_real_json_plots_and_reproducibility(runs):
    (r, d), (r2, _) = runs["seed0"], runs["seed0_again"]
    assert r["status"] == "ok" and r["data"]["source"] == "real" and r["seeds"] == [0, 1]
    mt = r["metrics"]
    for k in ("rnn.test_mse", "rnn.mse_vs_persistence", "rnn.params",
              "baseline.persistence_mse", "baseline.seasonal_naive_mse", "baseline.train_mean_mse"):
        assert isinstance(mt[k], float) and mt[k] > 0, k
    assert mt["rnn.mse_vs_persistence"] == pytest.approx(mt["rnn.test_mse"] / mt["baseline.persistence_mse"], rel=1e-6)
    assert mt["rnn.params"] == 3265 and mt["data.train_windows_full"] == 105_119
    assert r["data"]["sizes"]["test_windows"] == 2016 and "not kW" in r["units"]
    assert r["split_check"]["no_lookahead"] and r["split_check"]["cutoff"] == "2014-01-01 00:00:00"
    assert r["timings"]["train_samples_per_s"] > 0 and r["timings"]["rnn.train_windows_per_s"] > 0
    assert (d / SCRIPT / "train_loss.png").stat().st_size > 0 and (d / SCRIPT / "test_week.png").stat().st_size > 0
    assert r["metrics"] == r2["metrics"] and r["history"] == r2["history"]   # same seeds: identical
    a, b = r["per_seed"]["rnn.test_mse"]
    assert a != b                                                            # different seeds differ


@pytest.mark.slow
@real_data("electricity")
def test_smoke_selection_is_valid_and_made_on_validation(runs):
    r = runs["seed0"][0]
    sel = r["selection"]
    assert schema.check_selection(sel) is sel and sel["candidates"] == {"rnn.epochs": [1, 2]}
    chosen = sel["chosen"]["rnn.epochs"]
    assert len(chosen) == 2 and set(chosen) <= set(sel["candidates"]["rnn.epochs"])
    for seed, epoch in enumerate(chosen):   # the epoch of lowest validation MSE, the earlier on a tie
        curve = r["history"][f"rnn.val_mse.seed{seed}"]
        assert len(curve) == 2 and epoch == int(np.argmin(curve)) + 1 and r["per_seed"]["rnn.epochs"][seed] == epoch
        assert r["per_seed"]["rnn.val_mse"][seed] == min(curve)
    curves = [r["history"][f"rnn.val_mse.seed{s}"] for s in (0, 1)]
    assert sel["scores"]["rnn.val_mse_by_epoch_mean"] == pytest.approx(np.mean(curves, axis=0))
    assert "rnn.val_mse" not in sel["scores"]   # the metric rnn.val_mse is the chosen epoch's, a different figure
    assert sel["scores"]["baseline.persistence_val_mse"] == r["metrics"]["baseline.persistence_val_mse"] > 0
    assert sel["validation"]["sizes"] == {"train": 2048, "validation": 672, "test": 2016}
    v = r["split_check"]["validation"]
    assert v["train_last_target"] < v["cutoff"] <= v["validation_first"] <= v["validation_last"] \
        < r["split_check"]["cutoff"]
    assert r["metrics"]["data.validation_windows"] == 672 and r["data"]["sizes"]["validation_windows_full"] == 8_832
    t = r["targets"]["rnn"]   # the goal: validation MSE at most 0.90 x persistence's, lower is better
    assert t["target"] == pytest.approx(0.9 * r["metrics"]["baseline.persistence_val_mse"]) and not t["higher_is_better"]
    for seed in (0, 1):
        run, curve = t["runs"][f"seed {seed}"], r["history"][f"rnn.val_mse.seed{seed}"]
        assert run["best"] == min(curve) and run["best_epoch"] == r["per_seed"]["rnn.epochs"][seed]
        assert (run["time_to_target_s"] is None) == (min(curve) > t["target"])


@pytest.mark.slow
@real_data("electricity")
def test_smoke_records_the_deviations(runs):
    r = runs["seed0"][0]
    flags = check_deviations(r, ["training batch size and learning rate", "epochs",
                                 "units and scaling of the consumption values", "number of training windows"], m.parse)
    assert r["deviations"] == pipe.DEVIATIONS is m.DEVIATIONS      # 06 and 07 share them: one list
    course = flags["training batch size and learning rate"]      # the flag gives the course's batch
    assert (course.batch_size, course.lr) == (32, 1e-3) and (r["config"]["batch_size"], r["config"]["lr"]) == (128, 2e-3)
    assert r["metrics"]["data.train_windows_full"] == 105_119 and "not kW" in r["units"]   # what the entries say


@pytest.mark.slow
def test_smoke_synthetic(results_dir):
    _, r = run_script(SCRIPT, "--smoke", "--synthetic", "--seeds", "1", results_dir=results_dir)
    assert r["data"]["source"] == "synthetic" and r["status"] == "ok" and "rnn.test_mse" in r["metrics"]


@pytest.mark.slow
def test_divergence_is_recorded(results_dir):
    proc, r = run_script(SCRIPT, "--smoke", "--synthetic", "--seeds", "1", "--lr", "1e30",
                         results_dir=results_dir, check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    # step 0's loss comes before any update; one Adam step with lr 1e30 makes the output overflow at step 1
    assert r["status"] == "diverged"
    assert r["diverged"] == [{"run": "rnn", "seed": 0, "epoch": 1, "step": 1, "value": "inf"}]


def test_missing_data_exits_2(results_dir, tmp_path):
    proc, r = run_script(SCRIPT, "--smoke", "--data-dir", str(tmp_path / "nowhere"), results_dir=results_dir,
                         check=False)
    assert proc.returncode == 2 and "error: electricity" in proc.stderr and "Traceback" not in proc.stderr
    assert r is None


def test_run_study_raises_for_missing_data(tmp_path):
    """run_study lets a DataError through (main turns it into cli.fail and exit 2), rather than returning None."""
    args = m.parse(["--smoke", "--data-dir", str(tmp_path / "nowhere")])
    with pytest.raises(data.DataError, match="electricity"):
        pipe.run_study(SCRIPT, m.MODELS, args, m.SMOKE)


def test_write_study_returns_selection_and_wall_time_and_changes_nothing(tmp_path):
    """write_study returns (selection, wall seconds) and leaves the caller's timings and the study's metrics
    as they were; the JSON's timings start with wall_s."""
    args = m.parse(["--smoke", "--synthetic", "--seeds", "1", "--results-dir", str(tmp_path)])
    study = pipe.run_study(SCRIPT, m.MODELS, args, m.SMOKE)
    timings = pipe.timings_of(study.run, study.per_seed)
    assert "wall_s" not in timings
    before_timings, before_mean = dict(timings), dict(study.mean)
    selection, wall_s = pipe.write_study(SCRIPT, study, args, headline="rnn.test_mse", timings=timings, extra={},
                                         deviations=m.DEVIATIONS, script=m.__file__)
    assert timings == before_timings and study.mean == before_mean and wall_s > 0
    r = schema.read_result(tmp_path / f"{SCRIPT}.json")
    assert list(r["timings"])[0] == "wall_s" and r["timings"]["wall_s"] == wall_s
    assert r["selection"] == selection and set(selection["scores"]) >= {"rnn.val_mse_by_epoch_mean"}
