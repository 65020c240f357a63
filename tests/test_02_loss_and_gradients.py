"""Experiment 02: one-hot and cross-entropy, backward and SGD, learning rate and momentum, vanishing gradients."""
from __future__ import annotations

import argparse
import importlib

import pytest
import torch

from conftest import check_deviations, check_seeds, smoke_fixture

SCRIPT = "02_loss_and_gradients"
exp = importlib.import_module(f"experiments.{SCRIPT}")


# ---------------------------------------------------------------- functions of the module
def test_sgd_trajectories_match_the_closed_form():
    xs = exp.sgd_trajectory(exp.u_shaped, -2.0, 0.1, 0.0, 10)
    assert xs[-1] == pytest.approx(-2.0 * 0.8 ** 10)  # x <- x - lr * 2x
    xs = exp.sgd_trajectory(exp.u_shaped, -2.0, 1.0, 0.0, 3)
    assert xs == [-2.0, 2.0, -2.0, 2.0]  # too high: bounces from side to side


def test_deep_sigmoid_gradients_vanish_at_depth_20():
    torch.manual_seed(0)
    args = argparse.Namespace(depth=20, width=64, batch_size=64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest (as the script's default --threads 1)
    try:
        m, norms = exp.vanishing_gradients(args, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    assert len(norms["sigmoid"]) == 21
    assert m["vanishing.sigmoid.first_last_ratio"] < 1e-12
    assert m["vanishing.relu_kaiming.first_last_ratio"] > 1e-2
    assert m["vanishing.sigmoid.first_last_ratio"] < 1e-6 * m["vanishing.relu.first_last_ratio"]
    assert m["vanishing.sigmoid.first_last_ratio"] < 1e-6 * m["vanishing.leaky_relu.first_last_ratio"]


# ---------------------------------------------------------------- smoke runs (no dataset is read)
runs = smoke_fixture(SCRIPT, {"seed0": ["--seeds", "1", "--seed", "0"], "seed0_again": ["--seeds", "1", "--seed", "0"],
                              "seed1": ["--seeds", "1", "--seed", "1"], "synthetic": ["--seeds", "1", "--synthetic"]},
                     in_process=exp)   # the first as a subprocess (the command line end to end)


def test_deviations_are_recorded(runs):
    rec = runs["seed0"][0]
    whats = ["the functions of the SGD demos", "learning rates and start of the SGD demos"]
    check_deviations(rec, whats, exp.parse)
    assert rec["deviations"] == exp.DEVIATIONS
    # what the entries say is what the run did: these rates, and the minima of the non-convex function
    m = rec["metrics"]
    assert (m["lr.good.lr"], m["lr.small.lr"], m["lr.high.lr"]) == pytest.approx((0.2, 0.02, 1.0))
    assert rec["history"]["lr_trajectories"]["good"]["x"][0] == -2.0 == rec["functions"]["start"]
    assert m["momentum.local_min_x"] == pytest.approx(-0.93, abs=0.01)
    assert m["momentum.global_min_x"] == pytest.approx(1.06, abs=0.01)


def test_json_has_the_figures(runs):
    rec, d = runs["seed0"]
    m = rec["metrics"]
    assert rec["status"] == "ok"
    assert m["onehot.manual_equals_F"] == 1 and m["onehot.num_classes"] == 3
    assert m["loss.ce_onehot"] == pytest.approx(9.8222, abs=1e-4)
    assert m["loss.ce_index"] == pytest.approx(m["loss.ce_onehot"], abs=1e-12) and m["loss.ce_equal"] == 1
    assert m["loss.ce_correct_class"] < 0.05
    assert m["backward.grads_none_before"] == 1 and m["backward.layers_with_grad"] == 3
    assert m["sgd.manual_equals_optim"] == 1 and m["sgd.max_abs_diff"] == 0.0
    # learning rate: good lr close to the minimum, 10x smaller still far, too high bounces
    assert abs(m["lr.good.final_x"]) < 0.05 and m["lr.good.sign_changes"] == 0
    assert m["lr.small.final_x"] < -1.0 and m["lr.small.lr"] == pytest.approx(m["lr.good.lr"] / 10)
    assert m["lr.high.sign_changes"] == 10 and abs(m["lr.high.final_x"]) >= 2.0 - 1e-9
    # momentum: 0 stuck in the local minimum, 0.9 reaches the global one (near x = 1)
    assert m["momentum.m0.stuck_in_local"] == 1 and m["momentum.m0.reached_global"] == 0
    assert m["momentum.m09.reached_global"] == 1 and m["momentum.m09.final_x"] == pytest.approx(1.06, abs=0.05)
    assert m["momentum.local_min_x"] == pytest.approx(-0.93, abs=0.01)
    assert m["momentum.m09.final_f"] < m["momentum.m0.final_f"] - 0.9
    assert m["vanishing.sigmoid.first_last_ratio"] < m["vanishing.relu_kaiming.first_last_ratio"]
    assert all(isinstance(v, (int, float)) for v in m.values())
    assert len(rec["history"]["momentum_trajectories"]["m0"]["x"]) == 101
    for png in ("lr_and_momentum.png", "vanishing_gradients.png"):
        assert (d / SCRIPT / png).stat().st_size > 5000


def test_same_seed_same_numbers_other_seed_differs(runs):
    check_seeds(runs, "vanishing.sigmoid.first_last_ratio", "backward.loss")


def test_synthetic_flag_is_recorded(runs):
    assert runs["synthetic"][0]["data"]["source"] == "synthetic"


def test_nothing_is_trained_beyond_single_steps_so_nothing_is_benchmarked():
    assert exp.benchmark_cases() == []
