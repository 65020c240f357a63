#!/usr/bin/env python
"""03_tabular_training: data loading, the training loop, initialisation, transfer learning, overfitting and hyperparameter search on the UCI Zoo and DS salaries tables (course transcript lines 180-389).

The course's 5-row animal table goes through TensorDataset + DataLoader (batches of 2, 2, 1). A Zoo classifier
is trained with the course's loop and scored with torchmetrics Accuracy against the majority class (41/101); a
salary regressor (MSELoss, SGD lr 0.001) against predicting the mean. Then: nn.Linear(64, 128)'s default weights
within +-0.125 and nn.init.uniform_; torch.save/load and fine-tuning the US-trained salary model on the other
countries (10x smaller lr, also with a frozen first layer) against training from scratch; a large Zoo network
that overfits, dropout and weight decay; the course's recipe (overfit one example, then the training set); grid
vs random search over learning rate and momentum. DEVIATIONS: where and why this departs from the course.
"""
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: find common/

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from sklearn.model_selection import StratifiedKFold
from torch.utils.data import TensorDataset
from torchmetrics import Accuracy

from common import cli, data, metrics, plots, repro, results
from common.device import DeviceError, synchronize

EXPERIMENT = "03_tabular_training"
HEADLINE = "zoo.test_accuracy"
ZOO_FEATURES = data.ZOO_COLUMNS[1:-1]            # 16 features; "legs" (0..8) is scaled to 0..1
ZOO_CLASSES = 7
# one-hot encoded; job titles and countries keep their most frequent values, the rest become "other"
SALARY_CATEGORICAL = {"work_year": None, "experience_level": None, "employment_type": None,
                      "company_size": None, "job_title": 10, "employee_residence": 7}
SALARY_FEATURES_REAL = 35  # one-hot width on the real table: 4 + 4 + 4 + 3 + 11 + 8 + 1 (remote_ratio / 100)
GRID_MOMENTUM = [0.85, 0.9, 0.95, 0.99]
GRID_LR = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
SINGLE_EXAMPLE_LOSS = 0.01   # "near zero" loss for the overfit-one-example check

DEFAULTS = {"seeds": 3, "threads": 1,
            "epochs": 100, "lr": 0.01, "momentum": 0.9, "batch_size": 8, "hidden": 32,               # zoo
            "salary_epochs": 30, "salary_lr": 0.001, "salary_batch_size": 8, "salary_hidden": 16,
            "finetune_lr": 0.0001, "finetune_epochs": 30,                                          # transfer
            "overfit_epochs": 200, "overfit_hidden": 256, "dropout": 0.5, "weight_decay": 0.001,
            "single_max_steps": 500, "search_trials": 20, "search_epochs": 50}
SMOKE = {"epochs": 3, "salary_epochs": 1, "finetune_epochs": 1, "overfit_epochs": 3, "overfit_hidden": 32,
         "single_max_steps": 200, "search_trials": 3, "search_epochs": 2,
         "salary_rows": 600}   # not an option: a subset of the salary table keeps the smoke run to seconds

DEVIATIONS = [
    {"what": "Zoo classifier data", "course": "animal_dataset.csv: 5 animals, 7 features, 3 types",
     "here": "the UCI Zoo table: 101 animals, 16 features, 7 types, split 60/20/21 (train/validation/test)",
     "why": "5 rows cannot be split into training, validation and test sets (they still show the DataLoader)"},
    {"what": "Zoo 'legs' feature", "course": "the raw count", "here": "divided by 8 (0..1)",
     "why": "the 15 other features are 0/1; the course: normalise inputs for stable training"},
    {"what": "Zoo learning rate", "course": "0.001, 'a good default' (said of the salary regression)",
     "here": "0.01 with momentum 0.9 (classifier and the recipe's networks)", "flag": "--lr 0.001",
     "why": "60 training animals at batch 8 make 8 steps per epoch; 0.01 is in the course's typical range"},
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


# --------------------------------------------------------------------------- models (importable)
def mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear layers of widths ``sizes`` with ReLU between them (and dropout after each ReLU)."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(p=dropout))
    return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]))


def zoo_classifier(hidden: int = DEFAULTS["hidden"]) -> nn.Sequential:
    return mlp([len(ZOO_FEATURES), hidden, ZOO_CLASSES])


def zoo_big(hidden: int = DEFAULTS["overfit_hidden"], dropout: float = 0.0) -> nn.Sequential:
    """Large enough to overfit the 60 training animals."""
    return mlp([len(ZOO_FEATURES), hidden, hidden, ZOO_CLASSES], dropout=dropout)


def salary_regressor(in_features: int, hidden: int = DEFAULTS["salary_hidden"]) -> nn.Sequential:
    return mlp([in_features, hidden, 1])


def benchmark_cases() -> list[dict]:
    """The two models this script trains, at its batch sizes (inputs are random: no data loading)."""
    def zoo_batch(bs, device):
        x = torch.rand(bs, len(ZOO_FEATURES), device=device).round()
        return (x,), torch.randint(0, ZOO_CLASSES, (bs,), device=device)

    def salary_batch(bs, device):
        return (torch.rand(bs, SALARY_FEATURES_REAL, device=device),), torch.randn(bs, 1, device=device)

    d = DEFAULTS
    return [
        {"name": "03.zoo_classifier", "make_model": zoo_classifier, "make_batch": zoo_batch,
         "loss_fn": nn.CrossEntropyLoss(), "batch_size": d["batch_size"],
         "make_optimizer": lambda params: torch.optim.SGD(params, lr=d["lr"], momentum=d["momentum"])},
        {"name": "03.salary_regressor", "make_model": lambda: salary_regressor(SALARY_FEATURES_REAL),
         "make_batch": salary_batch, "loss_fn": nn.MSELoss(), "batch_size": d["salary_batch_size"],
         "make_optimizer": lambda params: torch.optim.SGD(params, lr=d["salary_lr"])},
    ]


# --------------------------------------------------------------------------- CLI
def parse(argv=None):
    d, pos_int, pos_float = DEFAULTS, cli.positive_int, cli.positive_float
    p = cli.base_parser(EXPERIMENT, __doc__.splitlines()[0], seeds=d["seeds"], threads=d["threads"])
    g = p.add_argument_group("zoo classifier")
    g.add_argument("--epochs", type=pos_int, default=d["epochs"], help="zoo classifier epochs")
    g.add_argument("--lr", type=pos_float, default=d["lr"], help="SGD learning rate of every Zoo network")
    g.add_argument("--momentum", type=float, default=d["momentum"], help="zoo classifier SGD momentum")
    g.add_argument("--batch-size", type=pos_int, default=d["batch_size"], help="zoo batch size")
    g.add_argument("--hidden", type=pos_int, default=d["hidden"], help="zoo classifier hidden width")
    g = p.add_argument_group("salary regression and transfer")
    g.add_argument("--salary-epochs", type=pos_int, default=d["salary_epochs"])
    g.add_argument("--salary-lr", type=pos_float, default=d["salary_lr"], help="SGD learning rate (course: 0.001)")
    g.add_argument("--salary-batch-size", type=pos_int, default=d["salary_batch_size"])
    g.add_argument("--salary-hidden", type=pos_int, default=d["salary_hidden"])
    g.add_argument("--finetune-lr", type=pos_float, default=d["finetune_lr"], help="10x smaller than --salary-lr")
    g.add_argument("--finetune-epochs", type=pos_int, default=d["finetune_epochs"])
    g = p.add_argument_group("overfitting, regularisation, search")
    g.add_argument("--overfit-epochs", type=pos_int, default=d["overfit_epochs"])
    g.add_argument("--overfit-hidden", type=pos_int, default=d["overfit_hidden"])
    g.add_argument("--dropout", type=float, default=d["dropout"])
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    g.add_argument("--single-max-steps", type=pos_int, default=d["single_max_steps"],
                   help="overfit-one-example: give up after this many steps")
    g.add_argument("--search-trials", type=pos_int, default=d["search_trials"],
                   help="trials of grid search and of random search (the full grid is 4 x 5 = 20)")
    g.add_argument("--search-epochs", type=pos_int, default=d["search_epochs"])
    return cli.parse_args(p, argv, smoke=SMOKE)


# --------------------------------------------------------------------------- data
def zoo_tensors(df: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    x = df[ZOO_FEATURES].to_numpy(np.float32, copy=True)
    x[:, ZOO_FEATURES.index("legs")] /= 8.0
    return torch.from_numpy(x), torch.from_numpy(df["type"].to_numpy(np.int64) - 1)


def zoo_split(y: torch.Tensor, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified 3/1/1 split (train/validation/test) from 5 stratified folds: 60/20/21 on the real table."""
    with warnings.catch_warnings():  # type 5 (amphibians) has only 4 animals: fewer than 5 folds
        warnings.simplefilter("ignore", UserWarning)
        folds = [te for _, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)]
    return np.sort(np.concatenate(folds[2:])), np.sort(folds[1]), np.sort(folds[0])


def salary_tensors(df: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One-hot features, their column names and the raw salary_in_usd target."""
    parts = []
    for col, top in SALARY_CATEGORICAL.items():
        s = df[col].astype(str)
        if top:
            counts = s.value_counts()
            keep = sorted(counts.index, key=lambda k: (-counts[k], k))[:top]   # ties broken by name
            s = s.where(s.isin(keep), "other")
        parts.append(pd.get_dummies(s, prefix=col))
    parts.append((df["remote_ratio"] / 100.0).rename("remote_ratio"))
    x = pd.concat(parts, axis=1).astype(np.float32)
    y = torch.tensor(df["salary_in_usd"].to_numpy(np.float64), dtype=torch.float32).unsqueeze(1)
    return torch.from_numpy(x.to_numpy()), y, list(x.columns)


def random_split(n: int, frac_val: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx = torch.randperm(n, generator=repro.make_generator(seed)).numpy()
    n_val = int(round(n * frac_val))
    return np.sort(idx[n_val:]), np.sort(idx[:n_val])


def load_data(args, device) -> dict:
    """The three tables as tensors on ``device`` (the salary table subsampled under --smoke) and their record."""
    toy, toy_info = data.load_animal_toy(args.data_dir, synthetic=args.synthetic)
    zoo_df, zoo_info = data.load_zoo(args.data_dir, synthetic=args.synthetic)
    sal_df, sal_info = data.load_salaries(args.data_dir, synthetic=args.synthetic)
    if args.smoke:
        rows = np.sort(np.random.default_rng(0).permutation(len(sal_df))[:SMOKE["salary_rows"]])
        sal_df = sal_df.iloc[rows].reset_index(drop=True)
    x_zoo, y_zoo = (t.to(device) for t in zoo_tensors(zoo_df))
    x_sal, y_usd, sal_columns = salary_tensors(sal_df)
    sources = {i.source for i in (toy_info, zoo_info, sal_info)}
    smoke_note = f"; smoke: {SMOKE['salary_rows']} salary rows" if args.smoke else ""
    info = {"name": "zoo+ds_salaries", "source": "synthetic" if "synthetic" in sources else "real",
            "fingerprint": f"zoo:{zoo_info.fingerprint};toy:{toy_info.fingerprint};salaries:{sal_info.fingerprint}",
            "sizes": {"zoo": len(zoo_df), "animal_toy": len(toy), "salaries": len(sal_df)},
            "parts": {"animal_toy": toy_info.to_json(), "zoo": zoo_info.to_json(), "ds_salaries": sal_info.to_json()},
            "notes": "zoo split 3/1/1 by stratified folds; salaries split 80/20 at random; salary target z-scored "
                     "with training statistics" + smoke_note}
    return {"toy": toy, "x_zoo": x_zoo, "y_zoo": y_zoo, "x_sal": x_sal.to(device), "y_usd": y_usd.to(device),
            "is_us": (sal_df["employee_residence"] == "US").to_numpy(), "salary_columns": sal_columns, "info": info}


# --------------------------------------------------------------------------- the training loop
class Clock:
    """Sums training and evaluation time and the samples seen in training."""

    def __init__(self, device):
        self.device, self.train_s, self.eval_s, self.samples = device, 0.0, 0.0, 0


def evaluate(model, x, y, loss_fn, num_classes: int | None = None, clock: Clock | None = None):
    """(loss, accuracy or None) on one whole split, in eval mode, without gradients; timed on ``clock``."""
    t0, was_training = time.perf_counter(), model.training
    model.eval()
    with torch.no_grad():
        out = model(x)
        loss = float(loss_fn(out, y))
    model.train(was_training)
    acc = metrics.accuracy(out, y, num_classes) if num_classes else None
    if clock is not None:
        clock.eval_s += time.perf_counter() - t0
    return loss, acc


def fit(model, optimizer, loss_fn, train, val, *, epochs: int, batch_size: int, seed: int, clock: Clock,
        num_classes: int | None = None, run: str = "", track_train: bool = True) -> dict:
    """The course's training loop over mini-batches; returns the per-epoch history.

    Per epoch: the mean training loss over batches and (classifiers) the training accuracy (torchmetrics update,
    compute, reset); then the validation loss and accuracy and, with ``track_train``, the training split's in
    eval mode (no dropout). A divergence raises results.Diverged naming ``run``.
    """
    x_tr, y_tr = train
    n, device, gen = len(y_tr), x_tr.device, repro.make_generator(seed)
    # validate_args=False: torchmetrics' input checks read values on the host (a GPU sync every step)
    metric = (Accuracy(task="multiclass", num_classes=num_classes, validate_args=False).to(device)
              if num_classes and track_train else None)
    splits = {"val": val, "train_eval": train} if track_train else {"val": val}
    hist = defaultdict(list)
    model.train()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(device)
        log = results.StepLog()   # losses stay on the device; read (and checked) once per epoch
        for step, start in enumerate(range(0, n, batch_size)):
            idx = perm[start:start + batch_size]
            inputs, targets = x_tr[idx], y_tr[idx]
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = loss_fn(outputs, targets)
            loss.backward()
            log.add(loss, epoch, step)
            optimizer.step()
            if metric is not None:
                metric.update(outputs.detach().argmax(dim=-1), targets)
        try:
            losses = log.values()
        except results.Diverged as e:
            e.run = run
            raise
        synchronize(device)
        clock.train_s += time.perf_counter() - t0
        clock.samples += n
        hist["train_loss"].append(sum(losses) / len(losses))
        if metric is not None:
            hist["train_acc"].append(float(metric.compute()))
            metric.reset()
        if val is None:
            continue
        for name, split in splits.items():
            loss_value, acc = evaluate(model, *split, loss_fn, num_classes, clock)
            hist[f"{name}_loss"].append(loss_value)
            if acc is not None:
                hist[f"{name}_acc"].append(acc)
    return dict(hist)


def zoo_accuracy(model, x, y, clock: Clock) -> float:
    return evaluate(model, x, y, nn.CrossEntropyLoss(), ZOO_CLASSES, clock)[1]


# --------------------------------------------------------------------------- the story: each section returns
# its flat metrics and the curves it adds to the result's history (name -> one list per seed)
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


def zoo_classification(x, y, split, args, seed, clock) -> tuple[dict, dict]:
    tr, va, te = split
    repro.seed_everything(seed)
    model = zoo_classifier(args.hidden).to(x.device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    hist = fit(model, opt, nn.CrossEntropyLoss(), (x[tr], y[tr]), (x[va], y[va]), epochs=args.epochs,
               batch_size=args.batch_size, seed=seed, clock=clock, num_classes=ZOO_CLASSES, run="zoo")
    majority = int(torch.bincount(y[tr], minlength=ZOO_CLASSES).argmax())
    m = {"zoo.test_accuracy": zoo_accuracy(model, x[te], y[te], clock),
         "zoo.val_accuracy": hist["val_acc"][-1], "zoo.train_accuracy": hist["train_eval_acc"][-1],
         "zoo.train_loss": hist["train_loss"][-1], "zoo.val_loss": hist["val_loss"][-1],
         "baseline.majority_test_accuracy": metrics.accuracy(torch.full_like(y[te], majority), y[te], ZOO_CLASSES),
         "baseline.majority_accuracy": float((y == int(torch.bincount(y).argmax())).float().mean())}
    return m, {f"zoo.{k}": hist[k] for k in ("train_loss", "val_loss", "train_acc", "val_acc")}


def salary_regression(x, y_usd, args, seed, clock) -> tuple[dict, dict]:
    tr, va = random_split(len(y_usd), 0.2, seed)
    y_std = float(y_usd[tr].std())
    y = (y_usd - float(y_usd[tr].mean())) / y_std  # z-scored with the training statistics
    repro.seed_everything(seed)
    model = salary_regressor(x.shape[1], args.salary_hidden).to(x.device)
    opt = torch.optim.SGD(model.parameters(), lr=args.salary_lr)
    hist = fit(model, opt, nn.MSELoss(), (x[tr], y[tr]), (x[va], y[va]), epochs=args.salary_epochs,
               batch_size=args.salary_batch_size, seed=seed, clock=clock, run="salary")
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
    mse, width = nn.MSELoss(), (x.shape[1], args.salary_hidden)
    b_train, b_val = (x[b_tr], y[b_tr]), (x[b_va], y[b_va])
    repro.seed_everything(seed)
    pre = salary_regressor(*width).to(x.device)
    h = fit(pre, torch.optim.SGD(pre.parameters(), lr=args.salary_lr), mse, (x[a_tr], y[a_tr]), (x[a_va], y[a_va]),
            epochs=args.salary_epochs, batch_size=args.salary_batch_size, seed=seed, clock=clock,
            run="transfer.pretrain")
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(pre.state_dict(), Path(tmp) / "salary_us.pt")
        state = torch.load(Path(tmp) / "salary_us.pt", weights_only=True, map_location=x.device)
    m = {"transfer.task_a_val_mse": h["val_loss"][-1],
         "transfer.loaded_equal": int(all(torch.equal(state[k], v) for k, v in pre.state_dict().items()))}
    zero_shot, finetune, frozen = (salary_regressor(*width).to(x.device) for _ in range(3))
    for model in (zero_shot, finetune, frozen):
        model.load_state_dict(state)
    for p in frozen[0].parameters():  # the first layer
        p.requires_grad = False
    frozen_before = {k: v.detach().clone() for k, v in frozen.state_dict().items()}
    m["transfer.task_b_zero_shot_val_mse"] = evaluate(zero_shot, *b_val, mse)[0]
    m["baseline.transfer_task_b_mean_val_mse"] = float(mse(y[b_tr].mean().expand_as(y[b_va]), y[b_va]))
    repro.seed_everything(seed + 1)
    scratch = salary_regressor(*width).to(x.device)
    curves = {}
    for name, model, lr in (("finetune", finetune, args.finetune_lr), ("frozen", frozen, args.finetune_lr),
                            ("scratch", scratch, args.salary_lr)):
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
        h = fit(model, opt, mse, b_train, b_val, epochs=args.finetune_epochs,
                batch_size=args.salary_batch_size, seed=seed, clock=clock, run=f"transfer.{name}")
        m[f"transfer.{name}_val_mse"], m[f"transfer.{name}_lr"] = h["val_loss"][-1], lr
        curves[f"transfer.{name}.val_loss"] = h["val_loss"]
        if model is frozen:
            same = {k: torch.equal(v, frozen_before[k]) for k, v in frozen.state_dict().items()}
            m["transfer.frozen_first_layer_unchanged"] = int(same["0.weight"] and same["0.bias"])
            m["transfer.frozen_other_layers_changed"] = int(not same["2.weight"])
    m["transfer.sizes_a_train"], m["transfer.sizes_b_train"] = len(a_tr), len(b_tr)
    return m, curves


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


def overfit_detect(hist: dict) -> dict:
    """Overfitting: the validation loss ends well above its minimum while the training loss kept falling."""
    val, tr = np.array(hist["val_loss"]), np.array(hist["train_eval_loss"])
    best = int(val.argmin())
    rise = float(val[-1] - val[best])
    detected = rise > 0.1 * val[best] + 0.01 and tr[-1] < tr[best]
    return {"best_val_epoch": best + 1, "val_loss_rise": rise, "detected": int(detected),
            "gap": float(val[-1] - tr[-1]), "final_val_loss": float(val[-1]), "final_train_loss": float(tr[-1]),
            "final_val_acc": hist["val_acc"][-1], "final_train_acc": hist["train_eval_acc"][-1]}


def overfit_one_example(x, y, args, seed, clock) -> tuple[dict, dict]:
    """The recipe's first step: a large network must drive the loss on one training example to near zero."""
    loss_fn = nn.CrossEntropyLoss()
    repro.seed_everything(seed)
    model = zoo_big(args.overfit_hidden).to(x.device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    losses, steps = [], None
    t0 = time.perf_counter()
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
        repro.seed_everything(seed)
        model = zoo_big(args.overfit_hidden, dropout=p).to(x.device)
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=wd)
        h = fit(model, opt, nn.CrossEntropyLoss(), (x[tr], y[tr]), (x[va], y[va]), epochs=args.overfit_epochs,
                batch_size=args.batch_size, seed=seed, clock=clock, num_classes=ZOO_CLASSES, run=f"overfit.{name}")
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
    """Grid search vs random search with the same number of trials, ranked on the validation split."""
    tr, va, te = split
    rng = np.random.default_rng(seed)
    grid = [(lr, mom) for mom in GRID_MOMENTUM for lr in GRID_LR]
    grid = [grid[i] for i in rng.permutation(len(grid))][:args.search_trials]
    rand = [(10 ** -rng.uniform(2, 6), rng.uniform(0.85, 0.99)) for _ in range(args.search_trials)]
    m, curves, tables = {}, {}, {}
    for kind, trials in (("grid", grid), ("random", rand)):
        rows = []
        for lr, mom in trials:
            repro.seed_everything(seed)
            model = zoo_classifier(args.hidden).to(x.device)
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=mom)
            try:
                h = fit(model, opt, nn.CrossEntropyLoss(), (x[tr], y[tr]), (x[va], y[va]), epochs=args.search_epochs,
                        batch_size=args.batch_size, seed=seed, clock=clock, num_classes=ZOO_CLASSES,
                        run=f"search.{kind}", track_train=False)
                val_acc, val_loss = h["val_acc"][-1], h["val_loss"][-1]
                test_acc = zoo_accuracy(model, x[te], y[te], clock)
            except results.Diverged:  # a trial that blows up scores zero; the search goes on
                val_acc, val_loss, test_acc = 0.0, float("inf"), 0.0
            rows.append({"lr": lr, "momentum": mom, "val_acc": val_acc, "val_loss": val_loss, "test_acc": test_acc})
        key = lambda r: (r["val_acc"], -r["val_loss"])   # ties broken by the lower validation loss
        best_so_far = [max(rows[:i + 1], key=key)["val_acc"] for i in range(len(rows))]
        best = max(rows, key=key)
        s = f"search.{kind}"
        m.update({f"{s}.best_val_accuracy": best["val_acc"], f"{s}.best_test_accuracy": best["test_acc"],
                  f"{s}.best_lr": best["lr"], f"{s}.best_momentum": best["momentum"],
                  f"{s}.trials_to_best": best_so_far.index(best["val_acc"]) + 1, f"{s}.trials": len(rows),
                  f"{s}.learning_trials": sum(r["val_acc"] > 0.5 for r in rows)})
        m.update({f"{s}.best_after_{t}": best_so_far[t - 1] for t in (1, 5, 10) if t <= len(rows)})
        curves[f"{s}.best_so_far"], tables[kind] = best_so_far, rows
    return m, curves, tables


def run_seed(seed: int, d: dict, args, clock: Clock) -> tuple[dict, dict, dict]:
    """Every section for one seed, in the course's order: flat metrics, the history curves, the search trials."""
    t0 = time.perf_counter()
    repro.seed_everything(seed)
    x, y, x_sal, y_usd = d["x_zoo"], d["y_zoo"], d["x_sal"], d["y_usd"]
    split = zoo_split(y.cpu(), seed)
    one = split[0][:1]   # the recipe's single training example
    sections = [(toy_loader(d["toy"], seed)[0], {}), zoo_classification(x, y, split, args, seed, clock),
                salary_regression(x_sal, y_usd, args, seed, clock), initialisation(seed),
                transfer(x_sal, y_usd, d["is_us"], args, seed, clock),
                overfit_one_example(x[one], y[one], args, seed, clock), regularisation(x, y, split, args, seed, clock)]
    search_m, search_curves, trials = search(x, y, split, args, seed, clock)
    m, curves = {}, {}
    for section_m, section_curves in sections + [(search_m, search_curves)]:
        m.update(section_m)
        curves.update(section_curves)
    print_seed(seed, m, time.perf_counter() - t0)
    return m, curves, trials


def run_seeds(seeds: list[int], d: dict, args, clock: Clock) -> tuple[list, list[dict]]:
    """``run_seed`` for each seed until one diverges (the seeds done so far are still written)."""
    runs = []
    for seed in seeds:
        try:
            runs.append(run_seed(seed, d, args, clock))
        except results.Diverged as e:
            diverged = {"run": getattr(e, "run", "?"), "seed": seed, **e.to_json()}
            print(f"seed {seed}: DIVERGED in {diverged['run']}: {e}", file=sys.stderr)
            return runs, [diverged]
    return runs, []


# --------------------------------------------------------------------------- plots (the last seed's curves)
def panel(ax, title: str, ylabel: str, series: dict, lines=(), xlabel: str = "epoch", **settings) -> None:
    """One line per named series (a point per epoch, or per step); ``lines``: (y, label, style) horizontal lines."""
    for label, ys in series.items():
        ax.plot(range(1, len(ys) + 1), ys, label=label)
    for y, label, style in lines:
        ax.axhline(y, label=label, **style)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, **settings)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def make_plots(hist: dict, m: dict, results_dir) -> None:
    """Four figures: the last seed's curves, and every seed's search."""
    import matplotlib.pyplot as plt
    last, pdir = {k: v[-1] for k, v in hist.items()}, plots.plot_dir(results_dir, EXPERIMENT)
    red, mean_line = {"ls": "--", "color": "tab:red"}, "predict the mean"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panel(axes[0], "Zoo classifier: cross-entropy", "loss",
          {"train (mean over batches)": last["zoo.train_loss"], "validation": last["zoo.val_loss"]})
    majority = m["baseline.majority_test_accuracy"]
    panel(axes[1], "Zoo classifier: accuracy (torchmetrics)", "accuracy",
          {"train": last["zoo.train_acc"], "validation": last["zoo.val_acc"]},
          [(majority, f"majority class ({majority:.3f})", red)], ylim=(0, 1.02))
    plots.save_figure(fig, pdir / "zoo_classifier.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panel(axes[0], "salary regression (all countries): MSE, z-scored target", "MSE",
          {"train": last["salary.train_loss"], "validation": last["salary.val_loss"]},
          [(m["baseline.salary_mean_val_mse"], mean_line, red)])
    panel(axes[1], "transfer US -> other countries: validation MSE", "MSE",
          {f"{name} (lr {m[f'transfer.{name}_lr']:g})": last[f"transfer.{name}.val_loss"]
           for name in ("finetune", "frozen", "scratch")},
          [(m["baseline.transfer_task_b_mean_val_mse"], mean_line, red),
           (m["transfer.task_b_zero_shot_val_mse"], "US model, no fine-tuning", {"ls": ":", "color": "k"})])
    plots.save_figure(fig, pdir / "salary_regression_and_transfer.png")

    names = ("plain", "dropout", "weight_decay")
    fig, axes = plt.subplots(1, 5, figsize=(23, 4.2))
    panel(axes[0], "recipe step 1: overfit one example", "loss", {"": last["recipe.single_example_loss"]},
          [(SINGLE_EXAMPLE_LOSS, "", {"ls": "--", "color": "k"})], xlabel="step", yscale="log")
    for ax, name in zip(axes[1:4], names):
        ax.axvline(m[f"overfit.{name}.best_val_epoch"], ls=":", color="k", label="lowest validation loss")
        panel(ax, f"{name}: overfitting {'detected' if m[f'overfit.{name}.detected'] else 'not detected'}",
              "cross-entropy", {"train (eval mode)": last[f"overfit.{name}.train_eval_loss"],
                                "validation": last[f"overfit.{name}.val_loss"]}, yscale="log")
    axes[4].bar(names, [m[f"overfit.{n}.gap"] for n in names], color=["tab:blue", "tab:orange", "tab:green"])
    panel(axes[4], "final validation - training loss", "gap", {}, xlabel="")
    plots.save_figure(fig, pdir / "overfitting_and_regularisation.png")

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for kind in ("grid", "random"):   # every seed's search: the mean and the range
        arr = np.array(hist[f"search.{kind}.best_so_far"])
        t = np.arange(1, arr.shape[1] + 1)
        ax.plot(t, arr.mean(0), marker="o", ms=3, label=f"{kind} search (mean of {len(arr)} seeds)")
        if len(arr) > 1:
            ax.fill_between(t, arr.min(0), arr.max(0), alpha=0.15)
    panel(ax, "best validation accuracy found vs. trials spent (Zoo)", "best val accuracy", {}, xlabel="trials")
    plots.save_figure(fig, pdir / "search.png")


# --------------------------------------------------------------------------- reporting
def print_seed(seed: int, m: dict, seconds: float) -> None:
    print(f"seed {seed}: zoo test acc {m['zoo.test_accuracy']:.3f} (majority {m['baseline.majority_test_accuracy']:.3f}); "
          f"salary val MSE {m['salary.val_mse']:.3f} (mean {m['baseline.salary_mean_val_mse']:.3f}); transfer "
          f"fine-tune {m['transfer.finetune_val_mse']:.3f} / scratch {m['transfer.scratch_val_mse']:.3f}; overfit "
          f"detected {m['overfit.plain.detected']}; search best val acc grid {m['search.grid.best_val_accuracy']:.3f} "
          f"random {m['search.random.best_val_accuracy']:.3f} [{seconds:.1f}s]", flush=True)


def report(mean: dict, n_seeds: int, wall_s: float) -> None:
    f = lambda k: f"{mean[k]:.3f}" if mean.get(k) is not None else "n/a"
    print(f"03 ({n_seeds} seeds, {wall_s:.0f}s): toy DataLoader batches "
          f"{[int(mean[f'toy.batch{i}_size']) for i in range(1, int(mean['toy.n_batches']) + 1)]} (course: 2, 2, 1); "
          f"Zoo test accuracy {f('zoo.test_accuracy')} vs majority {f('baseline.majority_test_accuracy')} "
          f"(whole table {f('baseline.majority_accuracy')}, course figure 0.406); salary val MSE {f('salary.val_mse')} "
          f"(RMSE ${mean['salary.val_rmse_usd']:,.0f}) vs predict-the-mean {f('baseline.salary_mean_val_mse')} "
          f"(${mean['baseline.salary_mean_val_rmse_usd']:,.0f}); nn.Linear(64,128) max |w| {f('init.default_max_abs')} "
          f"<= {f('init.default_bound')}; transfer to non-US: fine-tune {f('transfer.finetune_val_mse')}, frozen "
          f"{f('transfer.frozen_val_mse')}, scratch {f('transfer.scratch_val_mse')}, no fine-tuning "
          f"{f('transfer.task_b_zero_shot_val_mse')}, mean {f('baseline.transfer_task_b_mean_val_mse')}; overfitting "
          f"detected in {f('overfit.plain.detected')} of seeds, gap plain/dropout/wd {f('overfit.plain.gap')}/"
          f"{f('overfit.dropout.gap')}/{f('overfit.weight_decay.gap')}; one example overfit in "
          f"{f('recipe.single_example_steps')} steps; search best val acc grid {f('search.grid.best_val_accuracy')} "
          f"vs random {f('search.random.best_val_accuracy')}")


def extra_record(d: dict, seeds: list[int], runs: list, diverged: list[dict]) -> dict:
    # the toy DataLoader's batches of the last seed that ran (a diverged one too): they depend on the seed only
    tables = {"toy_loader": toy_loader(d["toy"], seeds[len(runs)] if diverged else seeds[-1])[1]}
    if runs:
        tables["search_trials"] = {str(seed): trials for seed, (_, _, trials) in zip(seeds, runs)}
    return {"diverged": diverged, "tables": tables, "salary_feature_columns": d["salary_columns"],
            "course_figures": {"toy.batch_sizes": [2, 2, 1], "baseline.majority_accuracy": 41 / 101,
                               "init.default_bound": 0.125, "salary_lr": 0.001}}


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse(argv)
    try:
        start = cli.start(args)
        d = load_data(args, start.device)
    except (data.DataError, DeviceError) as e:
        return cli.fail(e)
    seeds, clock = cli.seed_list(args), Clock(start.device)
    runs, diverged = run_seeds(seeds, d, args, clock)
    per_seed = [m for m, _, _ in runs]
    mean, std, per_seed_lists = results.aggregate_seeds(per_seed)
    mean.setdefault(HEADLINE, None)
    history = {k: [curves[k] for _, curves, _ in runs] for k in runs[0][1]} if runs else {}
    if runs:
        make_plots(history, per_seed[-1], args.results_dir)
    timings = {"wall_s": start.wall_s(), "train_s": clock.train_s,
               "train_samples_per_s": clock.samples / clock.train_s if clock.train_s else None, "eval_s": clock.eval_s}
    results.write_result(
        EXPERIMENT, results_dir=args.results_dir, status="diverged" if diverged else "ok",
        started_at=start.started_at, config=cli.config_of(args), seeds=seeds, data=d["info"], metrics=mean, std=std,
        per_seed=per_seed_lists, headline=HEADLINE, history=history, timings=timings, device=start.device,
        script=__file__, deviations=DEVIATIONS, extra=extra_record(d, seeds, runs, diverged))
    if diverged:
        print(f"03: DIVERGED ({diverged[0]['run']}, seed {diverged[0]['seed']}, epoch {diverged[0]['epoch']}); "
              f"partial results written", file=sys.stderr)
        return 3
    report(mean, len(seeds), start.wall_s())
    return 0


if __name__ == "__main__":
    sys.exit(main())
