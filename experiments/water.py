"""The water-potability data and result record of 05_water_potability (transcript lines 407-495).

Not an experiment (run_all.sh and the benchmarks pick only ``experiments/NN_*.py``); 05 trains, this holds
what surrounds the training:
  * ``SeedNets``: every seed's copy of 05's Net stacked into one network, trained as S separate runs would be;
  * data: the course's WaterDataset, its rows as tensors (``to_tensors``) in the batch order of the course's
    DataLoader for every seed at once (``epoch_orders``), and the two protocols' splits (``load_split``):
    ``course``, the course's pre-scaled files, and ``clean``, the raw Kaggle file with imputation and scaling
    fitted on the training part only (and, for the cross-validation, on each fold's training rows: ``fold_features``);
  * baselines: majority class, logistic regression and a random forest per seed, on the same split;
  * the record: the per-epoch history, the comparison of every configuration by the suite's noise rule, the
    plots and the printed summary.
Imported as ``from experiments import water``.
"""
import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import stack_module_state
from torch.utils.data import Dataset

from common import cli, data, plots, repro, schema

LABEL = "Potability"
VARIANTS = ("relu_default", "kaiming", "kaiming_elu", "kaiming_elu_bn")  # 05's Net: the remedies, one after another
LAYERS = ("fc1", "fc2", "fc3")   # its Linear layers, whose gradient norms the record keeps
COURSE_ACCURACY = 0.67  # "We got over 67%"
BASELINES = ("majority", "logreg", "random_forest")
# where the cross-validation's preprocessing was fitted, per protocol (selection["validation"]["preprocessing"])
CV_PREPROCESSING = {
    "clean": "fitted per fold on the fold's training rows: median imputation and min-max scaling "
             "(make_pipeline(SimpleImputer(strategy='median'), MinMaxScaler())) fitted on the raw features of those "
             "rows only, then applied to the fold's training and validation rows; the final models use the one "
             "fitted on all training rows",
    "course": "the course's files, pre-scaled by the course (min/max over train and test together); no raw "
              "data to refit per fold"}


# ----------------------------------------------------------------------------- the seeds' nets stacked
@dataclass
class SeedNets:
    """05's ``Net(variant)``, one per seed (built after ``seed_everything(seed)``), parameters and buffers stacked
    and run as one network: each Linear one batched matmul over the stacked weights, BatchNorm one call with the
    copies' features side by side as channels (so each copy keeps its own statistics). The maths of S separate runs
    (elementwise optimizers, each copy its own batches, loss and BatchNorm statistics) in one small forward/backward
    instead of S. Written out rather than torch.func.vmap(functional_call): vmap's per-call Python work was a third
    of 05's training time (cProfile) for a net this small."""
    template: nn.Module   # on the meta device: only its layers' presence, activation and train/eval flag are used
    params: dict          # name -> (S, ...) leaf tensors: what the optimizer updates
    buffers: dict         # BatchNorm's running_mean, running_var, num_batches_tracked

    @classmethod
    def build(cls, make_net, seeds: list[int], device) -> "SeedNets":
        """``make_net()``: 05's Net of one variant, built once per seed after ``seed_everything(seed)``."""
        nets = []
        for seed in seeds:
            repro.seed_everything(seed)
            nets.append(make_net().to(device))
        return cls(copy.deepcopy(nets[0]).to("meta"), *stack_module_state(nets))

    def _linear(self, name: str, h: torch.Tensor) -> torch.Tensor:
        """(S, B, in) -> (S, B, out): copy s through its own layer ``name``."""
        return torch.baddbmm(self.params[f"{name}.bias"].unsqueeze(1), h, self.params[f"{name}.weight"].mT)

    def _batch_norm(self, h: torch.Tensor) -> torch.Tensor:
        """BatchNorm1d per copy: (S, B, F) as a (B, S*F) batch of S*F channels; the running statistics update in
        place through views of the stacked buffers, with the template layer's momentum and eps, as its own would."""
        S, B, width = h.shape
        p, b, bn, training = self.params, self.buffers, self.template.bn1, self.template.training
        out = F.batch_norm(h.transpose(0, 1).reshape(B, S * width), b["bn1.running_mean"].view(-1),
                           b["bn1.running_var"].view(-1), p["bn1.weight"].view(-1), p["bn1.bias"].view(-1),
                           training=training, momentum=bn.momentum, eps=bn.eps)
        if training:
            b["bn1.num_batches_tracked"].add_(1)
        return out.reshape(B, S, width).transpose(0, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (S, B, 9), each copy its own batch, or (B, 9), one batch for all -> (S, B, 1)."""
        if x.dim() == 2:
            x = x.expand(len(self.params["fc1.weight"]), *x.shape)
        act, h = self.template.act, self._linear("fc1", x)
        if self.template.bn1 is not None:
            h = self._batch_norm(h)
        h = act(self._linear("fc2", act(h)))
        return torch.sigmoid(self._linear("fc3", h))

    @classmethod
    def joined(cls, stacks: list["SeedNets"]) -> "SeedNets":
        """Stacks of one architecture as one (their copies in order) for one forward/backward: the parameters
        concatenated, each stack keeping its own leaves (and optimizer); the joined weights keep their gradients
        (``retain_grad``) for the per-copy gradient norms. One stack: itself. Not with BatchNorm's buffers."""
        if len(stacks) == 1:
            return stacks[0]
        if stacks[0].buffers or len({(s.template.act, s.template.bn1 is None) for s in stacks}) > 1:
            raise ValueError("SeedNets.joined: one architecture, without BatchNorm's buffers (trained on its own)")
        params = {k: torch.cat([s.params[k] for s in stacks]) for k in stacks[0].params}
        for k in params:
            params[k].retain_grad()
        return cls(stacks[0].template, params, {})

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Eval mode (BatchNorm's running statistics), no gradients: (B, 9) -> (S, B)."""
        self.template.eval()
        out = self(x).squeeze(-1)
        self.template.train()
        return out

    def net(self, s: int) -> nn.Module:
        """Copy s as a plain Net (parameters and BatchNorm statistics)."""
        net = copy.deepcopy(self.template).to_empty(device=self.params["fc1.weight"].device)
        net.load_state_dict({k: v[s] for k, v in {**self.params, **self.buffers}.items()})
        return net


# ----------------------------------------------------------------------------- data
class WaterDataset(Dataset):
    """The course's dataset: a CSV (or a prepared DataFrame) as a float32 array; item = (9 features, label)."""

    def __init__(self, csv_path_or_frame):
        super().__init__()
        df = csv_path_or_frame if isinstance(csv_path_or_frame, pd.DataFrame) else pd.read_csv(csv_path_or_frame)
        self.data = df[data.WATER_FEATURES + [LABEL]].to_numpy(dtype=np.float32)

    def __len__(self):
        return self.data.shape[0]

    def __getitem__(self, idx):
        return self.data[idx, :-1], self.data[idx, -1]


def to_tensors(df: pd.DataFrame, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) on ``device``, from the WaterDataset array of ``df``."""
    arr = torch.from_numpy(WaterDataset(df).data).to(device)
    return arr[:, :-1], arr[:, -1]


def epoch_orders(n, batch_size: int, seeds: list[int], device, stop: int | None = None):
    """Each epoch's row numbers, (S, stop), batch i = [:, i*B:(i+1)*B]: per seed, the order of the course's
    shuffling DataLoader over 0..n-1 with that seed (drop_last does not change the permutation: ``stop``, at most
    the smallest size, drops rows instead). ``n``: one size, or one per copy (cross-validation folds)."""
    ns = [n] * len(seeds) if isinstance(n, int) else list(n)
    stop = min(ns) if stop is None else stop
    loaders = [repro.make_loader(range(k), batch_size, True, seed) for k, seed in zip(ns, seeds)]
    while True:
        yield torch.stack([torch.cat(list(loader))[:stop] for loader in loaders]).to(device)


@dataclass
class Split:
    protocol: str
    train: pd.DataFrame             # features (scaled) + Potability
    test: pd.DataFrame
    info: data.DataInfo
    train_csv: Path | None = None   # the course file WaterDataset reads (real course data only)
    raw_train: pd.DataFrame | None = None  # clean: the training rows' raw features (unimputed, unscaled), as train
    raw_index: dict = field(default_factory=dict)  # clean: raw-file row numbers of each part
    notes: dict = field(default_factory=dict)


def _feature_overlap(train: pd.DataFrame, test: pd.DataFrame) -> int:
    """Number of test rows whose 9 feature values equal some training row's (exact match)."""
    f = data.WATER_FEATURES
    return int(test[f].merge(train[f].drop_duplicates(), on=f, how="inner").shape[0])


def load_course(data_dir_=None, synthetic=False) -> Split:
    train, test, info = data.load_water_course(data_dir_, synthetic)
    csv = None if info.source == "synthetic" else data.data_dir(data_dir_) / "water_potability" / "water_train.csv"
    notes = {"preprocessing": "none here: the course files are the 2,011 complete rows of the raw file, "
                              "min-max scaled to [0, 1] with min/max over train AND test together "
                              "(mild test-set leakage), split 1,508 / 503",
             "train_test_identical_feature_rows": _feature_overlap(train, test)}
    return Split("course", train, test, info, csv, notes=notes)


def preprocessing():
    """The clean protocol's preprocessing, unfitted: median imputation, then min-max scaling."""
    from sklearn.impute import SimpleImputer          # sklearn is imported where used: it is slow to import
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler
    return make_pipeline(SimpleImputer(strategy="median"), MinMaxScaler())


def stratified_folds(y: torch.Tensor, k: int, seed: int) -> list:
    """The cross-validation's folds of the training rows: [(train rows, validation rows)] of StratifiedKFold(k,
    shuffle, random_state=seed) on the labels ``y``."""
    from sklearn.model_selection import StratifiedKFold
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y.cpu().numpy()))


def fold_features(raw_train: pd.DataFrame, folds: list, device) -> tuple[torch.Tensor, list]:
    """The clean protocol's cross-validation features: per fold (training rows, validation rows) of
    ``raw_train``, a preprocessing fitted on the fold's training rows only and applied to all its rows
    -> ((folds, rows, 9) float32 on ``device``, the fitted pipelines)."""
    f = data.WATER_FEATURES
    fitted = [preprocessing().fit(raw_train.iloc[tr][f]) for tr, _ in folds]
    X = np.stack([p.transform(raw_train[f]) for p in fitted]).astype(np.float32)  # as WaterDataset's float32
    return torch.from_numpy(X).to(device), fitted


def load_clean(data_dir_=None, synthetic=False, split_seed=0, test_size=0.25) -> Split:
    """Raw Kaggle file: stratified split; median imputation and min-max scaling fitted on train only (the
    cross-validation refits them per fold: ``fold_features`` over ``raw_train``)."""
    from sklearn.model_selection import train_test_split

    raw, info = data.load_water_raw(data_dir_, synthetic)
    rows = train_test_split(np.arange(len(raw)), test_size=test_size, stratify=raw[LABEL], random_state=split_seed)
    rows = dict(zip(("train", "test"), map(np.sort, rows)))
    f = data.WATER_FEATURES
    scale = preprocessing().fit(raw.loc[rows["train"], f])

    def prep(r):
        df = pd.DataFrame(scale.transform(raw.loc[r, f]), columns=f)
        df[LABEL] = raw.loc[r, LABEL].to_numpy().astype(np.float64)
        return df

    parts = {p: prep(r) for p, r in rows.items()}
    info.sizes = {"all": len(raw), "train": len(parts["train"]), "test": len(parts["test"])}
    missing = [c for c in f if raw[c].isna().any()]
    notes = {"preprocessing": f"stratified {1 - test_size:.0%}/{test_size:.0%} split of the raw file "
                              f"(random_state={split_seed}); median imputation and min-max scaling fitted "
                              "on the training part only, then applied to both parts (the cross-validation "
                              "refits them per fold on the fold's training rows)",
             **{f"missing_{p}": {c: int(raw.loc[r, c].isna().sum()) for c in missing} for p, r in rows.items()},
             "imputed_medians": {c: float(v) for c, v in zip(f, scale[0].statistics_)},
             "train_test_shared_raw_rows": int(np.intersect1d(rows["train"], rows["test"]).size),
             "train_test_identical_feature_rows": _feature_overlap(raw.loc[rows["train"]], raw.loc[rows["test"]])}
    raw_train = raw.loc[rows["train"], f].reset_index(drop=True)   # in the order of parts["train"]
    return Split("clean", parts["train"], parts["test"], info, raw_train=raw_train, raw_index=rows, notes=notes)


def load_split(protocol: str, args) -> Split:
    """The protocol's split; under --smoke only the first --smoke-rows training rows."""
    split = (load_course(args.data_dir, args.synthetic) if protocol == "course"
             else load_clean(args.data_dir, args.synthetic, args.split_seed))
    if args.smoke:
        split.train = split.train.iloc[:args.smoke_rows].reset_index(drop=True)
        if split.raw_train is not None:
            split.raw_train = split.raw_train.iloc[:args.smoke_rows].reset_index(drop=True)
        split.info.sizes = {**split.info.sizes, "train_used": len(split.train)}
    return split


def baselines(split: Split, seeds: list[int], trees: int) -> list[dict]:
    """Per seed, on the same split: majority class and logistic regression (lbfgs, deterministic: fitted once),
    and a random forest with that seed."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    f = data.WATER_FEATURES
    Xtr, ytr = split.train[f].to_numpy(), split.train[LABEL].to_numpy().astype(int)
    Xte, yte = split.test[f].to_numpy(), split.test[LABEL].to_numpy().astype(int)
    fixed = {"baseline.majority_accuracy": float(np.mean(yte == np.bincount(ytr).argmax())),
             "baseline.logreg_accuracy": float(LogisticRegression(max_iter=1000).fit(Xtr, ytr).score(Xte, yte))}
    forests = [RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=1).fit(Xtr, ytr) for seed in seeds]
    return [{**fixed, "baseline.random_forest_accuracy": float(forest.score(Xte, yte))} for forest in forests]


# ----------------------------------------------------------------------------- the record
def seed_metrics(i: int, configs: dict, trained: dict, baseline: dict) -> dict:
    """Seed ``seeds[i]``'s flat metrics: each configuration's (diverged: test_accuracy None), the baselines',
    each configuration's margins over the majority class and the random forest."""
    m = {}
    for key, cfg in configs.items():
        m.update({f"{key}.{k}": v for k, v in trained[cfg][0][i]["metrics"].items()} if cfg in trained
                 else {f"{key}.test_accuracy": None})
    m.update(baseline)
    for key in configs:
        if m.get(f"{key}.test_accuracy") is not None:
            m[f"{key}.minus_majority"] = m[f"{key}.test_accuracy"] - m["baseline.majority_accuracy"]
            m[f"{key}.minus_random_forest"] = m[f"{key}.test_accuracy"] - m["baseline.random_forest_accuracy"]
    return m


def history_of(configs: dict, trained: dict, grad_optimizer: str, epochs: int, cv_curve: list) -> dict:
    """Means over seeds: each configuration's per-epoch train loss, the ablation's per-layer gradient norms (NaN
    for a diverged variant); the cross-validation's validation accuracy per epoch (mean over folds)."""
    history = {"validation_accuracy.cv": cv_curve}
    for key, cfg in configs.items():
        if cfg in trained:
            history[f"train_loss.{key}"] = np.mean([r["losses"] for r in trained[cfg][0]], axis=0).tolist()
    for v in VARIANTS:
        runs = trained[(grad_optimizer, v)][0] if (grad_optimizer, v) in trained else []
        g = np.mean([r["gnorms"] for r in runs], axis=0) if runs else np.full((epochs, len(LAYERS)), np.nan)
        for j, layer in enumerate(LAYERS):
            history[f"grad_norm.{v}.{layer}"] = g[:, j].tolist()
    return history


def make_plots(pdir: Path, protocol: str, configs: dict, mean: dict, std: dict, history: dict, n_seeds: int) -> None:
    labels = list(configs)
    plots.bar_with_errors(labels, [mean.get(f"{k}.test_accuracy") or 0.0 for k in labels],
                          [std.get(f"{k}.test_accuracy") or 0.0 for k in labels], pdir / "accuracy.png",
                          f"test accuracy, {protocol} protocol (mean ± std over {n_seeds} seeds)", "accuracy",
                          baselines={"majority": mean["baseline.majority_accuracy"],
                                     "logistic regression": mean["baseline.logreg_accuracy"],
                                     "random forest": mean["baseline.random_forest_accuracy"],
                                     "course": COURSE_ACCURACY})
    curves = {what: {k.split(".", 1)[1]: v for k, v in history.items() if k.startswith(f"{what}.")}
              for what in ("train_loss", "validation_accuracy")}
    plots.plot_curves(curves["train_loss"], pdir / "train_loss.png",
                      f"training loss (BCE), {protocol} protocol, mean over seeds")
    plots.plot_curves(curves["validation_accuracy"], pdir / "validation_accuracy_per_epoch.png", "cross-validation "
                      f"accuracy per epoch, {protocol} protocol, mean over folds", ylabel="accuracy")
    fig, axes = plots.plt.subplots(1, len(VARIANTS), figsize=(4 * len(VARIANTS), 3.6), sharey=True)
    for ax, v in zip(axes, VARIANTS):   # per-layer gradient norms, one panel per variant
        for name in LAYERS:
            ys = history[f"grad_norm.{v}.{name}"]
            ax.plot(range(1, len(ys) + 1), ys, marker="o" if len(ys) <= 30 else None, ms=3, label=name)
        ax.set(title=v, xlabel="epoch", yscale="log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean L2 norm of weight gradient")
    axes[0].legend()
    fig.suptitle(f"per-layer gradient norms during training ({protocol} protocol, mean over seeds)")
    plots.save_figure(fig, pdir / "grad_norms.png")


def verdict(a: tuple, b: tuple, n_seeds: int) -> str:
    """(mean, std) a against b by the suite's noise rule (common.schema.compare_means); n/a if either diverged."""
    if a[0] is None or b[0] is None:
        return "n/a"
    return schema.compare_means(a[0], a[1], b[0], b[1], n_seeds)


def comparison_record(split: Split, args, configs: dict, lrs: dict, mean: dict, std: dict, epochs: int,
                      n_seeds: int) -> dict:
    """The JSON's extra keys: each configuration against the others of its group (optimizers; ablation variants)
    and the baselines, the protocol's notes, the settings the transcript leaves open (why: deviations)."""
    acc = {k: (mean.get(f"{k}.test_accuracy"), std.get(f"{k}.test_accuracy")) for k in configs}
    acc.update({b: (mean[f"baseline.{b}_accuracy"], std.get(f"baseline.{b}_accuracy")) for b in BASELINES})
    table = [{"config": key, "optimizer": opt, "variant": variant, "lr": lrs[opt],
              "test_accuracy_mean": acc[key][0], "test_accuracy_std": acc[key][1],
              **{f"beats_{b}": verdict(acc[key], acc[b], n_seeds).startswith("higher") for b in BASELINES},
              "vs": {o: verdict(acc[key], acc[o], n_seeds) for o in [*configs, *BASELINES]
                     if o != key and (o in BASELINES or ("." in o) == ("." in key))}}
             for key, (opt, variant) in configs.items()]
    g = args.grad_optimizer
    return {"protocol": split.protocol, "protocol_notes": split.notes, "comparison": table,
            "course_reference": {"test_accuracy": COURSE_ACCURACY, "says": "over 67%"},
            "comparison_rule": "common.schema.compare_means, the suite's one noise rule: mean ± std over seeds; "
                               f"'within noise' where |difference of means| <= the larger std + "
                               f"{schema.NOISE_TOLERANCE:g}, else higher/lower (with one seed: no spread, said so); "
                               "n/a where a run diverged",
            "choices": {"epochs": f"{epochs}, chosen by cross-validation (selection; the transcript states none)",
                        "batch_size": f"{args.batch_size} (the transcript's DataLoader demo uses 2)",
                        "lr": "SGD 0.01 as in the course; Adagrad/RMSprop/Adam at torch's defaults",
                        "gradient_ablation": f"cumulative, trained with {g}; its relu_default run is the {g} run",
                        "grad_norms": "mean over steps of the L2 norm of each Linear layer's weight gradient"}}


def report(protocol: str, table: list, mean: dict, start: cli.Start) -> None:
    for row in table:
        m, sd = row["test_accuracy_mean"], row["test_accuracy_std"]
        print(f"  {protocol} {row['config']:20s} {m or float('nan'):.3f} ± {sd or 0.0:.3f}  vs "
              + ", ".join(f"{o}: {v}" for o, v in row["vs"].items()))
    print(f"  baselines: majority {mean['baseline.majority_accuracy']:.3f}, logistic regression "
          f"{mean['baseline.logreg_accuracy']:.3f}, random forest {mean['baseline.random_forest_accuracy']:.3f}; "
          f"course: over {COURSE_ACCURACY:.0%}  [{start.wall_s():.1f}s]", flush=True)
