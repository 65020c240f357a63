#!/usr/bin/env python
"""04_clouds_cnn: the course's cloud-type image classifier (transcript lines 495-634), and an improved one.

The course's CNN and augmentation on the 7-class clouds photos, evaluated with torchmetrics (accuracy; precision,
recall, F1 micro / macro / weighted and per class; confusion matrix), the course's three observations checked on
every seed, and an improved from-scratch CNN. Test images byte-identical to a training image are dropped
(``--keep-duplicates`` keeps them). The course model's epochs are chosen by stratified 3-fold cross-validation on
the training images (the improved model runs its whole one-cycle schedule, its folds' curves recorded); the final
models (5 seeds) train on all of them and are the only ones to see the test set.
Records the training throughput and the model-only step throughput of the same run. The data, augmentation,
models, figures and record: experiments/clouds.py.

``--ablation`` runs another story: the improved model with each candidate setting of ABLATION (input size, epochs,
batch, peak lr, widths, regularisation) through the same folds, no test image read; the improved model's defaults
are the candidate it chose (its reference record: clouds.IMPROVED_ABLATION). ``--ablation course`` does the same
for the course model's batch and Adam lr (COURSE_ABLATION; clouds.COURSE_ABLATION), ``--ablation recipe`` for the
improved model's optimizer family and schedule shape (RECIPE_ABLATION; clouds.RECIPE_ABLATION).
"""
import sys
import time
from contextlib import suppress
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: find common/ and experiments/

import torch
import torch.nn as nn
from torchmetrics.functional import confusion_matrix

from common import cli, data, plots, repro, results, schedules
from common.device import DeviceError, synchronize, to_device
from experiments import clouds
from experiments.clouds import (COURSE_SIZE, NUM_CLASSES, as_format, augment_batch, batch_sizes, predict,
                               with_chosen_epochs)

EXPERIMENT = "04_clouds_cnn"

# Epochs: the course model's chosen by cross-validation among 1..max_epochs (30, its earlier 15 plus room, widened
# from 20 when the choice sat at the top); the improved model runs its whole one-cycle schedule (see select_epochs).
# The improved model's input size, schedule epochs, batch, peak lr, widths and regularisation: the candidate
# 04 --ablation chose (clouds.IMPROVED_ABLATION). How long 5 seeds take: the README table's wall time.
DEFAULTS = dict(seeds=5, folds=3, epochs=None, max_epochs=30, batch_size=16, lr=1e-3, improved_epochs=None,
                improved_max_epochs=60, improved_size=64, improved_batch_size=32, improved_lr=3e-3,
                memory_format="channels_last", rotation_from_zero=False)
# The improved model's goal (issue 15, airbench-style time to target): validation accuracy and the training seconds
# it should take on a 2-core AVX2 CPU. Measured on the cross-validation folds, which train on 2/3 of the images.
TARGETS = {"improved": (0.90, 120.0)}   # model: (validation accuracy, budget seconds)
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
         "Resize) on every load", here="JPEGs decoded once at 64x64 (PIL bilinear, uint8); flip, bilinear rotation "
         "(zero fill), autocontrast drawn per image on whole batches from a seeded generator",
         why="decoding every JPEG every epoch dominated the training time; the ImageFolder path runs once "
             "(course_pipeline in the result)"),
    dict(what="test set deduplicated", course="all 486 test images",
         here="481: the 5 test images byte-identical to a training image are dropped",
         why="a test image the model was trained on measures memory, not generalisation", flag="--keep-duplicates"),
    dict(what="epochs, batch size, learning rate", course="not stated for this model (only 'the Adam optimizer'); "
         "'0.001 ... a good default' (line 224) is said of the salary regression",
         here="epochs chosen among 1..30 by the mean validation accuracy of stratified 3-fold cross-validation on "
              "the training images, then the model retrained on all of them; batch 16, Adam lr 1e-3 (torch's default), "
              "which --ablation course chose on the same folds among six (batch, lr) pairs (clouds.COURSE_ABLATION)",
         why="the transcript gives no epoch count, batch or lr; choosing them on validation data leaves the test set "
             "unseen"),
    dict(what="seeds", course="one training run", here="5 seeds, mean ± std",
         why="one run cannot tell a difference from seed noise", flag="--seeds 1"),
    dict(what="memory format", course="contiguous (torch's default)", here="channels_last model and inputs",
         why="measured faster for both models on the CPU; the same arithmetic up to float rounding",
         flag="--memory-format contiguous"),
    dict(what="improved model", course="not built; 'larger images, more convolutional layers, and the classifier "
         "with more than one linear layer could improve both metrics'", here="4 Conv-BN-ReLU-MaxPool blocks, global "
         "average pooling, dropout, Linear; AdamW, a one-cycle schedule over 60 epochs run to its end, label "
         "smoothing, batch 32; input size, schedule, batch, lr, widths, depth and regularisation chosen by "
         "--ablation, optimizer family and schedule shape by --ablation recipe, on the cross-validation folds",
         why="a stronger from-scratch reference", flag="--model course"),
]


# --------------------------------------------------------------------------- training
def model_specs(cfg: dict) -> dict:
    """What each model trains with (``cfg``: the options or DEFAULTS); ``epochs`` None: set by cross-validation.
    The improved model's one-cycle schedule spans its given epochs, else max_epochs."""
    widths = cfg.get("improved_widths", clouds.IMPROVED_WIDTHS)   # no options: --ablation tries others
    smoothing, dropout, decay = cfg.get("improved_regularisation", clouds.IMPROVED_REGULARISATION)
    optimizer, schedule = cfg.get("improved_recipe", clouds.IMPROVED_RECIPE)   # --ablation recipe tries others
    shared = dict(channels_last=cfg["memory_format"] == "channels_last", rotation_from_zero=cfg["rotation_from_zero"])
    return {"course": dict(make=clouds.CourseNet, size=COURSE_SIZE, batch=cfg["batch_size"], epochs=cfg["epochs"],
                           max_epochs=cfg["max_epochs"], lr=cfg["lr"], label_smoothing=0.0, one_cycle_epochs=None,
                           weight_decay=0.0, optimizer="adam", schedule=None, **shared),
            "improved": dict(make=partial(clouds.ImprovedNet, widths=tuple(widths), dropout=dropout),
                             widths=list(widths), dropout=dropout,
                             size=cfg["improved_size"], batch=cfg["improved_batch_size"],
                             epochs=cfg["improved_epochs"], max_epochs=cfg["improved_max_epochs"],
                             lr=cfg["improved_lr"], label_smoothing=smoothing,
                             one_cycle_epochs=cfg["improved_epochs"] or cfg["improved_max_epochs"],
                             weight_decay=decay, optimizer=optimizer, schedule=schedule, **shared)}


def make_optimizer(params, spec: dict) -> torch.optim.Optimizer:
    if spec["optimizer"] == "sgd":   # Nesterov momentum 0.9 (one-cycle cycles it), the same coupled decay value
        return torch.optim.SGD(params, lr=spec["lr"], momentum=0.9, nesterov=True, weight_decay=spec["weight_decay"])
    if spec["weight_decay"]:
        return torch.optim.AdamW(params, lr=spec["lr"], weight_decay=spec["weight_decay"])
    return torch.optim.Adam(params, lr=spec["lr"])


def train_step(model: nn.Module, opt, loss_fn, xb, yb, log: results.StepLog, epoch: int = 0, step: int = 0):
    """(logits, loss); the loss's finite check is kept on the device in ``log``."""
    opt.zero_grad(set_to_none=True)
    out = model(xb)
    loss = loss_fn(out, yb)
    loss.backward()
    log.add(loss, epoch, step)
    opt.step()
    return out, loss


def train_one(spec: dict, x_train: torch.Tensor, y_train: torch.Tensor, sizes: list[int], seed: int, device,
              log_prefix: str, eval_fn=None) -> tuple[nn.Module, dict, dict]:
    """A fresh model trained on one seed: (model, history, timing); raises results.Diverged. ``eval_fn(model)``, the
    validation accuracy, runs after every epoch, untimed, into the history beside ``train_s`` (the seconds so far)."""
    repro.seed_everything(seed)
    g = repro.make_generator(seed)             # shuffling and augmentation draws
    model = as_format(spec["make"]().to(device), spec["channels_last"])
    opt = make_optimizer(model.parameters(), spec)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=spec["label_smoothing"])
    cycle = spec["one_cycle_epochs"]
    sched = schedules.make(opt, spec["schedule"], spec["lr"], cycle * len(sizes)) if cycle else None
    hist, train_s, data_s, t_start = {"train_loss": [], "train_accuracy": []}, 0.0, 0.0, time.perf_counter()
    for epoch in range(spec["epochs"]):
        model.train()
        synchronize(device)
        t0 = time.perf_counter()
        perm = to_device(torch.randperm(len(y_train), generator=g), x_train.device)   # once per epoch, not per step
        loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
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
            hist.setdefault("val_accuracy", []).append(eval_fn(model))
    print(f"  {log_prefix}: {spec['epochs']} epochs, last "
          + ", ".join(f"{k} {v[-1]:.3f}" for k, v in hist.items() if k != "train_s")
          + f" ({time.perf_counter() - t_start:.1f}s)", flush=True)
    # data_s only on the CPU: on a GPU the clock, without a sync per step, sees launches and queued model work
    data_s = data_s if torch.device(device).type == "cpu" else None
    return model, hist, {"train_s": train_s, "data_s": data_s, "samples": spec["epochs"] * sum(sizes)}


def model_only_throughput(spec: dict, x_train: torch.Tensor, y_train: torch.Tensor, sizes: list[int], device,
                          warmup: int = 2) -> float:
    """Samples/s of the bare ``train_step`` on pre-augmented tensors over one epoch's batch sizes, each size warmed
    up first (a last, partial batch would build its cuDNN plans in the timed part); a throwaway model, forked RNG."""
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
def prepare_model(name: str, spec: dict, split: tuple, args, device, measure: bool = True) -> dict:
    """What every run of one model shares: its data on the device, its batches, its model-only step throughput
    (``measure``)."""
    train, test = split
    x_train, y_train = train.images.to(device), train.labels.to(device)
    max_batches = SMOKE["max_batches"] if args.smoke else None
    sizes = batch_sizes(len(train), spec["batch"], max_batches)
    repro.apply_determinism()   # the cuDNN/determinism flags the seeded training runs with
    speed = model_only_throughput(spec, x_train, y_train, sizes, device) if measure else None
    if measure:
        print(f"[{name}] model-only training step: {speed:.0f} samples/s ({args.memory_format})", flush=True)
    return dict(spec=spec, x_train=x_train, y_train=y_train, sizes=sizes, max_batches=max_batches, test=test,
                model_only=speed)


def select_epochs(name: str, mdl: dict, folds: list, seed: int, device, target: float | None = None) -> dict:
    """Train on every fold's fit part (fold k: seed ``seed + k``) for max_epochs; choose the epoch count with the
    highest mean validation accuracy, rounded to 9 decimals so that a one-ulp summation difference breaks no tie
    (``results.best_epoch``: ties -> fewer) -- but a one-cycle model runs its whole schedule: before the schedule
    anneals, its folds' validation accuracy jumps by up to 0.4 from one epoch to the next (the reference run's
    selection record), so the peak of their mean is luck, not a better stopping point.
    {"chosen", "candidates", "mean", "per_fold"[, "reached"]} or {"diverged"}."""
    spec, curves, reached = dict(mdl["spec"], epochs=mdl["spec"]["max_epochs"]), [], {}
    for k, (fit, val) in enumerate(folds):
        def val_accuracy(model, x=mdl["x_train"][val], y=mdl["y_train"][val].cpu()):
            return clouds.exact_accuracy(predict(model, x, device, spec["channels_last"]), y)
        sizes = batch_sizes(len(fit), spec["batch"], mdl["max_batches"])
        try:
            _, hist, _ = train_one(spec, mdl["x_train"][fit], mdl["y_train"][fit], sizes, seed + k, device,
                                   f"{name} fold {k + 1}/{len(folds)}", val_accuracy)
        except results.Diverged as e:
            print(f"  {name} fold {k + 1}: DIVERGED ({e})", file=sys.stderr, flush=True)
            return {"diverged": {"run": name, "seed": seed + k, "phase": f"cross-validation fold {k + 1}",
                                 **e.to_json()}}
        curves.append(hist["val_accuracy"])
        if target is not None:   # the fold's training seconds to it
            reached[f"fold {k + 1}"] = results.time_to_target(hist["val_accuracy"], hist["train_s"], target)
    mean = [sum(v) / len(v) for v in zip(*curves)]
    candidates = [len(mean)] if spec["one_cycle_epochs"] else list(range(1, len(mean) + 1))
    chosen = len(mean) if spec["one_cycle_epochs"] else results.best_epoch([round(v, 9) for v in mean])
    how = "the whole schedule" if spec["one_cycle_epochs"] else "chosen"
    print(f"[{name}] epochs: {chosen}, {how} (mean validation accuracy {mean[chosen - 1]:.3f})", flush=True)
    return {"chosen": chosen, "candidates": candidates, "mean": mean, "per_fold": curves,
            **({"reached": reached} if reached else {})}


def run_seed(seed: int, models: dict, device, class_to_idx: dict) -> dict:
    """Train and test every model on one seed: flat test metrics; per model history, timing, confusion matrix."""
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
        m = clouds.evaluate(preds, mdl["test"].labels, class_to_idx)
        run["metrics"].update({f"{name}.{key}": v for key, v in m.items()})
        run["history"][name], run["timing"][name] = hist, timing
        run["confusion"][name] = confusion_matrix(preds, mdl["test"].labels, task="multiclass", num_classes=NUM_CLASSES)
        print(f"  {name} seed {seed}: accuracy {m['accuracy']:.3f}, macro P {m['precision_macro']:.3f} "
              f"R {m['recall_macro']:.3f} F1 {m['f1_macro']:.3f}", flush=True)
    return run


# --------------------------------------------------------------------------- --ablation
# The improved model's candidates: (input size, one-cycle epochs, batch, peak lr, widths, (label smoothing, dropout,
# weight decay)). Larger inputs get fewer epochs, for the 120 s budget a final run on the 2-core AVX2 EPYC. The last
# six change one thing each of s64_e60 (the first eight's choice): its depth, each regulariser. s64_e20:
W4, REG = (32, 64, 128, 256), (0.1, 0.3, 1e-4)   # the settings before this ablation, with these widths and regularisers
ABLATION = {"s64_e20": (64, 20, 32, 3e-3, W4, REG),
            "s64_e40": (64, 40, 32, 3e-3, W4, REG),
            "s64_e60": (64, 60, 32, 3e-3, W4, REG),
            "s64_e40_lr6e-3": (64, 40, 32, 6e-3, W4, REG),
            "s64_e40_b64_lr6e-3": (64, 40, 64, 6e-3, W4, REG),
            "s64_e30_wide": (64, 30, 32, 3e-3, (48, 96, 192, 384), REG),     # 2.25x the convolutions' work
            "s96_e30": (96, 30, 32, 3e-3, W4, REG),
            "s128_e20": (128, 20, 32, 3e-3, W4, REG),
            "s64_e60_3blocks": (64, 60, 32, 3e-3, (32, 64, 128), REG),
            "s64_e60_smooth0": (64, 60, 32, 3e-3, W4, (0.0, 0.3, 1e-4)),
            "s64_e60_drop0": (64, 60, 32, 3e-3, W4, (0.1, 0.0, 1e-4)),
            "s64_e60_drop0.5": (64, 60, 32, 3e-3, W4, (0.1, 0.5, 1e-4)),
            "s64_e60_wd0": (64, 60, 32, 3e-3, W4, (0.1, 0.3, 0.0)),            # plain Adam
            "s64_e60_wd1e-2": (64, 60, 32, 3e-3, W4, (0.1, 0.3, 1e-2))}        # AdamW's default decay
ABLATION_CRITERION = ("the candidate whose every fold reaches the target validation accuracy (TARGETS) with the least "
                      "median training seconds to it; if none does, the highest mean validation accuracy over the "
                      "folds at the end of its schedule (rounded to 9 decimals); ties -> the first listed")
# --ablation course: the course model's (batch, Adam lr), which the transcript does not state; the first is the
# setting before (torch's default lr), then 3x lower and higher lr, and half and double the batch.
COURSE_ABLATION = {"b16_lr1e-3": (16, 1e-3), "b16_lr3e-4": (16, 3e-4), "b16_lr3e-3": (16, 3e-3),
                   "b8_lr1e-3": (8, 1e-3), "b32_lr1e-3": (32, 1e-3), "b32_lr2e-3": (32, 2e-3)}
COURSE_ABLATION_CRITERION = ("the highest mean validation accuracy over the folds at the candidate's best epoch of "
                             "1..max_epochs (rounded to 9 decimals: how every run chooses the course model's epochs); "
                             "ties -> the first listed")
# --ablation recipe: the improved model's (optimizer, peak lr, schedule shape: common.schedules), the rest its
# defaults. The first is the setting before; the next four change the schedule, the last two the optimizer family.
RECIPE_ABLATION = {"adamw_onecycle": ("adamw", 3e-3, "onecycle"), "adamw_warm0.1": ("adamw", 3e-3, "onecycle_warm0.1"),
                   "adamw_linear": ("adamw", 3e-3, "onecycle_linear"), "adamw_cosine": ("adamw", 3e-3, "cosine"),
                   "adamw_constant": ("adamw", 3e-3, "constant"), "sgd_lr0.03": ("sgd", 0.03, "onecycle"),
                   "sgd_lr0.1": ("sgd", 0.1, "onecycle")}   # SGD: Nesterov momentum, 10x and 33x Adam's peak lr


def run_ablation(args, start: cli.Start, photos: clouds.Clouds) -> int:
    """Every ABLATION (``--ablation recipe``: RECIPE_ABLATION) candidate's improved model, or every COURSE_ABLATION
    candidate's course model, through the folds of the training images (no test image read); the choice by
    ABLATION_CRITERION (COURSE_ABLATION_CRITERION); the record
    ``<results-dir>/ablation/04_clouds_cnn[.course|.recipe].ablation.json``."""
    folds, picks, kind = clouds.cv_folds(photos.splits[COURSE_SIZE][0], args.folds), {}, args.ablation
    table = {"course": COURSE_ABLATION, "recipe": RECIPE_ABLATION}.get(kind, ABLATION)
    model = "course" if kind == "course" else "improved"
    for name, c in table.items():
        if kind == "course":
            size, cfg = COURSE_SIZE, dict(vars(args), batch_size=c[0], lr=c[1])
        elif kind == "recipe":
            size, cfg = args.improved_size, dict(vars(args), improved_lr=c[1], improved_recipe=(c[0], c[2]))
        else:
            size, epochs, batch, lr, widths, reg = c
            cfg = dict(vars(args), improved_size=size, improved_batch_size=batch, improved_lr=lr,
                       improved_max_epochs=args.improved_max_epochs if args.smoke else epochs,
                       improved_widths=widths, improved_regularisation=reg)
        mdl = prepare_model(name, model_specs(cfg)[model], photos.splits[size], args, start.device, measure=False)
        picks[name] = select_epochs(name, mdl, folds, args.seed, start.device, TARGETS.get(model, (None,))[0])
    done = {name: p for name, p in picks.items() if "chosen" in p}   # a candidate that diverged is not chosen
    if not done:
        print(f"{EXPERIMENT} --ablation: every candidate diverged; nothing chosen, no record written", file=sys.stderr)
        return 3
    best = {name: round(p["mean"][p["chosen"] - 1], 9) for name, p in done.items()}
    targets = clouds.target_records(done, TARGETS["improved"])
    criterion = COURSE_ABLATION_CRITERION if model == "course" else ABLATION_CRITERION
    chosen = results.choose_candidate(targets or {}, best)
    what = {"course": "course.batch_size, lr", "recipe": "improved.optimizer, lr, schedule"}.get(
        kind, "improved.size, epochs, batch_size, lr, widths, (label_smoothing, dropout, weight_decay)")
    selection = {"validation": {"method": f"stratified {len(folds)}-fold cross-validation on the training images "
                                          f"(04's folds); no test image is read", "folds": len(folds),
                                "sizes": {"fit": [len(a) for a, _ in folds], "validation": [len(b) for _, b in folds]}},
                 "chosen": {what: table[chosen], "candidate": chosen},   # tuples: JSON lists
                 "candidates": dict(table), "criterion": criterion,
                 "final_model": f"none here: the chosen settings are the {model} model's defaults in 04",
                 "scores": {name: p["mean"] for name, p in done.items()}}
    results.write_result(
        EXPERIMENT + ("" if kind == "improved" else f".{kind}") + ".ablation", status="ok",
        results_dir=Path(args.results_dir) / "ablation",
        started_at=start.started_at, config=cli.config_of(args), seeds=[args.seed + k for k in range(len(folds))],
        data=photos.info, metrics={f"{n}.best": v for n, v in best.items()}, headline=f"{chosen}.best",
        timings={"wall_s": start.wall_s()}, device=start.device, script=__file__, selection=selection,
        targets=targets, extra={"diverged": [p["diverged"] for p in picks.values() if "diverged" in p]})
    print(f"\n{EXPERIMENT} --ablation ({photos.info.source} data, {len(folds)} folds; training images only):")
    clouds.print_ablation(done, best, targets, chosen, criterion)
    return 0


# --------------------------------------------------------------------------- main
def parse(argv=None):
    p = cli.base_parser(EXPERIMENT, __doc__.splitlines()[0], seeds=DEFAULTS["seeds"])
    p.add_argument("--model", choices=("both", "course", "improved"), default="both",
                   help="which model(s) to train; 'both' writes metrics prefixed course. and improved.")
    for key, what in (("epochs", "course model: epochs (default: chosen by cross-validation)"),
                      ("max_epochs", "course model: the most epochs the cross-validation tries"),
                      ("batch_size", "course model: batch size"), ("lr", "course model: Adam learning rate"),
                      ("improved_epochs", "improved model: epochs and schedule length (default: --improved-max-epochs)"),
                      ("improved_max_epochs", "improved model: its one-cycle schedule's length (it runs to the "
                                              "end; the cross-validation records each epoch)"),
                      ("improved_size", "improved model: input size (the images are decoded once at this size)"),
                      ("improved_batch_size", "improved model: batch size"),
                      ("improved_lr", "improved model: peak learning rate of its one-cycle schedule"),
                      ("folds", "cross-validation folds of the training images")):
        kind = cli.positive_float if isinstance(DEFAULTS[key], float) else cli.positive_int
        p.add_argument("--" + key.replace("_", "-"), type=kind, default=DEFAULTS[key], help=what)
    p.add_argument("--memory-format", choices=("contiguous", "channels_last"), default=DEFAULTS["memory_format"],
                   help="memory format of model and inputs (channels_last measured faster for both models "
                        "on the development CPU)")
    p.add_argument("--rotation-from-zero", action="store_true",
                   help="rotate by an angle in [0, 45] degrees, as the transcript says (otherwise in [-45, 45])")
    p.add_argument("--ablation", nargs="?", const="improved", choices=("improved", "course", "recipe"),
                   help="instead of the experiment: the improved model with each candidate of ABLATION (input size, "
                        "epochs, batch, lr, widths, regularisation), with 'recipe' each (optimizer, lr, schedule) of "
                        "RECIPE_ABLATION, or with 'course' the course model with each (batch, lr) of COURSE_ABLATION, "
                        "through the cross-validation folds (no test image read); writes "
                        "<results-dir>/ablation/04_clouds_cnn[.course|.recipe].ablation.json")
    p.add_argument("--keep-duplicates", action="store_true",
                   help="keep the test images that are byte-identical to a training image (the course's 486)")
    return cli.parse_args(p, argv, smoke=SMOKE)


def main(argv=None) -> int:
    args = parse(argv)
    specs = {name: spec for name, spec in model_specs(vars(args)).items() if args.model in ("both", name)}
    try:
        start = cli.start(args)
        sized = {name: {"size": c[0]} for name, c in ABLATION.items()} if args.ablation == "improved" else specs
        photos = clouds.load_data(args, sized, SMOKE if args.smoke else None)
    except (data.DataError, DeviceError) as e:
        return cli.fail(e)
    if args.ablation:
        return run_ablation(args, start, photos)
    seeds, device, train = cli.seed_list(args), start.device, photos.splits[COURSE_SIZE][0]
    fixed = clouds.fixed_metrics(photos)   # the majority baseline and the data figures, the same for every seed

    models = {name: prepare_model(name, spec, photos.splits[spec["size"]], args, device)
              for name, spec in specs.items()}
    t0, folds = time.perf_counter(), clouds.cv_folds(train, args.folds)
    picks = {name: select_epochs(name, mdl, folds, args.seed, device, TARGETS.get(name, (None,))[0])   # training images
             for name, mdl in models.items() if not mdl["spec"]["epochs"]}
    models = with_chosen_epochs(models, picks)   # not: those that diverged in cross-validation
    selection_s = time.perf_counter() - t0
    runs = [run_seed(seed, models, device, photos.class_to_idx) for seed in seeds]   # the only test-set reads

    mean, std, per_seed = results.aggregate_seeds([dict(fixed, **run["metrics"]) for run in runs])
    history = clouds.seed_history(runs, specs)
    cms = {name: sum((run["confusion"][name] for run in runs if name in run["confusion"]),
                     torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)) for name in specs}
    diverged = [p["diverged"] for p in picks.values() if "diverged" in p] + sorted(
        (d for run in runs for d in run["diverged"]), key=lambda d: list(specs).index(d["run"]))
    selection = clouds.selection_record(specs, picks, folds, len(train), clouds.SPLIT_SEED)
    clouds.make_plots(plots.plot_dir(args.results_dir, EXPERIMENT), photos, args, list(specs), mean, std, fixed,
                      history, cms, diverged, selection)
    timings = dict(clouds.run_timings(runs, models, args.memory_format, start.wall_s()), selection_s=selection_s)

    headline = next((k for k in ("course.f1_macro", "improved.f1_macro") if k in mean), "baseline.majority_accuracy")
    # --rotation-from-zero only when given (as common.cli does for --tf32): older results still compare equal
    config = cli.config_of(args, optional=("rotation_from_zero",))
    results.write_result(EXPERIMENT, results_dir=args.results_dir, status="diverged" if diverged else "ok",
                         started_at=start.started_at, config=config, seeds=seeds, data=photos.info,
                         metrics=mean, std=std, per_seed=per_seed, headline=headline, history=history,
                         timings=timings, device=device, script=__file__, deviations=DEVIATIONS,
                         selection=selection, targets=clouds.target_records(picks, TARGETS["improved"]),
                         extra=clouds.extra_record(photos, specs, per_seed, cms, diverged))
    clouds.report(photos, seeds, list(specs), mean, std, fixed, timings, selection)
    return 3 if diverged else 0


if __name__ == "__main__":
    sys.exit(main())
