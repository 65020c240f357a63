"""What 03_tabular_training's story stands on: its tables, networks, training loop, runs and figures.

Not an experiment (run_all.sh and the benchmarks pick only ``experiments/NN_*.py``); imported as
``from experiments import tabular``. ``load_data``: the course's 5-row animal table, the UCI Zoo table and the DS
salaries table (one-hot encoded) as tensors, with the stratified and random splits of their rows; the MLPs;
``fit``: the course's training loop over index batches of in-memory tensors, ``evaluate``: one pass over a whole
split, both timed on a ``Clock``; ``run_search``: a search's trials, ``run_seeds``: the script's ``run_seed`` for
every seed, spread over worker processes; ``make_plots`` and ``report``: the figures and the summary line.
"""
import sys
import time
import warnings
from collections import defaultdict

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from sklearn.model_selection import StratifiedKFold
from torchmetrics import Accuracy

from common import data, metrics, parallel, plots, repro, results, schema
from common.device import synchronize

ZOO_FEATURES = data.ZOO_COLUMNS[1:-1]            # 16 features; "legs" (0..8) is scaled to 0..1
ZOO_CLASSES = 7
# one-hot encoded; job titles and countries keep their most frequent values, the rest become "other"
SALARY_CATEGORICAL = {"work_year": None, "experience_level": None, "employment_type": None,
                      "company_size": None, "job_title": 10, "employee_residence": 7}
SALARY_FEATURES_REAL = 35  # one-hot width on the real table: 4 + 4 + 4 + 3 + 11 + 8 + 1 (remote_ratio / 100)


# --------------------------------------------------------------------------- the tables
def zoo_tensors(df: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    x = df[ZOO_FEATURES].to_numpy(np.float32, copy=True)
    x[:, ZOO_FEATURES.index("legs")] /= 8.0
    return torch.from_numpy(x), torch.from_numpy(df["type"].to_numpy(np.int64) - 1)


def stratified_folds(y: torch.Tensor, k: int, seed: int) -> list[np.ndarray]:
    """The held-out parts (sorted positions in ``y``) of a shuffled stratified ``k``-fold split."""
    with warnings.catch_warnings():  # type 5 (amphibians) has only 4 animals: fewer than 5 folds
        warnings.simplefilter("ignore", UserWarning)
        folds = StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y.cpu())
        return [np.sort(te) for _, te in folds]


def zoo_split(y: torch.Tensor, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified 3/1/1 split (train/validation/test) from 5 stratified folds: 60/20/21 on the real table."""
    folds = stratified_folds(y, 5, seed)
    return np.sort(np.concatenate(folds[2:])), folds[1], folds[0]


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


def load_data(args, device, smoke_salary_rows: int) -> dict:
    """The three tables as tensors on ``device`` (``smoke_salary_rows`` salary rows under --smoke) and their
    record."""
    toy, toy_info = data.load_animal_toy(args.data_dir, synthetic=args.synthetic)
    zoo_df, zoo_info = data.load_zoo(args.data_dir, synthetic=args.synthetic)
    sal_df, sal_info = data.load_salaries(args.data_dir, synthetic=args.synthetic)
    if args.smoke:
        rows = np.sort(np.random.default_rng(0).permutation(len(sal_df))[:smoke_salary_rows])
        sal_df = sal_df.iloc[rows].reset_index(drop=True)
    x_zoo, y_zoo = (t.to(device) for t in zoo_tensors(zoo_df))
    x_sal, y_usd, sal_columns = salary_tensors(sal_df)
    sources = {i.source for i in (toy_info, zoo_info, sal_info)}
    info = {"name": "zoo+ds_salaries", "source": "synthetic" if "synthetic" in sources else "real",
            "fingerprint": f"zoo:{zoo_info.fingerprint};toy:{toy_info.fingerprint};salaries:{sal_info.fingerprint}",
            "sizes": {"zoo": len(zoo_df), "animal_toy": len(toy), "salaries": len(sal_df)},
            "parts": {"animal_toy": toy_info.to_json(), "zoo": zoo_info.to_json(), "ds_salaries": sal_info.to_json()},
            "notes": "zoo: 21 test animals by stratified folds, the other 80 in 60/20 or cross-validation folds; "
                     "salaries split 80/20 at random, target z-scored with training statistics"
                     + (f"; smoke: {smoke_salary_rows} salary rows" if args.smoke else "")}
    return {"toy": toy, "x_zoo": x_zoo, "y_zoo": y_zoo, "x_sal": x_sal.to(device), "y_usd": y_usd.to(device),
            "is_us": (sal_df["employee_residence"] == "US").to_numpy(), "salary_columns": sal_columns, "info": info}


# --------------------------------------------------------------------------- the networks
def mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear layers of widths ``sizes`` with ReLU between them (and dropout after each ReLU)."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), nn.ReLU()] + ([nn.Dropout(p=dropout)] if dropout > 0 else [])
    return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]))


def zoo_classifier(hidden: int) -> nn.Sequential:
    return mlp([len(ZOO_FEATURES), hidden, ZOO_CLASSES])


def zoo_big(hidden: int, dropout: float = 0.0) -> nn.Sequential:
    """Large enough to overfit the 60 training animals."""
    return mlp([len(ZOO_FEATURES), hidden, hidden, ZOO_CLASSES], dropout=dropout)


def salary_regressor(in_features: int, hidden: int) -> nn.Sequential:
    return mlp([in_features, hidden, 1])


# --------------------------------------------------------------------------- the training loop
class Clock:
    """Sums training and evaluation time and the samples seen in training."""

    def __init__(self, device, workers: int = 1):
        self.device, self.train_s, self.eval_s, self.samples, self.workers = device, 0.0, 0.0, 0, workers

    def timings(self, wall_s: float) -> dict:
        """The result's ``timings``."""
        return {"wall_s": wall_s, "train_s": self.train_s,
                "train_samples_per_s": self.samples / self.train_s if self.train_s else None, "eval_s": self.eval_s,
                "workers": self.workers}


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
    """The course's training loop over mini-batches; returns the per-epoch history: the mean training loss over
    batches and (classifiers) the training accuracy (torchmetrics update, compute, reset); then the validation loss
    and accuracy and, with ``track_train``, the training split's in eval mode (no dropout). A divergence raises
    results.Diverged naming ``run``."""
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
        log = results.StepLog()   # losses stay on the device; read (and checked) once per epoch
        for step, idx in enumerate(torch.randperm(n, generator=gen).to(device).split(batch_size)):
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


def train(make, x, y, rows, val_rows, lr, momentum, epochs, batch_size, seed, clock, run, weight_decay=0.0,
          loss_fn=nn.CrossEntropyLoss(), num_classes=ZOO_CLASSES, track_train=True) -> tuple[nn.Module, dict]:
    """``make()`` (after seeding) trained with SGD on the rows ``rows`` (a Zoo classifier unless told otherwise),
    validated on ``val_rows`` (None: no validation); returns the model and its history."""
    repro.seed_everything(seed)
    model = make().to(x.device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    val = None if val_rows is None else (x[val_rows], y[val_rows])
    return model, fit(model, opt, loss_fn, (x[rows], y[rows]), val, epochs=epochs, batch_size=batch_size, seed=seed,
                      clock=clock, num_classes=num_classes, run=run, track_train=track_train)


# --------------------------------------------------------------------------- the runs: a search's trials, the seeds
def run_search(trials, run_trial) -> tuple[list[dict], list[float], dict | None, object, int]:
    """Run each (lr, momentum) trial: ``run_trial(lr, momentum)`` -> (row with "val_acc" and "val_loss", model).
    The best trial has the highest validation accuracy, ties broken by the lower validation loss (an exact tie on
    both: the earlier trial). Returns the rows, the best validation accuracy after each trial, the best row, its
    model and its trial number (1-based: the trial that was chosen, not the first to reach its accuracy)."""
    key = lambda r: (r["val_acc"], -r["val_loss"])
    rows, best_so_far, best, best_model, best_trial = [], [], None, None, 0
    for lr, mom in trials:
        row, model = run_trial(lr, mom)
        rows.append(row)
        if best is None or key(row) > key(best):
            best, best_model, best_trial = row, model, len(rows)
        best_so_far.append(best["val_acc"])
    return rows, best_so_far, best, best_model, best_trial


def seed_task(run_seed, seed: int, d: dict, args, device) -> dict:
    """``run_seed(seed, d, args, clock)`` with a clock of its own (it may run in a worker process), a divergence
    caught and recorded."""
    clock = Clock(device)
    try:
        return {"run": run_seed(seed, d, args, clock), "clock": clock, "diverged": None}
    except results.Diverged as e:
        diverged = {"run": getattr(e, "run", "?"), "seed": seed, **e.to_json()}
        print(f"seed {seed}: DIVERGED in {diverged['run']}: {e}", file=sys.stderr)
        return {"run": None, "clock": clock, "diverged": diverged}


def run_seeds(run_seed, seeds: list[int], d: dict, args, device) -> tuple[list, list[dict], Clock]:
    """``run_seed`` for every seed, spread over the cores (``--workers``; the figures do not depend on it); the
    seeds before the first that diverges are kept (and still written); the clocks summed."""
    workers = parallel.workers_for(args, device, len(seeds))
    outs = parallel.run_tasks(seed_task, [(run_seed, seed, d, args, device) for seed in seeds], workers,
                              what="seed(s)")
    runs, clock = [], Clock(device, workers)
    for out in outs:
        for k in ("train_s", "eval_s", "samples"):
            setattr(clock, k, getattr(clock, k) + getattr(out["clock"], k))
        if out["diverged"]:
            return runs, [out["diverged"]], clock
        runs.append(out["run"])
    return runs, [], clock


# --------------------------------------------------------------------------- the figures and the summary line
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


def overfit_detect(hist: dict) -> dict:
    """Overfitting: the validation loss ends well above its minimum while the training loss kept falling."""
    val, tr = np.array(hist["val_loss"]), np.array(hist["train_eval_loss"])
    best = results.best_epoch(val, higher_is_better=False) - 1
    rise = float(val[-1] - val[best])
    detected = rise > 0.1 * val[best] + 0.01 and tr[-1] < tr[best]
    return {"best_val_epoch": best + 1, "val_loss_rise": rise, "detected": int(detected),
            "gap": float(val[-1] - tr[-1]), "final_val_loss": float(val[-1]), "final_train_loss": float(tr[-1]),
            "final_val_acc": hist["val_acc"][-1], "final_train_acc": hist["train_eval_acc"][-1]}


def make_plots(hist: dict, m: dict, pdir, cv_folds: int, single_example_loss: float) -> None:
    """Four figures in ``pdir``: the last seed's curves, and every seed's search; ``cv_folds`` and
    ``single_example_loss``: the script's settings the figures name."""
    import matplotlib.pyplot as plt
    last, cv = {k: v[-1] for k, v in hist.items()}, "zoo.cv_val_acc."
    figures = {name: plt.subplots(1, n, figsize=(w, 4.2)) for name, n, w in (
        ("zoo_classifier", 2, 11), ("salary_regression_and_transfer", 2, 11), ("overfitting_and_regularisation", 5, 23),
        ("search", 1, 7))}
    red, dotted, mean_line = {"ls": "--", "color": "tab:red"}, {"ls": ":", "color": "k"}, "predict the mean"
    axes, majority = figures["zoo_classifier"][1], m["baseline.majority_test_accuracy"]
    axes[0].axvline(m["zoo.epochs"], **dotted, label=f"chosen: lr {m['zoo.lr']:g}, {m['zoo.epochs']} epochs")
    at = f".w{m['zoo.width']}.b{m['zoo.batch_size']}"   # every lr at the chosen width and batch (all: the history)
    panel(axes[0], f"Zoo classifier: {cv_folds}-fold cross-validation\nwidth {m['zoo.width']}, batch "
          f"{m['zoo.batch_size']} (chosen)", "mean validation accuracy",
          {k.removeprefix(cv).removesuffix(at): v for k, v in last.items() if k.startswith(cv) and k.endswith(at)},
          [(majority, f"majority class ({majority:.3f})", red)], ylim=(0, 1.02))
    panel(axes[1], "the chosen classifier, retrained on the non-test animals", "training set", {
        "cross-entropy (mean over batches)": last["zoo.train_loss"], "accuracy (torchmetrics)": last["zoo.train_acc"]})
    axes = figures["salary_regression_and_transfer"][1]
    panel(axes[0], "salary regression (all countries): MSE, z-scored target", "MSE",
          {"train": last["salary.train_loss"], "validation": last["salary.val_loss"]},
          [(m["baseline.salary_mean_val_mse"], mean_line, red)])
    panel(axes[1], "transfer US -> other countries: validation MSE", "MSE",
          {f"{name} (lr {m[f'transfer.{name}_lr']:g})": last[f"transfer.{name}.val_loss"]
           for name in ("finetune", "frozen", "scratch")},
          [(m["baseline.transfer_task_b_mean_val_mse"], mean_line, red),
           (m["transfer.task_b_zero_shot_val_mse"], "US model, no fine-tuning", dotted)])
    axes, names = figures["overfitting_and_regularisation"][1], ("plain", "dropout", "weight_decay")
    panel(axes[0], "recipe step 1: overfit one example", "loss", {"": last["recipe.single_example_loss"]},
          [(single_example_loss, "", {"ls": "--", "color": "k"})], xlabel="step", yscale="log")
    for ax, name in zip(axes[1:4], names):
        ax.axvline(m[f"overfit.{name}.best_val_epoch"], **dotted, label="lowest validation loss")
        panel(ax, f"{name}: overfitting {'detected' if m[f'overfit.{name}.detected'] else 'not detected'}",
              "cross-entropy", {"train (eval mode)": last[f"overfit.{name}.train_eval_loss"],
                                "validation": last[f"overfit.{name}.val_loss"]}, yscale="log")
    axes[4].bar(names, [m[f"overfit.{n}.gap"] for n in names], color=["tab:blue", "tab:orange", "tab:green"])
    panel(axes[4], "final validation - training loss", "gap", {}, xlabel="")
    ax = figures["search"][1]
    for kind in ("grid", "random"):   # every seed's search: the mean and the range
        arr = np.array(hist[f"search.{kind}.best_so_far"])
        t = np.arange(1, arr.shape[1] + 1)
        ax.plot(t, arr.mean(0), marker="o", ms=3, label=f"{kind} search (mean of {len(arr)} seeds)")
        ax.fill_between(t, arr.min(0), arr.max(0), alpha=0.15)
    panel(ax, "best validation accuracy found vs. trials spent (Zoo)", "best val accuracy", {}, xlabel="trials")
    for name, (fig, _) in figures.items():
        plots.save_figure(fig, pdir / f"{name}.png")


def report(mean: dict, std: dict, n_seeds: int, wall_s: float) -> None:
    """Mean ± std over the seeds; each comparison with the suite's noise rule (common.schema.compare_means)."""
    f = lambda k: f"{mean[k]:.3f} ± {std[k]:.3f}" if mean.get(k) is not None else "n/a"

    def vs(a: str, b: str) -> str:
        if None in (mean.get(a), mean.get(b)):
            return f"{f(a)} vs {f(b)}"
        return f"{f(a)} vs {f(b)} ({schema.compare_means(mean[a], std[a], mean[b], std[b], n_seeds)})"
    batches = [int(mean[f"toy.batch{i}_size"]) for i in range(1, int(mean["toy.n_batches"]) + 1)]
    print(f"03 ({n_seeds} seeds, {wall_s:.0f}s): toy batches {batches} (course: 2, 2, 1); Zoo test accuracy vs the "
          f"majority class {vs('zoo.test_accuracy', 'baseline.majority_test_accuracy')} (course: 0.406 on all 101); "
          f"salary val MSE vs the mean {vs('salary.val_mse', 'baseline.salary_mean_val_mse')}; max |w| "
          f"{f('init.default_max_abs')} <= 0.125; transfer fine-tune vs scratch "
          f"{vs('transfer.finetune_val_mse', 'transfer.scratch_val_mse')}, frozen {f('transfer.frozen_val_mse')}; gap "
          f"plain vs dropout {vs('overfit.plain.gap', 'overfit.dropout.gap')}, weight decay "
          f"{f('overfit.weight_decay.gap')}; search best val acc grid vs random "
          f"{vs('search.grid.best_val_accuracy', 'search.random.best_val_accuracy')}")
