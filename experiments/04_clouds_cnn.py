#!/usr/bin/env python
"""04_clouds_cnn: the course's cloud-type image classifier (transcript lines 495-634), and an improved one.

The course's CNN and augmentation on the 7-class clouds photos, evaluated with torchmetrics (accuracy; precision,
recall, F1 micro / macro / weighted and per class; confusion matrix), the course's three observations checked on
every seed, and an improved from-scratch CNN. Test images byte-identical to a training image are dropped
(``--keep-duplicates`` keeps them). Each model's epochs are chosen by stratified 3-fold cross-validation on the
training images; the final models (5 seeds) train on all of them and are the only ones to see the test set.
JPEGs are decoded once; augmentation is drawn per sample on whole batches from a seeded generator. Records the
training throughput and the model-only step throughput of the same run.
"""
import sys
import time
from collections import defaultdict
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: find common/

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.model_selection import StratifiedGroupKFold
from torchmetrics.functional import confusion_matrix
from torchmetrics.utilities.plot import plot_confusion_matrix
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import make_grid

from common import cli, data, metrics, plots, repro, results
from common.device import DeviceError, synchronize, to_device

EXPERIMENT = "04_clouds_cnn"
NUM_CLASSES = 7
COURSE_SIZE = 64          # the input size the course model's Linear(64*16*16, ...) is built for
MAX_ROTATION = 45.0
CLEAR_SKY, HIGH_CUMULIFORM = "clear sky", "high cumuliform clouds"
MEMORY_FORMATS = ("contiguous", "channels_last")
HEADLINE_KEYS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")

# Epochs: chosen per model by cross-validation among 1..max_epochs (20: the course model's earlier 15 plus room;
# the improved model's one-cycle schedule spans 20 epochs and may be stopped earlier). 5 seeds: ~4 minutes on 2
# idle CPU cores (estimated from the 2.6 of 15/20 fixed epochs), ~1.3 of them the cross-validation.
# channels_last: measured faster for both models on the CPU.
DEFAULTS = dict(seeds=5, folds=3, epochs=None, max_epochs=20, batch_size=16, lr=1e-3, improved_epochs=None,
                improved_max_epochs=20, improved_size=64, improved_batch_size=32, improved_lr=3e-3,
                memory_format="channels_last", rotation_from_zero=False)
SPLIT_SEED = 0   # the cross-validation folds
# The improved model's goal (issue 15, airbench-style time to target): validation accuracy and the training seconds
# it should take on a 2-core AVX2 CPU. Measured on the cross-validation folds, which train on 2/3 of the images.
TARGETS = {"improved": (0.90, 120.0)}   # model: (validation accuracy, budget seconds)
TARGET_NOTE = ("training seconds of one cross-validation fold's run (evaluation not counted; it trains on the fold's "
               "fit part, about 2/3 of the training images, so an epoch takes about 2/3 of a final run's) until its "
               "validation accuracy after an epoch first reaches the target; the budget is the goal on a 2-core AVX2 CPU")
# --smoke: 2 folds, epochs chosen among 1..2, 3 batches an epoch; 32 training images and 6 test images per class
SMOKE = dict(folds=2, max_epochs=2, improved_max_epochs=2, max_batches=3, train_images=32, test_per_class=6)

DEVIATIONS = [
    dict(what="rotation range", course="'rotate by a random degree between 0 and 45'",
         here="uniform in [-45, 45] degrees: what torchvision's RandomRotation(45) draws",
         why="RandomRotation(45) is how the course's transform is written; a symmetric range favours neither tilt",
         flag="--rotation-from-zero"),
    dict(what="image size", course="Resize to 128x128 (dataset video); the model is sized for 3x64x64", here="64x64",
         why="the course model's Linear(64*16*16, 7) only fits 64x64 inputs, as the course's own derivation says"),
    dict(what="data pipeline", course="ImageFolder, per-image transforms (flip, rotation, autocontrast, ToTensor, "
                                      "Resize) on every load",
         here="JPEGs decoded once at 64x64 (PIL bilinear, uint8); flip, bilinear rotation (zero fill), autocontrast "
              "drawn per image on whole batches from a seeded generator",
         why="decoding every JPEG every epoch dominated the training time; the ImageFolder path runs once "
             "(course_pipeline in the result)"),
    dict(what="test set deduplicated", course="all 486 test images",
         here="481: the 5 test images byte-identical to a training image are dropped",
         why="a test image the model was trained on measures memory, not generalisation", flag="--keep-duplicates"),
    dict(what="epochs, batch size, learning rate", course="not stated for this model (only 'the Adam optimizer'); "
         "'0.001 ... a good default' (line 224) is said of the salary regression",
         here="epochs chosen among 1..20 by the mean validation accuracy of stratified 3-fold cross-validation on "
              "the training images, then the model retrained on all of them; batch 16, Adam lr 1e-3 (torch's "
              "default)",
         why="the transcript gives no epoch count; choosing it on validation data leaves the test set unseen"),
    dict(what="seeds", course="one training run", here="5 seeds, mean ± std",
         why="one run cannot tell a difference from seed noise", flag="--seeds 1"),
    dict(what="memory format", course="contiguous (torch's default)", here="channels_last model and inputs",
         why="measured faster for both models on the CPU; the same arithmetic up to float rounding",
         flag="--memory-format contiguous"),
    dict(what="improved model", course="not built; 'larger images, more convolutional layers, and the classifier "
                                       "with more than one linear layer could improve both metrics'",
         here="4 Conv-BN-ReLU-MaxPool blocks, global average pooling, dropout, Linear; AdamW, a one-cycle schedule "
              "over 20 epochs stopped after the cross-validated epoch count, label smoothing, batch 32",
         why="a stronger from-scratch reference", flag="--model course"),
]


# --------------------------------------------------------------------------- models and transforms
class CourseNet(nn.Module):
    """The course's CNN: two (Conv 3x3 pad 1 -> ELU -> MaxPool 2) blocks, Flatten, Linear(64*16*16, classes)."""

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

    def __init__(self, num_classes: int = NUM_CLASSES, widths=(32, 64, 128, 256), dropout: float = 0.3):
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


def run_splits(train: data.ImageSet, test: data.ImageSet, dedupe_idx: list[int] | None, smoke: bool) -> tuple:
    """The sets a run uses: test without ``dedupe_idx`` (unless --keep-duplicates); --smoke's subsets."""
    if dedupe_idx:
        drop = set(dedupe_idx)
        test = subset(test, [i for i in range(len(test)) if i not in drop])
    if smoke:
        g = torch.Generator().manual_seed(0)
        train = subset(train, torch.randperm(len(train), generator=g)[:SMOKE["train_images"]].sort().values)
        test = subset(test, stratified_head(test.labels, SMOKE["test_per_class"]))
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


def load_data(args, specs: dict) -> Clouds:
    """Decode the clouds once per input size (the course model's first); raises data.DataError."""
    sizes = dict.fromkeys([COURSE_SIZE] + [s["size"] for s in specs.values()])
    decoded = {size: data.load_clouds(args.data_dir, synthetic=args.synthetic, size=size) for size in sizes}
    train, test, info = decoded[COURSE_SIZE]
    class_to_idx = {c: i for i, c in enumerate(train.classes)}
    dups = find_duplicates(train, test, info.path)
    dedupe_idx = [] if args.keep_duplicates else dups["test_in_train"]
    print(f"{EXPERIMENT}: data {info.source}, train {len(train)}, test {len(test)}; duplicate pairs: "
          f"{dups['pairs_within_train']} within train, {dups['pairs_within_test']} within test, "
          f"{dups['pairs_across_splits']} across splits; {len(dedupe_idx)} test images dropped as also in train",
          flush=True)
    pipeline = course_pipeline(args, class_to_idx) if info.source == "real" else None
    splits = {size: run_splits(tr, te, dedupe_idx, args.smoke) for size, (tr, te, _) in decoded.items()}
    return Clouds(info, class_to_idx, dups, pipeline, splits, len(dedupe_idx))


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, device, channels_last: bool, batch: int = 128) -> torch.Tensor:
    model.eval()
    out = [model(as_format(to_float(to_device(images[i:i + batch], device)), channels_last)).argmax(1)
           for i in range(0, len(images), batch)]
    return torch.cat(out).cpu()   # one copy back, not one per batch


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


# --------------------------------------------------------------------------- training
def model_specs(cfg: dict) -> dict:
    """What each model trains with (``cfg``: the options or DEFAULTS). ``epochs`` None: chosen by cross-validation
    among 1..``max_epochs``. The improved model's one-cycle schedule spans its given epochs, else ``max_epochs``
    (a chosen count stops it there, as in the cross-validation)."""
    shared = dict(channels_last=cfg["memory_format"] == "channels_last", rotation_from_zero=cfg["rotation_from_zero"])
    return {"course": dict(make=CourseNet, size=COURSE_SIZE, batch=cfg["batch_size"], epochs=cfg["epochs"],
                           max_epochs=cfg["max_epochs"], lr=cfg["lr"], label_smoothing=0.0, one_cycle_epochs=None,
                           weight_decay=0.0, **shared),
            "improved": dict(make=ImprovedNet, size=cfg["improved_size"], batch=cfg["improved_batch_size"],
                             epochs=cfg["improved_epochs"], max_epochs=cfg["improved_max_epochs"],
                             lr=cfg["improved_lr"], label_smoothing=0.1,
                             one_cycle_epochs=cfg["improved_epochs"] or cfg["improved_max_epochs"],
                             weight_decay=1e-4, **shared)}


def make_optimizer(params, spec: dict) -> torch.optim.Optimizer:
    if spec["weight_decay"]:
        return torch.optim.AdamW(params, lr=spec["lr"], weight_decay=spec["weight_decay"])
    return torch.optim.Adam(params, lr=spec["lr"])


def batch_sizes(n: int, batch: int, max_batches: int | None) -> list[int]:
    sizes = [min(batch, n - i) for i in range(0, n, batch)]
    return sizes[:max_batches] if max_batches else sizes


def train_step(model: nn.Module, opt, loss_fn, xb, yb, log: results.StepLog, epoch: int = 0, step: int = 0):
    """Forward, loss, backward, finite check (kept on the device: ``log``), optimizer step; (logits, loss)."""
    opt.zero_grad(set_to_none=True)
    out = model(xb)
    loss = loss_fn(out, yb)
    loss.backward()
    log.add(loss, epoch, step)
    opt.step()
    return out, loss


def train_one(spec: dict, x_train: torch.Tensor, y_train: torch.Tensor, sizes: list[int], seed: int, device,
              log_prefix: str, eval_fn=None) -> tuple[nn.Module, dict, dict]:
    """Train a fresh model on one seed over batches of ``sizes``: (model, history, timing); raises results.Diverged.
    ``eval_fn(model)`` (the validation accuracy) runs after every epoch, outside the timed part, into the history,
    with ``train_s``: the training seconds so far."""
    repro.seed_everything(seed)
    g = repro.make_generator(seed)             # shuffling and augmentation draws
    model = as_format(spec["make"]().to(device), spec["channels_last"])
    opt = make_optimizer(model.parameters(), spec)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=spec["label_smoothing"])
    cycle = spec["one_cycle_epochs"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, spec["lr"], total_steps=cycle * len(sizes)) if cycle else None
    hist, train_s, data_s, t_start = {"train_loss": [], "train_accuracy": []}, 0.0, 0.0, time.perf_counter()
    for epoch in range(spec["epochs"]):
        model.train()
        synchronize(device)
        t0 = time.perf_counter()
        perm = to_device(torch.randperm(len(y_train), generator=g), x_train.device)   # once per epoch, not per step
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        log = results.StepLog()   # finite check on the device, read once per epoch
        for step, b in enumerate(sizes):
            td = time.perf_counter()
            idx = perm[step * spec["batch"]: step * spec["batch"] + b]
            xb = as_format(augment_batch(x_train[idx], g, from_zero=spec["rotation_from_zero"]), spec["channels_last"])
            yb = y_train[idx]
            data_s += time.perf_counter() - td
            out, loss = train_step(model, opt, loss_fn, xb, yb, log, epoch, step)
            if sched is not None:
                sched.step()
            loss_sum += loss.detach() * b
            correct += (out.detach().argmax(1) == yb).sum()
        log.values()   # raises results.Diverged naming the first non-finite step
        synchronize(device)
        train_s += time.perf_counter() - t0
        hist["train_loss"].append(float(loss_sum) / sum(sizes))
        hist["train_accuracy"].append(float(correct) / sum(sizes))
        if eval_fn is not None:
            hist.setdefault("train_s", []).append(train_s)   # training seconds so far: the time to target
            for key, v in eval_fn(model).items():
                hist.setdefault(key, []).append(v)
    print(f"  {log_prefix}: {spec['epochs']} epochs, last "
          + ", ".join(f"{k} {v[-1]:.3f}" for k, v in hist.items() if k != "train_s")
          + f" ({time.perf_counter() - t_start:.1f}s)", flush=True)
    # data_s only on the CPU: on a GPU the clock, without a sync per step, sees launches and queued model work
    data_s = data_s if torch.device(device).type == "cpu" else None
    return model, hist, {"train_s": train_s, "data_s": data_s, "samples": spec["epochs"] * sum(sizes)}


def model_only_throughput(spec: dict, x_train: torch.Tensor, y_train: torch.Tensor, sizes: list[int], device,
                          warmup: int = 2) -> float:
    """Samples/s of the bare ``train_step`` on pre-augmented tensors over one epoch's batch sizes, each distinct
    size warmed up first (a last, partial batch would build its cuDNN plans in the timed part). A throwaway
    model under a forked RNG: the seeded runs are untouched. The caller sets the determinism flags."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)
        model = as_format(spec["make"]().to(device), spec["channels_last"])
        x, y = as_format(augment_batch(x_train[:max(sizes)], repro.make_generator(0)), spec["channels_last"]), y_train
        opt = make_optimizer(model.parameters(), spec)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=spec["label_smoothing"])
        log = results.StepLog()
        for b in list(dict.fromkeys(sizes)) * warmup:
            train_step(model, opt, loss_fn, x[:b], y[:b], log)
        synchronize(device)
        t0 = time.perf_counter()
        for b in sizes:
            train_step(model, opt, loss_fn, x[:b], y[:b], log)
        with suppress(results.Diverged):   # the training loop's one read-back per epoch (a throwaway's figures)
            log.values()
        synchronize(device)
        return sum(sizes) / (time.perf_counter() - t0)


def benchmark_cases() -> list[dict]:
    """One case per model at the full run's batch, input size, optimizer and memory format."""
    def case(name, spec):
        def make_batch(batch_size, device):
            x = torch.rand(batch_size, 3, spec["size"], spec["size"], device=device)
            return (as_format(x, spec["channels_last"]),), torch.randint(0, NUM_CLASSES, (batch_size,), device=device)

        return {"name": name, "make_model": lambda: as_format(spec["make"](), spec["channels_last"]),
                "make_batch": make_batch, "loss_fn": nn.CrossEntropyLoss(label_smoothing=spec["label_smoothing"]),
                "make_optimizer": partial(make_optimizer, spec=spec), "batch_size": spec["batch"]}
    specs = model_specs(DEFAULTS)
    return [case("04.course_cnn", specs["course"]), case("04.improved_cnn", specs["improved"])]


# --------------------------------------------------------------------------- epochs by cross-validation, per-seed runs
def prepare_model(name: str, spec: dict, split: tuple, args, device) -> dict:
    """What every run of one model shares: its data on the device, its batches and its model-only step throughput
    (in the memory format in use; the benchmarks compare the formats)."""
    train, test = split
    x_train, y_train = train.images.to(device), train.labels.to(device)
    max_batches = SMOKE["max_batches"] if args.smoke else None
    sizes = batch_sizes(len(train), spec["batch"], max_batches)
    repro.apply_determinism()   # the cuDNN/determinism flags the seeded training runs with
    speed = model_only_throughput(spec, x_train, y_train, sizes, device)
    print(f"[{name}] model-only training step: {speed:.0f} samples/s ({args.memory_format})", flush=True)
    return dict(spec=spec, x_train=x_train, y_train=y_train, sizes=sizes, max_batches=max_batches, test=test,
                model_only=speed)


def cv_folds(train: data.ImageSet, folds: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(fit, validation) training-image indices of a stratified ``folds``-fold split (shuffled, seed SPLIT_SEED);
    byte-identical training images (the same sha256) stay in one fold."""
    cv = StratifiedGroupKFold(folds, shuffle=True, random_state=SPLIT_SEED)
    splits = cv.split(train.labels, train.labels, groups=train.file_sha256)
    return [(torch.as_tensor(fit), torch.as_tensor(val)) for fit, val in splits]


def select_epochs(name: str, mdl: dict, folds: list, seed: int, device) -> dict:
    """Cross-validate one model's epochs: on every fold (fold k with seed ``seed + k``) train on the fit part for
    max_epochs with the validation accuracy after each epoch; choose the epoch count with the highest mean over
    the folds (ties -> fewer; the means compared rounded to 9 decimals, so a one-ulp difference in summation does
    not break a real tie). {"chosen", "mean", "per_fold", and for a model of TARGETS "reached": per fold its
    ``results.time_to_target``}, or {"diverged": where}; the model's spec is left as it
    is (``with_chosen_epochs`` sets the choice)."""
    spec, curves, reached = dict(mdl["spec"], epochs=mdl["spec"]["max_epochs"]), [], {}
    for k, (fit, val) in enumerate(folds):
        def val_accuracy(model, x=mdl["x_train"][val], y=mdl["y_train"][val].cpu()):
            return {"val_accuracy": float((predict(model, x, device, spec["channels_last"]) == y).float().mean())}
        sizes = batch_sizes(len(fit), spec["batch"], mdl["max_batches"])
        try:
            _, hist, _ = train_one(spec, mdl["x_train"][fit], mdl["y_train"][fit], sizes, seed + k, device,
                                   f"{name} fold {k + 1}/{len(folds)}", val_accuracy)
        except results.Diverged as e:
            print(f"  {name} fold {k + 1}: DIVERGED ({e})", file=sys.stderr, flush=True)
            return {"diverged": {"run": name, "seed": seed + k, "phase": f"cross-validation fold {k + 1}",
                                 **e.to_json()}}
        curves.append(hist["val_accuracy"])
        if name in TARGETS:
            reached[f"fold {k + 1}"] = results.time_to_target(hist["val_accuracy"], hist["train_s"], TARGETS[name][0])
    mean = [sum(v) / len(v) for v in zip(*curves)]
    chosen = max(range(1, len(mean) + 1), key=lambda e: (round(mean[e - 1], 9), -e))
    print(f"[{name}] epochs chosen: {chosen} (mean validation accuracy {mean[chosen - 1]:.3f})", flush=True)
    return {"chosen": chosen, "mean": mean, "per_fold": curves, **({"reached": reached} if reached else {})}


def target_records(picks: dict) -> dict | None:
    """The result's ``targets``: per cross-validated model with a target, each fold's training seconds until its
    validation accuracy first reached it (None, with the best reached, where it never did)."""
    return {name: results.target_record("val_accuracy (the cross-validation folds)", TARGETS[name][0], p["reached"],
                                        budget_s=TARGETS[name][1], note=TARGET_NOTE)
            for name, p in picks.items() if "reached" in p} or None


def with_chosen_epochs(models: dict, picks: dict) -> dict:
    """Set each cross-validated model's spec["epochs"] to its pick's choice (in place: the spec is also the record's
    model_config); return the models to train: those with given epochs and those with a choice (not the ones that
    diverged in cross-validation)."""
    for name, pick in picks.items():
        if "chosen" in pick:
            models[name]["spec"]["epochs"] = pick["chosen"]
    return {name: mdl for name, mdl in models.items() if name not in picks or "chosen" in picks[name]}


def run_seed(seed: int, models: dict, device, class_to_idx: dict) -> dict:
    """Train and test every model on one seed: the flat test metrics ("course.accuracy", ...) and, per model, the
    history, timing and confusion matrix; a diverged model leaves only a "diverged" record."""
    run = {"metrics": {}, "history": {}, "timing": {}, "confusion": {}, "diverged": []}
    for name, mdl in models.items():
        try:
            model, hist, timing = train_one(mdl["spec"], mdl["x_train"], mdl["y_train"], mdl["sizes"], seed, device,
                                            f"{name} seed {seed}")
        except results.Diverged as e:
            run["diverged"].append({"run": name, "seed": seed, **e.to_json()})
            print(f"  {name} seed {seed}: DIVERGED ({e})", file=sys.stderr, flush=True)
            continue
        t0 = time.perf_counter()
        preds = predict(model, mdl["test"].images, device, mdl["spec"]["channels_last"])
        synchronize(device)
        timing["eval_s"] = time.perf_counter() - t0
        m = evaluate(preds, mdl["test"].labels, class_to_idx)
        run["metrics"].update({f"{name}.{key}": v for key, v in m.items()})
        run["history"][name], run["timing"][name] = hist, timing
        run["confusion"][name] = confusion_matrix(preds, mdl["test"].labels, task="multiclass", num_classes=NUM_CLASSES)
        print(f"  {name} seed {seed}: accuracy {m['accuracy']:.3f}, macro P {m['precision_macro']:.3f} "
              f"R {m['recall_macro']:.3f} F1 {m['f1_macro']:.3f}", flush=True)
    return run


# --------------------------------------------------------------------------- aggregate, plots, record, summary
def fixed_metrics(clouds: Clouds) -> dict:
    """The figures every seed shares: the majority-class baseline (of the training labels) and the data."""
    train, test = clouds.splits[COURSE_SIZE]
    majority = int(torch.bincount(train.labels, minlength=NUM_CLASSES).argmax())
    base = evaluate(torch.full_like(test.labels, majority), test.labels, clouds.class_to_idx)
    pairs = ("pairs_within_train", "pairs_within_test", "pairs_across_splits")
    return {"baseline.majority_accuracy": base["accuracy"], "baseline.majority_f1_macro": base["f1_macro"],
            "baseline.majority_recall_macro": base["recall_macro"],
            **{f"data.duplicate_{key}": clouds.dups[key] for key in pairs},
            "data.test_images_also_in_train": len(clouds.dups["test_in_train"]),
            "data.test_duplicates_dropped": clouds.dropped,
            "data.train_size": len(train), "data.test_size": len(test)}


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


def selection_record(specs: dict, picks: dict, folds: list, n_train: int) -> dict:
    """The result's "selection": the folds; per cross-validated model its epoch candidates, mean validation accuracy
    per epoch (``scores``) and choice; the settings not selected on this data, with where they came from."""
    done = {f"{n}.epochs": p for n, p in picks.items() if "chosen" in p}
    fixed = {f"{n}.epochs": f"{s['epochs']}, given on the command line" for n, s in specs.items() if n not in picks}
    if "course" in specs:
        fixed["course.batch_size, course.lr"] = ("16 and Adam 1e-3 by default (torch's Adam default; the transcript "
                                                 "gives neither for this model): set by earlier sessions of this "
                                                 "project, not selected on validation data")
    if "improved" in specs:
        fixed["improved.architecture, optimizer, schedule, batch_size, size"] = (
            "as in model_config: set by earlier development sessions of this project, partly by looking at test-set "
            "figures of this data; not selected on validation data, so its test figures may be somewhat optimistic")
    validation = {"method": f"stratified {len(folds)}-fold cross-validation on the training images (sklearn "
                            f"StratifiedGroupKFold, seed {SPLIT_SEED}; byte-identical images in one fold); fold k "
                            "trains with seed --seed + k", "folds": len(folds),
                  "sizes": {"train": n_train, "fit": [len(a) for a, _ in folds],
                            "validation": [len(b) for _, b in folds]}}
    if not picks:
        validation = {"method": "none: every epoch count was given", "folds": 0,
                      "sizes": {"train": n_train, "validation": []}}
    return {"validation": validation,
            "chosen": {k: p["chosen"] for k, p in done.items()},
            "candidates": {k: list(range(1, len(p["mean"]) + 1)) for k, p in done.items()},
            "criterion": f"mean validation accuracy over the {len(folds)} folds after each epoch, highest; ties -> "
                         "fewer epochs",
            "final_model": "retrained on all training images for the chosen epochs, once per seed; only these final "
                           "models see the test set, once each",
            "scores": {k: p["mean"] for k, p in done.items()},
            "scores_per_fold": {k: p["per_fold"] for k, p in done.items()}, "fixed": fixed}


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


def make_plots(pdir: Path, clouds: Clouds, args, names, mean: dict, std: dict, fixed: dict, history: dict,
               cms: dict, diverged: list, selection: dict) -> None:
    def bars(keys, name, title, ylabel, **kw):
        labels = [k.replace(".recall.", " ").replace(".", " ").replace(" clouds", "") for k in keys]
        plots.bar_with_errors(labels, [mean[k] for k in keys], [std[k] for k in keys], pdir / name, title, ylabel, **kw)
    train, classes = clouds.splits[COURSE_SIZE][0], list(clouds.class_to_idx)
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


def extra_record(clouds: Clouds, specs: dict, per_seed: dict, cms: dict, diverged: list) -> dict:
    classes = list(clouds.class_to_idx)

    def lowest_recall(name):   # the class with the lowest test recall, seed by seed (the first one on a tie)
        by_seed = zip(*(per_seed[f"{name}.recall.{c}"] for c in classes))
        return [classes[min(range(len(classes)), key=recalls.__getitem__)] for recalls in by_seed]
    return {"diverged": diverged, "class_to_idx": clouds.class_to_idx,
            "lowest_recall_class_per_seed": {n: lowest_recall(n) for n in specs if f"{n}.accuracy" in per_seed},
            "duplicates": clouds.dups["paths"], "course_pipeline": clouds.course_pipeline,
            "confusion_matrix_summed_over_seeds": {n: cm.tolist() for n, cm in cms.items()},
            "model_config": {n: {k: v for k, v in spec.items() if k != "make"} for n, spec in specs.items()},
            "notes": "Augmentation per sample on batches (affine_grid + grid_sample rotation, torchvision v2 flip and "
                     "autocontrast) from a seeded torch.Generator, on images decoded once at 64x64. See deviations."}


def report(clouds: Clouds, seeds: list[int], names, mean: dict, std: dict, fixed: dict, timings: dict,
           selection: dict) -> None:
    print(f"\n{EXPERIMENT} ({clouds.info.source} data, {len(seeds)} seed(s), {timings['wall_s']:.1f}s): "
          f"test set {fixed['data.test_size']} ({clouds.dropped} byte-identical to training images dropped)")
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


# --------------------------------------------------------------------------- main
def parse(argv=None):
    p = cli.base_parser(EXPERIMENT, __doc__.splitlines()[0], seeds=DEFAULTS["seeds"])
    p.add_argument("--model", choices=("both", "course", "improved"), default="both",
                   help="which model(s) to train; 'both' writes metrics prefixed course. and improved.")
    for key, what in (("epochs", "course model: epochs (default: chosen by cross-validation)"),
                      ("max_epochs", "course model: the most epochs the cross-validation tries"),
                      ("batch_size", "course model: batch size"), ("lr", "course model: Adam learning rate"),
                      ("improved_epochs", "improved model: epochs (default: chosen by cross-validation)"),
                      ("improved_max_epochs", "improved model: the most epochs the cross-validation tries, and "
                                              "the one-cycle schedule's length"),
                      ("improved_size", "improved model: input size (the images are decoded once at this size)"),
                      ("improved_batch_size", "improved model: batch size"),
                      ("improved_lr", "improved model: AdamW peak learning rate (one-cycle)"),
                      ("folds", "cross-validation folds of the training images")):
        kind = cli.positive_float if isinstance(DEFAULTS[key], float) else cli.positive_int
        p.add_argument("--" + key.replace("_", "-"), type=kind, default=DEFAULTS[key], help=what)
    p.add_argument("--memory-format", choices=MEMORY_FORMATS, default=DEFAULTS["memory_format"],
                   help="memory format of model and inputs (channels_last measured faster for both models "
                        "on the development CPU)")
    p.add_argument("--rotation-from-zero", action="store_true",
                   help="rotate by an angle in [0, 45] degrees, as the transcript says (otherwise in [-45, 45])")
    p.add_argument("--keep-duplicates", action="store_true",
                   help="keep the test images that are byte-identical to a training image (the course's 486)")
    return cli.parse_args(p, argv, smoke=SMOKE)


def main(argv=None) -> int:
    args = parse(argv)
    specs = {name: spec for name, spec in model_specs(vars(args)).items() if args.model in ("both", name)}
    try:
        start = cli.start(args)
        clouds = load_data(args, specs)
    except (data.DataError, DeviceError) as e:
        return cli.fail(e)
    seeds, device, train = cli.seed_list(args), start.device, clouds.splits[COURSE_SIZE][0]
    fixed = fixed_metrics(clouds)   # the majority baseline and the data figures, the same for every seed

    models = {name: prepare_model(name, spec, clouds.splits[spec["size"]], args, device)
              for name, spec in specs.items()}
    t0, folds = time.perf_counter(), cv_folds(train, args.folds)
    picks = {name: select_epochs(name, mdl, folds, args.seed, device)   # on the training images only
             for name, mdl in models.items() if not mdl["spec"]["epochs"]}
    models = with_chosen_epochs(models, picks)   # not: those that diverged in cross-validation
    selection_s = time.perf_counter() - t0
    runs = [run_seed(seed, models, device, clouds.class_to_idx) for seed in seeds]   # the only test-set reads

    mean, std, per_seed = results.aggregate_seeds([dict(fixed, **run["metrics"]) for run in runs])
    history = seed_history(runs, specs)
    cms = {name: sum((run["confusion"][name] for run in runs if name in run["confusion"]),
                     torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)) for name in specs}
    diverged = [p["diverged"] for p in picks.values() if "diverged" in p] + sorted(
        (d for run in runs for d in run["diverged"]), key=lambda d: list(specs).index(d["run"]))
    selection = selection_record(specs, picks, folds, len(train))
    make_plots(plots.plot_dir(args.results_dir, EXPERIMENT), clouds, args, list(specs), mean, std, fixed, history,
               cms, diverged, selection)
    timings = dict(run_timings(runs, models, args.memory_format, start.wall_s()), selection_s=selection_s)

    headline = next((k for k in ("course.f1_macro", "improved.f1_macro") if k in mean), "baseline.majority_accuracy")
    # --rotation-from-zero only when given (as common.cli does for --tf32): older results still compare equal
    config = cli.config_of(args, optional=("rotation_from_zero",))
    results.write_result(EXPERIMENT, results_dir=args.results_dir, status="diverged" if diverged else "ok",
                         started_at=start.started_at, config=config, seeds=seeds, data=clouds.info,
                         metrics=mean, std=std, per_seed=per_seed, headline=headline, history=history,
                         timings=timings, device=device, script=__file__, deviations=DEVIATIONS,
                         selection=selection, targets=target_records(picks),
                         extra=extra_record(clouds, specs, per_seed, cms, diverged))
    report(clouds, seeds, list(specs), mean, std, fixed, timings, selection)
    return 3 if diverged else 0


if __name__ == "__main__":
    sys.exit(main())
