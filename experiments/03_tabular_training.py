#!/usr/bin/env python
"""03_tabular_training: data loading, the training loop, initialisation, transfer learning, overfitting and hyperparameter search on the UCI Zoo and DS salaries tables (course transcript lines 180-389).

The course's 5-row animal table goes through TensorDataset + DataLoader (batches of 2, 2, 1). A Zoo classifier (the
course's loop; epochs, learning rate, width and batch chosen by stratified 5-fold cross-validation on the 80
non-test animals, then retrained on all 80) is scored once on the 21 test animals against the majority class (41/101);
a salary regressor (MSELoss, SGD lr 0.001) against predicting the mean. Then: nn.Linear(64, 128)'s default weights
within +-0.125 and nn.init.uniform_; torch.save/load and fine-tuning the US-trained salary model on the other
countries (10x smaller lr, also with a frozen first layer) against training from scratch; a large Zoo network that
overfits, dropout and weight decay; the course's recipe (overfit one example, then the training set); grid vs
random search over learning rate and momentum. DEVIATIONS: departures from the course, and why;
selection_record: what is chosen on which validation data (the test animals are read only by final models).
What the story stands on (the tables as tensors, the MLPs, the training loop, the runs of a search and of the
seeds, the figures and the summary line) is in experiments/tabular.py.
"""
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: find common/ and experiments/

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from common import cli, data, metrics, parallel, plots, repro, results
from common.device import DeviceError
from experiments import tabular
from experiments.tabular import (SALARY_FEATURES_REAL, ZOO_CLASSES, ZOO_FEATURES, Clock, evaluate, fit, overfit_detect,
                                 random_split, run_search, salary_regressor, stratified_folds, train, zoo_big,
                                 zoo_classifier, zoo_split)

EXPERIMENT = "03_tabular_training"
HEADLINE = "zoo.test_accuracy"
GRID_MOMENTUM = [0.85, 0.9, 0.95, 0.99]
GRID_LR = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
SINGLE_EXAMPLE_LOSS = 0.01   # "near zero" loss for the overfit-one-example check
CV_FOLDS, COURSE_LR = 5, 0.001

DEFAULTS = {"seeds": 3, "threads": 1,
            "epochs": 100, "lrs": [0.01, 0.001], "widths": [32, 16, 64], "batch_sizes": [8, 16], "momentum": 0.9,  # zoo
            "lr": 0.01, "batch_size": 8, "hidden": 32,   # the recipe's and the search's networks
            "salary_epochs": 30, "salary_lr": 0.001, "salary_batch_size": 8, "salary_hidden": 16,
            "finetune_lr": 0.0001, "finetune_epochs": 30,                                          # transfer
            "overfit_epochs": 200, "overfit_hidden": 256, "dropout": 0.5, "weight_decay": 0.001,
            "single_max_steps": 500, "search_trials": 20, "search_epochs": 50}
SMOKE = {"epochs": 3, "salary_epochs": 1, "finetune_epochs": 1, "overfit_epochs": 3, "overfit_hidden": 32,
         "single_max_steps": 200, "search_trials": 3, "search_epochs": 2,
         "salary_rows": 600}   # not an option: a subset of the salary table keeps the smoke run to seconds

DEVIATIONS = [
    {"what": "Zoo classifier data", "course": "animal_dataset.csv: 5 animals, 7 features, 3 types",
     "here": "the UCI Zoo table: 101 animals, 16 features, 7 types; 21 stratified test animals a seed, the rest 60/20",
     "why": "5 rows cannot be split into training, validation and test sets (they still show the DataLoader)"},
    {"what": "Zoo 'legs' feature", "course": "the raw count", "here": "divided by 8 (0..1)",
     "why": "the 15 other features are 0/1; the course: normalise inputs for stable training"},
    {"what": "Zoo epochs, learning rate, width and batch", "course": "a fixed num_epochs; lr 0.001, 'a good default'",
     "here": f"classifier: 10 epoch counts up to --epochs x --lrs (0.01, 0.001) x --widths (32, 16, 64) x "
             f"--batch-sizes (8, 16) by stratified {CV_FOLDS}-fold cross-validation on the 80 non-test animals, then "
             "retrained on all 80; the recipe's networks: lr 0.01",
     "flag": "--lrs 0.001 --lr 0.001", "why": "101 animals: one 20-animal hold-out is too noisy to choose with; "
                                             "4-8 steps an epoch (64 animals a fold, batch 8-16): 0.01 is in the "
                                             "course's range"},
    {"what": "salary regression features", "course": "4 input features and one output, 'no one-hot encoding'",
     "here": f"{SALARY_FEATURES_REAL} one-hot features (top 10 job titles, top 7 countries; remote_ratio / 100) "
             f"and a hidden layer of {DEFAULTS['salary_hidden']} (ReLU)",
     "why": "the real table's columns are unordered categories: integer codes would invent an order"},
    {"what": "salary target", "course": "salary in USD 'already normalized' in the course's file",
     "here": "raw salary_in_usd, z-scored with the training split's mean and standard deviation",
     "why": "the real table holds dollars; training statistics keep validation rows out of the scaling"},
    {"what": "salary batch size", "course": "4", "here": "8", "flag": "--salary-batch-size 4",
     "why": "3,004 training rows: 376 steps per epoch instead of 751 at the same learning rate"},
    {"what": "salary splits", "course": "training, validation and test sets", "here": "80/20, no test set",
     "why": "nothing is chosen on the salary validation split, so its figures carry no selection bias"},
    {"what": "training batches", "course": "a DataLoader over a TensorDataset, shuffle=True",
     "here": "index batches of a fresh torch.randperm per epoch on in-memory tensors (the same sampling)",
     "why": "the DataLoader's per-sample indexing and collate cost more than these small models' steps"},
    {"what": "validation loss and accuracy",
     "course": "a validation DataLoader: the mean of per-batch losses; accuracy by update, compute, reset",
     "here": "one pass over the whole split: the mean loss over examples and torchmetrics accuracy of that pass",
     "why": "the splits fit in one batch; a mean of batch means would overweight a short last batch"},
    {"what": "transfer task B", "course": "salaries in Europe", "here": "all 751 non-US residents (465 in Europe)",
     "why": "more rows to compare fine-tuning with training from scratch; the table has countries, not regions"},
    {"what": "saving and loading", "course": "torch.save / torch.load, which 'work on any type of PyTorch objects'",
     "here": "the state_dict, loaded with torch.load(weights_only=True)",
     "why": "loading a pickled model needs weights_only=False, which can run arbitrary code"},
    {"what": "frozen layer", "course": "requires_grad = False on the first layer's weight",
     "here": "on the first layer's weight and bias", "why": "a trainable bias would still change the frozen layer"},
    {"what": "grid search order", "course": "momentum and learning rate at fixed intervals",
     "here": "the 4 x 5 grid in a seeded random order (--search-trials below 20: a random subset)",
     "why": "the best-so-far curve, compared trial by trial with random search, must not depend on loop order"},
]


# --------------------------------------------------------------------------- benchmarks
def benchmark_cases() -> list[dict]:
    """The two models this script trains, at its batch sizes (inputs are random: no data loading)."""
    zoo_batch = lambda bs, dev: ((torch.rand(bs, len(ZOO_FEATURES), device=dev).round(),),
                                 torch.randint(0, ZOO_CLASSES, (bs,), device=dev))
    salary_batch = lambda bs, dev: ((torch.rand(bs, SALARY_FEATURES_REAL, device=dev),), torch.randn(bs, 1, device=dev))
    d = DEFAULTS
    return [
        {"name": "03.zoo_classifier", "make_model": lambda: zoo_classifier(d["hidden"]), "make_batch": zoo_batch,
         "loss_fn": nn.CrossEntropyLoss(), "batch_size": d["batch_size"],
         "make_optimizer": lambda params: torch.optim.SGD(params, lr=d["lr"], momentum=d["momentum"])},
        {"name": "03.salary_regressor",
         "make_model": lambda: salary_regressor(SALARY_FEATURES_REAL, d["salary_hidden"]), "make_batch": salary_batch,
         "loss_fn": nn.MSELoss(), "batch_size": d["salary_batch_size"],
         "make_optimizer": lambda params: torch.optim.SGD(params, lr=d["salary_lr"])},
    ]


# --------------------------------------------------------------------------- CLI
HELP = {"epochs": "zoo classifier: the most epochs; cross-validation chooses among 10 values up to it",
        "lrs": "zoo classifier: the SGD learning rates cross-validation chooses from",
        "widths": "zoo classifier: the hidden widths it chooses from", "batch_sizes": "... and the batch sizes",
        "lr": "SGD learning rate of the recipe's networks", "hidden": "the search's width",
        "salary_lr": "SGD learning rate (course: 0.001)",
        "finetune_lr": "10x smaller than --salary-lr", "single_max_steps": "overfit one example: at most these steps",
        "search_trials": "trials of grid search and of random search (the full grid is 4 x 5 = 20)"}


def parse(argv=None):
    """One option per DEFAULTS entry (--salary-lr for "salary_lr"); momentum, dropout and weight decay may be 0."""
    p = cli.base_parser(EXPERIMENT, __doc__.splitlines()[0], seeds=DEFAULTS["seeds"], threads=DEFAULTS["threads"])
    for key, value in DEFAULTS.items():
        if key in ("seeds", "threads"):   # the suite's options, made by base_parser
            continue
        one = value[0] if isinstance(value, list) else value
        kind = (cli.positive_int if isinstance(one, int) else float if key in ("momentum", "dropout", "weight_decay")
                else cli.positive_float)
        p.add_argument("--" + key.replace("_", "-"), type=kind, default=value, help=HELP.get(key),
                       nargs="+" if isinstance(value, list) else None)
    parallel.add_option(p, "seeds")
    return cli.parse_args(p, argv, smoke=SMOKE)


# --------------------------------------------------------------------------- the story: each section returns
# its flat metrics and the curves it adds to the result's history (name -> one list per seed)
def zoo_accuracy(model, x, y, clock: Clock) -> float:
    """A Zoo classifier's accuracy on (x, y): how the final models read the test animals."""
    return evaluate(model, x, y, nn.CrossEntropyLoss(), ZOO_CLASSES, clock)[1]


def toy_loader(toy: pd.DataFrame, seed: int) -> tuple[dict, dict]:
    """The course's TensorDataset + DataLoader on the 5-row animal table: batches of 2, 2, 1."""
    x = toy.iloc[:, 1:-1].to_numpy(np.float32)  # all columns but animal_name and type
    y = toy.iloc[:, -1].to_numpy(np.int64)
    dataset = TensorDataset(torch.tensor(x), torch.tensor(y))
    input_sample, label_sample = dataset[0]
    order = [labels.tolist() for _, labels in repro.make_loader(dataset, batch_size=2, shuffle=True, seed=seed)]
    m = {"toy.rows": len(dataset), "toy.n_features": input_sample.shape[0], "toy.n_batches": len(order)}
    m.update({f"toy.batch{i}_size": len(labels) for i, labels in enumerate(order, 1)})
    return m, {"features": list(toy.columns[1:-1]), "first_sample": [input_sample.tolist(), int(label_sample)],
               "batch_labels": order}


def zoo_classification(x, y, split, args, seed, clock) -> tuple[dict, dict, dict]:
    """Stratified cross-validation on the non-test animals: each fold trained once per (lr, width, batch) of --lrs x
    --widths x --batch-sizes for --epochs; chosen: the (lr, width, batch, epochs) of the highest mean validation
    accuracy (ties: fewer epochs, narrower, larger batch, then the course's lr). Then retrained on all the non-test
    animals and read once on the test animals."""
    pool, te = np.sort(np.concatenate(split[:2])), split[2]
    folds = [(np.setdiff1d(pool, pool[va]), pool[va]) for va in stratified_folds(y.cpu()[pool], CV_FOLDS, seed)]
    acc, loss, configs = {}, {}, [(r, w, b) for r in args.lrs for w in args.widths for b in args.batch_sizes]
    for r, w, b in configs:
        hists = [train(lambda: zoo_classifier(w), x, y, rows, val_rows, r, args.momentum, args.epochs, b, seed, clock,
                       "zoo.cv", track_train=False)[1] for rows, val_rows in folds]
        acc[r, w, b], loss[r, w, b] = (np.mean([h[k] for h in hists], axis=0) for k in ("val_acc", "val_loss"))
    candidates = sorted({max(1, round(args.epochs * k / 10)) for k in range(1, 11)})   # 10, 20, ..., 100
    scores = {(*c, e): round(float(acc[c][e - 1]), 9) for c in configs for e in candidates}
    lr, width, batch, epochs = max(scores, key=lambda c: (scores[c], -c[3], -c[1], c[2], c[0] == COURSE_LR))
    model, hist = train(lambda: zoo_classifier(width), x, y, pool, None, lr, args.momentum, epochs, batch, seed, clock,
                        "zoo")
    majority, c = int(torch.bincount(y[pool], minlength=ZOO_CLASSES).argmax()), (lr, width, batch)
    m = {"zoo.lr": lr, "zoo.width": width, "zoo.batch_size": batch, "zoo.epochs": epochs,
         "zoo.cv_val_accuracy": float(acc[c][epochs - 1]), "zoo.cv_val_loss": float(loss[c][epochs - 1]),
         "zoo.test_accuracy": zoo_accuracy(model, x[te], y[te], clock),
         "zoo.train_accuracy": zoo_accuracy(model, x[pool], y[pool], clock), "zoo.train_loss": hist["train_loss"][-1],
         "baseline.majority_test_accuracy": metrics.accuracy(torch.full_like(y[te], majority), y[te], ZOO_CLASSES),
         "baseline.majority_accuracy": float((y == int(torch.bincount(y).argmax())).float().mean())}
    curves = {f"zoo.cv_val_acc.lr{r:g}.w{w}.b{b}": acc[r, w, b] for r, w, b in configs} | {
        "zoo.train_loss": hist["train_loss"], "zoo.train_acc": hist["train_acc"]}
    sizes = {"train+validation": len(pool), "validation": [len(va) for _, va in folds], "test": len(te)}
    return m, curves, {"sizes": sizes, "epochs": candidates,
                       "scores": {f"lr {r:g}, width {w}, batch {b}, {e} epochs": v
                                  for (r, w, b, e), v in scores.items()}}


def salary_regression(x, y_usd, args, seed, clock) -> tuple[dict, dict]:
    tr, va = random_split(len(y_usd), 0.2, seed)
    y_std = float(y_usd[tr].std())
    y = (y_usd - float(y_usd[tr].mean())) / y_std  # z-scored with the training statistics
    _, hist = train(lambda: salary_regressor(x.shape[1], args.salary_hidden), x, y, tr, va, args.salary_lr, 0.0,
                    args.salary_epochs, args.salary_batch_size, seed, clock, "salary", loss_fn=nn.MSELoss(),
                    num_classes=None)
    base = float(nn.MSELoss()(y[tr].mean().expand_as(y[va]), y[va]))   # predict the training mean
    val = hist["val_loss"][-1]
    m = {"salary.val_mse": val, "salary.train_mse": hist["train_eval_loss"][-1],
         "salary.val_rmse_usd": float(np.sqrt(val)) * y_std, "salary.val_r2": 1.0 - val / base,
         "baseline.salary_mean_val_mse": base, "baseline.salary_mean_val_rmse_usd": float(np.sqrt(base)) * y_std}
    return m, {"salary.train_loss": hist["train_loss"], "salary.val_loss": hist["val_loss"]}


def initialisation(seed: int) -> tuple[dict, dict]:
    repro.seed_everything(seed)  # nn.Linear's default initialisation draws from the global generator
    layer = nn.Linear(64, 128)
    w = layer.weight.detach()
    m = {"init.default_bound": 1 / np.sqrt(layer.in_features), "init.default_min": float(w.min()),
         "init.default_max": float(w.max()), "init.default_max_abs": float(w.abs().max())}
    m["init.default_within_bound"] = int(m["init.default_max_abs"] <= m["init.default_bound"])
    nn.init.uniform_(layer.weight)   # in place: ``w`` sees the new values
    m["init.uniform_min"], m["init.uniform_max"] = float(w.min()), float(w.max())
    m["init.uniform_in_0_1"] = int(m["init.uniform_min"] >= 0 and m["init.uniform_max"] < 1)
    return m, {}


def transfer(x, y_raw, is_us, args, seed, clock) -> tuple[dict, dict]:
    """Train on US residents (task A), save and load, fine-tune on the other countries (task B)."""
    a_idx, b_idx = np.flatnonzero(is_us), np.flatnonzero(~is_us)
    a_tr, a_va = (a_idx[s] for s in random_split(len(a_idx), 0.2, seed))
    b_tr, b_va = (b_idx[s] for s in random_split(len(b_idx), 0.2, seed + 1000))
    y = (y_raw - float(y_raw[a_tr].mean())) / float(y_raw[a_tr].std())  # task A's statistics: the pretrained scale
    mse, make = nn.MSELoss(), lambda: salary_regressor(x.shape[1], args.salary_hidden).to(x.device)
    b_train, b_val = (x[b_tr], y[b_tr]), (x[b_va], y[b_va])
    pre, h = train(make, x, y, a_tr, a_va, args.salary_lr, 0.0, args.salary_epochs, args.salary_batch_size, seed,
                   clock, "transfer.pretrain", loss_fn=mse, num_classes=None)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(pre.state_dict(), Path(tmp) / "salary_us.pt")
        state = torch.load(Path(tmp) / "salary_us.pt", weights_only=True, map_location=x.device)
    m = {"transfer.task_a_val_mse": h["val_loss"][-1],
         "transfer.loaded_equal": int(all(torch.equal(state[k], v) for k, v in pre.state_dict().items()))}
    zero_shot, finetune, frozen = (make() for _ in range(3))
    for model in (zero_shot, finetune, frozen):
        model.load_state_dict(state)   # copies: ``state`` keeps the loaded weights
    for p in frozen[0].parameters():  # the first layer
        p.requires_grad = False
    m["transfer.task_b_zero_shot_val_mse"] = evaluate(zero_shot, *b_val, mse)[0]
    m["baseline.transfer_task_b_mean_val_mse"] = float(mse(y[b_tr].mean().expand_as(y[b_va]), y[b_va]))
    repro.seed_everything(seed + 1)
    scratch, curves = make(), {}
    for name, model, lr in (("finetune", finetune, args.finetune_lr), ("frozen", frozen, args.finetune_lr),
                            ("scratch", scratch, args.salary_lr)):
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
        h = fit(model, opt, mse, b_train, b_val, epochs=args.finetune_epochs, batch_size=args.salary_batch_size,
                seed=seed, clock=clock, run=f"transfer.{name}", track_train=False)   # only the validation loss is read
        m[f"transfer.{name}_val_mse"], m[f"transfer.{name}_lr"] = h["val_loss"][-1], lr
        curves[f"transfer.{name}.val_loss"] = h["val_loss"]
        if model is frozen:
            same = {k: torch.equal(v, state[k]) for k, v in frozen.state_dict().items()}
            m["transfer.frozen_first_layer_unchanged"] = int(same["0.weight"] and same["0.bias"])
            m["transfer.frozen_other_layers_changed"] = int(not same["2.weight"])
    return m | {"transfer.sizes_a_train": len(a_tr), "transfer.sizes_b_train": len(b_tr)}, curves


def dropout_check(model: nn.Sequential, x: torch.Tensor) -> dict:
    """Fraction of non-zero inputs to the first Dropout layer that it zeroes, in train() and in eval()."""
    first = next(i for i, mod in enumerate(model) if isinstance(mod, nn.Dropout))
    drop, out = model[first], {}
    with torch.no_grad():
        inputs = model[:first](x)   # what the dropout layer sees in the model's forward pass
        nonzero = inputs != 0
        for mode in ("train", "eval"):
            drop.train(mode == "train")
            zeroed = (drop(inputs) == 0) & nonzero
            out[f"dropout.{mode}_zeroed_fraction"] = float(zeroed.sum() / nonzero.sum().clamp(min=1))
    model.train()
    return {**out, "dropout.p": drop.p}


def overfit_one_example(x, y, args, seed, clock) -> tuple[dict, dict]:
    """The recipe's first step: a large network must drive the loss on one training example to near zero."""
    loss_fn = nn.CrossEntropyLoss()
    repro.seed_everything(seed)
    model = zoo_big(args.overfit_hidden).to(x.device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    losses, steps, t0 = [], None, time.perf_counter()
    for step in range(1, args.single_max_steps + 1):
        opt.zero_grad()
        out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        value = loss.item()  # the stopping rule needs the value on the host every step (at most a few hundred)
        results.check_finite(value, 0, step)
        opt.step()
        losses.append(value)
        if value < SINGLE_EXAMPLE_LOSS and int(out.argmax()) == int(y):
            steps = step
            break
    clock.train_s += time.perf_counter() - t0
    clock.samples += len(losses)
    final_loss, acc = evaluate(model, x, y, loss_fn, ZOO_CLASSES)
    return ({"recipe.single_example_steps": steps, "recipe.single_example_loss": final_loss,
             "recipe.single_example_accuracy": acc}, {"recipe.single_example_loss": losses})


def regularisation(x, y, split, args, seed, clock) -> tuple[dict, dict]:
    """The recipe's next steps: overfit the training set (plain), then regularise (dropout, weight decay)."""
    tr, va, te = split
    m, curves = {}, {}
    for name, (p, wd) in {"plain": (0.0, 0.0), "dropout": (args.dropout, 0.0),
                          "weight_decay": (0.0, args.weight_decay)}.items():
        model, h = train(lambda: zoo_big(args.overfit_hidden, dropout=p), x, y, tr, va, args.lr, args.momentum,
                         args.overfit_epochs, args.batch_size, seed, clock, f"overfit.{name}", weight_decay=wd)
        curves.update({f"overfit.{name}.{k}": h[k] for k in ("train_eval_loss", "val_loss")})
        m.update({f"overfit.{name}.{k}": v for k, v in overfit_detect(h).items()})
        m[f"overfit.{name}.test_accuracy"] = zoo_accuracy(model, x[te], y[te], clock)
        if name == "plain":
            full = [i for i, a in enumerate(h["train_eval_acc"]) if a == 1.0]
            m["recipe.train_set_accuracy"] = h["train_eval_acc"][-1]
            m["recipe.train_set_reached_100pct"] = int(bool(full))
            if full:  # left out (not None) when 100% was never reached, e.g. in --smoke
                m["recipe.train_set_epochs_to_100pct"] = full[0] + 1
        if name == "dropout":
            m.update(dropout_check(model, x[tr]))
    return m, curves


def search(x, y, split, args, seed, clock) -> tuple[dict, dict, dict]:
    """Grid vs random search, as many trials each, ranked on the validation split; the best one reads the test."""
    tr, va, te = split
    rng = np.random.default_rng(seed)
    grid = [(lr, mom) for mom in GRID_MOMENTUM for lr in GRID_LR]
    grid = [grid[i] for i in rng.permutation(len(grid))][:args.search_trials]
    rand = [(10 ** -rng.uniform(2, 6), rng.uniform(0.85, 0.99)) for _ in range(args.search_trials)]
    m, curves, tables, make = {}, {}, {}, lambda: zoo_classifier(args.hidden)
    for kind, trials in (("grid", grid), ("random", rand)):
        def run_trial(lr, mom, kind=kind):
            try:
                model, h = train(make, x, y, tr, va, lr, mom, args.search_epochs, args.batch_size, seed, clock,
                                 f"search.{kind}", track_train=False)
                return {"lr": lr, "momentum": mom, "val_acc": h["val_acc"][-1], "val_loss": h["val_loss"][-1]}, model
            except results.Diverged:  # a trial that blows up scores zero; the search goes on
                return {"lr": lr, "momentum": mom, "val_acc": 0.0, "val_loss": float("inf")}, None
        rows, best_so_far, best, best_model, best_trial = run_search(trials, run_trial)
        s = f"search.{kind}"
        test_acc = zoo_accuracy(best_model, x[te], y[te], clock) if best_model is not None else 0.0
        m.update({f"{s}.best_val_accuracy": best["val_acc"], f"{s}.best_test_accuracy": test_acc,
                  f"{s}.best_lr": best["lr"], f"{s}.best_momentum": best["momentum"],
                  f"{s}.trials_to_best": best_trial, f"{s}.trials": len(rows),
                  f"{s}.learning_trials": sum(r["val_acc"] > 0.5 for r in rows)})
        m.update({f"{s}.best_after_{t}": best_so_far[t - 1] for t in (1, 5, 10) if t <= len(rows)})
        curves[f"{s}.best_so_far"], tables[kind] = best_so_far, rows
    return m, curves, tables


def run_seed(seed: int, d: dict, args, clock: Clock) -> tuple[dict, dict, dict]:
    """Every section for one seed, in the course's order: flat metrics, history curves, the choices' tables."""
    t0 = time.perf_counter()
    repro.seed_everything(seed)
    x, y, x_sal, y_usd = d["x_zoo"], d["y_zoo"], d["x_sal"], d["y_usd"]
    split = zoo_split(y.cpu(), seed)
    one = split[0][:1]   # the recipe's single training example
    sections = [(toy_loader(d["toy"], seed)[0], {}), zoo_classification(x, y, split, args, seed, clock),
                salary_regression(x_sal, y_usd, args, seed, clock), initialisation(seed),
                transfer(x_sal, y_usd, d["is_us"], args, seed, clock),
                overfit_one_example(x[one], y[one], args, seed, clock), regularisation(x, y, split, args, seed, clock),
                search(x, y, split, args, seed, clock)]
    m, curves = {}, {}
    for section_m, section_curves, *_ in sections:
        m.update(section_m)
        curves.update(section_curves)
    print(f"seed {seed}: zoo lr {m['zoo.lr']:g}, width {m['zoo.width']}, batch {m['zoo.batch_size']}, "
          f"{m['zoo.epochs']} epochs (CV val acc {m['zoo.cv_val_accuracy']:.3f}), "
          f"test acc {m['zoo.test_accuracy']:.3f} [{time.perf_counter() - t0:.1f}s]", flush=True)
    return m, curves, {"cv": sections[1][2], "search": sections[-1][2]}


# --------------------------------------------------------------------------- the records
def extra_record(d: dict, seeds: list[int], runs: list, diverged: list[dict]) -> dict:
    # the toy DataLoader's batches of the last seed that ran (a diverged one too): they depend on the seed only
    tables = {"toy_loader": toy_loader(d["toy"], seeds[len(runs)] if diverged else seeds[-1])[1]}
    if runs:
        tables["search_trials"] = {str(seed): t["search"] for seed, (_, _, t) in zip(seeds, runs)}
    return {"diverged": diverged, "tables": tables, "salary_feature_columns": d["salary_columns"],
            "course_figures": {"toy.batch_sizes": [2, 2, 1], "baseline.majority_accuracy": 41 / 101,
                               "init.default_bound": 0.125, "salary_lr": 0.001}}


def selection_record(args, seeds: list[int], runs: list) -> dict | None:
    """What each seed chose on which validation data; the test animals are read only by the final models."""
    if not runs:
        return None
    pick = lambda key: {str(s): m[key] for s, (m, _, _) in zip(seeds, runs)}   # seed -> its value
    chosen = {k: pick(k) for k in ("zoo.epochs", "zoo.lr", "zoo.width", "zoo.batch_size")}
    chosen.update({f"search.{k}.{p}": pick(f"search.{k}.best_{p}") for k in ("grid", "random")
                   for p in ("lr", "momentum")})
    return {"validation": {"method": f"stratified {CV_FOLDS}-fold cross-validation (StratifiedKFold, shuffled; "
                                     "folds fixed per seed, random_state=seed) on the animals outside the seed's test "
                                     "animals; the search: the seed's 60/20 train/validation split of those animals",
                           "folds": CV_FOLDS, "sizes": runs[0][2]["cv"]["sizes"]},
            "chosen": chosen,
            "scores": {"zoo.cv_val_accuracy": {str(s): t["cv"]["scores"] for s, (_, _, t) in zip(seeds, runs)}},
            "candidates": {"zoo.epochs": runs[0][2]["cv"]["epochs"], "zoo.lr": args.lrs, "zoo.width": args.widths,
                           "zoo.batch_size": args.batch_sizes, "search.grid.lr": GRID_LR,
                           "search.grid.momentum": GRID_MOMENTUM, "search.random": "lr 10 ** -uniform(2, 6), momentum "
                           "uniform(0.85, 0.99); every seed's trials in tables.search_trials"},
            "criterion": f"zoo: mean validation accuracy over the {CV_FOLDS} folds, highest; ties -> fewer epochs, "
                         f"narrower, larger batch, then the course's lr {COURSE_LR}. search: validation accuracy, "
                         "highest; ties -> lower validation loss",
            "final_model": "zoo: retrained on all the non-test animals with the chosen settings, then read once on "
                           "the test animals; search: each search's best trial as trained, read once on them",
            "fixed": {"zoo": f"momentum {args.momentum} (the course's example; the search below tries others); one "
                             "hidden layer (the course's): not selected here",
                      "overfit": f"lr {args.lr}, width {args.overfit_hidden}, {args.overfit_epochs} epochs, dropout "
                                 f"{args.dropout} and weight decay {args.weight_decay} (the course's examples): "
                                 "nothing is chosen; overfit.*.test_accuracy describes these fixed models",
                      "salary": f"validation figures (a random 80/20 split, no test split) of fixed settings: lr "
                                f"{args.salary_lr} (the course's), fine-tuning {args.finetune_lr} (10x smaller, as the "
                                f"course advises), {args.salary_epochs} epochs; nothing is chosen on them"}}


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse(argv)
    try:
        start = cli.start(args)
        d = tabular.load_data(args, start.device, SMOKE["salary_rows"])
    except (data.DataError, DeviceError) as e:
        return cli.fail(e)
    seeds = cli.seed_list(args)
    runs, diverged, clock = tabular.run_seeds(run_seed, seeds, d, args, start.device)
    per_seed = [m for m, _, _ in runs]
    mean, std, per_seed_lists = results.aggregate_seeds(per_seed)
    mean.setdefault(HEADLINE, None)
    history = {k: [curves[k] for _, curves, _ in runs] for k in runs[0][1]} if runs else {}
    if runs:
        tabular.make_plots(history, per_seed[-1], plots.plot_dir(args.results_dir, EXPERIMENT), CV_FOLDS,
                           SINGLE_EXAMPLE_LOSS)
    results.write_result(
        EXPERIMENT, results_dir=args.results_dir, status="diverged" if diverged else "ok",
        started_at=start.started_at, config=cli.config_of(args), seeds=seeds, data=d["info"], metrics=mean, std=std,
        per_seed=per_seed_lists, headline=HEADLINE, history=history, timings=clock.timings(start.wall_s()),
        device=start.device, script=__file__, deviations=DEVIATIONS, selection=selection_record(args, seeds, runs),
        extra=extra_record(d, seeds, runs, diverged))
    if diverged:
        print(f"03: DIVERGED ({diverged[0]['run']}, seed {diverged[0]['seed']}, epoch {diverged[0]['epoch']}); "
              f"partial results written", file=sys.stderr)
        return 3
    tabular.report(mean, std, len(seeds), start.wall_s())
    return 0


if __name__ == "__main__":
    sys.exit(main())
