"""The learning-rate schedule shapes the improved models train with (04's clouds CNN and 08/09's Omniglot subnet).

One-cycle (torch's OneCycleLR defaults: 30 % warm-up from peak/25, cosine annealing to peak/1e4, the momentum or
Adam's beta1 cycled between 0.95 and 0.85) is both models' default; the other shapes are what their ``--ablation
recipe`` compares it with, each changing one thing: a shorter warm-up (10 %), straight lines instead of cosine
curves (up and down), cosine annealing from the peak without warm-up or momentum cycling, and the peak lr held
constant.
"""
from __future__ import annotations

from functools import partial

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR


def _one_cycle(opt, peak_lr, total_steps, **options):
    return OneCycleLR(opt, max_lr=peak_lr, total_steps=total_steps, **options)


def _cosine(opt, peak_lr, total_steps):
    for group in opt.param_groups:
        group["lr"] = peak_lr
    return CosineAnnealingLR(opt, T_max=total_steps)


def _constant(opt, peak_lr, total_steps):
    for group in opt.param_groups:
        group["lr"] = peak_lr
    return None


SHAPES = {"onecycle": _one_cycle,
          "onecycle_warm0.1": partial(_one_cycle, pct_start=0.1),
          "onecycle_linear": partial(_one_cycle, anneal_strategy="linear"),
          "cosine": _cosine,
          "constant": _constant}


def make(opt: torch.optim.Optimizer, shape: str, peak_lr: float, total_steps: int):
    """The scheduler of ``shape`` over ``total_steps`` optimizer steps, to be stepped after each of them; None for
    "constant" (the optimizer's lr is set to ``peak_lr`` and stays there)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown schedule shape {shape!r}; one of {', '.join(SHAPES)}")
    return SHAPES[shape](opt, peak_lr, total_steps)
