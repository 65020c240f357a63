"""Experiment 03: DataLoader batches 2/2/1, Zoo classifier vs majority class, salary regression vs the mean,
initialisation bound +-0.125, save/load and fine-tuning with a frozen layer, dropout, overfitting, search."""
from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch

from common import data
from conftest import real_data, run_script

SCRIPT = "03_tabular_training"
exp = importlib.import_module(f"experiments.{SCRIPT}")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- functions of the module
@real_data("zoo")
def test_zoo_split_is_stratified_and_disjoint():
    df, _ = data.load_zoo()
    x, y = exp.zoo_tensors(df)
    assert x.shape == (101, 16) and float(x.max()) == 1.0 and int(y.min()) == 0 and int(y.max()) == 6
    tr, va, te = exp.zoo_split(y, seed=0)
    assert (len(tr), len(va), len(te)) == (60, 20, 21)
    assert not (set(tr) & set(va) or set(tr) & set(te) or set(va) & set(te))
    assert torch.bincount(y[tr], minlength=7).min() >= 2  # every type is in the training set
    assert torch.bincount(y[te], minlength=7)[0] == 8 or torch.bincount(y[te], minlength=7)[0] == 9  # 41 mammals / 5
    assert not np.array_equal(exp.zoo_split(y, seed=1)[2], te)


@real_data("ds_salaries")
def test_salary_features_are_one_hot():
    df, _ = data.load_salaries()
    x, y, cols = exp.salary_tensors(df)
    assert x.shape == (3755, exp.SALARY_FEATURES_REAL) and len(cols) == x.shape[1]
    onehot = x[:, :-1]  # every categorical block sums to 1 per row: 6 blocks
    assert torch.equal(onehot.sum(1), torch.full((3755,), 6.0))
    assert set(x[:, -1].unique().tolist()) == {0.0, 0.5, 1.0}  # remote_ratio / 100
    assert float(y.min()) == 5132 and float(y.max()) == 450_000


def test_dropout_zeroes_about_half_in_train_and_none_in_eval(one_thread):
    torch.manual_seed(0)
    m = exp.dropout_check(exp.zoo_big(64, dropout=0.5), torch.rand(200, 16))
    assert 0.45 < m["dropout.train_zeroed_fraction"] < 0.55 and m["dropout.eval_zeroed_fraction"] == 0.0


def test_overfit_detection():
    falling = list(np.linspace(1.0, 0.01, 50))
    rising = {"val_loss": list(np.linspace(1.0, 0.2, 25)) + list(np.linspace(0.2, 0.6, 25)),
              "train_eval_loss": falling, "val_acc": [0.9] * 50, "train_eval_acc": [1.0] * 50}
    r = exp.overfit_detect(rising)
    assert r["detected"] == 1 and r["best_val_epoch"] == 25 and r["val_loss_rise"] == pytest.approx(0.4)
    flat = dict(rising, val_loss=list(np.linspace(1.0, 0.2, 50)))
    assert exp.overfit_detect(flat)["detected"] == 0


def test_defaults_and_smoke_blocks_drive_the_options():
    full, smoke = exp.parse([]), exp.parse(["--smoke"])
    assert all(getattr(full, k) == v for k, v in exp.DEFAULTS.items())
    assert all(getattr(smoke, k) == v for k, v in exp.SMOKE.items() if hasattr(smoke, k))
    assert exp.parse(["--smoke", "--epochs", "5"]).epochs == 5      # an option given on the command line wins
    zoo, salary = exp.benchmark_cases()
    assert zoo["batch_size"] == exp.DEFAULTS["batch_size"] and salary["batch_size"] == exp.DEFAULTS["salary_batch_size"]


def test_benchmark_cases_train_one_step(one_thread):
    cases = exp.benchmark_cases()
    assert [c["name"] for c in cases] == ["03.zoo_classifier", "03.salary_regressor"]
    for c in cases:
        model = c["make_model"]()
        inputs, target = c["make_batch"](c["batch_size"], torch.device("cpu"))
        opt = c["make_optimizer"](model.parameters())
        loss = c["loss_fn"](model(*inputs), target)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss) and len(target) == c["batch_size"]


# ---------------------------------------------------------------- smoke runs on the real data
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Smoke runs on the real data: seed 0 through the command line and again in this process, then seed 1."""
    if {"zoo", "ds_salaries"} & set(data.missing_datasets()):
        pytest.skip("real zoo / ds_salaries data not found under DATA_DIR")
    threads, cli_dir = torch.get_num_threads(), tmp_path_factory.mktemp("r03a")
    out = {"a": (run_script(SCRIPT, "--smoke", "--seed", "0", results_dir=cli_dir)[1], cli_dir)}
    for name, seed in (("b", "0"), ("c", "1")):
        d = tmp_path_factory.mktemp(f"r03{name}")
        assert exp.main(["--smoke", "--seed", seed, "--results-dir", str(d)]) == 0
        out[name] = (json.loads((d / f"{SCRIPT}.json").read_text()), d)
    torch.set_num_threads(threads)  # main() sets --threads (default 1); leave this process as it was
    return out


@real_data("zoo")
@real_data("ds_salaries")
def test_json_has_the_figures(runs):
    rec, d = runs["a"]
    m = rec["metrics"]
    assert rec["status"] == "ok" and rec["headline"] == "zoo.test_accuracy"
    assert rec["data"]["source"] == "real" and rec["data"]["sizes"]["zoo"] == 101
    assert rec["data"]["sizes"]["animal_toy"] == 5
    assert [m["toy.batch1_size"], m["toy.batch2_size"], m["toy.batch3_size"]] == [2, 2, 1]
    assert m["toy.n_batches"] == 3 and m["toy.n_features"] == 7
    assert m["baseline.majority_accuracy"] == pytest.approx(41 / 101, abs=1e-6)  # 40.6%
    assert 0 <= m["zoo.test_accuracy"] <= 1 and 0.35 < m["baseline.majority_test_accuracy"] < 0.5
    assert m["init.default_bound"] == 0.125 and m["init.default_max_abs"] <= 0.125
    assert m["init.default_max_abs"] > 0.12 and m["init.default_within_bound"] == 1
    assert 0 <= m["init.uniform_min"] < 0.01 and 0.99 < m["init.uniform_max"] < 1 and m["init.uniform_in_0_1"] == 1
    assert m["salary.val_mse"] > 0 and m["baseline.salary_mean_val_mse"] > 0.5
    assert m["transfer.loaded_equal"] == 1
    assert m["transfer.frozen_first_layer_unchanged"] == 1 and m["transfer.frozen_other_layers_changed"] == 1
    assert m["transfer.finetune_lr"] == pytest.approx(m["transfer.scratch_lr"] / 10)
    assert 0.4 < m["dropout.train_zeroed_fraction"] < 0.6 and m["dropout.eval_zeroed_fraction"] == 0
    assert m["recipe.single_example_accuracy"] == 1 and m["recipe.single_example_loss"] < exp.SINGLE_EXAMPLE_LOSS
    assert 1 <= m["recipe.single_example_steps"] <= 200
    assert m["search.grid.trials"] == m["search.random.trials"] == 3
    trials = rec["tables"]["search_trials"]["0"]
    assert all(lr in exp.GRID_LR and mom in exp.GRID_MOMENTUM for lr, mom in
               ((t["lr"], t["momentum"]) for t in trials["grid"]))
    assert all(1e-6 <= t["lr"] <= 1e-2 and 0.85 <= t["momentum"] <= 0.99 for t in trials["random"])
    assert all(isinstance(v, (int, float)) for v in m.values())
    assert len(rec["history"]["zoo.val_acc"][0]) == 3  # smoke: 3 epochs
    assert rec["timings"]["train_s"] > 0 and rec["timings"]["train_samples_per_s"] > 0
    for png in ("zoo_classifier.png", "salary_regression_and_transfer.png",
                "overfitting_and_regularisation.png", "search.png"):
        assert (d / SCRIPT / png).stat().st_size > 5000


@real_data("zoo")
@real_data("ds_salaries")
def test_json_records_the_deviations_from_the_course(runs):
    devs = runs["a"][0]["deviations"]
    assert devs == exp.DEVIATIONS and len(devs) >= 10
    assert all(isinstance(d[k], str) and d[k] for d in devs for k in ("what", "course", "here", "why"))
    by_what = {d["what"]: d for d in devs}
    salary, zoo = by_what["salary regression features"], by_what["Zoo classifier data"]
    assert "4 input features" in salary["course"] and f"{exp.SALARY_FEATURES_REAL} one-hot" in salary["here"]
    assert len(runs["a"][0]["salary_feature_columns"]) == exp.SALARY_FEATURES_REAL   # smoke rows keep every column
    assert "7 features, 3 types" in zoo["course"] and "16 features, 7 types" in zoo["here"]
    # each flag is an option that sets the course's value
    flags = {d["what"]: exp.parse(d["flag"].split()) for d in devs if "flag" in d}
    assert flags["salary batch size"].salary_batch_size == 4 and flags["Zoo learning rate"].lr == 0.001


@real_data("zoo")
@real_data("ds_salaries")
def test_same_seed_same_numbers_other_seed_differs(runs):
    a, b, c = runs["a"][0], runs["b"][0], runs["c"][0]
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]
    assert a["per_seed"]["salary.val_mse"] != c["per_seed"]["salary.val_mse"]
    assert a["history"]["zoo.train_loss"] != c["history"]["zoo.train_loss"]


def test_synthetic_stand_in_is_labelled(tmp_path, one_thread):
    assert exp.main(["--smoke", "--synthetic", "--results-dir", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / f"{SCRIPT}.json").read_text())
    assert rec["status"] == "ok" and rec["data"]["source"] == "synthetic"
    assert all(p["source"] == "synthetic" for p in rec["data"]["parts"].values())


def test_huge_learning_rate_diverges_with_exit_3(tmp_path, one_thread):
    code = exp.main(["--smoke", "--synthetic", "--lr", "1e30", "--results-dir", str(tmp_path)])
    rec = json.loads((tmp_path / f"{SCRIPT}.json").read_text())
    assert code == 3 and rec["status"] == "diverged"
    assert rec["diverged"][0]["run"] == "zoo" and rec["diverged"][0]["seed"] == 0


def test_missing_data_is_a_clean_error(tmp_path, capsys, one_thread):
    assert exp.main(["--smoke", "--data-dir", str(tmp_path / "nowhere"), "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nowhere" in err and "Traceback" not in err
