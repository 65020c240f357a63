#!/usr/bin/env python
"""03_tabular_training: data loading, the training loop, initialisation, transfer learning, overfitting and hyperparameter search on the UCI Zoo and DS salaries tables (course transcript lines 180-389).

Reproduces the course's training chapters on real tables. The course's 5-row animal_dataset.csv goes
through TensorDataset + DataLoader (batch 2, shuffle: batches of 2, 2, 1). A classifier for the full UCI Zoo
table (101 animals, 16 features, 7 types) is trained with the course's loop (SGD, mini-batches) on a stratified
split (train/validation/test = 60/20/21), scored with torchmetrics Accuracy (update/compute/reset) against the
majority class (41/101 = 40.6%). A regressor for the DS salaries table (3,755 rows; categorical columns one-hot
encoded; salary_in_usd z-scored with training statistics) is trained with MSELoss and SGD lr 0.001 against the
predict-the-mean baseline. Then: default nn.Linear(64, 128) weights within +-0.125 and nn.init.uniform_ in
[0, 1); torch.save / torch.load(weights_only=True) and fine-tuning the salary model trained on US residents on
the other countries with a 10x smaller learning rate, against training from scratch, and with a frozen first
layer (asserted unchanged); a large Zoo network that overfits (validation loss rising while training loss
falls, detected), dropout p=0.5 (about half the activations zeroed in train(), none in eval()) and weight decay
0.001 and their train/validation gap; the course's recipe (overfit one example, then the training set, then
regularise); grid search vs random search over learning rate and momentum with the same number of trials.
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
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import Accuracy

from common import cli, data, plots, repro, results
from common.device import DeviceError, choose_device, synchronize

EXPERIMENT = "03_tabular_training"
ZOO_FEATURES = data.ZOO_COLUMNS[1:-1]            # 16 features; "legs" (0..8) is scaled to 0..1
ZOO_CLASSES = 7
TOY_FEATURES = data.ANIMAL_TOY_COLUMNS[1:-1]      # hair, feathers, eggs, milk, predator, legs, tail
# categorical columns of the salary table, one-hot encoded (job titles and countries: the most frequent
# ones, the rest as "other"); remote_ratio (0/50/100) is scaled to 0..1
SALARY_CATEGORICAL = {"work_year": None, "experience_level": None, "employment_type": None,
                      "company_size": None, "job_title": 10, "employee_residence": 7}
GRID_MOMENTUM = [0.85, 0.9, 0.95, 0.99]
GRID_LR = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
SINGLE_EXAMPLE_LOSS = 0.01   # "near zero" loss for the overfit-one-example check


# --------------------------------------------------------------------------- models (importable)
class MLP(nn.Module):
    """Linear layers with ReLU between them (and optional dropout after each activation)."""

    def __init__(self, in_features: int, hidden: list[int], out_features: int, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        sizes = [in_features] + list(hidden)
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(p=dropout))
        layers.append(nn.Linear(sizes[-1], out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def zoo_classifier(hidden: int = 32) -> MLP:
    """The Zoo classifier: 16 features -> hidden -> 7 types."""
    return MLP(len(ZOO_FEATURES), [hidden], ZOO_CLASSES)


def zoo_big(hidden: int = 256, dropout: float = 0.0) -> MLP:
    """A network large enough to overfit the 60 training animals."""
    return MLP(len(ZOO_FEATURES), [hidden, hidden], ZOO_CLASSES, dropout=dropout)


def salary_regressor(in_features: int, hidden: int = 16) -> MLP:
    """The salary regressor: one-hot features -> hidden -> 1 (no activation at the end)."""
    return MLP(in_features, [hidden], 1)


SALARY_FEATURES_REAL = 35  # one-hot width on the real table: 4 + 4 + 4 + 3 + 11 + 8 + 1 (remote_ratio)


def benchmark_cases() -> list[dict]:
    """The two models this script trains, at its batch sizes (inputs are random: no data loading)."""
    def zoo_batch(bs, device):
        x = torch.rand(bs, len(ZOO_FEATURES), device=device).round()
        return (x,), torch.randint(0, ZOO_CLASSES, (bs,), device=device)

    def salary_batch(bs, device):
        return (torch.rand(bs, SALARY_FEATURES_REAL, device=device),), torch.randn(bs, 1, device=device)

    return [
        {"name": "03.zoo_classifier", "make_model": zoo_classifier, "make_batch": zoo_batch,
         "loss_fn": nn.CrossEntropyLoss(),
         "make_optimizer": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9), "batch_size": 8},
        {"name": "03.salary_regressor", "make_model": lambda: salary_regressor(SALARY_FEATURES_REAL),
         "make_batch": salary_batch, "loss_fn": nn.MSELoss(),
         "make_optimizer": lambda params: torch.optim.SGD(params, lr=0.001), "batch_size": 8},
    ]


# --------------------------------------------------------------------------- CLI
def parse(argv=None):
    p = cli.base_parser(EXPERIMENT, __doc__.splitlines()[0], seeds=3, threads=1)
    g = p.add_argument_group("zoo classifier")
    g.add_argument("--epochs", type=cli.positive_int, default=100, help="zoo classifier epochs")
    g.add_argument("--lr", type=cli.positive_float, default=0.01, help="zoo classifier SGD learning rate")
    g.add_argument("--momentum", type=float, default=0.9, help="zoo classifier SGD momentum")
    g.add_argument("--batch-size", type=cli.positive_int, default=8, help="zoo batch size")
    g.add_argument("--hidden", type=cli.positive_int, default=32, help="zoo classifier hidden width")
    g = p.add_argument_group("salary regression and transfer")
    g.add_argument("--salary-epochs", type=cli.positive_int, default=30)
    g.add_argument("--salary-lr", type=cli.positive_float, default=0.001, help="SGD learning rate (course: 0.001)")
    g.add_argument("--salary-batch-size", type=cli.positive_int, default=8)
    g.add_argument("--salary-hidden", type=cli.positive_int, default=16)
    g.add_argument("--finetune-lr", type=cli.positive_float, default=0.0001,
                   help="fine-tuning learning rate (10x smaller than --salary-lr)")
    g.add_argument("--finetune-epochs", type=cli.positive_int, default=30)
    g = p.add_argument_group("overfitting, regularisation, search")
    g.add_argument("--overfit-epochs", type=cli.positive_int, default=200)
    g.add_argument("--overfit-hidden", type=cli.positive_int, default=256)
    g.add_argument("--dropout", type=float, default=0.5)
    g.add_argument("--weight-decay", type=float, default=0.001)
    g.add_argument("--single-max-steps", type=cli.positive_int, default=500,
                   help="overfit-one-example: give up after this many steps")
    g.add_argument("--search-trials", type=cli.positive_int, default=20,
                   help="trials of grid search and of random search (the full grid is 4 x 5 = 20)")
    g.add_argument("--search-epochs", type=cli.positive_int, default=50)
    args = cli.parse_args(p, argv)
    if args.smoke:
        args.epochs, args.salary_epochs, args.finetune_epochs = 3, 1, 1
        args.overfit_epochs, args.overfit_hidden, args.single_max_steps = 3, 32, 200
        args.search_trials, args.search_epochs = 3, 2
    return args


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
    """One-hot features (vectorised, pandas) and the raw salary_in_usd target."""
    parts = []
    for col, top in SALARY_CATEGORICAL.items():
        s = df[col].astype(str)
        if top:
            counts = s.value_counts()
            keep = sorted(counts.index, key=lambda k: (-counts[k], k))[:top]
            s = s.where(s.isin(keep), "other")
        parts.append(pd.get_dummies(s, prefix=col))
    parts.append((df["remote_ratio"] / 100.0).rename("remote_ratio"))
    x = pd.concat(parts, axis=1).astype(np.float32)
    y = torch.tensor(df["salary_in_usd"].to_numpy(np.float64), dtype=torch.float32).unsqueeze(1)
    return torch.from_numpy(x.to_numpy()), y, list(x.columns)


def random_split(n: int, frac_val: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = repro.make_generator(seed)
    idx = torch.randperm(n, generator=perm).numpy()
    n_val = int(round(n * frac_val))
    return np.sort(idx[n_val:]), np.sort(idx[:n_val])


# --------------------------------------------------------------------------- the training loop
class Clock:
    """Sums training and evaluation time and the samples seen in training."""

    def __init__(self, device):
        self.device, self.train_s, self.eval_s, self.samples = device, 0.0, 0.0, 0


def evaluate(model, x, y, loss_fn, metric=None) -> tuple[float, float | None]:
    """Loss (and accuracy via the torchmetrics ``metric``: update, compute, reset) in eval mode."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)
        loss = float(loss_fn(out, y))
        acc = None
        if metric is not None:
            metric.update(out.argmax(dim=-1), y)
            acc = float(metric.compute())
            metric.reset()
    model.train(was_training)
    return loss, acc


def fit(model, optimizer, loss_fn, train, val, *, epochs: int, batch_size: int, seed: int, clock: Clock,
        num_classes: int | None = None, run: str = "", track_train: bool = True) -> dict:
    """The course's training loop over mini-batches (index batching on in-memory tensors).

    Per epoch: mean training loss over batches (as in the course) and, for classifiers, training accuracy
    (torchmetrics update per batch, compute and reset per epoch); then, in eval mode, the validation loss and
    accuracy and the training-set loss/accuracy without dropout (for the train/validation gap).
    """
    x_tr, y_tr = train
    n = len(y_tr)
    gen = repro.make_generator(seed)
    device = x_tr.device
    # validate_args=False: torchmetrics' input checks read values on the host (a GPU sync every step)
    metric = (Accuracy(task="multiclass", num_classes=num_classes, validate_args=False).to(device)
              if num_classes else None)
    hist = defaultdict(list)
    model.train()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(device)
        log, batches = results.StepLog(), 0   # losses stay on the device; read (and checked) once per epoch
        for step, start in enumerate(range(0, n, batch_size)):
            idx = perm[start:start + batch_size]
            inputs, targets = x_tr[idx], y_tr[idx]
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = loss_fn(outputs, targets)
            loss.backward()
            log.add(loss, epoch, step)
            optimizer.step()
            batches += 1
            if metric is not None and track_train:
                metric.update(outputs.detach().argmax(dim=-1), targets)
        try:
            total = sum(log.values())   # the same sum, in the same order, as per-step loss.item()
        except results.Diverged as e:
            e.run = run
            raise
        synchronize(device)
        clock.train_s += time.perf_counter() - t0
        clock.samples += n
        hist["train_loss"].append(total / batches)
        if metric is not None and track_train:
            hist["train_acc"].append(float(metric.compute()))
            metric.reset()
        if val is not None:
            t1 = time.perf_counter()
            vl, va = evaluate(model, *val, loss_fn, metric)
            hist["val_loss"].append(vl)
            if track_train:
                tl, ta = evaluate(model, *train, loss_fn, metric)
                hist["train_eval_loss"].append(tl)
                if ta is not None:
                    hist["train_eval_acc"].append(ta)
            if va is not None:
                hist["val_acc"].append(va)
            clock.eval_s += time.perf_counter() - t1
    return dict(hist)


def accuracy_on(model, x, y, clock: Clock) -> float:
    t0 = time.perf_counter()
    _, acc = evaluate(model, x, y, nn.CrossEntropyLoss(), Accuracy(task="multiclass", num_classes=ZOO_CLASSES).to(x.device))
    clock.eval_s += time.perf_counter() - t0
    return acc


# --------------------------------------------------------------------------- the story, one section each
def toy_loader(toy: pd.DataFrame, seed: int) -> tuple[dict, dict]:
    """The course's TensorDataset + DataLoader on the 5-row animal table: batches of 2, 2, 1."""
    x = toy.iloc[:, 1:-1].to_numpy(np.float32)  # all columns but animal_name and type
    y = toy.iloc[:, -1].to_numpy(np.int64)
    dataset = TensorDataset(torch.tensor(x), torch.tensor(y))
    input_sample, label_sample = dataset[0]
    loader = DataLoader(dataset, batch_size=2, shuffle=True, generator=repro.make_generator(seed))
    sizes, order = [], []
    for batch_inputs, batch_labels in loader:
        sizes.append(len(batch_labels))
        order.append(batch_labels.tolist())
    m = {"toy.rows": len(dataset), "toy.n_features": input_sample.shape[0], "toy.n_batches": len(sizes)}
    for i, s in enumerate(sizes, 1):
        m[f"toy.batch{i}_size"] = s
    return m, {"features": list(toy.columns[1:-1]), "first_sample": [input_sample.tolist(), int(label_sample)],
               "batch_labels": order}


def zoo_classification(x, y, split, args, seed, clock, device) -> tuple[dict, dict, nn.Module]:
    tr, va, te = split
    repro.seed_everything(seed)
    model = zoo_classifier(args.hidden).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    hist = fit(model, opt, nn.CrossEntropyLoss(), (x[tr], y[tr]), (x[va], y[va]), epochs=args.epochs,
               batch_size=args.batch_size, seed=seed, clock=clock, num_classes=ZOO_CLASSES, run="zoo")
    m = {"zoo.test_accuracy": accuracy_on(model, x[te], y[te], clock),
         "zoo.val_accuracy": hist["val_acc"][-1], "zoo.train_accuracy": hist["train_eval_acc"][-1],
         "zoo.train_loss": hist["train_loss"][-1], "zoo.val_loss": hist["val_loss"][-1]}
    majority = int(torch.bincount(y[tr], minlength=ZOO_CLASSES).argmax())
    acc = Accuracy(task="multiclass", num_classes=ZOO_CLASSES).to(device)
    m["baseline.majority_test_accuracy"] = float(acc(torch.full_like(y[te], majority), y[te]))
    m["baseline.majority_accuracy"] = float((y == int(torch.bincount(y).argmax())).float().mean())
    return m, hist, model


def salary_regression(x, y_norm, split, y_std, args, seed, clock, device) -> tuple[dict, dict]:
    tr, va = split
    repro.seed_everything(seed)
    model = salary_regressor(x.shape[1], args.salary_hidden).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=args.salary_lr)
    hist = fit(model, opt, nn.MSELoss(), (x[tr], y_norm[tr]), (x[va], y_norm[va]), epochs=args.salary_epochs,
               batch_size=args.salary_batch_size, seed=seed, clock=clock, run="salary")
    base = float(nn.MSELoss()(y_norm[tr].mean().expand_as(y_norm[va]), y_norm[va]))
    val = hist["val_loss"][-1]
    m = {"salary.val_mse": val, "salary.train_mse": hist["train_eval_loss"][-1],
         "salary.val_rmse_usd": float(np.sqrt(val)) * y_std,
         "salary.val_r2": 1.0 - val / base,
         "baseline.salary_mean_val_mse": base, "baseline.salary_mean_val_rmse_usd": float(np.sqrt(base)) * y_std}
    hist["baseline_val_mse"] = base
    return m, hist


def initialisation() -> dict:
    layer = nn.Linear(64, 128)
    w = layer.weight.detach()
    m = {"init.default_bound": 1 / np.sqrt(layer.in_features), "init.default_min": float(w.min()),
         "init.default_max": float(w.max()), "init.default_max_abs": float(w.abs().max())}
    m["init.default_within_bound"] = int(m["init.default_max_abs"] <= m["init.default_bound"])
    nn.init.uniform_(layer.weight)
    w = layer.weight.detach()
    m["init.uniform_min"], m["init.uniform_max"] = float(w.min()), float(w.max())
    m["init.uniform_in_0_1"] = int(m["init.uniform_min"] >= 0 and m["init.uniform_max"] < 1)
    return m


def transfer(x, y_raw, is_us, args, seed, clock, device) -> tuple[dict, dict]:
    """Train on US residents (task A), save/load, fine-tune on the other countries (task B)."""
    a_idx, b_idx = np.flatnonzero(is_us), np.flatnonzero(~is_us)
    a_tr, a_va = (a_idx[s] for s in random_split(len(a_idx), 0.2, seed))
    b_tr, b_va = (b_idx[s] for s in random_split(len(b_idx), 0.2, seed + 1000))
    mu, sd = float(y_raw[a_tr].mean()), float(y_raw[a_tr].std())
    y = (y_raw - mu) / sd  # task A's training statistics: the pretrained model's scale
    mse = nn.MSELoss()
    m, hist = {}, {}
    repro.seed_everything(seed)
    pre = salary_regressor(x.shape[1], args.salary_hidden).to(device)
    hist["pretrain"] = fit(pre, torch.optim.SGD(pre.parameters(), lr=args.salary_lr), mse, (x[a_tr], y[a_tr]),
                           (x[a_va], y[a_va]), epochs=args.salary_epochs, batch_size=args.salary_batch_size,
                           seed=seed, clock=clock, run="transfer.pretrain")
    m["transfer.task_a_val_mse"] = hist["pretrain"]["val_loss"][-1]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "salary_us.pt"
        torch.save(pre.state_dict(), path)
        state = torch.load(path, weights_only=True, map_location=device)
    m["transfer.loaded_equal"] = int(all(torch.equal(state[k], v) for k, v in pre.state_dict().items()))

    def loaded():
        model = salary_regressor(x.shape[1], args.salary_hidden).to(device)
        model.load_state_dict(state)
        return model

    b_train, b_val = (x[b_tr], y[b_tr]), (x[b_va], y[b_va])
    m["transfer.task_b_zero_shot_val_mse"] = evaluate(loaded(), *b_val, mse)[0]
    m["baseline.transfer_task_b_mean_val_mse"] = float(mse(y[b_tr].mean().expand_as(y[b_va]), y[b_va]))
    runs = {"finetune": (loaded(), args.finetune_lr, False),
            "frozen": (loaded(), args.finetune_lr, True),
            "scratch": (None, args.salary_lr, False)}
    for name, (model, lr, freeze) in runs.items():
        if model is None:
            repro.seed_everything(seed + 1)
            model = salary_regressor(x.shape[1], args.salary_hidden).to(device)
        first = model.net[0]
        if freeze:  # the course: set requires_grad = False on the first layer's parameters
            for pname, p in model.named_parameters():
                if pname.startswith("net.0."):
                    p.requires_grad = False
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
        hist[name] = fit(model, opt, mse, b_train, b_val, epochs=args.finetune_epochs,
                         batch_size=args.salary_batch_size, seed=seed, clock=clock, run=f"transfer.{name}")
        m[f"transfer.{name}_val_mse"] = hist[name]["val_loss"][-1]
        m[f"transfer.{name}_lr"] = lr
        if freeze:
            after = model.state_dict()
            m["transfer.frozen_first_layer_unchanged"] = int(torch.equal(first.weight, before["net.0.weight"])
                                                             and torch.equal(first.bias, before["net.0.bias"]))
            m["transfer.frozen_other_layers_changed"] = int(not torch.equal(after["net.2.weight"], before["net.2.weight"]))
    m["transfer.sizes_a_train"], m["transfer.sizes_b_train"] = len(a_tr), len(b_tr)
    return m, hist


def dropout_check(model: MLP, x: torch.Tensor) -> dict:
    """Fraction of non-zero inputs to the first Dropout layer that it zeroes, in train() and in eval()."""
    drop = next(mod for mod in model.modules() if isinstance(mod, nn.Dropout))
    seen = {}

    def hook(module, inputs, output):
        nonzero = inputs[0] != 0
        seen["fraction"] = float(((output == 0) & nonzero).sum() / nonzero.sum().clamp(min=1))

    handle = drop.register_forward_hook(hook)
    out = {}
    with torch.no_grad():
        for mode in ("train", "eval"):
            getattr(model, mode)()
            model(x)
            out[f"dropout.{mode}_zeroed_fraction"] = seen["fraction"]
    handle.remove()
    model.train()
    out["dropout.p"] = drop.p
    return out


def overfit_detect(hist: dict) -> dict:
    """Overfitting: the validation loss ends well above its minimum while the training loss kept falling."""
    val, tr = np.array(hist["val_loss"]), np.array(hist["train_eval_loss"])
    best = int(val.argmin())
    rise = float(val[-1] - val[best])
    detected = rise > 0.1 * val[best] + 0.01 and tr[-1] < tr[best]
    return {"best_val_epoch": best + 1, "val_loss_rise": rise, "detected": int(detected),
            "gap": float(val[-1] - tr[-1]), "final_val_loss": float(val[-1]), "final_train_loss": float(tr[-1]),
            "final_val_acc": hist["val_acc"][-1], "final_train_acc": hist["train_eval_acc"][-1]}


def overfitting_and_recipe(x, y, split, args, seed, clock, device) -> tuple[dict, dict]:
    tr, va, te = split
    m, hist = {}, {}
    loss_fn = nn.CrossEntropyLoss()
    # 1. the recipe's first step: overfit a single training example
    repro.seed_everything(seed)
    model = zoo_big(args.overfit_hidden).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    one_x, one_y = x[tr[:1]], y[tr[:1]]
    losses, steps = [], None
    t0 = time.perf_counter()
    for step in range(1, args.single_max_steps + 1):
        opt.zero_grad()
        out = model(one_x)
        loss = loss_fn(out, one_y)
        loss.backward()
        value = loss.item()  # the stopping rule needs the value on the host every step (at most a few hundred)
        results.check_finite(value, 0, step)
        opt.step()
        losses.append(value)
        if value < SINGLE_EXAMPLE_LOSS and int(out.argmax()) == int(one_y):
            steps = step
            break
    clock.train_s += time.perf_counter() - t0
    clock.samples += len(losses)
    final_loss, acc = evaluate(model, one_x, one_y, loss_fn, Accuracy(task="multiclass", num_classes=ZOO_CLASSES).to(device))
    m.update({"recipe.single_example_steps": steps, "recipe.single_example_loss": final_loss,
              "recipe.single_example_accuracy": acc})
    hist["single_example_loss"] = losses
    # 2. overfit the training set, 3. regularise: dropout, weight decay
    variants = {"plain": (0.0, 0.0), "dropout": (args.dropout, 0.0), "weight_decay": (0.0, args.weight_decay)}
    for name, (p, wd) in variants.items():
        repro.seed_everything(seed)
        model = zoo_big(args.overfit_hidden, dropout=p).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=wd)
        h = fit(model, opt, loss_fn, (x[tr], y[tr]), (x[va], y[va]), epochs=args.overfit_epochs,
                batch_size=args.batch_size, seed=seed, clock=clock, num_classes=ZOO_CLASSES, run=f"overfit.{name}")
        hist[name] = h
        for k, v in overfit_detect(h).items():
            m[f"overfit.{name}.{k}"] = v
        m[f"overfit.{name}.test_accuracy"] = accuracy_on(model, x[te], y[te], clock)
        if name == "plain":
            full = [i for i, a in enumerate(h["train_eval_acc"]) if a == 1.0]
            m["recipe.train_set_accuracy"] = h["train_eval_acc"][-1]
            m["recipe.train_set_reached_100pct"] = int(bool(full))
            if full:  # left out (not None) when 100% was never reached, e.g. in --smoke
                m["recipe.train_set_epochs_to_100pct"] = full[0] + 1
        if name == "dropout":
            m.update(dropout_check(model, x[tr]))
    return m, hist


def search(x, y, split, args, seed, clock, device) -> tuple[dict, dict]:
    """Grid search (4 momenta x 5 learning rates, in a seeded random order) vs random search, same trials."""
    tr, va, te = split
    rng = np.random.default_rng(seed)
    grid = [(lr, mom) for mom in GRID_MOMENTUM for lr in GRID_LR]
    grid = [grid[i] for i in rng.permutation(len(grid))][:args.search_trials]
    rand = [(10 ** -rng.uniform(2, 6), rng.uniform(0.85, 0.99)) for _ in range(args.search_trials)]
    m, hist = {}, {}
    for kind, trials in (("grid", grid), ("random", rand)):
        rows = []
        for i, (lr, mom) in enumerate(trials):
            repro.seed_everything(seed)
            model = zoo_classifier(args.hidden).to(device)
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=mom)
            try:
                h = fit(model, opt, nn.CrossEntropyLoss(), (x[tr], y[tr]), (x[va], y[va]), epochs=args.search_epochs,
                        batch_size=args.batch_size, seed=seed, clock=clock, num_classes=ZOO_CLASSES,
                        run=f"search.{kind}", track_train=False)
                val_acc, val_loss = h["val_acc"][-1], h["val_loss"][-1]
                test_acc = accuracy_on(model, x[te], y[te], clock)
            except results.Diverged:  # a trial that blows up scores zero; the search goes on
                val_acc, val_loss, test_acc = 0.0, float("inf"), 0.0
            rows.append({"lr": lr, "momentum": mom, "val_acc": val_acc, "val_loss": val_loss, "test_acc": test_acc})
        # best = highest validation accuracy, ties broken by the lower validation loss
        key = lambda r: (r["val_acc"], -r["val_loss"])
        best_so_far = [max(rows[:i + 1], key=key)["val_acc"] for i in range(len(rows))]
        best = max(rows, key=key)
        m[f"search.{kind}.best_val_accuracy"] = best["val_acc"]
        m[f"search.{kind}.best_test_accuracy"] = best["test_acc"]
        m[f"search.{kind}.best_lr"] = best["lr"]
        m[f"search.{kind}.best_momentum"] = best["momentum"]
        m[f"search.{kind}.trials_to_best"] = best_so_far.index(best["val_acc"]) + 1
        m[f"search.{kind}.trials"] = len(rows)
        m[f"search.{kind}.learning_trials"] = sum(r["val_acc"] > 0.5 for r in rows)
        for t in (1, 5, 10):
            if t <= len(rows):
                m[f"search.{kind}.best_after_{t}"] = best_so_far[t - 1]
        hist[kind] = {"trials": rows, "best_so_far": best_so_far}
    return m, hist


# --------------------------------------------------------------------------- plots
def plot_zoo(hist: dict, baseline: float, path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ep = range(1, len(hist["train_loss"]) + 1)
    axes[0].plot(ep, hist["train_loss"], label="train (mean over batches)")
    axes[0].plot(ep, hist["val_loss"], label="validation")
    axes[0].set(title="Zoo classifier: cross-entropy", xlabel="epoch", ylabel="loss")
    axes[1].plot(ep, hist["train_acc"], label="train")
    axes[1].plot(ep, hist["val_acc"], label="validation")
    axes[1].axhline(baseline, ls="--", color="tab:red", label=f"majority class ({baseline:.3f})")
    axes[1].set(title="Zoo classifier: accuracy (torchmetrics)", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    return plots.save_figure(fig, path)


def plot_salary(hist: dict, transfer_hist: dict, transfer_m: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ep = range(1, len(hist["train_loss"]) + 1)
    axes[0].plot(ep, hist["train_loss"], label="train")
    axes[0].plot(ep, hist["val_loss"], label="validation")
    axes[0].axhline(hist["baseline_val_mse"], ls="--", color="tab:red", label="predict the mean")
    axes[0].set(title="salary regression (all countries): MSE, z-scored target", xlabel="epoch", ylabel="MSE")
    for name in ("finetune", "frozen", "scratch"):
        h = transfer_hist[name]
        axes[1].plot(range(1, len(h["val_loss"]) + 1), h["val_loss"],
                     label=f"{name} (lr {transfer_m[f'transfer.{name}_lr']:g})")
    axes[1].axhline(transfer_m["baseline.transfer_task_b_mean_val_mse"], ls="--", color="tab:red", label="predict the mean")
    axes[1].axhline(transfer_m["transfer.task_b_zero_shot_val_mse"], ls=":", color="k", label="US model, no fine-tuning")
    axes[1].set(title="transfer US -> other countries: validation MSE", xlabel="epoch", ylabel="MSE")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return plots.save_figure(fig, path)


def plot_overfitting(hist: dict, m: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt
    names = ("plain", "dropout", "weight_decay")
    fig, axes = plt.subplots(1, 5, figsize=(23, 4.2))
    axes[0].semilogy(range(1, len(hist["single_example_loss"]) + 1), hist["single_example_loss"])
    axes[0].axhline(SINGLE_EXAMPLE_LOSS, ls="--", color="k")
    axes[0].set(title="recipe step 1: overfit one example", xlabel="step", ylabel="loss")
    for ax, name in zip(axes[1:4], names):
        h = hist[name]
        ep = range(1, len(h["val_loss"]) + 1)
        ax.plot(ep, h["train_eval_loss"], label="train (eval mode)")
        ax.plot(ep, h["val_loss"], label="validation")
        ax.axvline(m[f"overfit.{name}.best_val_epoch"], ls=":", color="k", label="lowest validation loss")
        ax.set(title=f"{name}: overfitting {'detected' if m[f'overfit.{name}.detected'] else 'not detected'}",
               xlabel="epoch", ylabel="cross-entropy", yscale="log")
        ax.legend(fontsize=8)
    gaps = [m[f"overfit.{n}.gap"] for n in names]
    axes[4].bar(names, gaps, color=["tab:blue", "tab:orange", "tab:green"])
    axes[4].set(title="final validation - training loss", ylabel="gap")
    for ax in axes:
        ax.grid(alpha=0.3)
    return plots.save_figure(fig, path)


def plot_search(curves: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for kind, per_seed in curves.items():
        arr = np.array(per_seed)
        mean = arr.mean(0)
        t = np.arange(1, arr.shape[1] + 1)
        ax.plot(t, mean, marker="o", ms=3, label=f"{kind} search (mean of {len(arr)} seeds)")
        if len(arr) > 1:
            ax.fill_between(t, arr.min(0), arr.max(0), alpha=0.15)
    ax.set(title="best validation accuracy found vs. trials spent (Zoo)", xlabel="trials", ylabel="best val accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    return plots.save_figure(fig, path)


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse(argv)
    started = results.now_iso()
    t_wall = time.perf_counter()
    try:
        device = choose_device(args.device)
        cli.apply_threads(args, device)
        toy, toy_info = data.load_animal_toy(args.data_dir, synthetic=args.synthetic)
        zoo_df, zoo_info = data.load_zoo(args.data_dir, synthetic=args.synthetic)
        sal_df, sal_info = data.load_salaries(args.data_dir, synthetic=args.synthetic)
    except (data.DataError, DeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.smoke:  # a subset of the salary table keeps the smoke run to seconds
        sal_df = sal_df.iloc[np.sort(np.random.default_rng(0).permutation(len(sal_df))[:600])].reset_index(drop=True)
    seeds = cli.seed_list(args)[:1] if args.smoke else cli.seed_list(args)

    x_zoo, y_zoo = (t.to(device) for t in zoo_tensors(zoo_df))
    x_sal, y_usd, sal_columns = salary_tensors(sal_df)
    x_sal, y_usd = x_sal.to(device), y_usd.to(device)
    is_us = (sal_df["employee_residence"] == "US").to_numpy()
    sources = {i.source for i in (toy_info, zoo_info, sal_info)}
    info = {"name": "zoo+ds_salaries", "source": "synthetic" if "synthetic" in sources else "real",
            "fingerprint": f"zoo:{zoo_info.fingerprint};toy:{toy_info.fingerprint};salaries:{sal_info.fingerprint}",
            "sizes": {"zoo": len(zoo_df), "animal_toy": len(toy), "salaries": len(sal_df)},
            "parts": {"animal_toy": toy_info.to_json(), "zoo": zoo_info.to_json(), "ds_salaries": sal_info.to_json()},
            "notes": "zoo split 3/1/1 by stratified folds; salaries split 80/20 at random; salary target z-scored "
                     "with training statistics" + ("; smoke: 600 salary rows" if args.smoke else "")}

    clock = Clock(device)
    per_seed, history, extra_tables, diverged = [], defaultdict(list), {}, []
    last = {}
    for seed in seeds:
        t_seed = time.perf_counter()
        repro.seed_everything(seed)
        m = {}
        try:
            tm, extra_tables["toy_loader"] = toy_loader(toy, seed)
            m.update(tm)
            split = zoo_split(y_zoo.cpu(), seed)
            zm, zh, _ = zoo_classification(x_zoo, y_zoo, split, args, seed, clock, device)
            m.update(zm)
            sal_split = random_split(len(sal_df), 0.2, seed)
            tr = sal_split[0]
            mu, sd = float(y_usd[tr].mean()), float(y_usd[tr].std())
            sm, sh = salary_regression(x_sal, (y_usd - mu) / sd, sal_split, sd, args, seed, clock, device)
            m.update(sm)
            repro.seed_everything(seed)
            m.update(initialisation())
            trm, trh = transfer(x_sal, y_usd, is_us, args, seed, clock, device)
            m.update(trm)
            om, oh = overfitting_and_recipe(x_zoo, y_zoo, split, args, seed, clock, device)
            m.update(om)
            hm, hh = search(x_zoo, y_zoo, split, args, seed, clock, device)
            m.update(hm)
        except results.Diverged as e:
            diverged.append({"run": getattr(e, "run", "?"), "seed": seed, "epoch": e.epoch, "step": e.step,
                             "value": str(e.value)})
            print(f"seed {seed}: DIVERGED in {getattr(e, 'run', '?')}: {e}", file=sys.stderr)
            break
        per_seed.append(m)
        last = {"zoo": zh, "salary": sh, "transfer": trh, "overfit": oh, "search": hh, "metrics": m}
        for k in ("train_loss", "val_loss", "train_acc", "val_acc"):
            history[f"zoo.{k}"].append(zh[k])
        for k in ("train_loss", "val_loss"):
            history[f"salary.{k}"].append(sh[k])
        for name in ("finetune", "frozen", "scratch"):
            history[f"transfer.{name}.val_loss"].append(trh[name]["val_loss"])
        for name in ("plain", "dropout", "weight_decay"):
            history[f"overfit.{name}.train_eval_loss"].append(oh[name]["train_eval_loss"])
            history[f"overfit.{name}.val_loss"].append(oh[name]["val_loss"])
        history["recipe.single_example_loss"].append(oh["single_example_loss"])
        for kind in ("grid", "random"):
            history[f"search.{kind}.best_so_far"].append(hh[kind]["best_so_far"])
        extra_tables.setdefault("search_trials", {})[str(seed)] = {k: hh[k]["trials"] for k in ("grid", "random")}
        print(f"seed {seed}: zoo test acc {m['zoo.test_accuracy']:.3f} (majority {m['baseline.majority_test_accuracy']:.3f}); "
              f"salary val MSE {m['salary.val_mse']:.3f} (mean {m['baseline.salary_mean_val_mse']:.3f}); transfer "
              f"fine-tune {m['transfer.finetune_val_mse']:.3f} / scratch {m['transfer.scratch_val_mse']:.3f}; overfit "
              f"detected {m['overfit.plain.detected']}; search best val acc grid {m['search.grid.best_val_accuracy']:.3f} "
              f"random {m['search.random.best_val_accuracy']:.3f} [{time.perf_counter() - t_seed:.1f}s]", flush=True)

    headline = "zoo.test_accuracy"
    mean, std, per_seed_d = results.aggregate_seeds(per_seed)
    mean.setdefault(headline, None)
    status = "diverged" if diverged else "ok"
    if last:
        pdir = plots.plot_dir(args.results_dir, EXPERIMENT)
        plot_zoo(last["zoo"], last["metrics"]["baseline.majority_test_accuracy"], pdir / "zoo_classifier.png")
        plot_salary(last["salary"], last["transfer"], last["metrics"], pdir / "salary_regression_and_transfer.png")
        plot_overfitting(last["overfit"], last["metrics"], pdir / "overfitting_and_regularisation.png")
        plot_search({k: history[f"search.{k}.best_so_far"] for k in ("grid", "random")}, pdir / "search.png")
    results.write_result(
        EXPERIMENT, results_dir=args.results_dir, status=status, started_at=started, config=cli.config_of(args),
        seeds=seeds, data=info, metrics=mean, std=std, per_seed=per_seed_d, headline=headline, history=dict(history),
        timings={"wall_s": time.perf_counter() - t_wall, "train_s": clock.train_s,
                 "train_samples_per_s": clock.samples / clock.train_s if clock.train_s else None,
                 "eval_s": clock.eval_s},
        device=device, script=__file__,
        extra={"diverged": diverged, "tables": extra_tables, "salary_feature_columns": sal_columns,
               "course_figures": {"toy.batch_sizes": [2, 2, 1], "baseline.majority_accuracy": 41 / 101,
                                  "init.default_bound": 0.125, "salary_lr": 0.001}})
    if diverged:
        print(f"03: DIVERGED ({diverged[0]['run']}, seed {diverged[0]['seed']}, epoch {diverged[0]['epoch']}); "
              f"partial results written", file=sys.stderr)
        return 3
    f = lambda k: f"{mean[k]:.3f}" if mean.get(k) is not None else "n/a"
    print(f"03 ({len(seeds)} seeds, {time.perf_counter() - t_wall:.0f}s): toy DataLoader batches "
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
