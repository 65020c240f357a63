"""04_clouds_cnn: transforms (train randomness, test determinism, 3x64x64, rotation range), models, per-class
mapping, duplicates and the deduplicated test set, cross-validation folds and the epoch choice, benchmark cases,
options, and smoke runs (real data: figures, plots, selection, reproducibility; synthetic: the test set read only
by the final models, epochs given, deviations recorded; divergence in the selection and in a final model)."""
from __future__ import annotations

import importlib
import json
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from common import data, results
from common.schema import check_selection
from conftest import check_deviations, real_data, run_script, smoke_fixture
from experiments import clouds

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
    a = clouds.course_train_transforms()(img)
    b = clouds.course_train_transforms()(img)
    assert a.shape == (3, 64, 64) and a.dtype == torch.float32
    assert not torch.equal(a, b)            # random flip/rotation/autocontrast
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert clouds.course_train_transforms((0.0, 45.0))(img).shape == (3, 64, 64)   # --rotation-from-zero's range


def test_batched_augmentation_per_sample_and_seeded():
    x = _batch(8)
    a = clouds.augment_batch(x, torch.Generator().manual_seed(1))
    assert a.shape == (8, 3, 64, 64) and a.dtype == torch.float32
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    # identical inputs, different outputs: every sample draws its own flip/angle/contrast
    assert len({tuple(a[i].flatten()[:512].tolist()) for i in range(8)}) == 8
    assert torch.equal(a, clouds.augment_batch(x, torch.Generator().manual_seed(1)))      # seeded: reproducible
    assert not torch.equal(a, clouds.augment_batch(x, torch.Generator().manual_seed(2)))  # other seed: other draws
    # test-time transform: deterministic, just uint8 -> [0, 1]
    assert torch.equal(clouds.to_float(x), clouds.to_float(x)) and torch.allclose(clouds.to_float(x), x.float() / 255)
    assert clouds.to_float(x).shape == (8, 3, 64, 64)


def test_augmentation_components():
    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    flipped = clouds.augment_batch(x, g, p_flip=1.0, max_degrees=0.0, p_autocontrast=0.0)
    assert torch.allclose(flipped, clouds.to_float(x).flip(-1), atol=1e-5)
    same = clouds.augment_batch(x, g, p_flip=0.0, max_degrees=0.0, p_autocontrast=0.0)
    assert torch.allclose(same, clouds.to_float(x), atol=1e-5)
    # rotation: +90 degrees is counter-clockwise, as torchvision's rotate and torch.rot90(k=1)
    f = torch.rand(2, 3, 16, 16)
    assert torch.allclose(clouds.rotate_batch(f, torch.tensor([90.0, 0.0]))[0], torch.rot90(f[0], 1, (-2, -1)),
                          atol=1e-5)
    assert torch.allclose(clouds.rotate_batch(f, torch.tensor([30.0, 0.0]))[0],
                          TF.rotate(f[:1], 30.0, interpolation=TF.InterpolationMode.BILINEAR)[0], atol=1e-5)
    # rotation angles: (2u - 1) * 45 by default, u * 45 with from_zero, from the second of the three draws
    u = torch.rand(3, 4, generator=torch.Generator().manual_seed(3))
    for from_zero, angles in ((False, (u[1] * 2 - 1) * 45), (True, u[1] * 45)):
        rotated = clouds.augment_batch(x, torch.Generator().manual_seed(3), p_flip=0.0, p_autocontrast=0.0,
                                  from_zero=from_zero)
        assert torch.equal(rotated, clouds.rotate_batch(clouds.to_float(x), angles))
    assert float(u[1].min() * 2 - 1) < 0     # the default draws include negative angles here
    # autocontrast stretches every image and channel to [0, 1]
    low = (torch.rand(4, 3, 64, 64) * 80 + 60).to(torch.uint8)
    ac = clouds.augment_batch(low, g, p_flip=0.0, max_degrees=0.0, p_autocontrast=1.0)
    assert torch.allclose(ac.amin((-2, -1)), torch.zeros(4, 3)) and torch.allclose(ac.amax((-2, -1)), torch.ones(4, 3))


# ------------------------------------------------------------------ models, metrics, data quality
def test_model_output_shapes():
    course = clouds.CourseNet(7)
    assert course(torch.rand(5, 3, 64, 64)).shape == (5, 7)
    assert course.classifier.in_features == 64 * 16 * 16
    assert clouds.ImprovedNet(7)(torch.rand(3, 3, 64, 64)).shape == (3, 7)
    assert clouds.ImprovedNet(7)(torch.rand(2, 3, 96, 96)).shape == (2, 7)


def test_per_class_mapping_and_observations():
    class_to_idx = {c: i for i, c in enumerate(data.CLOUD_CLASSES)}
    # per-class scores are named through class_to_idx (the course's {k: scores[v]}), not by dict position
    two = clouds.evaluate(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]), {"b": 1, "a": 0})
    assert two["recall.a"] == pytest.approx(0.5) and two["recall.b"] == pytest.approx(1.0)
    assert two["precision.a"] == pytest.approx(1.0) and two["precision.b"] == pytest.approx(2 / 3)
    only_first = clouds.evaluate(torch.zeros(7, dtype=torch.long), torch.arange(7), class_to_idx)
    assert only_first["recall.cirriform clouds"] == 1.0 and only_first["recall.stratocumulus clouds"] == 0.0
    # clear sky (1) always right; high cumuliform (4) half wrong (predicted as cumulus, 3); others right
    target = torch.arange(7).repeat_interleave(4)
    preds = target.clone()
    preds[(target == 4).nonzero().flatten()[:2]] = 3
    r = clouds.evaluate(preds, target, class_to_idx)
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
    d = clouds.find_duplicates(split(["a", "b", "a", "c", "a"], "tr"), split(["b", "d", "d", "e"], "te"), "/r")
    assert (d["pairs_within_train"], d["pairs_within_test"], d["pairs_across_splits"]) == (3, 1, 1)
    assert d["test_in_train"] == [0]
    assert d["paths"] == {"groups_within_train": [["tr/0.jpg", "tr/2.jpg", "tr/4.jpg"]],
                          "groups_within_test": [["te/1.jpg", "te/2.jpg"]],
                          "groups_across": [[["tr/1.jpg"], ["te/0.jpg"]]]}


@real_data("clouds")
def test_real_duplicates_dedupe_and_class_to_idx():
    train, test, _ = data.load_clouds(size=64)
    d = clouds.find_duplicates(train, test)
    # PROVENANCE.md: 5 pairs across train/test, 3 inside train, 3 inside test
    assert (d["pairs_within_train"], d["pairs_within_test"], d["pairs_across_splits"]) == (3, 3, 5)
    assert len(d["test_in_train"]) == 5
    _, deduped = clouds.run_splits(train, test, d["test_in_train"], smoke=None)
    assert len(deduped) == 481 and not set(deduped.file_sha256) & set(train.file_sha256)
    assert len(clouds.run_splits(train, test, [], smoke=None)[1]) == 486      # --keep-duplicates: the course's set
    folder = data.clouds_image_folder("test")
    assert folder.class_to_idx == {c: i for i, c in enumerate(train.classes)}


@real_data("clouds")
def test_real_folds_carved_from_train_stratified_and_apart_from_test():
    train, test, _ = data.load_clouds(size=64)
    _, test = clouds.run_splits(train, test, clouds.find_duplicates(train, test)["test_in_train"], smoke=None)
    folds = clouds.cv_folds(train, 3)
    assert sorted(torch.cat([val for _, val in folds]).tolist()) == list(range(474))   # each validates once
    total = torch.bincount(train.labels, minlength=7)

    def hashes(idx):
        return {train.file_sha256[i] for i in idx.tolist()}
    for (fit, val), (fit2, val2) in zip(folds, clouds.cv_folds(train, 3)):
        assert torch.equal(fit, fit2) and torch.equal(val, val2)                     # fixed split seed
        assert (len(fit), len(val)) == (316, 158) and not set(fit.tolist()) & set(val.tolist())
        assert not hashes(fit) & hashes(val)          # the 3 byte-identical training pairs stay in one fold
        assert not hashes(val) & set(test.file_sha256)                              # nothing of the test set
        share = torch.bincount(train.labels[val], minlength=7) / total               # stratified: ~1/3 a class
        assert float(share.min()) > 0.25 and float(share.max()) < 0.4


def test_select_epochs_picks_the_best_mean_and_fewer_on_ties(monkeypatch):
    curves = iter([[0.5, 0.7, 0.7, 0.6], [0.5, 0.6, 0.6, 0.7]])   # means 0.5, 0.65, 0.65, 0.65
    seen = []

    def fake_train_one(spec, x, y, sizes, seed, device, prefix, eval_fn):
        seen.append((spec["epochs"], len(x), seed))
        return None, {"val_accuracy": next(curves)}, {}
    monkeypatch.setattr(m, "train_one", fake_train_one)
    spec = m.model_specs(m.DEFAULTS)["course"]
    mdl = dict(spec=dict(spec, max_epochs=4), x_train=torch.zeros(10, 3, 64, 64, dtype=torch.uint8),
               y_train=torch.zeros(10, dtype=torch.long), max_batches=None)
    folds = [(torch.arange(6), torch.arange(6, 10)), (torch.arange(4, 10), torch.arange(4))]
    pick = m.select_epochs("course", mdl, folds, seed=7, device="cpu")
    assert mdl["spec"]["epochs"] == spec["epochs"]   # select_epochs only picks; main sets the choice
    assert m.with_chosen_epochs({"course": mdl}, {"course": pick}) == {"course": mdl}
    assert pick["chosen"] == 2 and mdl["spec"]["epochs"] == 2 and pick["mean"] == pytest.approx([0.5, 0.65, 0.65, 0.65])
    assert seen == [(4, 6, 7), (4, 6, 8)]      # max_epochs on each fold's fit part, fold k with seed + k


def test_select_epochs_ties_survive_one_ulp_and_diverged_models_are_not_trained(monkeypatch):
    # mean accuracy after 1 epoch (0.3 + 0.0) / 2 is one ulp below that after 2, (0.1 + 0.2) / 2: a tie -> 1 epoch
    curves = iter([[0.3, 0.1], [0.0, 0.2]])
    monkeypatch.setattr(m, "train_one", lambda *a: (None, {"val_accuracy": next(curves)}, {}))
    spec = m.model_specs(m.DEFAULTS)["course"]
    mdl = dict(spec=dict(spec, max_epochs=2), x_train=torch.zeros(4, 3, 64, 64, dtype=torch.uint8),
               y_train=torch.zeros(4, dtype=torch.long), max_batches=None)
    pick = m.select_epochs("course", mdl, [(torch.arange(2), torch.arange(2, 4))] * 2, seed=0, device="cpu")
    assert pick["mean"][0] < pick["mean"][1] and pick["chosen"] == 1
    other = dict(spec=dict(spec, epochs=None))
    given = dict(spec=dict(spec, epochs=5))
    kept = m.with_chosen_epochs({"course": mdl, "improved": other, "given": given},
                                {"course": pick, "improved": {"diverged": {"run": "improved"}}})
    assert kept == {"course": mdl, "given": given} and mdl["spec"]["epochs"] == 1 and other["spec"]["epochs"] is None


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


def test_options_epochs_given_or_chosen():
    specs = m.model_specs(m.DEFAULTS)
    assert specs["course"]["epochs"] is None and specs["improved"]["epochs"] is None      # chosen by CV
    assert (specs["course"]["max_epochs"], specs["improved"]["max_epochs"]) == (30, 60)
    assert specs["course"]["one_cycle_epochs"] is None and specs["improved"]["one_cycle_epochs"] == 60
    given = m.model_specs(vars(m.parse(["--epochs", "3", "--improved-epochs", "7"])))
    assert given["course"]["epochs"] == 3 and given["improved"]["epochs"] == given["improved"]["one_cycle_epochs"] == 7
    smoke = m.parse(["--smoke"])
    assert (smoke.folds, smoke.max_epochs, smoke.improved_max_epochs, smoke.epochs) == (2, 2, 2, None)
    for gone in ("--test-curve", "--dedupe"):                 # the test set per epoch; deduplication is the default
        with pytest.raises(SystemExit):
            m.parse([gone])


# ------------------------------------------------------------------ smoke runs
smoke_runs = smoke_fixture(SCRIPT, {"seed0": ["--seed", "0"], "seed0_again": ["--seed", "0"]}, in_process=m)


@real_data("clouds")
def test_smoke_real_figures_and_plots(smoke_runs):
    r, d = smoke_runs["seed0"]
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
        # the final models train for the chosen epochs
        assert len(r["history"][f"{model}.train_loss"]) == r["selection"]["chosen"][f"{model}.epochs"]
        assert r["model_config"][model]["epochs"] == r["selection"]["chosen"][f"{model}.epochs"]
    assert met["data.duplicate_pairs_across_splits"] == 5 and met["data.duplicate_pairs_within_train"] == 3
    assert met["data.duplicate_pairs_within_test"] == 3
    assert met["data.test_images_also_in_train"] == 5 and met["data.test_duplicates_dropped"] == 5
    assert (met["data.train_size"], met["data.test_size"]) == (32, 42)   # smoke subsets of train / deduplicated test
    assert met["baseline.majority_accuracy"] == pytest.approx(1 / 7)   # smoke test set: 6 per class
    t = r["timings"]
    assert t["train_samples_per_s"] > 0 and t["model_only_samples_per_s"] > 0 and t["memory_format"] == "channels_last"
    assert t["course.model_only_samples_per_s"] > 0 and t["selection_s"] > 0
    assert r["course_pipeline"]["sample_batch_shape"] == [1, 3, 64, 64] and r["course_pipeline"]["class_to_idx_matches"]
    for name in ("augmentation_grid", "confusion_matrix", "per_class_recall", "headline_metrics",
                 "training_train_loss", "selection_validation_accuracy"):
        assert (d / SCRIPT / f"{name}.png").stat().st_size > 1000
    assert not (d / SCRIPT / "training_test_accuracy.png").exists()


@real_data("clouds")
def test_smoke_selection_valid(smoke_runs):
    sel = smoke_runs["seed0"][0]["selection"]
    assert check_selection(sel) is sel
    assert sel["candidates"] == {"course.epochs": [1, 2], "improved.epochs": [2]}   # the one-cycle: its end
    for key, chosen in sel["chosen"].items():
        mean, folds = sel["scores"][key], sel["scores_per_fold"][key]
        assert chosen in sel["candidates"][key] and len(folds) == 2 and len(mean) == 2
        assert mean == pytest.approx([sum(v) / 2 for v in zip(*folds)])
    course = sel["scores"]["course.epochs"]
    assert course[sel["chosen"]["course.epochs"] - 1] == max(course) and max(course) not in \
        course[:sel["chosen"]["course.epochs"] - 1]                         # best, fewer on ties
    assert sel["chosen"]["improved.epochs"] == 2 and "runs its whole schedule" in sel["criterion"]
    v = sel["validation"]
    assert v["folds"] == 2 and "StratifiedGroupKFold" in v["method"]
    assert v["sizes"]["train"] == 32                                     # --smoke's training images, split in 2
    assert [a + b for a, b in zip(v["sizes"]["fit"], v["sizes"]["validation"])] == [32, 32]
    fixed = sel["fixed"]["improved.optimizer, schedule"]
    assert "04 --ablation recipe" in fixed and clouds.RECIPE_ABLATION in fixed and "test-set" not in fixed
    assert "04 --ablation on these folds" in fixed and clouds.IMPROVED_ABLATION in fixed
    assert "label smoothing, dropout and weight decay were chosen" in fixed
    assert "04 --ablation course" in sel["fixed"]["course.batch_size, course.lr"]
    assert clouds.COURSE_ABLATION in sel["fixed"]["course.batch_size, course.lr"]
    assert "fewer epochs" in sel["criterion"] and "retrained on all training images" in sel["final_model"]
    t = smoke_runs["seed0"][0]["targets"]["improved"]   # the time to target, measured on the folds
    assert set(smoke_runs["seed0"][0]["targets"]) == {"improved"} and (t["target"], t["budget_s"]) == (0.90, 120.0)
    for k, curve in enumerate(sel["scores_per_fold"]["improved.epochs"]):
        run = t["runs"][f"fold {k + 1}"]
        assert run["best"] == max(curve) and run["best_epoch"] == curve.index(max(curve)) + 1 and run["train_s"] > 0
        assert (run["time_to_target_s"] is None) == (max(curve) < 0.90)


@real_data("clouds")
def test_smoke_reproducible_and_seeds_differ(smoke_runs):
    a, b = smoke_runs["seed0"][0], smoke_runs["seed0_again"][0]
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"] and a["selection"] == b["selection"]
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


def _spied_main(argv: list[str], results_dir) -> tuple[int, dict | None, list, list]:
    """``main(argv)`` in this process with every ``predict`` call's images and the loaded data recorded."""
    calls, loaded = [], []
    predict, load_data = m.predict, clouds.load_data

    def spy_predict(model, images, *args, **kw):
        calls.append(images.cpu().clone())
        return predict(model, images, *args, **kw)

    def spy_load(*args, **kw):
        loaded.append(load_data(*args, **kw))
        return loaded[-1]
    with mock.patch.object(m, "predict", spy_predict), mock.patch.object(clouds, "load_data", spy_load):
        rc = m.main([*argv, "--results-dir", str(results_dir)])
    path = results_dir / f"{SCRIPT}.json"
    return rc, (json.loads(path.read_text()) if path.exists() else None), calls, loaded


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    rc, r, calls, (clouds,) = _spied_main(["--smoke", "--synthetic", "--model", "course", "--seeds", "1"],
                                          tmp_path_factory.mktemp("synthetic"))
    assert rc == 0
    return r, calls, clouds


def test_smoke_synthetic(synthetic_run):
    r = synthetic_run[0]
    assert r["data"]["source"] == "synthetic" and r["status"] == "ok"
    assert "course.accuracy" in r["metrics"] and "improved.accuracy" not in r["metrics"]
    assert r["headline"] == "course.f1_macro" and list(r["selection"]["chosen"]) == ["course.epochs"]


def test_test_set_read_only_by_the_final_model(synthetic_run):
    r, calls, clouds = synthetic_run
    train, test = clouds.splits[64]
    rows = {name: {bytes(x.numpy()) for x in s.images} for name, s in (("train", train), ("test", test))}
    is_test = [torch.equal(c, test.images) if c.shape == test.images.shape else False for c in calls]
    # 2 folds x 2 epochs of validation accuracy, then the one final model (one seed) on the test set, once
    assert is_test == [False] * 4 + [True]
    val_sizes = r["selection"]["validation"]["sizes"]["validation"]
    assert [len(c) for c in calls[:4]] == [n for n in val_sizes for _ in range(2)]     # fold by fold, epoch by epoch
    for c in calls[:4]:     # validation images: training images, none of them a test image
        assert all(bytes(x.numpy()) in rows["train"] and bytes(x.numpy()) not in rows["test"] for x in c)


def test_ablation_reads_only_training_images_and_follows_its_rule(tmp_path):
    """--ablation runs every candidate through the folds, reads no test image, chooses by the script's rule and leaves
    the experiment's own result alone; each candidate's spec has its size, epochs, batch, lr and widths."""
    rc, r, calls, (photos,) = _spied_main(["--ablation", "--smoke", "--synthetic"], tmp_path)
    assert rc == 0 and r is None                                      # no 04_clouds_cnn.json
    rec = json.loads((tmp_path / "ablation" / f"{SCRIPT}.ablation.json").read_text())
    assert len(calls) == len(m.ABLATION) * 2 * 2                      # candidates x 2 folds x 2 epochs (--smoke)
    for c in calls:
        size = c.shape[-1]
        train, test = photos.splits[size]
        train_rows = {bytes(x.numpy()) for x in train.images}
        assert all(bytes(x.numpy()) in train_rows for x in c) and len(c) < len(train)
    assert sorted({c.shape[-1] for c in calls}) == sorted({c[0] for c in m.ABLATION.values()})
    sel = rec["selection"]
    assert sel["candidates"] == {n: [*c[:4], list(c[4]), list(c[5])] for n, c in m.ABLATION.items()}
    best = {n: rec["metrics"][f"{n}.best"] for n in m.ABLATION}
    assert sel["chosen"]["candidate"] == results.choose_candidate(rec["targets"], best) == rec["headline"][:-5]
    for name, scores in sel["scores"].items():
        assert best[name] == round(scores[-1], 9) and rec["targets"][name]["of"] == 2   # the schedule's end
    size, epochs, batch, lr, widths, reg = m.ABLATION["s64_e30_wide"]
    spec = m.model_specs(dict(m.DEFAULTS, improved_size=size, improved_max_epochs=epochs, improved_widths=widths))
    assert spec["improved"]["widths"] == [48, 96, 192, 384] and spec["improved"]["one_cycle_epochs"] == 30
    assert [mod.out_channels for mod in spec["improved"]["make"]().modules() if hasattr(mod, "out_channels")] == \
        [48, 96, 192, 384]
    *_, widths, reg = m.ABLATION["s64_e60_3blocks"]   # one block fewer
    assert sum(isinstance(mod, torch.nn.Conv2d) for mod in
               m.model_specs(dict(m.DEFAULTS, improved_widths=widths))["improved"]["make"]().modules()) == 3
    for name, want in (("s64_e60_smooth0", (0.0, 0.3, 1e-4, "AdamW")), ("s64_e60_drop0.5", (0.1, 0.5, 1e-4, "AdamW")),
                       ("s64_e60_wd0", (0.1, 0.3, 0.0, "Adam"))):   # each regulariser reaches the loss, model, optimizer
        spec = m.model_specs(dict(m.DEFAULTS, improved_regularisation=m.ABLATION[name][5]))["improved"]
        model = spec["make"]()
        case = (spec["label_smoothing"], model.classifier[0].p, spec["weight_decay"],
                type(m.make_optimizer(model.parameters(), spec)).__name__)
        assert case == want, name


def test_fold_accuracy_is_exact_so_that_equal_counts_tie():
    """The cross-validation's accuracy is k / n exactly: equal counts of correct images score equal, whichever fold
    they fall in (a float32 mean would not: it differs from k / n for some k of a 158-image fold)."""
    y = torch.zeros(158, dtype=torch.long)
    preds = [torch.cat([torch.zeros(k), torch.ones(158 - k)]).long() for k in range(159)]
    assert [clouds.exact_accuracy(p, y) for p in preds] == [k / 158 for k in range(159)]
    assert any(float((p == y).float().mean()) != k / 158 for k, p in enumerate(preds))   # what it replaced
    folds = [(100, 101, 102), (101, 101, 101), (102, 100, 101)]                       # 303 of 474 each way
    means = [round(sum(clouds.exact_accuracy(preds[k], y) for k in ks) / 3, 9) for ks in folds]
    assert len(set(means)) == 1


def test_course_ablation_tries_each_batch_and_lr_on_training_images_only(tmp_path):
    """--ablation course runs the course model with every (batch, lr) of COURSE_ABLATION through the folds at 64 px,
    reads no test image, scores each candidate at its best epoch (how every run chooses the course model's epochs)
    and chooses the best; the improved model's ablation record is not written."""
    rc, r, calls, (photos,) = _spied_main(["--ablation", "course", "--smoke", "--synthetic"], tmp_path)
    assert rc == 0 and r is None and sorted(p.name for p in (tmp_path / "ablation").iterdir()) == [
        f"{SCRIPT}.course.ablation.json"]
    rec = json.loads((tmp_path / "ablation" / f"{SCRIPT}.course.ablation.json").read_text())
    assert len(calls) == len(m.COURSE_ABLATION) * 2 * 2             # candidates x 2 folds x 2 epochs (--smoke)
    train = photos.splits[m.COURSE_SIZE][0]
    rows = {bytes(x.numpy()) for x in train.images}
    assert all(c.shape[-1] == m.COURSE_SIZE and all(bytes(x.numpy()) in rows for x in c) for c in calls)
    sel = rec["selection"]
    assert sel["candidates"] == {n: list(c) for n, c in m.COURSE_ABLATION.items()}
    assert sel["criterion"] == m.COURSE_ABLATION_CRITERION and rec.get("targets") is None   # no goal for it
    best = {n: rec["metrics"][f"{n}.best"] for n in m.COURSE_ABLATION}
    assert all(best[n] == max(round(v, 9) for v in sel["scores"][n]) for n in best)   # each at its best epoch
    chosen = max(best, key=lambda n: (best[n], -list(best).index(n)))                  # ties -> the first listed
    assert sel["chosen"] == {"course.batch_size, lr": list(m.COURSE_ABLATION[chosen]), "candidate": chosen}
    spec = m.model_specs(dict(m.DEFAULTS, batch_size=32, lr=2e-3))["course"]
    assert (spec["batch"], spec["lr"], spec["size"], spec["one_cycle_epochs"]) == (32, 2e-3, m.COURSE_SIZE, None)


def test_recipe_ablation_trains_each_optimizer_and_schedule_shape_on_training_images_only(tmp_path):
    """--ablation recipe runs the improved model with every (optimizer, peak lr, schedule shape) of RECIPE_ABLATION
    through the folds (no test image read), each fold with that optimizer and schedule, and chooses by the improved
    model's rule; the first candidate is the improved model's defaults."""
    made, make, make_opt = [], m.schedules.make, m.make_optimizer

    def spy_schedule(opt, shape, peak_lr, total_steps):
        made.append((type(opt).__name__, shape, peak_lr, opt.defaults.get("nesterov", False)))
        return make(opt, shape, peak_lr, total_steps)
    with mock.patch.object(m.schedules, "make", spy_schedule):
        rc, r, calls, (photos,) = _spied_main(["--ablation", "recipe", "--smoke", "--synthetic"], tmp_path)
    assert rc == 0 and r is None and [p.name for p in (tmp_path / "ablation").iterdir()] == [
        f"{SCRIPT}.recipe.ablation.json"]
    rec = json.loads((tmp_path / "ablation" / f"{SCRIPT}.recipe.ablation.json").read_text())
    optimizer = {"adamw": ("AdamW", False), "sgd": ("SGD", True)}
    assert made == [(optimizer[o][0], shape, lr, optimizer[o][1]) for o, lr, shape in m.RECIPE_ABLATION.values()
                    for _ in range(2)]                                # every candidate, both folds (--smoke)
    rows = {bytes(x.numpy()) for x in photos.splits[m.DEFAULTS["improved_size"]][0].images}
    assert all(bytes(x.numpy()) in rows for c in calls for x in c)     # validation images are training images
    sel = rec["selection"]
    assert sel["candidates"] == {n: list(c) for n, c in m.RECIPE_ABLATION.items()}
    first = next(iter(m.RECIPE_ABLATION.values()))
    assert (first[0], first[2]) == clouds.IMPROVED_RECIPE and first[1] == m.DEFAULTS["improved_lr"]
    best = {n: rec["metrics"][f"{n}.best"] for n in m.RECIPE_ABLATION}
    assert all(best[n] == round(sel["scores"][n][-1], 9) for n in best)   # each at its schedule's end
    assert sel["chosen"]["candidate"] == results.choose_candidate(rec["targets"], best) == rec["headline"][:-5]
    assert sel["chosen"]["improved.optimizer, lr, schedule"] == list(m.RECIPE_ABLATION[sel["chosen"]["candidate"]])


def test_ablation_where_every_candidate_diverges_exits_3_and_writes_nothing(tmp_path, capsys):
    def diverge(*a, **k):
        raise results.Diverged(0, 0, float("nan"))
    with mock.patch.object(m, "train_one", diverge):
        rc = m.main(["--ablation", "--smoke", "--synthetic", "--results-dir", str(tmp_path)])
    assert rc == 3 and "every candidate diverged" in capsys.readouterr().err
    assert not (tmp_path / "ablation").exists() and not (tmp_path / f"{SCRIPT}.json").exists()


def test_epochs_given_skip_the_selection(tmp_path):
    rc, r, calls, (clouds,) = _spied_main(["--smoke", "--synthetic", "--seeds", "1", "--epochs", "1",
                                           "--improved-epochs", "2"], tmp_path)
    assert rc == 0 and len(calls) == 2           # no validation: each model reads the test set once
    sel = r["selection"]
    assert sel["chosen"] == {} and sel["scores"] == {} and sel["validation"]["method"].startswith("none")
    assert sel["validation"]["folds"] == 0 and sel["validation"]["sizes"]["validation"] == []
    assert sel["fixed"]["course.epochs"].startswith("1,") and sel["fixed"]["improved.epochs"].startswith("2,")
    assert len(r["history"]["improved.train_loss"]) == 2 and r["model_config"]["improved"]["one_cycle_epochs"] == 2


def test_deviations_recorded(synthetic_run):
    r = synthetic_run[0]
    assert r["deviations"] == m.DEVIATIONS
    flags = check_deviations(r, ["rotation range", "image size", "data pipeline", "test set deduplicated",
                                 "epochs, batch size, learning rate", "seeds", "memory format", "improved model"],
                             parse=m.parse)
    devs = {d["what"]: d for d in r["deviations"]}
    rotation, size = devs["rotation range"], devs["image size"]
    assert "0 and 45" in rotation["course"] and "[-45, 45]" in rotation["here"]
    assert flags["rotation range"].rotation_from_zero and flags["test set deduplicated"].keep_duplicates
    assert "128" in size["course"] and size["here"] == "64x64" and "64*16*16" in size["why"]
    epochs = devs["epochs, batch size, learning rate"]
    assert "cross-validation" in epochs["here"] and "test-curve" not in str(r["deviations"])
    assert "486" in devs["test set deduplicated"]["course"] and "481" in devs["test set deduplicated"]["here"]


def test_divergence_in_the_selection_exits_3(results_dir):
    proc, r = run_script(SCRIPT, "--smoke", "--synthetic", "--model", "course", "--seeds", "1", "--lr", "1e30",
                         results_dir=results_dir, check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    (d,) = r["diverged"]                      # where it happened (results.Diverged.to_json), no test figures
    # fold 1 fits 16 images: one batch an epoch, whose loss is finite; the step after the first update is not
    assert r["status"] == "diverged" and (d["run"], d["seed"], d["epoch"], d["step"]) == ("course", 0, 1, 0)
    assert d["phase"] == "cross-validation fold 1" and d["value"] == "nan" and r["selection"]["chosen"] == {}
    assert "course.accuracy" not in r["metrics"] and r["headline"] == "baseline.majority_accuracy"


def test_divergence_of_a_final_model_exits_3(tmp_path):
    rc, r, calls, _ = _spied_main(["--smoke", "--synthetic", "--model", "course", "--seeds", "1", "--epochs", "1",
                                   "--lr", "1e30"], tmp_path)
    (d,) = r["diverged"]
    assert rc == 3 and r["status"] == "diverged" and calls == [] and "phase" not in d
    assert (d["run"], d["seed"], d["epoch"], d["value"]) == ("course", 0, 0, "nan")
    assert "course.accuracy" not in r["metrics"]


def test_missing_data_exits_2(results_dir, tmp_path):
    proc, r = run_script(SCRIPT, "--smoke", "--data-dir", str(tmp_path / "nowhere"), results_dir=results_dir,
                         check=False)
    assert proc.returncode == 2 and "clouds" in proc.stderr and "Traceback" not in proc.stderr and r is None
