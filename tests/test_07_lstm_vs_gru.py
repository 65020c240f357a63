"""07_lstm_vs_gru: the course's LSTM and GRU (shapes, parameters), the test windows read once per model, the
comparison table, the epochs chosen on validation, smoke runs."""
from __future__ import annotations

import argparse
import importlib
import statistics

import pytest
import torch

from common import schema
from conftest import check_deviations, real_data, run_script, smoke_fixture
from experiments import electricity

m = importlib.import_module("experiments.07_lstm_vs_gru")
SCRIPT = "07_lstm_vs_gru"


@pytest.mark.parametrize("name,params", [("rnn", 3265), ("lstm", 12961), ("gru", 9729)])
def test_models_output_shapes_and_parameters(name, params):
    torch.manual_seed(0)
    net = m.MODELS[name]()
    x = torch.randn(7, 96).view(7, 96, 1)
    out = net(x)
    assert out.shape == (7, 1) and out.squeeze(1).shape == (7,)
    assert sum(p.numel() for p in net.parameters()) == params   # 1/4/3 gate blocks of (32+1024+64) & (2048+64), + 33
    layer = next(mod for mod in net.modules() if isinstance(mod, torch.nn.RNNBase))
    assert (layer.input_size, layer.hidden_size, layer.num_layers, layer.batch_first) == (1, 32, 2, True)


def test_lstm_starts_from_zero_h0_and_c0():
    net = m.CourseLSTM()
    x = torch.randn(3, 96, 1)
    ref, _ = net.rnn(x)                  # torch's default initial state is zeros
    assert torch.allclose(net(x), net.fc(ref[:, -1, :]))


def test_benchmark_cases_cover_the_three_models():
    cases = m.benchmark_cases()
    assert [c["name"] for c in cases] == ["07.course_rnn", "07.course_lstm", "07.course_gru"]
    for c in cases:
        (x,), target = c["make_batch"](8, "cpu")
        assert c["loss_fn"](c["make_model"]()(x), target).ndim == 0
        assert c["batch_size"] == m.DEFAULTS["batch_size"]   # the script's settings, not a copy


def test_verdict_judges_accuracy_and_cost_separately():
    # the reference run's shape: MSE within the seeds' spread, fewer parameters, but slower training
    mean = {"gru.test_mse": 0.0396, "lstm.test_mse": 0.0395, "gru.params": 9729, "lstm.params": 12961}
    std = {"gru.test_mse": 0.0010, "lstm.test_mse": 0.0008}
    timings = {"gru.train_windows_per_s": 3390, "lstm.train_windows_per_s": 5735,
               "std": {"gru.train_windows_per_s": 100, "lstm.train_windows_per_s": 200}}
    v = m.verdict(mean, std, timings)
    assert (v["accuracy"]["finding"], v["accuracy"]["with_course"]) == ("within noise", "agrees")
    assert v["accuracy"]["difference"] == pytest.approx(0.0001) and v["accuracy"]["spread"] == 0.0010
    assert (v["params"]["finding"], v["params"]["with_course"]) == ("GRU fewer", "agrees")
    assert (v["throughput"]["finding"], v["throughput"]["with_course"]) == ("GRU slower", "disagrees")
    assert v["throughput"]["ratio"] == pytest.approx(3390 / 5735)
    assert [line.split(":")[0] for line in v["summary"]] == ["accuracy, test MSE (mean ± std over seeds)",
                                                             "cost, parameters", "cost, training throughput (windows/s, mean ± std over seeds)"]
    assert "DISAGREES" in v["summary"][2] and "AGREES" in v["summary"][0]


@pytest.mark.parametrize("gru_mse,gru_std,finding,with_course", [
    (0.030, 0.0001, "GRU lower", "agrees"), (0.040, 0.0001, "GRU higher", "disagrees"),
    (0.040, 0.0200, "within noise", "agrees"), (0.031, 0.0, "within noise", "agrees")])
def test_verdict_accuracy_within_noise_is_below_the_seeds_spread(gru_mse, gru_std, finding, with_course):
    mean = {"gru.test_mse": gru_mse, "lstm.test_mse": 0.031, "gru.params": 9729, "lstm.params": 12961}
    timings = {"gru.train_windows_per_s": 100.0, "lstm.train_windows_per_s": 100.0}   # no std: one seed
    v = m.verdict(mean, {"gru.test_mse": gru_std, "lstm.test_mse": 0.0}, timings)
    assert (v["accuracy"]["finding"], v["accuracy"]["with_course"]) == (finding, with_course)
    assert (v["throughput"]["finding"], v["throughput"]["with_course"]) == ("within noise", "not shown")


def test_verdict_without_a_model():
    v = m.verdict({"lstm.test_mse": 0.03, "gru.test_mse": None}, {}, {})
    assert v["accuracy"] is None and v["throughput"] is None and v["summary"][0].startswith("not judged")


def test_each_model_reads_the_test_windows_once_after_its_validation_epochs(monkeypatch):
    prep = electricity.prepare(None, synthetic=True, device="cpu", subset=(256, 128, 128))
    calls, evaluate = [], electricity.evaluate
    test_ptr = prep["test_batches"].X.data_ptr()

    def counted(model, loader, device):
        calls.append((type(model).__name__, "test" if loader.X.data_ptr() == test_ptr else "val"))
        return evaluate(model, loader, device)

    monkeypatch.setattr(electricity, "evaluate", counted)
    out = electricity.run_seed(1, m.MODELS, prep, argparse.Namespace(max_epochs=2, batch_size=128, lr=1e-3), "cpu",
                               max_batches=1)
    assert calls == [(cls.__name__, part) for cls in m.MODELS.values() for part in ("val", "val", "test")]
    assert all(out["metrics"][f"{name}.epochs"] in (1, 2) for name in m.MODELS)


runs = smoke_fixture(SCRIPT, {"seed0": ["--seeds", "2"], "seed0_again": ["--seeds", "2"]})


@pytest.mark.slow
@real_data("electricity")
def test_smoke_real_table_plots_and_reproducibility(runs):
    (r, d), (r2, _) = runs["seed0"], runs["seed0_again"]
    mt = r["metrics"]
    for name in ("rnn", "lstm", "gru"):
        for k in ("test_mse", "mse_vs_persistence", "params"):
            assert isinstance(mt[f"{name}.{k}"], float) and mt[f"{name}.{k}"] > 0, (name, k)
            assert f"{name}.{k}" in r["std"] and len(r["per_seed"][f"{name}.{k}"]) == 2
        for k in ("train_s", "train_windows_per_s"):   # timings, not metrics: they vary run to run
            assert r["timings"][f"{name}.{k}"] > 0 and len(r["timings"]["per_seed"][f"{name}.{k}"]) == 2
    assert r["status"] == "ok" and r["data"]["source"] == "real" and r["seeds"] == [0, 1]
    assert (mt["rnn.params"], mt["lstm.params"], mt["gru.params"]) == (3265, 12961, 9729)
    for k in ("baseline.persistence_mse", "baseline.seasonal_naive_mse", "baseline.train_mean_mse",
              "gru_vs_lstm.mse_ratio"):
        assert mt[k] > 0, k
    assert [row["model"] for row in r["table"]] == ["rnn", "lstm", "gru"]
    sel = r["selection"]   # every model's epoch, per seed, chosen on the validation windows only
    assert schema.check_selection(sel) is sel and set(sel["chosen"]) == {"rnn.epochs", "lstm.epochs", "gru.epochs"}
    for row in r["table"]:
        name, chosen = row["model"], sel["chosen"][f"{row['model']}.epochs"]
        assert row["epochs"] == chosen and set(chosen) <= set(sel["candidates"][f"{name}.epochs"]) == {1, 2}
        assert chosen == [min((1, 2), key=lambda e: r["history"][f"{name}.val_mse.seed{s}"][e - 1]) for s in (0, 1)]
    for png in ("test_mse.png", "train_loss.png", "test_week.png"):
        assert (d / SCRIPT / png).stat().st_size > 0
    assert r["metrics"] == r2["metrics"] and r["history"] == r2["history"]
    for name in ("rnn", "lstm", "gru"):
        a, b = r["per_seed"][f"{name}.test_mse"]
        assert a != b


def expected_finding(gru_values, lstm_values, better: str, worse: str, lower_is_better: bool) -> str:
    """The verdict's rule, recomputed from per-seed values: within noise if |difference| <= the larger std."""
    diff = statistics.mean(gru_values) - statistics.mean(lstm_values)
    if abs(diff) <= max(statistics.stdev(gru_values), statistics.stdev(lstm_values)):
        return "within noise"
    return f"GRU {better if (diff < 0) == lower_is_better else worse}"


@pytest.mark.slow
@real_data("electricity")
def test_smoke_verdict_follows_the_figures_in_the_json(runs):
    r = runs["seed0"][0]
    v, mt, ps, t = r["verdict"], r["metrics"], r["per_seed"], r["timings"]
    acc, thr, par = v["accuracy"], v["throughput"], v["params"]
    # accuracy: the test MSE figures of the same JSON, and the finding they imply
    assert (acc["gru"], acc["lstm"]) == (mt["gru.test_mse"], mt["lstm.test_mse"])
    assert (acc["gru_std"], acc["lstm_std"]) == (r["std"]["gru.test_mse"], r["std"]["lstm.test_mse"])
    assert acc["gru_std"] == pytest.approx(statistics.stdev(ps["gru.test_mse"]))
    assert acc["finding"] == expected_finding(ps["gru.test_mse"], ps["lstm.test_mse"], "lower", "higher", True)
    assert acc["with_course"] == ("disagrees" if acc["finding"] == "GRU higher" else "agrees")
    # cost: the parameter counts, and the measured throughput per seed
    assert (par["gru"], par["lstm"], par["finding"], par["with_course"]) == (9729, 12961, "GRU fewer", "agrees")
    g, l = t["per_seed"]["gru.train_windows_per_s"], t["per_seed"]["lstm.train_windows_per_s"]
    assert (thr["gru"], thr["lstm"]) == pytest.approx((statistics.mean(g), statistics.mean(l)))
    assert thr["finding"] == expected_finding(g, l, "faster", "slower", False)
    assert thr["with_course"] == {"GRU faster": "agrees", "GRU slower": "disagrees",
                                  "within noise": "not shown"}[thr["finding"]]
    for line, j in zip(v["summary"], (acc, par, thr), strict=True):   # the printed lines say the same
        assert f"{j['finding']} -> {j['with_course'].upper()} with the course" in line


@pytest.mark.slow
@real_data("electricity")
def test_smoke_records_06s_deviations(runs):
    """07 runs 06's pipeline with 06's settings: it records 06's entries (test_06 names them), not a copy."""
    assert m.DEVIATIONS is electricity.DEVIATIONS
    flags = check_deviations(runs["seed0"][0], [d["what"] for d in electricity.DEVIATIONS], m.parse)
    course, config = flags["training batch size and learning rate"], runs["seed0"][0]["config"]
    assert (course.batch_size, course.lr) == (32, 1e-3) != (config["batch_size"], config["lr"])


@pytest.mark.slow
def test_smoke_synthetic(results_dir):
    _, r = run_script(SCRIPT, "--smoke", "--synthetic", "--seeds", "1", results_dir=results_dir)
    assert r["data"]["source"] == "synthetic" and r["status"] == "ok"
    assert {"rnn.test_mse", "lstm.test_mse", "gru.test_mse"} <= set(r["metrics"])


def test_verdict_from_one_seed_does_not_judge_accuracy_or_throughput():
    """With one seed there is no spread: accuracy and throughput are 'not judged', the parameters still are,
    and no summary line claims AGREES or DISAGREES for the two."""
    mean = {"gru.test_mse": 0.030, "lstm.test_mse": 0.040, "gru.params": 9729, "lstm.params": 12961}
    timings = {"gru.train_windows_per_s": 3000.0, "lstm.train_windows_per_s": 5000.0,
               "std": {"gru.train_windows_per_s": 0.0, "lstm.train_windows_per_s": 0.0}}
    v = m.verdict(mean, {"gru.test_mse": 0.0, "lstm.test_mse": 0.0}, timings, n_seeds=1)
    assert v["accuracy"]["finding"] == "GRU lower (one seed: no spread to judge noise by)"
    assert v["throughput"]["finding"] == "GRU slower (one seed: no spread to judge noise by)"
    assert v["accuracy"]["with_course"] == v["throughput"]["with_course"] == m.NOT_JUDGED
    assert (v["params"]["finding"], v["params"]["with_course"]) == ("GRU fewer", "agrees")
    for line in (v["summary"][0], v["summary"][2]):
        assert "AGREES" not in line and m.NOT_JUDGED in line
    assert "AGREES" in v["summary"][1]
    two = m.verdict(mean, {"gru.test_mse": 0.0, "lstm.test_mse": 0.0}, timings, n_seeds=2)
    assert (two["accuracy"]["finding"], two["accuracy"]["with_course"]) == ("GRU lower", "agrees")


def test_judge_uses_the_suites_noise_rule():
    """judge's finding is schema.compare_means's: a difference within its float tolerance is noise."""
    j = m.judge(0.0300004, 0.0300000, 0.0, 0.0, lower_is_better=True, words=("lower", "higher"), course="c",
                within_noise="agrees", n_seeds=3)
    assert schema.compare_means(0.0300004, 0.0, 0.0300000, 0.0, 3) == "within noise" == j["finding"]
    assert j["with_course"] == "agrees"


def test_ablation_writes_one_record_per_model_and_reads_no_test_window(monkeypatch, tmp_path):
    """--ablation trains the LSTM and the GRU (not the RNN: 06's record is its) with every (batch, lr) of
    electricity.ABLATION on the training windows, reads the validation windows only, and writes one record per model
    whose choice follows the shared rule; the experiment's own result is not written."""
    from common import results

    calls, evaluate = [], electricity.evaluate

    def counted(model, loader, device):
        calls.append((type(model).__name__, loader.X.shape[0]))
        return evaluate(model, loader, device)
    monkeypatch.setattr(electricity, "evaluate", counted)
    rc = m.main(["--ablation", "--smoke", "--synthetic", "--seeds", "2", "--results-dir", str(tmp_path),
                 "--workers", "1"])
    assert rc == 0 and not (tmp_path / f"{SCRIPT}.json").exists()
    n = len(electricity.ABLATION) * 2 * 2                    # candidates x 2 seeds x 2 epochs (--smoke)
    assert calls == [("CourseLSTM", m.SMOKE["val_windows"])] * n + [("CourseGRU", m.SMOKE["val_windows"])] * n
    assert sorted(p.name for p in (tmp_path / "ablation").iterdir()) == [f"{SCRIPT}.gru.ablation.json",
                                                                         f"{SCRIPT}.lstm.ablation.json"]
    names = list(electricity.ABLATION)
    for model in ("lstm", "gru"):
        r = schema.read_result(tmp_path / "ablation" / f"{SCRIPT}.{model}.ablation.json")
        sel = r["selection"]
        assert r["experiment"] == f"{SCRIPT}.{model}.ablation" and r["model"] == model
        assert sel["candidates"] == {c: list(s) for c, s in electricity.ABLATION.items()}
        assert all(len(sel["scores"][c]) == 2 for c in names) and "no model reads a test" in sel["validation"]["method"]
        chosen = results.choose_candidate(r["targets"], {c: r["metrics"][f"{c}.best"] for c in names},
                                          higher_is_better=False, spread={c: r["std"][f"{c}.best"] for c in names},
                                          cost={c: r["timings"][f"{c}.train_s"] for c in names})
        assert sel["chosen"] == {"batch_size, lr": list(electricity.ABLATION[chosen]), "candidate": chosen}
