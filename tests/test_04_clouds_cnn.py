"""04_clouds_cnn: transforms (train randomness, test determinism, 3x64x64, rotation range), models, per-class
mapping, duplicates, benchmark cases, options, and smoke runs (real data: figures, plots, reproducibility;
synthetic: deviations recorded; divergence)."""
from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from common import data
from conftest import real_data, run_script

m = importlib.import_module("experiments.04_clouds_cnn")
SCRIPT = "04_clouds_cnn"


def _pil(seed=0, size=256):
    g = torch.Generator().manual_seed(seed)
    arr = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")


def _batch(n=8, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    one = torch.randint(30, 200, (1, 3, size, size), generator=g, dtype=torch.uint8)
    return one.repeat(n, 1, 1, 1)           # n copies of the same image


# ------------------------------------------------------------------ transforms
def test_course_transforms_per_image():
    img = _pil()
    torch.manual_seed(0)
    a = m.course_train_transforms()(img)
    b = m.course_train_transforms()(img)
    assert a.shape == (3, 64, 64) and a.dtype == torch.float32
    assert not torch.equal(a, b)            # random flip/rotation/autocontrast
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert m.course_train_transforms((0.0, 45.0))(img).shape == (3, 64, 64)   # --rotation-from-zero's range


def test_batched_augmentation_per_sample_and_seeded():
    x = _batch(8)
    a = m.augment_batch(x, torch.Generator().manual_seed(1))
    assert a.shape == (8, 3, 64, 64) and a.dtype == torch.float32
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    # identical inputs, different outputs: every sample draws its own flip/angle/contrast
    assert len({tuple(a[i].flatten()[:512].tolist()) for i in range(8)}) == 8
    assert torch.equal(a, m.augment_batch(x, torch.Generator().manual_seed(1)))      # seeded: reproducible
    assert not torch.equal(a, m.augment_batch(x, torch.Generator().manual_seed(2)))  # other seed: other draws
    # test-time transform: deterministic, just uint8 -> [0, 1]
    assert torch.equal(m.to_float(x), m.to_float(x)) and torch.allclose(m.to_float(x), x.float() / 255)
    assert m.to_float(x).shape == (8, 3, 64, 64)


def test_augmentation_components():
    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    flipped = m.augment_batch(x, g, p_flip=1.0, max_degrees=0.0, p_autocontrast=0.0)
    assert torch.allclose(flipped, m.to_float(x).flip(-1), atol=1e-5)
    same = m.augment_batch(x, g, p_flip=0.0, max_degrees=0.0, p_autocontrast=0.0)
    assert torch.allclose(same, m.to_float(x), atol=1e-5)
    # rotation: +90 degrees is counter-clockwise, as torchvision's rotate and torch.rot90(k=1)
    f = torch.rand(2, 3, 16, 16)
    assert torch.allclose(m.rotate_batch(f, torch.tensor([90.0, 0.0]))[0], torch.rot90(f[0], 1, (-2, -1)), atol=1e-5)
    assert torch.allclose(m.rotate_batch(f, torch.tensor([30.0, 0.0]))[0],
                          TF.rotate(f[:1], 30.0, interpolation=TF.InterpolationMode.BILINEAR)[0], atol=1e-5)
    # rotation angles: (2u - 1) * 45 by default, u * 45 with from_zero, from the second of the three draws
    u = torch.rand(3, 4, generator=torch.Generator().manual_seed(3))
    for from_zero, angles in ((False, (u[1] * 2 - 1) * 45), (True, u[1] * 45)):
        rotated = m.augment_batch(x, torch.Generator().manual_seed(3), p_flip=0.0, p_autocontrast=0.0,
                                  from_zero=from_zero)
        assert torch.equal(rotated, m.rotate_batch(m.to_float(x), angles))
    assert float(u[1].min() * 2 - 1) < 0     # the default draws include negative angles here
    # autocontrast stretches every image and channel to [0, 1]
    low = (torch.rand(4, 3, 64, 64) * 80 + 60).to(torch.uint8)
    ac = m.augment_batch(low, g, p_flip=0.0, max_degrees=0.0, p_autocontrast=1.0)
    assert torch.allclose(ac.amin((-2, -1)), torch.zeros(4, 3)) and torch.allclose(ac.amax((-2, -1)), torch.ones(4, 3))


# ------------------------------------------------------------------ models, metrics, data quality
def test_model_output_shapes():
    course = m.CourseNet(7)
    assert course(torch.rand(5, 3, 64, 64)).shape == (5, 7)
    assert course.classifier.in_features == 64 * 16 * 16
    assert m.ImprovedNet(7)(torch.rand(3, 3, 64, 64)).shape == (3, 7)
    assert m.ImprovedNet(7)(torch.rand(2, 3, 96, 96)).shape == (2, 7)


def test_per_class_mapping_and_observations():
    class_to_idx = {c: i for i, c in enumerate(data.CLOUD_CLASSES)}
    # per-class scores are named through class_to_idx (the course's {k: scores[v]}), not by dict position
    two = m.evaluate(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]), {"b": 1, "a": 0})
    assert two["recall.a"] == pytest.approx(0.5) and two["recall.b"] == pytest.approx(1.0)
    assert two["precision.a"] == pytest.approx(1.0) and two["precision.b"] == pytest.approx(2 / 3)
    only_first = m.evaluate(torch.zeros(7, dtype=torch.long), torch.arange(7), class_to_idx)
    assert only_first["recall.cirriform clouds"] == 1.0 and only_first["recall.stratocumulus clouds"] == 0.0
    # clear sky (1) always right; high cumuliform (4) half wrong (predicted as cumulus, 3); others right
    target = torch.arange(7).repeat_interleave(4)
    preds = target.clone()
    preds[(target == 4).nonzero().flatten()[:2]] = 3
    r = m.evaluate(preds, target, class_to_idx)
    assert r["recall.clear sky"] == 1.0 and r["recall.high cumuliform clouds"] == 0.5
    assert r["precision.cumulus clouds"] == pytest.approx(4 / 6)
    assert r["accuracy"] == pytest.approx(26 / 28) and r["recall_micro"] == pytest.approx(26 / 28)
    assert r["recall_macro"] == pytest.approx((6 + 0.5) / 7)
    assert r["precision_macro"] == pytest.approx((6 + 4 / 6) / 7)
    assert r["obs.clear_sky_recall_is_1"] == 1.0 and r["obs.high_cumuliform_lowest_recall"] == 1.0
    assert r["obs.recall_macro_above_precision_macro"] == 0.0  # 0.9286 vs 0.9524


def test_find_duplicates_counts():
    def split(hashes, name):
        return SimpleNamespace(file_sha256=hashes, paths=[f"/r/{name}/{i}.jpg" for i in range(len(hashes))])
    d = m.find_duplicates(split(["a", "b", "a", "c", "a"], "tr"), split(["b", "d", "d", "e"], "te"), "/r")
    assert (d["pairs_within_train"], d["pairs_within_test"], d["pairs_across_splits"]) == (3, 1, 1)
    assert d["test_in_train"] == [0]
    assert d["paths"] == {"groups_within_train": [["tr/0.jpg", "tr/2.jpg", "tr/4.jpg"]],
                          "groups_within_test": [["te/1.jpg", "te/2.jpg"]],
                          "groups_across": [[["tr/1.jpg"], ["te/0.jpg"]]]}


@real_data("clouds")
def test_real_duplicates_dedupe_and_class_to_idx():
    train, test, _ = data.load_clouds(size=64)
    d = m.find_duplicates(train, test)
    # PROVENANCE.md: 5 pairs across train/test, 3 inside train, 3 inside test
    assert (d["pairs_within_train"], d["pairs_within_test"], d["pairs_across_splits"]) == (3, 3, 5)
    assert len(d["test_in_train"]) == 5
    _, deduped = m.run_splits(train, test, d["test_in_train"], smoke=False)
    assert len(deduped) == 481 and not set(deduped.file_sha256) & set(train.file_sha256)
    folder = data.clouds_image_folder("test")
    assert folder.class_to_idx == {c: i for i, c in enumerate(train.classes)}


def test_benchmark_cases_run_one_step():
    cases = m.benchmark_cases()
    assert [c["name"] for c in cases] == ["04.course_cnn", "04.improved_cnn"]
    assert [c["batch_size"] for c in cases] == [16, 32]
    for c in cases:
        model = c["make_model"]()
        inputs, target = c["make_batch"](c["batch_size"], torch.device("cpu"))
        opt = c["make_optimizer"](model.parameters())
        out = model(*inputs)
        assert out.shape == (c["batch_size"], 7) and inputs[0].shape[1:] == (3, 64, 64)
        loss = c["loss_fn"](out, target)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)


# ------------------------------------------------------------------ smoke runs
@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    outs = []
    for i in range(2):
        d = tmp_path_factory.mktemp(f"smoke{i}")
        _, record = run_script(SCRIPT, "--smoke", "--seed", "0", results_dir=d)
        outs.append((d, record))
    return outs


@real_data("clouds")
def test_smoke_real_figures_and_plots(smoke_runs):
    d, r = smoke_runs[0]
    assert r["status"] == "ok" and r["data"]["source"] == "real" and r["seeds"] == [0, 1]
    met = r["metrics"]
    for model in ("course", "improved"):
        for key in ("accuracy", "f1_macro", *(f"{k}_{a}" for k in ("precision", "recall")
                                                for a in ("micro", "macro", "weighted"))):
            assert 0.0 <= met[f"{model}.{key}"] <= 1.0 and f"{model}.{key}" in r["std"]
            assert len(r["per_seed"][f"{model}.{key}"]) == 2
        for c in data.CLOUD_CLASSES:
            assert f"{model}.recall.{c}" in met and f"{model}.precision.{c}" in met
        assert f"{model}.obs.recall_macro_above_precision_macro" in met
    assert met["data.duplicate_pairs_across_splits"] == 5 and met["data.duplicate_pairs_within_train"] == 3
    assert met["data.duplicate_pairs_within_test"] == 3
    assert met["baseline.majority_accuracy"] == pytest.approx(1 / 7)   # smoke test set: 6 per class
    t = r["timings"]
    assert t["train_samples_per_s"] > 0 and t["model_only_samples_per_s"] > 0 and t["memory_format"] == "channels_last"
    assert r["course_pipeline"]["sample_batch_shape"] == [1, 3, 64, 64] and r["course_pipeline"]["class_to_idx_matches"]
    assert len(r["history"]["course.train_loss"]) == 1
    for name in ("augmentation_grid", "confusion_matrix", "per_class_recall", "headline_metrics",
                 "training_train_loss"):
        assert (d / SCRIPT / f"{name}.png").stat().st_size > 1000


@real_data("clouds")
def test_smoke_reproducible_and_seeds_differ(smoke_runs):
    (_, a), (_, b) = smoke_runs
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]
    losses = a["history"]["course.train_loss_per_seed"]
    assert losses[0] != losses[1]                     # seeds 0 and 1 train differently
    for name in ("course", "improved"):     # every seed's figure recorded, and the mean is theirs
        per_seed = a["per_seed"][f"{name}.f1_macro"]
        assert len(per_seed) == 2 and a["metrics"][f"{name}.f1_macro"] == pytest.approx(sum(per_seed) / 2)
    assert a["history"]["improved.train_loss_per_seed"][0] != a["history"]["improved.train_loss_per_seed"][1]


def test_rotation_flag_reaches_the_specs():
    assert all(not s["rotation_from_zero"] for s in m.model_specs(m.DEFAULTS).values())
    specs = m.model_specs(vars(m.parse(["--rotation-from-zero", "--memory-format", "contiguous"])))
    assert all(s["rotation_from_zero"] and not s["channels_last"] for s in specs.values())


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    _, r = run_script(SCRIPT, "--smoke", "--synthetic", "--model", "course", "--seeds", "1",
                      results_dir=tmp_path_factory.mktemp("synthetic"))
    return r


def test_smoke_synthetic(synthetic_run):
    r = synthetic_run
    assert r["data"]["source"] == "synthetic" and r["status"] == "ok"
    assert "course.accuracy" in r["metrics"] and "improved.accuracy" not in r["metrics"]
    assert r["headline"] == "course.f1_macro"


def test_deviations_recorded(synthetic_run):
    devs = {d["what"]: d for d in synthetic_run["deviations"]}
    assert synthetic_run["deviations"] == m.DEVIATIONS
    for d in devs.values():
        assert all(isinstance(d[k], str) and d[k] for k in ("what", "course", "here", "why"))
    rotation, size = devs["rotation range"], devs["image size"]
    assert "0 and 45" in rotation["course"] and "[-45, 45]" in rotation["here"]
    assert rotation["flag"] == "--rotation-from-zero"
    assert "128" in size["course"] and size["here"] == "64x64" and "64*16*16" in size["why"]


def test_divergence_exits_3(results_dir):
    proc, r = run_script(SCRIPT, "--smoke", "--synthetic", "--model", "course", "--seeds", "1", "--lr", "1e30",
                         results_dir=results_dir, check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    (d,) = r["diverged"]                      # where it happened (results.Diverged.to_json), no test figures
    assert r["status"] == "diverged" and (d["run"], d["seed"], d["epoch"], d["value"]) == ("course", 0, 0, "nan")
    assert "course.accuracy" not in r["metrics"] and r["headline"] == "baseline.majority_accuracy"


def test_missing_data_exits_2(results_dir, tmp_path):
    proc, r = run_script(SCRIPT, "--smoke", "--data-dir", str(tmp_path / "nowhere"), results_dir=results_dir,
                         check=False, env={"SYNTHETIC_FALLBACK": "0"})
    assert proc.returncode == 2 and "clouds" in proc.stderr and "Traceback" not in proc.stderr and r is None
