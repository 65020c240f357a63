"""The clouds photos of 04_clouds_cnn (transcript lines 495-634): data, augmentation, the two CNNs, figures.

Not an experiment (run_all.sh and the benchmarks pick only ``experiments/NN_*.py``); 04 chooses the epochs, trains
and records, this holds what it trains on and with, and how its results are shown:
  * data: the JPEGs decoded once per input size, the byte-identical duplicates, the deduplicated test set,
    --smoke's subsets and the course's ImageFolder way in (run once, as a check);
  * augmentation: the course's flip, rotation and autocontrast, drawn per image on whole batches;
  * models: the course's CNN and the improved one;
  * evaluation: the per-class figures, the course's three observations and the majority baseline;
  * the plots and the printed summary.
Imported as ``from experiments import clouds``.
"""
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.model_selection import StratifiedGroupKFold
from torchmetrics.utilities.plot import plot_confusion_matrix
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import make_grid

from common import data, metrics, plots, repro, results
from common.device import to_device

NUM_CLASSES = 7
COURSE_SIZE = 64          # the input size the course model's Linear(64*16*16, ...) is built for
MAX_ROTATION = 45.0
CLEAR_SKY, HIGH_CUMULIFORM = "clear sky", "high cumuliform clouds"
HEADLINE_KEYS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")
IMPROVED_WIDTHS = (32, 64, 128, 256)   # the improved model's channels per block (and depth: one block each)
IMPROVED_REGULARISATION = (0.1, 0.3, 1e-4)   # label smoothing, dropout, weight decay (0: Adam; above 0: AdamW)
# The record of 04 --ablation that chose the improved model's input size, epochs, batch, lr, widths and regularisation
IMPROVED_ABLATION = "results/reference/epyc-avx512-2cpu/ablation/04_clouds_cnn.ablation.json"
# ... and of 04 --ablation course, that chose the course model's batch and Adam lr
COURSE_ABLATION = "results/reference/epyc-avx512-2cpu/ablation/04_clouds_cnn.course.ablation.json"
IMPROVED_RECIPE = ("adamw", "onecycle")   # the optimizer family and schedule shape (common.schedules) ...
# ... that 04 --ablation recipe chose (AdamW: Adam where the weight decay is 0)
RECIPE_ABLATION = "results/reference/epyc-avx512-2cpu/ablation/04_clouds_cnn.recipe.ablation.json"


SPLIT_SEED = 0   # 04's cross-validation folds


def cv_folds(train: data.ImageSet, folds: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(fit, validation) training-image indices of a stratified ``folds``-fold split (shuffled, seed SPLIT_SEED);
    byte-identical training images (the same sha256) stay in one fold."""
    cv = StratifiedGroupKFold(folds, shuffle=True, random_state=SPLIT_SEED)
    splits = cv.split(train.labels, train.labels, groups=train.file_sha256)
    return [(torch.as_tensor(fit), torch.as_tensor(val)) for fit, val in splits]


# --------------------------------------------------------------------------- models
class CourseNet(nn.Module):
    """The course's CNN: two (Conv 3x3 pad 1 -> ELU -> MaxPool 2) blocks, Flatten, Linear(64*16*16, classes).

    Its ELUs are most of its training step on an AVX-512 CPU (torch.profiler, batch 16, 2 threads, the 2-core AMD
    EPYC with AVX-512: aten::elu 55 % of a 27.9 ms step): torch 2.14's AVX-512 kernels compute ELU's expm1 one
    float at a time (F.elu of 2M floats 20 ms, torch.exp 1.2 ms); its AVX2 kernels do not (same CPU, with
    ATEN_CPU_CAPABILITY=avx2: F.elu 3.9 ms, the step 16.1 ms). Kept as is: nn.ELU is the course's layer, and forcing
    the AVX2 kernels for the whole process would change every script's figures on AVX-512 CPUs."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.feature_extractor = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=3, padding=1), nn.ELU(), nn.MaxPool2d(kernel_size=2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1), nn.ELU(), nn.MaxPool2d(kernel_size=2),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(64 * 16 * 16, num_classes)

    def forward(self, x):
        return self.classifier(self.feature_extractor(x))


class ImprovedNet(nn.Module):
    """Four (Conv-BN-ReLU -> MaxPool) blocks, global average pooling (any input size), dropout, Linear: four
    times the course model's depth; 391k parameters to its 134k (of which its Linear holds 115k)."""

    def __init__(self, num_classes: int = NUM_CLASSES, widths=IMPROVED_WIDTHS,
                 dropout: float = IMPROVED_REGULARISATION[1]):
        super().__init__()
        layers, c = [], 3
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = w
        self.feature_extractor = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(c, num_classes))

    def forward(self, x):
        return self.classifier(self.feature_extractor(x))


def as_format(t, channels_last: bool):
    """A batch or a model in channels_last memory format when asked, else unchanged."""
    return t.to(memory_format=torch.channels_last) if channels_last else t


# --------------------------------------------------------------------------- transforms and augmentation
def course_train_transforms(degrees=MAX_ROTATION) -> v2.Compose:
    """The course's training transforms, per PIL image (run once through ImageFolder; training uses augment_batch)."""
    return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomRotation(degrees), v2.RandomAutocontrast(),
                       v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Resize((COURSE_SIZE, COURSE_SIZE))])


def to_float(images: torch.Tensor) -> torch.Tensor:
    """The test-time transform of a uint8 batch (resized at decode time): float in [0, 1]."""
    return TF.to_dtype(images, torch.float32, scale=True)


def rotate_batch(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image of ``x`` (N, C, H, W; H == W) by its own angle about the centre, zero fill."""
    a = torch.deg2rad(degrees.to(x.device, x.dtype))
    cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment_batch(images: torch.Tensor, g: torch.Generator, p_flip: float = 0.5, max_degrees: float = MAX_ROTATION,
                  p_autocontrast: float = 0.5, from_zero: bool = False) -> torch.Tensor:
    """The course's augmentation in its order -- flip, rotation in [-max, max] degrees ([0, max] ``from_zero``),
    autocontrast -- drawn per image from the CPU generator ``g`` (torchvision's v2 transforms draw once per
    call, i.e. per batch); returns float in [0, 1]."""
    x = to_float(images)
    u = to_device(torch.rand(3, len(x), generator=g), x.device)   # one copy of every draw, not three
    flip, contrast = (u[0] < p_flip).view(-1, 1, 1, 1), (u[2] < p_autocontrast).view(-1, 1, 1, 1)
    x = torch.where(flip, TF.horizontal_flip(x), x)
    x = rotate_batch(x, (u[1] if from_zero else u[1] * 2 - 1) * max_degrees)
    return torch.where(contrast, TF.autocontrast(x), x)


# --------------------------------------------------------------------------- data
def exact_accuracy(preds: torch.Tensor, target: torch.Tensor) -> float:
    """Correct / total as a float64 of two integers. A float32 mean is off by up to ~1e-8, which the 9-decimal
    rounding of the cross-validation scores does not absorb: two course-model candidates with 303 of 474 validation
    images right scored 0.639240503 and 0.639240523, and their tie went to the second."""
    return int((preds == target).sum()) / len(target)


def batch_sizes(n: int, batch: int, max_batches: int | None) -> list[int]:
    sizes = [min(batch, n - i) for i in range(0, n, batch)]
    return sizes[:max_batches] if max_batches else sizes


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, device, channels_last: bool, batch: int = 128) -> torch.Tensor:
    model.eval()
    out = [model(as_format(to_float(to_device(images[i:i + batch], device)), channels_last)).argmax(1)
           for i in range(0, len(images), batch)]
    return torch.cat(out).cpu()   # one copy back, not one per batch


def with_chosen_epochs(models: dict, picks: dict) -> dict:
    """Put the choices into the specs (in place: a spec is also the record's model_config); return the ones to train."""
    for name, pick in picks.items():
        if "chosen" in pick:
            models[name]["spec"]["epochs"] = pick["chosen"]
    return {name: mdl for name, mdl in models.items() if name not in picks or "chosen" in picks[name]}


def find_duplicates(train: data.ImageSet, test: data.ImageSet, root: str | None = None) -> dict:
    """Byte-identical files (same sha256) within train, within test and across the splits: pair counts (k identical
    files in one split are k*(k-1)/2 pairs), the groups as paths under ``root``, ``test_in_train`` (dropped)."""
    tr, te = defaultdict(list), defaultdict(list)
    for groups, split in ((tr, train), (te, test)):
        for i, h in enumerate(split.file_sha256):
            groups[h].append(i)
    cross = [(tr[h], te[h]) for h in te if h in tr]

    def paths(split, idx):
        return [str(Path(split.paths[i]).relative_to(root)) if root else split.paths[i] for i in idx]
    return {"pairs_within_train": sum(len(v) * (len(v) - 1) // 2 for v in tr.values()),
            "pairs_within_test": sum(len(v) * (len(v) - 1) // 2 for v in te.values()),
            "pairs_across_splits": sum(len(a) * len(b) for a, b in cross),
            "test_in_train": sorted(i for _, b in cross for i in b),
            "paths": {"groups_within_train": [paths(train, v) for v in tr.values() if len(v) > 1],
                      "groups_within_test": [paths(test, v) for v in te.values() if len(v) > 1],
                      "groups_across": [[paths(train, a), paths(test, b)] for a, b in cross]}}


def subset(s: data.ImageSet, idx) -> data.ImageSet:
    idx = torch.as_tensor(idx, dtype=torch.long)
    keep = idx.tolist()
    return data.ImageSet(s.images[idx], s.labels[idx], s.classes, [s.paths[i] for i in keep],
                         [s.file_sha256[i] for i in keep])


def stratified_head(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """Indices of the first ``per_class`` examples of every class."""
    return torch.cat([torch.nonzero(labels == k).flatten()[:per_class] for k in labels.unique()]).sort().values


def run_splits(train: data.ImageSet, test: data.ImageSet, dedupe_idx: list[int] | None, smoke: dict | None) -> tuple:
    """The sets a run uses: test without ``dedupe_idx`` (unless --keep-duplicates); with ``smoke`` (04's SMOKE),
    its ``train_images`` random training images and the first ``test_per_class`` test images of each class."""
    if dedupe_idx:
        drop = set(dedupe_idx)
        test = subset(test, [i for i in range(len(test)) if i not in drop])
    if smoke:
        g = torch.Generator().manual_seed(0)
        train = subset(train, torch.randperm(len(train), generator=g)[:smoke["train_images"]].sort().values)
        test = subset(test, stratified_head(test.labels, smoke["test_per_class"]))
    return train, test


@dataclass
class Clouds:
    """The data of a run: what was read, the class names, duplicates, the course's ImageFolder check, the sets."""
    info: data.DataInfo
    class_to_idx: dict                 # = ImageFolder's class_to_idx (sorted folder names)
    dups: dict                         # find_duplicates on the full splits
    course_pipeline: dict | None       # course_pipeline(), on real data
    splits: dict                       # input size -> (train, test) as the run uses them
    dropped: int                       # test images dropped as byte-identical to a training image


def course_pipeline(args, class_to_idx: dict) -> dict:
    """The course's way in, run once: ImageFolder with its transforms, one sample through a DataLoader."""
    degrees = (0.0, MAX_ROTATION) if args.rotation_from_zero else MAX_ROTATION
    folder = data.clouds_image_folder("train", args.data_dir, transform=course_train_transforms(degrees))
    loader = torch.utils.data.DataLoader(folder, batch_size=1, shuffle=True, generator=repro.make_generator(0))
    image, _ = next(iter(loader))
    print(f"  course ImageFolder: {len(folder)} images, first batch {tuple(image.shape)}", flush=True)
    return {"imagefolder_train_len": len(folder), "sample_batch_shape": list(image.shape),
            "class_to_idx": folder.class_to_idx, "class_to_idx_matches": folder.class_to_idx == class_to_idx}


def load_data(args, specs: dict, smoke: dict | None) -> Clouds:
    """Decode the clouds once per input size of ``specs`` (the course model's first); raises data.DataError."""
    sizes = dict.fromkeys([COURSE_SIZE] + [s["size"] for s in specs.values()])
    decoded = {size: data.load_clouds(args.data_dir, synthetic=args.synthetic, size=size) for size in sizes}
    train, test, info = decoded[COURSE_SIZE]
    class_to_idx = {c: i for i, c in enumerate(train.classes)}
    dups = find_duplicates(train, test, info.path)
    dedupe_idx = [] if args.keep_duplicates else dups["test_in_train"]
    print(f"04_clouds_cnn: data {info.source}, train {len(train)}, test {len(test)}; duplicate pairs: "
          f"{dups['pairs_within_train']} within train, {dups['pairs_within_test']} within test, "
          f"{dups['pairs_across_splits']} across splits; {len(dedupe_idx)} test images dropped as also in train",
          flush=True)
    pipeline = course_pipeline(args, class_to_idx) if info.source == "real" else None
    splits = {size: run_splits(tr, te, dedupe_idx, smoke) for size, (tr, te, _) in decoded.items()}
    return Clouds(info, class_to_idx, dups, pipeline, splits, len(dedupe_idx))


# --------------------------------------------------------------------------- evaluation
def evaluate(preds: torch.Tensor, target: torch.Tensor, class_to_idx: dict) -> dict:
    """``metrics.classification_report`` (per-class scores named through ``class_to_idx``, as the course maps
    them) and the course's three observations as 0/1 flags."""
    m = metrics.classification_report(preds, target, sorted(class_to_idx, key=class_to_idx.get))
    rec = {c: m[f"recall.{c}"] for c in class_to_idx}
    m["obs.recall_macro_above_precision_macro"] = float(m["recall_macro"] > m["precision_macro"])
    if CLEAR_SKY in rec:
        m["obs.clear_sky_recall_is_1"] = float(rec[CLEAR_SKY] == 1.0)
    if HIGH_CUMULIFORM in rec:
        m["obs.high_cumuliform_lowest_recall"] = float(min(rec, key=rec.get) == HIGH_CUMULIFORM)
    return m


def fixed_metrics(photos: Clouds) -> dict:
    """The figures every seed shares: the majority-class baseline (of the training labels) and the data."""
    train, test = photos.splits[COURSE_SIZE]
    majority = int(torch.bincount(train.labels, minlength=NUM_CLASSES).argmax())
    base = evaluate(torch.full_like(test.labels, majority), test.labels, photos.class_to_idx)
    pairs = ("pairs_within_train", "pairs_within_test", "pairs_across_splits")
    return {"baseline.majority_accuracy": base["accuracy"], "baseline.majority_f1_macro": base["f1_macro"],
            "baseline.majority_recall_macro": base["recall_macro"],
            **{f"data.duplicate_{key}": photos.dups[key] for key in pairs},
            "data.test_images_also_in_train": len(photos.dups["test_in_train"]),
            "data.test_duplicates_dropped": photos.dropped,
            "data.train_size": len(train), "data.test_size": len(test)}


# --------------------------------------------------------------------------- what a run records
def seed_history(runs: list[dict], names) -> dict:
    """Per model and curve: the mean over the seeds that finished, and every seed's curve."""
    history = {}
    for name in names:
        hists = [run["history"][name] for run in runs if name in run["history"]]
        for key in hists[0] if hists else ():
            per_seed = [h[key] for h in hists]
            history[f"{name}.{key}"] = [sum(v) / len(v) for v in zip(*per_seed)]
            history[f"{name}.{key}_per_seed"] = per_seed
    return history


def run_timings(runs: list[dict], models: dict, memory_format: str, wall_s: float) -> dict:
    """Training, evaluation and data-pipeline seconds, and the throughput with the pipeline vs model-only."""
    done = [dict(run["timing"][name], name=name) for run in runs for name in models if name in run["timing"]]

    def total(key, name=None):   # data_s is None off the CPU (not measured)
        values = [d[key] for d in done if name in (None, d["name"])]
        return None if None in values else sum(values, 0.0)

    def per_s(samples, seconds):
        return samples / seconds if seconds else None
    model_only_s = sum(total("samples", n) / m["model_only"] for n, m in models.items())
    timings = {"wall_s": wall_s, "train_s": total("train_s"), "eval_s": total("eval_s"), "data_s": total("data_s"),
               "memory_format": memory_format, "train_samples_per_s": per_s(total("samples"), total("train_s")),
               "model_only_samples_per_s": per_s(total("samples"), model_only_s)}
    if timings["train_samples_per_s"] and timings["model_only_samples_per_s"]:
        timings["pipeline_ratio"] = timings["train_samples_per_s"] / timings["model_only_samples_per_s"]
    for n, m in models.items():
        timings.update({f"{n}.train_s": total("train_s", n), f"{n}.data_s": total("data_s", n),
                        f"{n}.train_samples_per_s": per_s(total("samples", n), total("train_s", n)),
                        f"{n}.model_only_samples_per_s": m["model_only"]})
    return timings


def extra_record(photos: Clouds, specs: dict, per_seed: dict, cms: dict, diverged: list) -> dict:
    classes = list(photos.class_to_idx)

    def lowest_recall(name):   # the class with the lowest test recall, seed by seed (the first one on a tie)
        by_seed = zip(*(per_seed[f"{name}.recall.{c}"] for c in classes))
        return [classes[min(range(len(classes)), key=recalls.__getitem__)] for recalls in by_seed]
    return {"diverged": diverged, "class_to_idx": photos.class_to_idx,
            "lowest_recall_class_per_seed": {n: lowest_recall(n) for n in specs if f"{n}.accuracy" in per_seed},
            "duplicates": photos.dups["paths"], "course_pipeline": photos.course_pipeline,
            "confusion_matrix_summed_over_seeds": {n: cm.tolist() for n, cm in cms.items()},
            "model_config": {n: {k: v for k, v in spec.items() if k != "make"} for n, spec in specs.items()},
            "notes": "Augmentation per sample on batches (affine_grid + grid_sample rotation, torchvision v2 flip and "
                     "autocontrast) from a seeded torch.Generator, on images decoded once at 64x64. See deviations."}


def selection_record(specs: dict, picks: dict, folds: list, n_train: int, split_seed: int) -> dict:
    """The result's "selection": the folds; per cross-validated model its epoch candidates, mean validation accuracy
    per epoch (``scores``) and choice; the settings not selected on this data, with where they came from."""
    done = {f"{n}.epochs": p for n, p in picks.items() if "chosen" in p}
    fixed = {f"{n}.epochs": f"{s['epochs']}, given on the command line" for n, s in specs.items() if n not in picks}
    if "course" in specs:
        fixed["course.batch_size, course.lr"] = (
            "16 and Adam 1e-3 by default (the transcript gives neither for this model): chosen by 04 --ablation course "
            "on these folds (" + COURSE_ABLATION + "), of six (batch, lr) pairs, by the mean validation accuracy at "
            "each one's best epoch")
    if "improved" in specs:
        fixed["improved.optimizer, schedule"] = (
            "AdamW (plain Adam where the weight decay is 0) with a one-cycle schedule run to its end: chosen by 04 "
            "--ablation recipe on these folds (" + RECIPE_ABLATION + ") against a 10 % warm-up, linear warm-up and "
            "annealing, cosine annealing without warm-up, a constant lr, and Nesterov SGD at two peak lrs. Its input "
            "size, schedule epochs, batch size, peak lr, widths and depth (3 or 4 blocks), label smoothing, dropout "
            "and weight decay were chosen by 04 --ablation on these folds (" + IMPROVED_ABLATION + ")")
    validation = {"method": f"stratified {len(folds)}-fold cross-validation on the training images (sklearn "
                            f"StratifiedGroupKFold, seed {split_seed}; byte-identical images in one fold); fold k "
                            "trains with seed --seed + k", "folds": len(folds),
                  "sizes": {"train": n_train, "fit": [len(a) for a, _ in folds],
                            "validation": [len(b) for _, b in folds]}}
    if not picks:
        validation = {"method": "none: every epoch count was given", "folds": 0,
                      "sizes": {"train": n_train, "validation": []}}
    return {"validation": validation, "chosen": {k: p["chosen"] for k, p in done.items()},
            "candidates": {k: p["candidates"] for k, p in done.items()},
            "criterion": f"mean validation accuracy over the {len(folds)} folds after each epoch, highest; ties -> "
                         "fewer epochs; but a one-cycle model (the improved one) runs its whole schedule, whose length "
                         "04 --ablation chose: before the schedule anneals its validation accuracy jumps from one "
                         "epoch to the next (scores_per_fold), so its peak would be luck",
            "final_model": "retrained on all training images for the chosen epochs, once per seed; only these final "
                           "models see the test set, once each",
            "scores": {k: p["mean"] for k, p in done.items()},
            "scores_per_fold": {k: p["per_fold"] for k, p in done.items()}, "fixed": fixed}


# --------------------------------------------------------------------------- figures and the printed summary
# What 04's time to target measures (its TARGETS)
TARGET_NOTE = ("training seconds of one cross-validation fold's run (evaluation not counted; it trains on the fold's "
               "fit part, about 2/3 of the training images, so an epoch takes about 2/3 of a final run's) until its "
               "validation accuracy after an epoch first reaches the target; the budget is the goal on a 2-core AVX2 CPU")


def target_records(picks: dict, goal: tuple) -> dict | None:
    """The result's ``targets``: per cross-validated run with a target (the improved model's ``goal``: validation
    accuracy, budget seconds), each fold's time to it."""
    return {name: results.target_record("val_accuracy (the cross-validation folds)", goal[0], p["reached"],
                                        budget_s=goal[1], note=TARGET_NOTE)
            for name, p in picks.items() if "reached" in p} or None


def print_ablation(done: dict, best: dict, targets: dict | None, chosen: str, criterion: str) -> None:
    """04 --ablation's summary: each candidate's best mean validation accuracy, its epoch, the folds reaching the target."""
    for name in done:
        t = (targets or {}).get(name)
        reach = "" if t is None else (f", target {t['target']} reached in {t['reached']}/{t['of']} folds" + (
            "" if t["median_time_to_target_s"] is None else f" (median {t['median_time_to_target_s']:.0f} s)"))
        print(f"  {name:20s} best mean validation accuracy {best[name]:.4f} (epoch {done[name]['chosen']}){reach}")
    print(f"  chosen: {chosen} ({criterion})")


def plot_selection(selection: dict, path) -> Path:
    """Per model, the mean validation accuracy over the folds after each epoch; the chosen epoch starred."""
    fig, ax = plots.plt.subplots(figsize=(7, 4.2))
    for key, ys in selection["scores"].items():
        e = selection["chosen"][key]
        line, = ax.plot(range(1, len(ys) + 1), ys, marker="o", ms=3, label=key.split(".")[0])
        ax.plot(e, ys[e - 1], "*", ms=14, color=line.get_color(), label=f"chosen: {e} epochs")
    ax.set(title=f"epochs by cross-validation ({selection['validation']['folds']} folds of the training images)",
           xlabel="epoch", ylabel="mean validation accuracy")
    ax.xaxis.set_major_locator(plots.matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    return plots.save_figure(fig, path)


def plot_augmentations(images: torch.Tensor, g: torch.Generator, from_zero: bool, path) -> Path:
    """Originals (top row) above three augmented draws of each."""
    tiles = torch.cat([to_float(images)] + [augment_batch(images, g, from_zero=from_zero) for _ in range(3)])
    fig, ax = plots.plt.subplots(figsize=(1.6 * len(images), 1.7 * 4))
    ax.imshow(make_grid(tiles, nrow=len(images), pad_value=1.0).permute(1, 2, 0).numpy())   # the course's permute
    ax.set(xticks=[], yticks=[], title="top row: originals; below: three augmented draws of each")
    fig.suptitle("training augmentation: flip, rotation <= 45 deg, autocontrast (per image)")
    return plots.save_figure(fig, path)


def plot_confusion(cms: dict, classes: list[str], path) -> Path:
    """Per model, the confusion matrix summed over seeds as row shares (the diagonal is the recall)."""
    fig, axes = plots.plt.subplots(1, len(cms), figsize=(6.2 * len(cms), 5.6), squeeze=False)
    for ax, (name, cm) in zip(axes[0], cms.items()):
        plot_confusion_matrix(cm.float() / cm.sum(1, keepdim=True).clamp(min=1), ax=ax, cmap="Blues",
                              labels=[c.replace(" clouds", "") for c in classes])
        ax.set_title(f"{name}: confusion, row shares (summed over seeds)")
    return plots.save_figure(fig, path)


def make_plots(pdir: Path, photos: Clouds, args, names, mean: dict, std: dict, fixed: dict, history: dict,
               cms: dict, diverged: list, selection: dict) -> None:
    """The run's figures under ``pdir``; the test-set ones only when no model diverged."""
    def bars(keys, name, title, ylabel, **kw):
        labels = [k.replace(".recall.", " ").replace(".", " ").replace(" clouds", "") for k in keys]
        plots.bar_with_errors(labels, [mean[k] for k in keys], [std[k] for k in keys], pdir / name, title, ylabel, **kw)
    train, classes = photos.splits[COURSE_SIZE][0], list(photos.class_to_idx)
    show = stratified_head(train.labels, 1)[:7]
    plot_augmentations(train.images[show], repro.make_generator(args.seed), args.rotation_from_zero,
                       pdir / "augmentation_grid.png")
    if not diverged:
        plot_confusion(cms, classes, pdir / "confusion_matrix.png")
        bars([f"{n}.recall.{c}" for n in names for c in classes], "per_class_recall.png",
             "per-class recall (mean ± std over seeds)", "recall")
        bars([f"{n}.{k}" for n in names for k in HEADLINE_KEYS], "headline_metrics.png",
             "test metrics, mean ± std over seeds", "score",
             baselines={"majority accuracy": fixed["baseline.majority_accuracy"],
                        "majority macro F1": fixed["baseline.majority_f1_macro"]})
    if selection["scores"]:
        plot_selection(selection, pdir / "selection_validation_accuracy.png")
    for key in ("train_loss", "train_accuracy"):
        curves = {n: history[f"{n}.{key}"] for n in names if f"{n}.{key}" in history}
        if curves:
            plots.plot_curves(curves, pdir / f"training_{key}.png", f"{key.replace('_', ' ')} (mean over seeds)",
                              ylabel=key.replace("_", " "))


def report(photos: Clouds, seeds: list[int], names, mean: dict, std: dict, fixed: dict, timings: dict,
           selection: dict) -> None:
    """The printed summary of a run."""
    print(f"\n04_clouds_cnn ({photos.info.source} data, {len(seeds)} seed(s), {timings['wall_s']:.1f}s): "
          f"test set {fixed['data.test_size']} ({photos.dropped} byte-identical to training images dropped)")
    if selection["chosen"]:
        print(f"  epochs by {selection['validation']['folds']}-fold cross-validation ({timings['selection_s']:.1f}s): "
              + ", ".join(f"{k} {v}" for k, v in selection["chosen"].items()))
    print(f"  majority baseline: accuracy {fixed['baseline.majority_accuracy']:.3f}, "
          f"macro F1 {fixed['baseline.majority_f1_macro']:.3f}")
    for n in (n for n in names if mean.get(f"{n}.accuracy") is not None):
        f = {k: f"{mean[f'{n}.{k}']:.3f}±{std[f'{n}.{k}']:.3f}" for k in HEADLINE_KEYS}
        obs = [mean.get(f"{n}.obs.{k}", float("nan")) for k in
               ("recall_macro_above_precision_macro", "clear_sky_recall_is_1", "high_cumuliform_lowest_recall")]
        print(f"  {n:8s}: acc {f['accuracy']}  macro P {f['precision_macro']} R {f['recall_macro']} F1 {f['f1_macro']}"
              "  | course's observations (share of seeds): macro R > P {:.1f}, clear-sky recall 1.0 {:.1f}, "
              "high cumuliform lowest {:.1f}".format(*obs))
    if timings.get("pipeline_ratio"):
        print(f"  throughput: {timings['train_samples_per_s']:.0f} samples/s with the pipeline, "
              f"{timings['model_only_samples_per_s']:.0f} model-only (ratio {timings['pipeline_ratio']:.2f}, "
              f"{timings['memory_format']})")
