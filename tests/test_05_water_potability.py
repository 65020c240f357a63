"""05_water_potability: the dataset class, the two protocols' splits, the fast path against the course's
DataLoader path, and smoke runs (JSON contents, plots, reproducibility, divergence, synthetic data)."""
from __future__ import annotations

import importlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import check_deviations, main_in_process, real_data, run_script
from common import data, repro, results
from experiments import water

exp = importlib.import_module("experiments.05_water_potability")
SCRIPT = "05_water_potability"
CONFIGS = [*exp.OPTIMIZERS, *(f"grad.{v}" for v in exp.VARIANTS)]


# ---------------------------------------------------------------- dataset class and model
@real_data("water_potability")
def test_water_dataset_reads_the_course_csv():
    ds = water.WaterDataset(data.data_dir() / "water_potability" / "water_train.csv")
    assert len(ds) == 1_508
    features, label = ds[0]
    assert features.shape == (9,) and features.dtype == np.float32 and np.ndim(label) == 0
    labels = ds.data[:, -1]
    assert set(np.unique(labels)) == {0.0, 1.0} and int(labels.sum()) == 605  # 903 zeros, 605 ones
    assert ds.data[:, :-1].min() >= 0 and ds.data[:, :-1].max() <= 1
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, shuffle=True)))  # the course's demo
    assert batch[0].shape == (2, 9) and batch[1].shape == (2,)


def test_net_variants_shapes_and_init():
    x = torch.rand(4, 9)
    for v in exp.VARIANTS:
        net = exp.Net(v)
        out = net(x)
        assert out.shape == (4, 1) and ((out > 0) & (out < 1)).all()
        assert (net.bn1 is not None) == v.endswith("_bn")
    torch.manual_seed(0)
    default_bound = 1 / np.sqrt(9)                   # nn.Linear's default: U(+-1/sqrt(fan_in))
    kaiming_bound = np.sqrt(2) * np.sqrt(3 / 9)       # kaiming_uniform_ (gain sqrt(2)): U(+-sqrt(6/fan_in))
    assert exp.Net("relu_default").fc1.weight.abs().max() <= default_bound
    assert exp.Net("kaiming").fc1.weight.abs().max() > default_bound
    assert exp.Net("kaiming").fc1.weight.abs().max() <= kaiming_bound
    assert exp.Net("kaiming").fc3.weight.abs().max() <= np.sqrt(3 / 8)  # sigmoid gain 1
    with pytest.raises(ValueError, match="unknown variant"):
        exp.Net("selu")


def test_benchmark_cases_run_one_step():
    for case in exp.benchmark_cases():
        model = case["make_model"]()
        inputs, target = case["make_batch"](case["batch_size"], "cpu")
        opt = case["make_optimizer"](model.parameters())
        loss = case["loss_fn"](model(*inputs), target)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)


# ---------------------------------------------------------------- fast path == course path
def test_fast_batches_equal_the_dataloader_batches_over_epochs():
    df, _ = data.synthetic_water(n=50, scaled=True)
    ds = water.WaterDataset(df)
    X, y = water.to_tensors(df, "cpu")
    loader = repro.make_loader(ds, 8, True, seed=3)
    orders = water.epoch_orders(50, 8, [3, 4], device="cpu")  # seed 3 first, beside another seed
    for _ in range(3):
        order = next(orders)
        assert order.shape == (2, 50) and not torch.equal(order[0], order[1])
        fast = [(X[idx], y[idx]) for idx in order[0].split(8)]
        slow = list(loader)
        assert len(fast) == len(slow) == 7
        for (xf, yf), (xs, ys) in zip(fast, slow):
            assert torch.equal(xf, xs) and torch.equal(yf, ys)


def test_each_variant_adds_its_remedy_to_a_relu_net():
    """The cumulative ablation: relu_default is ReLU with torch's init (it was ELU here until this test, as "elu" is
    in "relu_default"); kaiming keeps ReLU; ELU from kaiming_elu on; BatchNorm in kaiming_elu_bn only."""
    nets = {v: exp.Net(v) for v in water.VARIANTS}
    assert {v: (n.act, n.bn1 is not None) for v, n in nets.items()} == {
        "relu_default": (F.relu, False), "kaiming": (F.relu, False), "kaiming_elu": (F.elu, False),
        "kaiming_elu_bn": (F.elu, True)}


def test_configurations_trained_together_train_as_alone_and_diverge_alone():
    """train_together: each configuration's copies get what they get trained alone (float rounding apart: the
    joined matmuls and reductions run over more copies), and one that diverges (SGD at lr 1e30) is returned as its
    Diverged while the others finish."""
    df, _ = data.synthetic_water(n=64, scaled=True)
    X, y = water.to_tensors(df, "cpu")
    configs = [("sgd", "relu_default", 1e30), ("adam", "relu_default", 1e-2), ("rmsprop", "kaiming", 1e-2)]
    together = exp.train_together(configs, [0, 5], X, y, epochs=3, batch_size=16)
    assert isinstance(together[("sgd", "relu_default")], results.Diverged)
    assert together[("sgd", "relu_default")].epoch == 0
    for opt, variant, lr in configs[1:]:
        alone, _ = exp.train_stack(opt, variant, lr, [0, 5], X, y, epochs=3, batch_size=16)
        runs, t = together[(opt, variant)]
        assert t["seen"] == 2 * 64 * 3
        for a, b in zip(alone, runs):
            assert np.allclose(a["losses"], b["losses"], atol=1e-6) and np.allclose(a["gnorms"], b["gnorms"], atol=1e-6)
            assert a["metrics"]["train_accuracy"] == b["metrics"]["train_accuracy"]
    with pytest.raises(ValueError, match="one architecture"):
        exp.train_together([("adam", "kaiming", 1e-2), ("adam", "kaiming_elu", 1e-2)], [0], X, y, 1, 16)


def test_seed_stack_matches_separate_nets():
    """A SeedNets copy trains like a plain Net on the same batches (same init, same losses)."""
    df, _ = data.synthetic_water(n=64, scaled=True)
    X, y = water.to_tensors(df, "cpu")
    for variant in ("relu_default", "kaiming_elu_bn"):
        runs, t = exp.train_stack("adam", variant, 1e-2, [0, 5], X, y, epochs=2, batch_size=16)
        assert t["seen"] == 2 * 64 * 2
        ds = water.WaterDataset(df)
        course = exp.train_course_path("adam", variant, 1e-2, ds, ds, 5, 2, 16, "cpu")
        assert np.allclose(course["losses"], runs[1]["losses"], atol=1e-6)
        assert course["accuracy"] == pytest.approx(runs[1]["metrics"]["train_accuracy"])
        copy, net = t["stack"].net(1), course["net"]
        # Tolerances: the two paths sum the same products in different orders (vmap's batched matmul over
        # the stacked weights vs addmm), so each gradient differs by float32 rounding (~1e-7 relative);
        # Adam turns a gradient into a step of at most lr whose size varies smoothly with it, so 8 steps
        # move parameters apart by ~1e-8, far inside 1e-5. One exception, by construction: with BatchNorm
        # after fc1, BatchNorm subtracts fc1.bias again, so its gradient is pure rounding noise (|g| ~ 1e-9)
        # and Adam scales that noise up to steps of ~lr: fc1.bias, and the running_mean that tracks it,
        # wander differently on every CPU (eval outputs 0.0105 apart on an AMD EPYC). Eval mode uses them
        # only as fc1.bias - running_mean, so hand the copy the plain net's pair; everything else must then
        # agree to rounding.
        noise_only = {"fc1.bias"} if variant.endswith("_bn") else set()
        for (name, p), q in zip(copy.named_parameters(), net.parameters()):
            if name not in noise_only:
                assert torch.allclose(p, q, atol=1e-5), name
        if noise_only:
            with torch.no_grad():
                copy.fc1.bias.copy_(net.fc1.bias)
                copy.bn1.running_mean.copy_(net.bn1.running_mean)
            assert torch.allclose(copy.bn1.running_var, net.bn1.running_var, rtol=1e-4, atol=1e-6)
            assert torch.equal(copy.bn1.num_batches_tracked, net.bn1.num_batches_tracked)  # the stacked buffers
        x = torch.rand(5, 9)
        assert torch.allclose(copy.eval()(x), net.eval()(x), atol=1e-5)
        assert runs[0]["losses"] != runs[1]["losses"]


# ---------------------------------------------------------------- the two protocols' splits
@real_data("water_potability")
def test_course_split_has_no_shared_rows():
    split = water.load_course()
    assert (len(split.train), len(split.test)) == (1_508, 503)
    assert split.notes["train_test_identical_feature_rows"] == 0
    assert "train AND test together" in split.notes["preprocessing"]


@real_data("water_potability")
def test_clean_split_is_disjoint_stratified_and_fitted_on_train_only():
    split = water.load_clean(split_seed=0)
    tr, te = split.raw_index["train"], split.raw_index["test"]
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 3_276
    assert (len(tr), len(te)) == (2_457, 819)
    assert split.notes["train_test_shared_raw_rows"] == 0
    raw, _ = data.load_water_raw()
    rate = raw["Potability"].mean()
    assert abs(split.train["Potability"].mean() - rate) < 0.002 and abs(split.test["Potability"].mean() - rate) < 0.002
    assert not split.train.isna().any().any() and not split.test.isna().any().any()
    f = data.WATER_FEATURES
    assert np.allclose(split.train[f].min(), 0) and np.allclose(split.train[f].max(), 1)  # scaler fitted on train
    # imputation medians come from the training rows only
    assert split.notes["imputed_medians"]["ph"] == pytest.approx(raw.loc[tr, "ph"].median())
    assert split.notes["imputed_medians"]["ph"] != pytest.approx(raw["ph"].median(), abs=0)
    assert sum(split.notes["missing_train"].values()) + sum(split.notes["missing_test"].values()) == 491 + 781 + 162
    # the raw training features kept for the cross-validation: the same rows, in the same order, unimputed
    assert split.raw_train[f].equals(raw.loc[tr, f].reset_index(drop=True)) and split.raw_train.isna().any().any()


def test_clean_cv_fits_each_folds_preprocessing_on_its_training_rows_only():
    """The clean protocol's cross-validation: fold k's imputer and scaler are fitted on fold k's training rows
    (medians, min and max are theirs, not those of all training rows), its validation rows never enter the fit,
    and the fold's features are that fit applied to all rows. Real data where present, else synthetic."""
    split = water.load_clean(synthetic=not data.DATASET_CHECKS["water_potability"](data.data_dir()))
    raw, f = split.raw_train[data.WATER_FEATURES], data.WATER_FEATURES
    X, y = water.to_tensors(split.train, "cpu")
    folds = water.stratified_folds(y, 5, 0)
    Xf, fitted = water.fold_features(raw, folds, "cpu")
    assert Xf.shape == (5, len(raw), 9) and Xf.dtype == torch.float32
    everything = water.preprocessing().fit(raw)   # the final models' fit: all training rows
    assert torch.equal(water.fold_features(raw, [(np.arange(len(raw)), [])], "cpu")[0][0], X)   # same maths
    for k, ((tr, val), pipe) in enumerate(zip(folds, fitted)):
        own = raw.iloc[tr]
        medians = own.median().to_numpy()                    # NaN-skipping, as SimpleImputer's
        filled = own.fillna(own.median())
        assert np.allclose(pipe[0].statistics_, medians)
        assert np.array_equal(pipe[1].data_min_, filled.min()) and np.array_equal(pipe[1].data_max_, filled.max())
        assert not np.allclose(pipe[0].statistics_, everything[0].statistics_)   # not the all-rows fit
        assert np.array_equal(Xf[k].numpy(), pipe.transform(raw).astype(np.float32))
        assert torch.equal(Xf[k, tr].amin(0), torch.zeros(9)) and torch.equal(Xf[k, tr].amax(0), torch.ones(9))
        # the validation rows never enter: other values there (extreme, or missing) change nothing of the fit
        # or of the training rows' features
        changed = raw.copy()
        changed.iloc[val] = np.where(np.arange(len(val))[:, None] % 2, np.nan, 1e9)
        Xc, (pc,) = water.fold_features(changed, [(tr, val)], "cpu")
        assert np.array_equal(pc[0].statistics_, pipe[0].statistics_)
        assert np.array_equal(pc[1].data_min_, pipe[1].data_min_) and np.array_equal(pc[1].data_max_, pipe[1].data_max_)
        assert torch.equal(Xc[0, tr], Xf[k, tr])
    assert not all(np.array_equal(p[1].data_min_, everything[1].data_min_)
                   and np.array_equal(p[1].data_max_, everything[1].data_max_) for p in fitted)


def test_cross_validate_trains_the_clean_folds_on_their_own_features(monkeypatch):
    """cross_validate hands train_stack, with raw_train (clean), one feature tensor per fold (water.fold_features)
    and records where the preprocessing was fitted; without (course), the shared features as they are."""
    split = water.load_clean(synthetic=True)
    X, y = water.to_tensors(split.train, "cpu")
    seen = []

    def train_stack(opt, variant, lr, seeds, X, y, epochs, batch_size, folds=None):
        seen.append((X, folds))
        return [{"val_acc": [0.5] * epochs} for _ in folds], {}
    monkeypatch.setattr(exp, "train_stack", train_stack)
    args = exp.parse(["--epochs", "2", "--folds", "3"])
    _, clean = exp.cross_validate(args, 1e-3, 0, (X, y), split.raw_train)[:2]
    _, course = exp.cross_validate(args, 1e-3, 0, (X, y))[:2]
    (Xcv, folds), (Xcourse, _) = seen
    assert Xcourse is X and Xcv.shape == (3, len(y), 9)
    assert torch.equal(Xcv, water.fold_features(split.raw_train, folds, "cpu")[0])
    for k, (tr, val) in enumerate(folds):
        assert torch.equal(Xcv[k, tr].amin(0), torch.zeros(9)) and torch.equal(Xcv[k, tr].amax(0), torch.ones(9))
        assert not torch.equal(Xcv[k], X)   # not the all-training-rows scaling of the final models
    assert clean["validation"]["preprocessing"] == water.CV_PREPROCESSING["clean"]
    assert clean["validation"]["preprocessing"].startswith("fitted per fold on the fold's training rows")
    assert course["validation"]["preprocessing"] == water.CV_PREPROCESSING["course"]
    assert "pre-scaled by the course" in course["validation"]["preprocessing"]


# ---------------------------------------------------------------- smoke runs
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Three smoke runs on the real data: seed 0 twice (both protocols), seed 1 once (course only)."""
    if not data.DATASET_CHECKS["water_potability"](data.data_dir()):
        pytest.skip("real water_potability data not found under DATA_DIR")
    out = {}
    for key, args in (("a", ["--seed", "0"]), ("b", ["--seed", "0"]), ("c", ["--seed", "1", "--protocol", "course"])):
        d = tmp_path_factory.mktemp(f"smoke_{key}")
        proc, _ = run_script(SCRIPT, "--smoke", *args, results_dir=d)
        out[key] = (proc, d)
    return out


def _read(d, protocol):
    return json.loads((d / f"{SCRIPT}_{protocol}.json").read_text())


@real_data("water_potability")
def test_smoke_writes_every_figure_for_both_protocols(smoke):
    proc, d = smoke["a"]
    for protocol in exp.PROTOCOLS:
        r = _read(d, protocol)
        assert r["experiment"] == f"{SCRIPT}_{protocol}" and r["status"] == "ok"
        assert r["protocol"] == protocol and r["config"]["protocol"] == protocol
        assert r["config"]["experiment"] == SCRIPT  # so that --rerun accepts it
        assert r["data"]["source"] == "real" and r["seeds"] == [0, 1]
        m = r["metrics"]
        for c in CONFIGS:
            assert 0 <= m[f"{c}.test_accuracy"] <= 1
            assert len(r["per_seed"][f"{c}.test_accuracy"]) == 2 and f"{c}.test_accuracy" in r["std"]
        for b in ("majority", "logreg", "random_forest"):
            assert 0.5 < m[f"baseline.{b}_accuracy"] < 0.8
        for v in exp.VARIANTS:
            for layer in exp.LAYERS:
                assert m[f"grad.{v}.grad_norm_{layer}_first_epoch"] > 0
                assert len(r["history"][f"grad_norm.{v}.{layer}"]) == 1
        # the course's own path (plain Net, DataLoader over WaterDataset) gets seed 0's figure, to one test row
        check = r["dataloader_check"]
        assert check["train_accuracy_dataloader_path"] == pytest.approx(r["per_seed"]["adam.train_accuracy"][0],
                                                                        abs=1.01 / r["data"]["sizes"]["train_used"])
        assert r["headline"] == "adam.test_accuracy"
        assert {row["config"] for row in r["comparison"]} == set(CONFIGS)
        assert check["max_abs_train_loss_diff"] < 1e-5
        assert r["diverged"] == [] and r["timings"]["train_samples_per_s"] > 0
        for png in ("accuracy.png", "grad_norms.png", "train_loss.png", "validation_accuracy_per_epoch.png"):
            assert (d / f"{SCRIPT}_{protocol}" / png).read_bytes()[:4] == b"\x89PNG"
    course, clean = _read(d, "course"), _read(d, "clean")
    assert course["metrics"]["baseline.majority_accuracy"] == pytest.approx(297 / 503)  # ~0.59
    assert clean["metrics"]["baseline.majority_accuracy"] == pytest.approx(499 / 819)  # 320 of the 819 are potable
    assert course["protocol_notes"]["train_test_identical_feature_rows"] == 0
    assert clean["protocol_notes"]["train_test_shared_raw_rows"] == 0
    for r in (course, clean):   # the summary prints this run's figures
        m = r["metrics"]
        assert (f"logistic regression {m['baseline.logreg_accuracy']:.3f}, random forest "
                f"{m['baseline.random_forest_accuracy']:.3f}") in proc.stdout


@real_data("water_potability")
def test_smoke_baselines_match_sklearn_fitted_here(smoke):
    """The baselines, refitted here on the course files (the smoke run's first 256 training rows)."""
    from sklearn.linear_model import LogisticRegression
    root, f = data.data_dir() / "water_potability", data.WATER_FEATURES
    train = pd.read_csv(root / "water_train.csv").iloc[:exp.DEFAULTS["smoke_rows"]]
    test = pd.read_csv(root / "water_test.csv")
    logreg = LogisticRegression(max_iter=1000).fit(train[f], train["Potability"])
    m = _read(smoke["a"][1], "course")["metrics"]
    assert m["baseline.logreg_accuracy"] == pytest.approx(logreg.score(test[f], test["Potability"]))
    majority = train["Potability"].mode()[0]
    assert m["baseline.majority_accuracy"] == pytest.approx((test["Potability"] == majority).mean())


@real_data("water_potability")
def test_smoke_records_the_deviations(smoke):
    _, d = smoke["a"]
    for protocol in exp.PROTOCOLS:
        record = _read(d, protocol)
        # the entries, in order, with non-empty what/course/here/why; every flag a real option of the script
        parsed = check_deviations(record, [x["what"] for x in exp.DEVIATIONS], exp.parse)
        course_figure = [x for x in record["deviations"] if "67%" in x["course"] or "67%" in x["what"]]
        assert len(course_figure) == 1
        assert isinstance(course_figure[0].get("flag"), str) and course_figure[0]["flag"].strip()
        literal = parsed[course_figure[0]["what"]]   # the flag gives the course's loop: SGD at lr 0.01
        assert literal.grad_optimizer == "sgd" and literal.lr_sgd == 0.01


@real_data("water_potability")
def test_sgd_at_the_course_lr_stays_at_the_majority_answer():
    """Why the headline is Adam's, not the course loop's SGD (DEVIATIONS): SGD at lr 0.01, batch 16, answers
    the majority class on every validation row, epoch after epoch (5 folds, 10 epochs here; up to 600 in the full runs)."""
    from sklearn.model_selection import StratifiedKFold
    split = water.load_course()
    X, y = water.to_tensors(split.train, "cpu")
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y.numpy()))
    runs, _ = exp.train_stack("sgd", "relu_default", exp.DEFAULTS["lr_sgd"], [0] * 5, X, y, epochs=10,
                              batch_size=exp.DEFAULTS["batch_size"], folds=folds)
    for run, (_, val) in zip(runs, folds):
        assert run["val_acc"] == pytest.approx([1 - y[val].mean().item()] * 10)   # the majority (0) share


@real_data("water_potability")
def test_smoke_is_reproducible_and_seed_dependent(smoke):
    (_, a), (_, b), (_, c) = smoke["a"], smoke["b"], smoke["c"]
    for protocol in exp.PROTOCOLS:
        ra, rb = _read(a, protocol), _read(b, protocol)
        assert ra["metrics"] == rb["metrics"] and ra["history"] == rb["history"]
    ra, rc = _read(a, "course"), _read(c, "course")
    assert rc["seeds"] == [1, 2] and not (c / f"{SCRIPT}_clean.json").exists()
    assert ra["per_seed"]["adam.final_train_loss"] != rc["per_seed"]["adam.final_train_loss"]
    assert ra["per_seed"]["adam.final_train_loss"][1] == pytest.approx(rc["per_seed"]["adam.final_train_loss"][0])


@real_data("water_potability")
def test_rerun_repeats_one_protocol(smoke, tmp_path):
    _, a = smoke["a"]
    proc, _ = run_script(SCRIPT, "--rerun", str(a / f"{SCRIPT}_course.json"), results_dir=tmp_path)
    assert not (tmp_path / f"{SCRIPT}_clean.json").exists()
    assert _read(tmp_path, "course")["metrics"] == _read(a, "course")["metrics"]
    assert "warning" not in proc.stderr   # the recorded epochs_used / lr_used are outcomes, not lost options


def test_folds_below_two_is_a_usage_error_before_any_data(monkeypatch, capsys):
    from common import cli
    monkeypatch.setattr(cli, "sigterm_as_interrupt", lambda: None)   # parse() would install them in pytest
    monkeypatch.setattr(cli.repro, "configure_numerics", lambda **kwargs: None)
    with pytest.raises(SystemExit) as e:
        exp.parse(["--folds", "1", "--data-dir", "/nowhere"])
    assert e.value.code == 2
    assert "--folds must be at least 2 (cross-validation), got 1" in capsys.readouterr().err


def test_huge_lr_is_recorded_as_divergence(tmp_path):
    proc, _ = run_script(SCRIPT, "--smoke", "--synthetic", "--protocol", "course", "--seeds", "1",
                         "--lr", "1e30", results_dir=tmp_path, check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    r = _read(tmp_path, "course")
    assert r["status"] == "diverged" and r["diverged"]
    assert {d["run"] for d in r["diverged"]} >= {"sgd/relu_default"}
    # --lr reaches the cross-validation's optimizer too: it diverges, and the fallback is recorded as such
    sel = r["selection"]
    assert sel["criterion"] == "fallback: --epochs (cross-validation diverged)"
    assert sel["chosen"]["epochs"] == r["config"]["epochs_used"] == r["config"]["epochs"]
    assert {"epoch", "step", "value"} <= set(sel["diverged"])
    assert r["diverged"][0] == {"run": "cross-validation/adam/relu_default", "seed": r["seeds"][0], **sel["diverged"]}
    assert all(v is None for v in sel["scores"]["epochs"])


def test_synthetic_smoke(tmp_path):
    proc, _ = run_script(SCRIPT, "--smoke", "--synthetic", results_dir=tmp_path)
    for protocol in exp.PROTOCOLS:
        r = _read(tmp_path, protocol)
        assert r["data"]["source"] == "synthetic" and r["status"] == "ok"
        assert r["data"]["sizes"]["train_used"] <= 256


def test_missing_data_is_one_message_and_exit_2(tmp_path):
    proc, _ = run_script(SCRIPT, "--smoke", "--data-dir", str(tmp_path / "nowhere"), results_dir=tmp_path,
                         check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: water_potability:")
    assert "Traceback" not in proc.stderr and proc.stderr.count("error:") == 1 and "protocol(s) on" not in proc.stdout


# ---------------------------------------------------------------- selection on training data only
@real_data("water_potability")
def test_smoke_selection_is_valid(smoke):
    from common import schema
    _, d = smoke["a"]
    for protocol in exp.PROTOCOLS:
        r = _read(d, protocol)
        sel = schema.check_selection(r["selection"])
        assert sel["candidates"]["epochs"] == [1] and sel["chosen"]["epochs"] == 1   # smoke: --epochs 1
        assert sel["chosen"]["epochs"] in sel["candidates"]["epochs"] and r["config"]["epochs_used"] == 1
        v = sel["validation"]
        assert v["folds"] == 5 and sum(v["sizes"]["validation"]) == 256    # every smoke training row once
        assert all(t + w == 256 for t, w in zip(v["sizes"]["train"], v["sizes"]["validation"]))
        assert len(sel["scores"]["epochs"]) == 1 and 0 <= sel["scores"]["epochs"][0] <= 1
        assert "cross-validation" in [x for x in r["deviations"] if x["what"] == "epochs"][0]["here"]
        assert v["preprocessing"] == water.CV_PREPROCESSING[protocol]   # where each fold's preprocessing was fitted
        for row in r["comparison"]:
            assert set(row["vs"].values()) <= {"higher", "lower", "within noise"}
            for b in ("majority", "logreg", "random_forest"):   # one verdict per pair: beats = higher beyond noise
                assert row[f"beats_{b}"] == (row["vs"][b] == "higher"), (row["config"], b)


def test_selection_picks_the_best_candidate_fewest_epochs_on_ties(monkeypatch):
    curves = [[0.5, 0.6, 0.7, 0.7, 0.6], [0.5, 0.6, 0.7, 0.7, 0.6]]   # per fold, per epoch
    monkeypatch.setattr(exp, "train_stack", lambda *a, **k: ([{"val_acc": c} for c in curves], {}))
    args = exp.parse(["--epochs", "5", "--folds", "2"])
    X, y = torch.rand(20, 9), torch.tensor([0.0, 1.0] * 10)
    epochs, sel, curve = exp.cross_validate(args, 1e-3, 0, (X, y))
    assert sel["candidates"]["epochs"] == [1, 2, 3, 4, 5] and epochs == 3 == sel["chosen"]["epochs"]
    assert curve == pytest.approx([0.5, 0.6, 0.7, 0.7, 0.6])


def test_selection_ties_ignore_float_noise(monkeypatch):
    """Fold means one ulp apart are a tie: the fewer epochs win."""
    curves = [[0.0, 0.1, 0.6], [0.0, 0.6, 0.6], [0.0, 0.6, 0.1]]   # per fold, per epoch
    means = np.array(curves).mean(0)
    assert means[2] > means[1] and means[2] - means[1] < 1e-15   # the summation order: one ulp apart
    monkeypatch.setattr(exp, "train_stack", lambda *a, **k: ([{"val_acc": c} for c in curves], {}))
    args = exp.parse(["--epochs", "3", "--folds", "3"])
    epochs, sel, _ = exp.cross_validate(args, 1e-3, 0, (torch.rand(30, 9), torch.tensor([0.0, 1.0] * 15)))
    assert epochs == 2 == sel["chosen"]["epochs"] and "diverged" not in sel


def test_cross_validation_divergence_falls_back_to_epochs(monkeypatch):
    from common import results

    def diverge(*a, **k):
        raise results.Diverged(0, 3, float("nan"))
    monkeypatch.setattr(exp, "train_stack", diverge)
    args = exp.parse(["--epochs", "20", "--folds", "2"])
    epochs, sel, curve = exp.cross_validate(args, 1e-3, 0, (torch.rand(20, 9), torch.tensor([0.0, 1.0] * 10)))
    assert epochs == 20 == sel["chosen"]["epochs"]
    assert sel["criterion"] == "fallback: --epochs (cross-validation diverged)"
    assert sel["diverged"] == {"epoch": 0, "step": 3, "value": "nan"}
    assert len(curve) == 20 and np.isnan(curve).all()


def test_train_stack_folds_of_unequal_size_with_batch_2():
    """Folds of 9 and 10 training rows, batch 2: each copy trains on 8 rows per epoch (the 9th would be a batch
    of one), so the orders stack."""
    torch.manual_seed(0)
    X, y = torch.rand(12, 9), torch.tensor([0.0, 1.0] * 6)
    folds = [(np.arange(9), np.arange(9, 12)), (np.arange(2, 12), np.arange(2))]
    runs, t = exp.train_stack("adam", "kaiming_elu_bn", 1e-3, [0, 1], X, y, epochs=2, batch_size=2, folds=folds)
    assert t["seen"] == 2 * 8 * 2 and all(len(r["val_acc"]) == 2 and len(r["losses"]) == 2 for r in runs)
    orders = water.epoch_orders([9, 10], 2, [0, 1], "cpu", stop=8)
    order = next(orders)
    assert order.shape == (2, 8) and len(set(order[1].tolist())) == 8


def test_train_stack_reads_each_copys_own_features():
    """X of shape (S, rows, 9): copy s trains and validates on X[s] only; all copies on the same X[s] train as
    with one shared X."""
    torch.manual_seed(0)
    X, y = torch.rand(40, 9), torch.tensor([0.0, 1.0] * 20)
    folds = [(np.arange(30), np.arange(30, 40)), (np.arange(10, 40), np.arange(10))]

    def run(features):
        return exp.train_stack("adam", "relu_default", 1e-2, [0, 1], features, y, 3, 8, folds)[0]   # 3 epochs, batch 8
    shared, same, mixed = run(X), run(X.expand(2, -1, -1)), run(torch.stack([X, 1 - X]))
    for a, b in zip(shared, same):
        assert np.allclose(a["losses"], b["losses"], atol=1e-6) and a["val_acc"] == b["val_acc"]
    assert np.allclose(mixed[0]["losses"], shared[0]["losses"], atol=1e-6)   # copy 0: X, as before
    assert not np.allclose(mixed[1]["losses"], shared[1]["losses"], atol=1e-4)   # copy 1: 1 - X


def test_comparison_uses_the_suites_noise_rule():
    from common import schema
    assert water.verdict((0.70, 0.01), (0.69, 0.02), 3) == schema.compare_means(0.70, 0.01, 0.69, 0.02, 3)
    assert water.verdict((0.70, 0.0), (0.60, 0.0), 1) == "higher (one seed: no spread to judge noise by)"
    assert water.verdict((0.70, 0.0), (0.70 + 5e-7, 0.0), 2) == "within noise"
    assert water.verdict((None, None), (0.6, 0.0), 2) == "n/a"


@real_data("water_potability")
def test_folds_are_training_rows_and_the_test_set_is_read_once_per_configuration(monkeypatch, tmp_path):
    """In-process smoke run of both protocols: every train_stack call gets the (smoke) training rows only,
    the folds partition them, the clean folds' raw rows never meet the test rows, and evaluate_stack sees the
    test tensors once per distinct configuration (7), after training."""
    calls, tests = [], {}
    real_train, real_eval = exp.train_together, exp.evaluate_stack

    def train_together(configs, seeds, X, y, epochs, batch_size, folds=None):
        calls.append((X.shape[-2], folds, X.shape, [c[:2] for c in configs]))
        return real_train(configs, seeds, X, y, epochs, batch_size, folds)

    def evaluate_stack(stack, X, y):
        tests[X.shape[0]] = tests.get(X.shape[0], 0) + 1
        return real_eval(stack, X, y)

    monkeypatch.setattr(exp, "train_together", train_together)
    monkeypatch.setattr(exp, "evaluate_stack", evaluate_stack)
    # --workers 1: both protocols in this process, where the recording functions are
    assert main_in_process(monkeypatch, exp.main, ["--smoke", "--workers", "1", "--results-dir", str(tmp_path)]) == 0
    assert tests == {503: 7, 819: 7, 256: 14}   # test tensors: once per configuration; 256: training accuracy
    n = exp.DEFAULTS["smoke_rows"]
    # 2 protocols x (1 cross-validation + 3 stacks of the 7 configurations: the 5 ReLU nets together, then the
    # ELU net, then the ELU net with BatchNorm)
    assert [x for x, *_ in calls] == [n] * 8
    relu = [(o, "relu_default") for o in exp.OPTIMIZERS] + [("adam", "kaiming")]
    assert [c for *_, c in calls] == [[("adam", "relu_default")], relu, [("adam", "kaiming_elu")],
                                      [("adam", "kaiming_elu_bn")]] * 2
    # features: shared (rows, 9), but one (rows, 9) per fold in the clean protocol's cross-validation
    assert [shape for _, f, shape, _ in calls if f is not None] == [(n, 9), (5, n, 9)]
    assert all(shape == (n, 9) for _, f, shape, _ in calls if f is None)
    cv = [f for _, f, _, _ in calls if f is not None]
    assert len(cv) == 2
    for folds in cv:
        assert len(folds) == 5
        vals = np.concatenate([v for _, v in folds])
        assert sorted(vals) == list(range(n))    # the validation parts partition the training rows
        for tr, v in folds:
            assert len(np.intersect1d(tr, v)) == 0 and len(tr) + len(v) == n
    clean = water.load_clean(split_seed=0)
    raw_train = clean.raw_index["train"][:n]
    for tr, v in cv[1]:
        assert len(np.intersect1d(raw_train[v], clean.raw_index["test"])) == 0
        assert len(np.intersect1d(raw_train[tr], clean.raw_index["test"])) == 0
