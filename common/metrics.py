"""Thin helpers over torchmetrics for the course's tasks (nothing hand-written that it provides)."""
from __future__ import annotations

import torch
from torchmetrics.functional import accuracy as _accuracy
from torchmetrics.functional import mean_squared_error as _mse
from torchmetrics.functional import precision as _precision
from torchmetrics.functional import recall as _recall
from torchmetrics.functional import f1_score as _f1

AVERAGES = ("micro", "macro", "weighted", None)


def accuracy(preds: torch.Tensor, target: torch.Tensor, num_classes: int | None = None,
             threshold: float = 0.5) -> float:
    """Binary accuracy (``num_classes=None``: probabilities thresholded at ``threshold``) or
    multi-class micro accuracy (``num_classes=K``: logits/probabilities or class indices)."""
    if num_classes is None:
        return float(_accuracy(preds, target.long(), task="binary", threshold=threshold))
    return float(_accuracy(preds, target, task="multiclass", num_classes=num_classes, average="micro"))


def precision_recall(preds: torch.Tensor, target: torch.Tensor, num_classes: int,
                     average: str | None = "macro") -> tuple:
    """Multi-class precision and recall with ``average`` in micro/macro/weighted/None.

    With ``average=None`` both are per-class tensors of length ``num_classes``; otherwise floats.
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    p = _precision(preds, target, task="multiclass", num_classes=num_classes, average=average)
    r = _recall(preds, target, task="multiclass", num_classes=num_classes, average=average)
    if average is None:
        return p, r
    return float(p), float(r)


def classification_report(preds: torch.Tensor, target: torch.Tensor, class_names: list[str]) -> dict:
    """A flat dict: accuracy; precision/recall/F1 micro, macro, weighted; per-class precision and
    recall keyed by class name (``recall.<name>``). ``preds`` are logits or class indices."""
    k = len(class_names)
    out = {"accuracy": accuracy(preds, target, num_classes=k)}
    for avg in ("micro", "macro", "weighted"):
        p, r = precision_recall(preds, target, k, avg)
        out[f"precision_{avg}"], out[f"recall_{avg}"] = p, r
        out[f"f1_{avg}"] = float(_f1(preds, target, task="multiclass", num_classes=k, average=avg))
    p, r = precision_recall(preds, target, k, None)
    for i, name in enumerate(class_names):
        out[f"precision.{name}"] = float(p[i])
        out[f"recall.{name}"] = float(r[i])
    return out


def mse(preds: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared error (torchmetrics)."""
    return float(_mse(preds.reshape(-1).float(), target.reshape(-1).float()))
