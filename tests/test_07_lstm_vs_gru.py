"""07_lstm_vs_gru: the course's LSTM and GRU (shapes, parameters), the comparison table, smoke runs."""
from __future__ import annotations

import importlib

import pytest
import torch

from conftest import real_data, run_script

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
    ref, _ = net.lstm(x)                 # torch's default initial state is zeros
    assert torch.allclose(net(x), net.fc(ref[:, -1, :]))


def test_benchmark_cases_cover_the_three_models():
    cases = m.benchmark_cases()
    assert [c["name"] for c in cases] == ["07.course_rnn", "07.course_lstm", "07.course_gru"]
    for c in cases:
        (x,), target = c["make_batch"](8, "cpu")
        assert c["loss_fn"](c["make_model"]()(x), target).ndim == 0
        assert c["batch_size"] == m.DEFAULTS["batch_size"]   # the script's settings, not a copy


def test_verdict_wording():
    mean = {"gru.test_mse": 0.030, "lstm.test_mse": 0.031, "gru.params": 9729, "lstm.params": 12961}
    timings = {"gru.train_windows_per_s": 2000, "lstm.train_windows_per_s": 1500}
    assert m.verdict(mean, {}, timings).startswith("AGREES")
    mean["gru.test_mse"] = 0.040
    assert m.verdict(mean, {"gru.test_mse": 0.001, "lstm.test_mse": 0.001}, timings).startswith("DISAGREES")


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    runs = []
    for i in range(2):
        d = tmp_path_factory.mktemp(f"r{i}")
        _, res = run_script(SCRIPT, "--smoke", "--seeds", "2", results_dir=d)
        runs.append((d, res))
    return runs


@pytest.mark.slow
@real_data("electricity")
def test_smoke_real_table_plots_and_reproducibility(smoke_runs):
    (d, r), (_, r2) = smoke_runs
    assert r["status"] == "ok" and r["data"]["source"] == "real" and r["seeds"] == [0, 1]
    mt = r["metrics"]
    for name in ("rnn", "lstm", "gru"):
        for k in ("test_mse", "mse_vs_persistence", "params"):
            assert isinstance(mt[f"{name}.{k}"], float) and mt[f"{name}.{k}"] > 0, (name, k)
            assert f"{name}.{k}" in r["std"] and len(r["per_seed"][f"{name}.{k}"]) == 2
        for k in ("train_s", "train_windows_per_s"):   # timings, not metrics: they vary run to run
            assert r["timings"][f"{name}.{k}"] > 0 and len(r["timings"]["per_seed"][f"{name}.{k}"]) == 2
    assert (mt["rnn.params"], mt["lstm.params"], mt["gru.params"]) == (3265, 12961, 9729)
    for k in ("baseline.persistence_mse", "baseline.seasonal_naive_mse", "baseline.train_mean_mse",
              "gru_vs_lstm.mse_ratio"):
        assert mt[k] > 0, k
    assert [row["model"] for row in r["table"]] == ["rnn", "lstm", "gru"]
    assert r["conclusion"].split()[0] in ("AGREES", "DISAGREES")
    for png in ("test_mse.png", "train_loss.png", "test_week.png"):
        assert (d / SCRIPT / png).stat().st_size > 0
    assert r["metrics"] == r2["metrics"] and r["history"] == r2["history"]
    for name in ("rnn", "lstm", "gru"):
        a, b = r["per_seed"][f"{name}.test_mse"]
        assert a != b


@pytest.mark.slow
def test_smoke_synthetic(results_dir):
    _, r = run_script(SCRIPT, "--smoke", "--synthetic", "--seeds", "1", results_dir=results_dir)
    assert r["data"]["source"] == "synthetic" and r["status"] == "ok"
    assert {"rnn.test_mse", "lstm.test_mse", "gru.test_mse"} <= set(r["metrics"])
