"""Experiment 01: tensors, linear layers, parameter counts (the course's 46), activations (sigmoid(6) = 0.9975)."""
from __future__ import annotations

import importlib
from unittest import mock

import pytest
import torch

from conftest import check_deviations, check_seeds, smoke_fixture

SCRIPT = "01_tensors_and_layers"
exp = importlib.import_module(f"experiments.{SCRIPT}")


# ---------------------------------------------------------------- functions of the module
def test_course_network_has_46_parameters_by_formula_and_by_numel():
    net = exp.course_net()
    assert exp.params_by_formula([8, 4, 2]) == 46
    assert exp.params_by_numel(net) == 46
    assert exp.params_by_numel(net[0]) == 36 and exp.params_by_numel(net[1]) == 10


@pytest.mark.parametrize("sizes", [[10, 18, 20, 5], [8, 2], [8, 256, 256, 256, 2], [3, 1]])
def test_formula_equals_numel(sizes):
    assert exp.params_by_formula(sizes) == exp.params_by_numel(exp.mlp(sizes))


def test_nothing_is_trained_so_nothing_is_benchmarked():
    assert exp.benchmark_cases() == []


def test_derivatives_by_autograd():
    x = torch.tensor([-6.0, 0.0, 6.0])
    _, d = exp.activation_and_derivative("sigmoid", x)
    assert d[1].item() == pytest.approx(0.25) and d[2].item() == pytest.approx(0.0024665, abs=1e-6)
    _, d = exp.activation_and_derivative("leaky_relu", x)
    assert d[0].item() == pytest.approx(0.01) and d[2].item() == 1.0


# ---------------------------------------------------------------- smoke runs (no dataset is read)
runs = smoke_fixture(SCRIPT, {"seed0": ["--seeds", "2", "--seed", "0"], "seed0_again": ["--seeds", "2", "--seed", "0"],
                              "seed1": ["--seeds", "2", "--seed", "1"], "synthetic": ["--seeds", "2", "--synthetic"]},
                     in_process=exp)   # the first as a subprocess (the command line end to end)


def test_json_has_the_course_figures(runs):
    rec, d = runs["seed0"]
    m = rec["metrics"]
    assert rec["status"] == "ok" and rec["headline"] == "params.course_net_numel"
    assert m["params.course_net_numel"] == 46 and m["params.course_net_formula"] == 46
    assert m["activation.sigmoid_6"] == pytest.approx(0.9975, abs=5e-5)
    assert m["activation.softmax_sum"] == pytest.approx(1.0, abs=1e-6)
    assert m["activation.softmax_max"] == pytest.approx(0.842, abs=5e-4)
    assert m["tensors.from_list.is_int64"] == 1 and m["tensors.from_numpy.equals_list"] == 1
    assert (m["tensors.from_list.rows"], m["tensors.from_list.cols"]) == (2, 3)
    assert all(m[f"ops.{k}_correct"] == 1 for k in ("add", "subtract", "elementwise", "matmul"))
    assert m["ops.incompatible_add_raises"] == 1
    assert "must match the size of tensor b" in rec["notes"]["tensors"]["incompatible_add_error"]
    assert (m["linear.output_rows"], m["linear.output_cols"]) == (1, 2)
    assert (m["linear.weight_rows"], m["linear.weight_cols"], m["linear.bias_len"]) == (2, 3, 2)
    assert m["sequential.output_cols"] == 5 and m["sequential.params"] == 683 == m["sequential.params_formula"]
    assert (m["forward.binary.rows"], m["forward.binary.cols"]) == (5, 1)
    assert 0 <= m["forward.binary.min"] <= m["forward.binary.max"] <= 1
    assert (m["forward.multiclass.rows"], m["forward.multiclass.cols"]) == (5, 3)
    assert m["forward.multiclass.max_row_sum_error"] < 1e-6
    assert (m["forward.regression.rows"], m["forward.regression.cols"]) == (5, 1)
    assert m["derivative.sigmoid_max"] == pytest.approx(0.25) and m["derivative.sigmoid_at_6"] < 0.003
    assert m["derivative.relu_at_6"] == 1 and m["derivative.relu_at_-6"] == 0
    assert m["params.hidden2_width4"] == 66  # (8+1)*4 + (4+1)*4 + (4+1)*2
    assert all(isinstance(v, (int, float)) for v in m.values())
    assert rec["data"]["name"] == "none" and rec["data"]["source"] == "real"
    for png in ("activations.png", "parameter_counts.png"):
        assert (d / SCRIPT / png).stat().st_size > 5000


def test_same_seed_same_numbers_other_seed_differs(runs):
    check_seeds(runs, "forward.binary.mean")
    assert len(set(runs["seed0"][0]["per_seed"]["linear.output_0"])) == 2  # the two seeds of one run differ too


def test_synthetic_flag_is_recorded(runs):
    assert runs["synthetic"][0]["data"]["source"] == "synthetic"


def test_no_deviation_is_recorded(runs):
    """Every example follows the transcript: the result says so with an empty list, not a missing one."""
    assert check_deviations(runs["seed0"][0], []) == {} and exp.DEVIATIONS == []


def test_help_and_missing_device(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        exp.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--widths" in out and "--smoke" in out
    with mock.patch("torch.cuda.is_available", return_value=False):
        assert exp.main(["--device", "cuda", "--results-dir", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / f"{SCRIPT}.json").exists()
