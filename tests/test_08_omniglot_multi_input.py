"""08_omniglot_multi_input and the Omniglot pieces it shares with 09 (experiments/omniglot.py): the course's
Dataset items, the clean and course splits, the two-input models, benchmark cases, defaults, and smoke runs (real data: figures, leak marking, plots, reproducibility; synthetic;
divergence)."""
from __future__ import annotations

import importlib

import pytest
import torch

from common import cli, data
from conftest import check_deviations, real_data, run_script, smoke_fixture
from experiments import omniglot

m = importlib.import_module("experiments.08_omniglot_multi_input")
SCRIPT = "08_omniglot_multi_input"


# ------------------------------------------------------------------ the course's Dataset
@real_data("omniglot")
def test_dataset_items_real():
    ds, info = data.load_omniglot(size=64)
    rows = [0, 1234, 19_279]
    samples = omniglot.make_samples(ds, rows, info.path)
    item_set = omniglot.OmniglotDataset(omniglot.course_transform(), samples)
    assert len(item_set) == 3
    for row, (img, alphabet, label) in zip(rows, item_set):
        assert img.shape == (1, 64, 64) and img.dtype == torch.float32
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
        assert alphabet.shape == (30,) and float(alphabet.sum()) == 1.0 and set(alphabet.unique().tolist()) == {0.0, 1.0}
        assert int(alphabet.argmax()) == int(ds.alphabet[row]) and 0 <= int(ds.alphabet[row]) <= 29
        assert label == int(ds.character[row]) and 0 <= label <= 963
        # the fast path (decoded once, cached) holds the same picture as PIL + ToTensor + Resize
        cached = ds.images[row].float() / 255
        assert (img - cached).abs().mean() < 0.05
    # as in 09: the alphabet as an integer class index
    _, alphabet, label = omniglot.OmniglotDataset(omniglot.course_transform(), omniglot.make_samples(ds, [19_279], info.path, "index"))[0]
    assert alphabet == 29 and label == 963


# ------------------------------------------------------------------ splits
@real_data("omniglot")
def test_clean_split_real_disjoint_15_5_all_characters():
    ds, _ = data.load_omniglot(size=64)
    tr, te = omniglot.clean_split(ds.character, 0.25, seed=0)
    assert (len(tr), len(te)) == (14_460, 4_820)
    assert not set(tr.tolist()) & set(te.tolist()) and len(set(tr.tolist()) | set(te.tolist())) == 19_280
    assert torch.bincount(ds.character[tr], minlength=964).tolist() == [15] * 964
    assert torch.bincount(ds.character[te], minlength=964).tolist() == [5] * 964
    tr2, te2 = omniglot.clean_split(ds.character, 0.25, seed=0)
    assert torch.equal(tr, tr2) and torch.equal(te, te2)          # seeded
    assert not torch.equal(te, omniglot.clean_split(ds.character, 0.25, seed=1)[1])


def test_clean_split_synthetic_3_1():
    ds, _ = data.synthetic_omniglot()
    tr, te = omniglot.clean_split(ds.character, 0.25, seed=0)
    assert not set(tr.tolist()) & set(te.tolist())
    assert torch.bincount(ds.character[tr], minlength=964).tolist() == [3] * 964
    assert torch.bincount(ds.character[te], minlength=964).tolist() == [1] * 964


@real_data("omniglot")
def test_course_split_is_leaky():
    ds, info = data.load_omniglot(size=64)
    splits = omniglot.make_splits(ds, ["course"], 0, None, synthetic=False)
    tr, te, sinfo = splits["course"]
    assert (len(tr), len(te)) == (14_400, 12_149)
    assert sinfo["leaky"] is True and sinfo["overlap"] == 7_269 == omniglot.COURSE_OVERLAP
    with pytest.raises(data.DataError, match="not in the images"):
        omniglot.course_split(ds, ["Nope/character01/x.png"], [])


def test_alphabet_prior_accuracy():
    ds, _ = data.synthetic_omniglot()           # 964 characters in 30 alphabets of 32 or 33
    p = m.alphabet_prior_accuracy(ds, torch.arange(len(ds)))
    assert 1 / 33 <= p <= 1 / 32


# ------------------------------------------------------------------ models
def test_two_input_models_output_shapes():
    x, a = torch.rand(4, 1, 64, 64), torch.nn.functional.one_hot(torch.tensor([0, 5, 29, 3]), 30).float()
    course = m.TwoInputNet("course_model")
    assert course(x, a).shape == (4, 964)
    assert course.classifier.in_features == 136 and course.image_layer.layers[-1].in_features == 16 * 32 * 32
    assert course.alphabet_layer[0].in_features == 30 and course.alphabet_layer[0].out_features == 8
    improved = m.TwoInputNet("improved").eval()
    assert improved(x, a).shape == (4, 964) and improved.classifier.in_features == 256 + 8


def test_benchmark_cases_run_one_step():
    cases = m.benchmark_cases()
    assert [c["name"] for c in cases] == ["08.course_model_two_input", "08.improved_two_input"]
    # the script's settings, not a copy
    assert [(c["batch_size"], c["make_optimizer"]([torch.zeros(1)]).defaults["lr"]) for c in cases] == [
        (m.DEFAULTS["batch_size"], m.DEFAULTS["lr"]), (m.DEFAULTS["improved_batch_size"], m.DEFAULTS["improved_lr"])]
    for c in cases:
        model = c["make_model"]()
        inputs, target = c["make_batch"](8, torch.device("cpu"))
        out = model(*inputs)
        assert out.shape == (8, 964) and inputs[0].shape == (8, 1, 64, 64) and inputs[1].shape == (8, 30)
        loss = c["loss_fn"](out, target)
        loss.backward()
        c["make_optimizer"](model.parameters()).step()
        assert torch.isfinite(loss)


def test_defaults_are_the_options_defaults_and_smoke_overrides_them(monkeypatch):
    # parse() also installs a SIGTERM handler and sets torch's numerics: not in the test process
    monkeypatch.setattr(cli, "sigterm_as_interrupt", lambda: None)
    monkeypatch.setattr(cli.repro, "configure_numerics", lambda **kwargs: None)
    args = m.parse([])
    assert all(getattr(args, k) == v for k, v in m.DEFAULTS.items())
    smoke = m.parse(["--smoke", "--improved-epochs", "2"])
    assert (smoke.epochs, smoke.improved_epochs, smoke.batch_size) == (m.SMOKE["epochs"], 2, m.DEFAULTS["batch_size"])


# ------------------------------------------------------------------ smoke runs
SMALL = ("--split", "clean", "--model", "course")


# the full smoke (both splits, both models), then a cheap one twice (seed 0) and once with seed 1
smoke_runs = smoke_fixture(SCRIPT, {"full": [], "small": SMALL, "small_again": SMALL,
                                    "small_seed1": [*SMALL, "--seed", "1"]})


@real_data("omniglot")
def test_smoke_real_figures_leak_and_plots(smoke_runs):
    r, d = smoke_runs["full"]
    assert r["status"] == "ok" and r["data"]["source"] == "real" and r["seeds"] == [0]
    met = r["metrics"]
    for split in ("clean", "course"):
        for model in ("course_model", "improved"):
            assert 0.0 <= met[f"{split}.{model}.char_accuracy"] <= 1.0
            assert met[f"{split}.{model}.test_cross_entropy"] > 0
            assert r["timings"][f"{split}.{model}.train_samples_per_s"] > 0
            assert len(r["history"][f"{split}.{model}.test_accuracy"]) == 1
        assert met[f"baseline.{split}.alphabet_prior_accuracy"] == pytest.approx(0.031, abs=0.003)
    for model in ("course_model", "improved"):
        assert f"course.{model}.char_accuracy_overlap" in met and f"course.{model}.char_accuracy_unseen" in met
    assert r["splits"]["course"]["leaky"] is True and r["splits"]["course"]["overlap"] == 7_269
    assert r["splits"]["clean"]["leaky"] is False and r["splits"]["clean"]["overlap"] == 0
    assert r["data"]["sizes"]["clean.train"] == 14_460 and r["data"]["sizes"]["course.test"] == 12_149
    assert r["headline"] == "clean.improved.char_accuracy" and r["timings"]["train_samples_per_s"] > 0
    for name in ("char_accuracy", "test_accuracy_curves", "train_loss_curves"):
        assert (d / SCRIPT / f"{name}.png").stat().st_size > 1000


@real_data("omniglot")
def test_smoke_reproducible_and_seeds_differ(smoke_runs):
    full, a, b, other = (smoke_runs[name][0] for name in ("full", "small", "small_again", "small_seed1"))
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]
    assert a["headline"] == "clean.course_model.char_accuracy"
    run = "clean.course_model"
    assert set(a["metrics"]) == {"baseline.clean.majority_accuracy", "baseline.clean.alphabet_prior_accuracy",
                                 f"{run}.char_accuracy", f"{run}.train_accuracy", f"{run}.test_cross_entropy"}
    # a run does not depend on which other runs share the invocation
    assert full["metrics"][f"{run}.test_cross_entropy"] == a["metrics"][f"{run}.test_cross_entropy"]
    assert other["per_seed"][f"{run}.test_cross_entropy"] != a["per_seed"][f"{run}.test_cross_entropy"]
    assert other["history"][f"{run}.train_loss"] != a["history"][f"{run}.train_loss"]


@real_data("omniglot")
def test_smoke_records_the_deviations(smoke_runs):
    r = smoke_runs["full"][0]
    flags = check_deviations(r, ["image subnet sizes and image size", "training settings of the course model",
                                 "how images reach the model", "train/test split", "improved model and headline",
                                 "alphabet subnet"], m.parse)
    assert r["deviations"][:5] == omniglot.DEVIATIONS          # shared with 09: one list, in experiments/omniglot.py
    assert flags["train/test split"].split == "course" and flags["improved model and headline"].model == "course"
    # what the entries say is what the script does
    d = m.DEFAULTS
    assert f"{d['epochs']} epochs, batch {d['batch_size']}, Adam lr {d['lr']:g}" in r["deviations"][1]["here"]
    assert isinstance(m.TwoInputNet().alphabet_layer[-1], torch.nn.ELU)
    assert f"{omniglot.COURSE_OVERLAP:,} of its {r['splits']['course']['test']:,} test" in r["deviations"][3]["here"]


def test_smoke_synthetic(results_dir):
    _, r = run_script(SCRIPT, "--smoke", "--synthetic", "--model", "improved", results_dir=results_dir)
    assert r["data"]["source"] == "synthetic" and r["status"] == "ok"
    assert "clean.improved.char_accuracy" in r["metrics"] and "clean.course_model.char_accuracy" not in r["metrics"]
    assert r["splits"]["clean"]["train"] == 2_892 and r["splits"]["clean"]["test"] == 964
    assert r["splits"]["course"]["leaky"] is True


def test_divergence_exits_3(results_dir):
    proc, r = run_script(SCRIPT, *SMALL, "--smoke", "--synthetic", "--lr", "1e30", results_dir=results_dir, check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert r["status"] == "diverged" and r["diverged"][0]["run"] == "clean.course_model" and r["diverged"][0]["seed"] == 0


def test_missing_data_exits_2(results_dir, tmp_path):
    proc, r = run_script(SCRIPT, "--smoke", "--data-dir", str(tmp_path), results_dir=results_dir, check=False,
                         env={"SYNTHETIC_FALLBACK": "0"})
    assert proc.returncode == 2 and r is None
    assert "omniglot" in proc.stderr and "Traceback" not in proc.stderr
