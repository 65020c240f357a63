"""Experiment 03: DataLoader batches 2/2/1, Zoo classifier (epochs and lr by cross-validation on the non-test animals)
vs majority class, salary regression vs the mean, initialisation bound +-0.125, save/load and fine-tuning with a
frozen layer, dropout, overfitting, search; the test animals are read only by the final models."""
from __future__ import annotations

import importlib
import inspect
import json

import numpy as np
import pytest
import torch

from common import data, schema
from conftest import check_deviations, real_data, run_script
from experiments import tabular

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
    x, y = tabular.zoo_tensors(df)
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
    x, y, cols = tabular.salary_tensors(df)
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


def _fake_training(val_acc: dict):
    """A stand-in for ``train``: cross-validation runs get the validation accuracy curve ``val_acc[lr]`` (or
    ``val_acc[lr, width, batch]``), the final run an untrained model; every call is recorded."""
    calls = []

    def train(make, x, y, rows, val_rows, lr, momentum, epochs, batch_size, seed, clock, run, **kw):
        model = make()
        width = model[0].out_features
        calls.append({"rows": rows, "val_rows": val_rows, "lr": lr, "width": width, "batch_size": batch_size,
                      "epochs": epochs, "run": run})
        curve = val_acc.get(lr, val_acc.get((lr, width, batch_size)))[:epochs]
        return model, {"val_acc": curve, "val_loss": [1.0 - a for a in curve], "train_loss": [0.5] * epochs,
                       "train_acc": [0.9] * epochs}
    return train, calls


ONE_WIDTH_AND_BATCH, TWO_EACH = ["--widths", "32", "--batch-sizes", "8"], ["--widths", "32", "16", "--batch-sizes", "8",
                                                                            "16", "--lrs", "0.01"]
FLAT = {(0.01, w, b): [0.9] * 20 for w in (32, 16) for b in (8, 16)}


@pytest.mark.parametrize("options, val_acc, chosen", [
    # all tied: the fewest epochs, then the course's lr
    (ONE_WIDTH_AND_BATCH, {0.01: [0.9] * 20, 0.001: [0.9] * 20}, (0.001, 32, 8, 2)),
    (ONE_WIDTH_AND_BATCH, {0.01: [0.5] * 5 + [0.95] * 15, 0.001: [0.9] * 20}, (0.01, 32, 8, 6)),   # the first best
    (ONE_WIDTH_AND_BATCH, {0.01: [0.5] * 20, 0.001: [0.6] * 9 + [0.7] + [0.6] * 10}, (0.001, 32, 8, 10)),
    (TWO_EACH, FLAT, (0.01, 16, 16, 2)),       # all tied: the fewest epochs, then narrower, then the larger batch
    (TWO_EACH, FLAT | {(0.01, 32, 8): [0.9] * 3 + [0.95] * 17}, (0.01, 32, 8, 4)),   # the best, wherever it is
])
def test_cross_validation_chooses_on_mean_validation_accuracy_and_retrains_on_all(monkeypatch, options, val_acc,
                                                                                  chosen):
    fake, calls = _fake_training(val_acc)
    monkeypatch.setattr(exp, "train", fake)
    torch.manual_seed(0)
    y = torch.arange(50) % 5                       # 5 classes of 10
    x = torch.rand(50, len(exp.ZOO_FEATURES))
    split = exp.zoo_split(y, seed=3)
    args = exp.parse(["--epochs", "20", *options])
    m, curves, table = exp.zoo_classification(x, y, split, args, 3, exp.Clock("cpu"))
    assert (m["zoo.lr"], m["zoo.width"], m["zoo.batch_size"], m["zoo.epochs"]) == chosen
    assert table["epochs"] == list(range(2, 21, 2))
    curve = val_acc.get(chosen[0], val_acc.get(chosen[:3]))
    assert m["zoo.cv_val_accuracy"] == pytest.approx(curve[chosen[3] - 1])
    cv, final = calls[:-1], calls[-1]
    configs = len(args.lrs) * len(args.widths) * len(args.batch_sizes)
    assert len(cv) == configs * exp.CV_FOLDS and all(c["run"] == "zoo.cv" and c["epochs"] == 20 for c in cv)
    assert (final["run"], final["lr"], final["width"], final["batch_size"], final["epochs"], final["val_rows"]) == (
        "zoo", *chosen, None)
    pool, te = np.sort(np.concatenate(split[:2])), split[2]
    assert np.array_equal(final["rows"], pool) and len(pool) == 40 and len(te) == 10
    for c in cv:   # each fold: training and validation animals partition the non-test animals
        assert not set(c["rows"]) & set(c["val_rows"]) and np.array_equal(np.union1d(c["rows"], c["val_rows"]), pool)
    assert np.array_equal(np.sort(np.concatenate([c["val_rows"] for c in cv[:exp.CV_FOLDS]])), pool)
    assert table["sizes"] == {"train+validation": 40, "validation": [8] * 5, "test": 10}
    assert len(table["scores"]) == 10 * configs
    assert curves["zoo.cv_val_acc.lr0.01.w32.b8"] == pytest.approx(val_acc.get(0.01, val_acc.get((0.01, 32, 8))))


def test_search_records_the_chosen_trial_not_the_first_to_reach_its_accuracy():
    """A later trial that ties on validation accuracy and wins on loss is the best one: its number is recorded."""
    scores = [(0.5, 1.0), (0.8, 0.9), (0.7, 0.1), (0.8, 0.4), (0.8, 0.4), (0.8, 0.6)]   # (val_acc, val_loss)
    trials = [(i, 0.9) for i in range(len(scores))]   # (lr, momentum): lr = the trial's position

    def run_trial(lr, mom):
        acc, loss = scores[lr]
        return {"lr": lr, "momentum": mom, "val_acc": acc, "val_loss": loss}, f"model {lr}"
    rows, best_so_far, best, model, trial = exp.run_search(trials, run_trial)
    assert [r["lr"] for r in rows] == list(range(6)) and best_so_far == [0.5, 0.8, 0.8, 0.8, 0.8, 0.8]
    assert (best["lr"], model, trial) == (3, "model 3", 4)   # not trial 2 (first at 0.8), nor 5 (an exact tie)
    assert exp.run_search([], run_trial) == ([], [], None, None, 0)


# ---------------------------------------------------------------- smoke runs on the real data
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Smoke runs on the real data: seed 0 through the command line and again in this process (recording every
    training run's animals and every evaluation), then seed 1."""
    if {"zoo", "ds_salaries"} & set(data.missing_datasets()):
        pytest.skip("real zoo / ds_salaries data not found under DATA_DIR")
    threads, cli_dir = torch.get_num_threads(), tmp_path_factory.mktemp("r03a")
    out = {"a": (run_script(SCRIPT, "--smoke", "--seed", "0", results_dir=cli_dir)[1], cli_dir)}
    trained, evaluated = [], []
    train, evaluate, signature = exp.train, exp.evaluate, inspect.signature(exp.train)

    def recording_train(*a, **kw):
        named = signature.bind(*a, **kw).arguments
        trained.append((named["seed"], named["run"], named["rows"], named["val_rows"]))
        return train(*a, **kw)

    def recording_evaluate(model, x, y, *a, **kw):
        evaluated.append((x.detach().clone(), y.detach().clone()))
        return evaluate(model, x, y, *a, **kw)

    for name, seed in (("b", "0"), ("c", "1")):
        d = tmp_path_factory.mktemp(f"r03{name}")
        with pytest.MonkeyPatch.context() as mp:
            if name == "b":
                mp.setattr(exp, "train", recording_train)
                mp.setattr(exp, "evaluate", recording_evaluate)
                mp.setattr(tabular, "evaluate", recording_evaluate)   # fit's evaluations
            # --workers 1: the seeds run in this process, where the recording functions are
            assert exp.main(["--smoke", "--seed", seed, "--workers", "1", "--results-dir", str(d)]) == 0
        out[name] = (json.loads((d / f"{SCRIPT}.json").read_text()), d)
    out["trained"], out["evaluated"] = trained, evaluated
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
    assert all("test_acc" not in t for t in trials["grid"] + trials["random"])   # only the best trial is tested
    assert all(isinstance(v, (int, float)) for v in m.values())
    assert len(rec["history"]["zoo.cv_val_acc.lr0.01.w32.b8"][0]) == 3  # smoke: 3 epochs, validated every epoch
    assert [len(h) for h in rec["history"]["zoo.train_loss"]] == rec["per_seed"]["zoo.epochs"]   # the chosen epochs
    assert rec["timings"]["train_s"] > 0 and rec["timings"]["train_samples_per_s"] > 0
    for png in ("zoo_classifier.png", "salary_regression_and_transfer.png",
                "overfitting_and_regularisation.png", "search.png"):
        assert (d / SCRIPT / png).stat().st_size > 5000


@real_data("zoo")
@real_data("ds_salaries")
def test_json_records_the_deviations_from_the_course(runs):
    devs = runs["a"][0]["deviations"]
    assert devs == exp.DEVIATIONS and len(devs) >= 10
    # each entry's strings, and each flag an option of the script (parsed to what it sets)
    flags = check_deviations(runs["a"][0], [
        "Zoo classifier data", "Zoo 'legs' feature", "Zoo epochs, learning rate, width and batch",
        "salary regression features", "salary target", "salary batch size", "salary splits", "training batches",
        "validation loss and accuracy", "transfer task B", "saving and loading", "frozen layer", "grid search order"],
        exp.parse)
    by_what = {d["what"]: d for d in devs}
    salary, zoo = by_what["salary regression features"], by_what["Zoo classifier data"]
    assert "4 input features" in salary["course"] and f"{exp.SALARY_FEATURES_REAL} one-hot" in salary["here"]
    assert len(runs["a"][0]["salary_feature_columns"]) == exp.SALARY_FEATURES_REAL   # smoke rows keep every column
    assert "7 features, 3 types" in zoo["course"] and "16 features, 7 types" in zoo["here"]
    # each flag sets the course's value
    course_lr = flags["Zoo epochs, learning rate, width and batch"]
    assert flags["salary batch size"].salary_batch_size == 4 and course_lr.lr == 0.001 and course_lr.lrs == [0.001]


@real_data("zoo")
@real_data("ds_salaries")
def test_selection_is_recorded_and_chosen_among_the_candidates(runs):
    rec = runs["a"][0]
    sel, m = rec["selection"], {k: v[0] for k, v in rec["per_seed"].items()}   # seed 0's figures
    assert schema.check_selection(sel) and {"scores", "fixed"} <= set(sel)
    assert sel["candidates"]["zoo.epochs"] == [1, 2, 3] and sel["candidates"]["zoo.lr"] == [0.01, 0.001]
    assert sel["candidates"]["zoo.width"] == [32, 16, 64] and sel["candidates"]["zoo.batch_size"] == [8, 16]
    keys = ("zoo.epochs", "zoo.lr", "zoo.width", "zoo.batch_size")
    assert all(sel["chosen"][k]["0"] in sel["candidates"][k] and sel["chosen"][k]["0"] == m[k] for k in keys)
    assert sel["chosen"]["search.grid.lr"]["0"] in exp.GRID_LR
    assert sel["chosen"]["search.grid.momentum"]["0"] in exp.GRID_MOMENTUM
    scores = sel["scores"]["zoo.cv_val_accuracy"]["0"]
    assert len(scores) == 3 * 2 * 3 * 2 and max(scores.values()) == pytest.approx(m["zoo.cv_val_accuracy"])
    chosen = f"lr {m['zoo.lr']:g}, width {int(m['zoo.width'])}, batch {int(m['zoo.batch_size'])}, " \
             f"{int(m['zoo.epochs'])} epochs"
    assert scores[chosen] == max(scores.values())
    # 101 animals: 21 test, the other 80 in 5 folds of 16
    assert sel["validation"]["folds"] == 5 and sel["validation"]["sizes"] == {
        "train+validation": 80, "validation": [16] * 5, "test": 21}
    assert "salary" in sel["fixed"] and "no test split" in sel["fixed"]["salary"]
    assert "ties" in sel["criterion"] and "retrained" in sel["final_model"]


@real_data("zoo")
@real_data("ds_salaries")
def test_the_test_animals_are_read_only_by_the_final_models(runs):
    """No training or validation run sees a test animal; each seed's test tensors are evaluated 6 times: by the final
    classifier, the 3 fixed overfitting/regularisation models and the best trial of each search."""
    x, y = tabular.zoo_tensors(data.load_zoo()[0])
    for seed in (0, 1):   # the smoke run's two seeds
        tr, va, te = exp.zoo_split(y, seed=seed)
        pool = np.sort(np.concatenate([tr, va]))
        every = {run for s, run, _, _ in runs["trained"] if s == seed}
        assert every == {"zoo.cv", "zoo", "overfit.plain", "overfit.dropout", "overfit.weight_decay", "search.grid",
                         "search.random", "salary", "transfer.pretrain"}
        trained = [t[1:] for t in runs["trained"] if t[0] == seed and not t[1].startswith(("salary", "transfer"))]
        for run, rows, val_rows in trained:
            seen = set(rows) | set(val_rows if val_rows is not None else [])
            assert not seen & set(te) and seen <= set(pool), run
        cv = [(rows, val_rows) for run, rows, val_rows in trained if run == "zoo.cv"]
        assert len(cv) == 2 * 3 * 2 * exp.CV_FOLDS   # lrs x widths x batch sizes x folds
        assert all(len(v) == 16 and len(r) == 64 for r, v in cv)
        assert np.array_equal(np.sort(np.concatenate([v for _, v in cv[:exp.CV_FOLDS]])), pool)
        assert [rows.tolist() for run, rows, _ in trained if run == "zoo"] == [pool.tolist()]
        on_test = [xe for xe, ye in runs["evaluated"] if xe.shape == x[te].shape and torch.equal(xe, x[te])
                   and torch.equal(ye, y[te])]
        assert len(on_test) == 6
    assert runs["b"][0]["metrics"] == runs["a"][0]["metrics"]   # the recording changed nothing


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
    code = exp.main(["--smoke", "--synthetic", "--lrs", "1e30", "--results-dir", str(tmp_path)])
    rec = json.loads((tmp_path / f"{SCRIPT}.json").read_text())
    assert code == 3 and rec["status"] == "diverged" and rec["selection"] is None
    assert rec["diverged"][0]["run"] == "zoo.cv" and rec["diverged"][0]["seed"] == 0


def test_missing_data_is_a_clean_error(tmp_path, capsys, one_thread):
    assert exp.main(["--smoke", "--data-dir", str(tmp_path / "nowhere"), "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nowhere" in err and "Traceback" not in err
