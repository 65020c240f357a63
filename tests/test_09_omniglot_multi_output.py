"""09_omniglot_multi_output: the two-output models, the weighted loss, the salary loss-scaling pieces,
benchmark cases, and smoke runs (real data: per-head figures, weighting table and comparisons, scaling
result, leak marking, selection, plots, reproducibility; synthetic: the test images read only by the final
models; divergence)."""
from __future__ import annotations

import importlib
import json

import pytest
import torch
import torch.nn.functional as F

from common import cli, data
from conftest import (check_deviations, check_omniglot_selection, omniglot_reads, real_data, run_script,
                      smoke_fixture)
from experiments import omniglot

m = importlib.import_module("experiments.09_omniglot_multi_output")
SCRIPT = "09_omniglot_multi_output"


# ------------------------------------------------------------------ models and losses
def test_two_output_models_output_shapes():
    x = torch.rand(4, 1, 64, 64)
    course = m.TwoOutputNet("course_model")
    alpha, char = course(x)
    assert alpha.shape == (4, 30) and char.shape == (4, 964)
    assert course.classifier_alpha.in_features == course.classifier_char.in_features == 128
    assert isinstance(course.image_layer, omniglot.CourseImageNet)   # the image subnet of 08, shared
    alpha, char = m.TwoOutputNet("improved").eval()(x)
    assert alpha.shape == (4, 30) and char.shape == (4, 964)


def test_weighted_loss():
    g = torch.Generator().manual_seed(0)
    out = (torch.randn(6, 30, generator=g), torch.randn(6, 964, generator=g))
    y = (torch.randint(0, 30, (6,), generator=g), torch.randint(0, 964, (6,), generator=g))
    ce_a, ce_c = F.cross_entropy(out[0], y[0]), F.cross_entropy(out[1], y[1])
    assert m.weighted_loss(out, y) == pytest.approx(float(ce_a + ce_c))
    assert m.weighted_loss(out, y, *m.WEIGHTINGS["char_x2"]) == pytest.approx(float(ce_a + 2 * ce_c))
    assert m.weighted_loss(out, y, *m.WEIGHTINGS["sum_to_1"]) == pytest.approx(float(0.33 * ce_a + 0.67 * ce_c))
    assert sum(m.WEIGHTINGS["sum_to_1"]) == pytest.approx(1.0)


def test_salary_losses_scales():
    pred = torch.tensor([100_000.0, 150_000.0, 90_000.0])
    y = torch.tensor([50_000.0, 250_000.0, 95_000.0])
    logits, level = torch.zeros(3, 4), torch.tensor([0, 2, 3])
    unscaled = m.salary_losses("unscaled", pred, logits, y, level)
    assert float(unscaled) == pytest.approx((5e4 ** 2 + 1e5 ** 2 + 5e3 ** 2) / 3 + torch.log(torch.tensor(4.0)).item(), rel=1e-6)
    scaled = m.salary_losses("scaled", pred, logits, y, level)  # each part in [0, 1]: the sum in [0, 2]
    assert float(scaled) == pytest.approx((0.25 + 1 + 0.0025) / 3 + 1.0, rel=1e-5)
    assert float(m.salary_losses("ce_only", pred, logits, y, level)) == pytest.approx(torch.log(torch.tensor(4.0)).item())


@real_data("ds_salaries")
def test_salary_features_real():
    df, _ = data.load_salaries()
    x, salary, level = m.salary_features(df)
    assert x.shape[0] == salary.shape[0] == level.shape[0] == 3_755 and torch.isfinite(x).all()
    assert torch.bincount(level).tolist() == [320, 805, 2516, 114]           # EN, MI, SE, EX
    assert 5_000 < float(salary.min()) and float(salary.max()) == 450_000
    assert float(salary.var()) > 1e9                                         # MSE in dollars: billions


def test_benchmark_case_names_and_settings():
    cases = m.benchmark_cases()
    assert [c["name"] for c in cases] == ["09.course_model_two_output", "09.improved_two_output"]
    assert [c["batch_size"] for c in cases] == [m.DEFAULTS["batch_size"], m.DEFAULTS["improved_batch_size"]]


@pytest.mark.parametrize("case", m.benchmark_cases(), ids=lambda c: c["name"])
def test_benchmark_case_runs_one_step(case):
    model = case["make_model"]()
    inputs, target = case["make_batch"](8, torch.device("cpu"))
    alpha, char = model(*inputs)
    assert alpha.shape == (8, 30) and char.shape == (8, 964)
    loss = case["loss_fn"]((alpha, char), target)
    loss.backward()
    case["make_optimizer"](model.parameters()).step()
    assert torch.isfinite(loss)


def test_smoke_shortens_every_training(monkeypatch):
    monkeypatch.setattr(cli, "sigterm_as_interrupt", lambda: None)   # parse() would install them in pytest
    monkeypatch.setattr(cli.repro, "configure_numerics", lambda **kwargs: None)
    assert all(getattr(m.parse([]), k) == v for k, v in m.DEFAULTS.items())
    smoke = m.parse(["--smoke"])
    assert (smoke.epochs, smoke.improved_epochs, smoke.scaling_epochs) == (1, 1, 1) and smoke.scaling_lr == m.DEFAULTS["scaling_lr"]


# ------------------------------------------------------------------ smoke runs
SMALL = ("--split", "clean", "--model", "improved", "--seeds", "1")
RUNS = [f"{split}.{model}" for split in ("clean", "course") for model in ("course_model", "improved")]


# the full smoke (both splits, both models, weighting, scaling), then a cheap one twice and with seed 1
smoke_runs = smoke_fixture(SCRIPT, {"full": [], "small": SMALL, "small_again": SMALL,
                                    "small_seed1": [*SMALL, "--seed", "1"]})


@real_data("omniglot")
@real_data("ds_salaries")
def test_smoke_real_figures_and_plots(smoke_runs):
    r, d = smoke_runs["full"]
    met = r["metrics"]
    assert r["status"] == "ok" and r["data"]["source"] == "real" and r["seeds"] == [0, 1]   # the smoke rule: 2 seeds
    assert not any("test" in k for k in r["history"])   # no per-epoch test curve
    for split in ("clean", "course"):
        for model in ("course_model", "improved"):
            for head in ("alphabet", "char"):
                assert 0.0 <= met[f"{split}.{model}.{head}_accuracy"] <= 1.0
                assert len(r["history"][f"{split}.{model}.val_{head}_accuracy"]) == 1
            assert r["history"][f"{split}.{model}.val_accuracy"] == [
                (r["history"][f"{split}.{model}.val_alphabet_accuracy"][0]
                 + r["history"][f"{split}.{model}.val_char_accuracy"][0]) / 2]   # the two heads' mean chooses
            assert r["timings"][f"{split}.{model}.train_samples_per_s"] > 0
            assert f"course.{model}.char_accuracy_unseen" in met and f"course.{model}.alphabet_accuracy_overlap" in met
    assert r["splits"]["course"]["leaky"] is True and r["splits"]["course"]["overlap"] == 7_269
    assert r["splits"]["clean"]["leaky"] is False
    # loss weighting: one table row per configuration, same split; equal == the base course run
    assert [row["config"] for row in r["loss_weighting"]] == ["equal", "char_x2", "sum_to_1"]
    assert met["weighting.equal.char_accuracy"] == met["clean.course_model.char_accuracy"]
    for w in ("char_x2", "sum_to_1"):
        assert 0.0 <= met[f"weighting.{w}.alphabet_accuracy"] <= 1.0 and f"weighting.{w}.char_accuracy" in met
    # loss scaling: both metrics for both variants, the unscaled loss in the billions
    for v in ("unscaled", "scaled"):
        assert 0.0 <= met[f"scaling.{v}.experience_accuracy"] <= 1.0 and met[f"scaling.{v}.salary_rmse_usd"] > 1_000
    assert r["history"]["scaling.unscaled.train_loss"][0] > 1e8 and r["history"]["scaling.scaled.train_loss"][0] <= 2
    assert met["baseline.scaling.majority_accuracy"] == pytest.approx(2516 / 3755, abs=0.03)
    assert r["data"]["parts"]["ds_salaries"]["sizes"] == {"train": 3_004, "test": 751}
    for row in r["loss_weighting"]:   # the table: the weights that ran and the figures they gave, as in the metrics
        w = row["config"]
        assert (row["w_alpha"], row["w_char"]) == m.WEIGHTINGS[w] and row["split"] == "clean"
        assert (row["alphabet_accuracy"], row["char_accuracy"]) == (met[f"weighting.{w}.alphabet_accuracy"],
                                                                    met[f"weighting.{w}.char_accuracy"])
    # the course's caveat, measured: unscaled, the dollar loss drowns the classification's gradient; scaled, it does not
    assert met["scaling.unscaled.trunk_grad_share_ce"] < 1e-6 < 0.1 < met["scaling.scaled.trunk_grad_share_ce"]
    check_omniglot_selection(r, "val_accuracy", {run: 1 for run in RUNS + ["weighting.char_x2", "weighting.sum_to_1"]})
    assert "weighting" in r["selection"]["fixed"] and "scaling" in r["selection"]["fixed"]
    # every comparison: mean ± std of both and a finding, "within noise" where |difference| <= the larger std
    assert len(r["comparisons"]) == 4 + 4 + 2
    for w in ("char_x2", "sum_to_1"):
        for head in ("alphabet", "char"):
            a, b = f"weighting.{w}.{head}_accuracy", f"weighting.equal.{head}_accuracy"
            noise = abs(met[a] - met[b]) <= max(r["std"][a], r["std"][b])
            said = r["comparisons"][f"{a} vs {b}"]
            assert said.startswith(f"{met[a]:.4g} ± ") and said.endswith("within noise") == noise
    for name in ("head_accuracy", "val_accuracy_curves", "loss_weighting", "loss_scaling", "loss_scaling_train_loss"):
        assert (d / SCRIPT / f"{name}.png").stat().st_size > 1000


@real_data("omniglot")
def test_smoke_reproducible_and_seeds_differ(smoke_runs):
    full, a, b, other = (smoke_runs[name][0] for name in ("full", "small", "small_again", "small_seed1"))
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]
    assert a["headline"] == "clean.improved.char_accuracy" and a["loss_weighting"] == []   # no course model: no weighting
    assert "weighting.char_x2.char_accuracy" not in a["metrics"]
    run = "clean.improved"
    assert full["history"][f"{run}.train_loss"] == a["history"][f"{run}.train_loss"]
    assert other["history"][f"{run}.train_loss"] != a["history"][f"{run}.train_loss"]
    assert other["per_seed"]["scaling.scaled.salary_rmse_usd"] != a["per_seed"]["scaling.scaled.salary_rmse_usd"]


@real_data("omniglot")
@real_data("ds_salaries")
def test_smoke_records_the_deviations(smoke_runs):
    r = smoke_runs["full"][0]
    ours = ["loss-scaling example", "dividing each loss by its batch maximum"]
    flags = check_deviations(r, [d["what"] for d in omniglot.DEVIATIONS] + ours, m.parse)   # 08 names the shared ones
    n = len(omniglot.DEVIATIONS)
    assert r["deviations"][:n] == omniglot.DEVIATIONS and flags["train/test split"].split == "course"
    # what the entries say is what the script does
    d = m.DEFAULTS
    assert f"{d['scaling_epochs']} epochs, batch {d['scaling_batch_size']}, Adam lr {d['scaling_lr']:g}" in (
        r["deviations"][n]["here"])
    assert f"{d['seeds']} training seeds" in r["deviations"][n - 1]["here"] and r["deviations"][n - 1]["what"] == "seeds"
    assert r["data"]["parts"]["ds_salaries"]["sizes"] == {"train": 3_004, "test": 751}   # the seeded 80/20 split


def test_smoke_synthetic(results_dir):
    _, r = run_script(SCRIPT, "--smoke", "--synthetic", "--split", "clean", "--model", "course", results_dir=results_dir)
    assert r["data"]["source"] == "synthetic" and r["status"] == "ok"
    assert r["data"]["parts"]["ds_salaries"]["source"] == "synthetic"
    assert [row["config"] for row in r["loss_weighting"]] == ["equal", "char_x2", "sum_to_1"]
    assert "clean.course_model.alphabet_accuracy" in r["metrics"] and "course.course_model.char_accuracy" not in r["metrics"]
    check_omniglot_selection(r, "val_accuracy", {run: 1 for run in ("clean.course_model", "weighting.char_x2",
                                                                     "weighting.sum_to_1")})


def test_test_images_read_only_by_the_final_models(monkeypatch, tmp_path):
    """During training only the validation drawings are read (once per epoch); each final model (the course
    model and the two other weightings, per seed) reads the whole test split once; nothing else reads a test
    image. Two epochs: the choice is a real one."""
    splits, calls = omniglot_reads(monkeypatch, m, ["--smoke", "--synthetic", "--split", "clean", "--model", "course",
                                                    "--epochs", "2", "--results-dir", str(tmp_path)])
    sp, r = splits["clean"], json.loads((tmp_path / f"{SCRIPT}.json").read_text())
    test, val = frozenset(sp.test.tolist()), frozenset(sp.val.tolist())
    assert not test & val and not test & set(sp.train.tolist()) and not val & set(sp.train.tolist())
    during = [rows for in_training, rows in calls if in_training]
    assert len(during) == 2 * 3 * 2 and all(rows == val for rows in during)   # 2 seeds x 3 weightings x 2 epochs
    after = [rows for in_training, rows in calls if not in_training]
    assert len(after) == 2 * 3 and all(rows == test for rows in after)       # each final model once, nothing else
    check_omniglot_selection(r, "val_accuracy", {run: 2 for run in ("clean.course_model", "weighting.char_x2",
                                                                     "weighting.sum_to_1")})


def test_divergence_exits_3(results_dir):
    proc, r = run_script(SCRIPT, "--smoke", "--synthetic", "--split", "clean", "--model", "course", "--lr", "1e30",
                         "--seeds", "1", results_dir=results_dir, check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    # every run of the course model (--lr is its lr) diverges: step 0's loss comes before any update, and one
    # Adam step with lr 1e30 already gives NaN at step 1; the salary network (--scaling-lr) does not
    assert r["status"] == "diverged"
    assert r["diverged"] == [{"run": run, "seed": 0, "epoch": 1, "step": 1, "value": "nan"}
                             for run in ("clean.course_model", "weighting.char_x2", "weighting.sum_to_1")]
    assert "scaling.scaled.experience_accuracy" in r["metrics"]


def test_one_torch_thread_restores_the_thread_count():
    """The salary study runs on one thread; the count of --threads comes back afterwards, also on an error."""
    threads = torch.get_num_threads()
    with m.one_torch_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads
    with pytest.raises(RuntimeError), m.one_torch_thread():
        raise RuntimeError("diverged")
    assert torch.get_num_threads() == threads


def test_fixed_names_only_what_exists():
    """fixed()'s docstring names omniglot's shared settings by a name that exists; its entries are the
    weighting and scaling studies'."""
    assert "omniglot.FIXED" in m.fixed.__doc__ and hasattr(omniglot, "FIXED")
    args = m.parse(["--smoke"])
    assert set(m.fixed(args)) == {"weighting", "scaling"}
