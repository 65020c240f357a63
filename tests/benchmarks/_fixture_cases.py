"""A throwaway benchmark case (a small MLP) with the same contract as an experiment's ``benchmark_cases()``.

Used by tests/test_gate.py for the end-to-end gate check (``BENCH_CASES_MODULE=...``), and handy to
try the harness alone: ``BENCH_CASES_MODULE=tests.benchmarks._fixture_cases pytest tests/benchmarks``.
``FIXTURE_SLOWDOWN=2`` makes the model run its layers twice per forward (an injected 2x slowdown).
"""
from __future__ import annotations

import os

import torch
from torch import nn


class TinyMLP(nn.Module):
    def __init__(self, n_in: int = 64, hidden: int = 256, n_out: int = 10, repeat: int = 1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_out))
        self.repeat = repeat

    def forward(self, x):
        out = self.net(x)
        for _ in range(self.repeat - 1):  # the injected slowdown: the same work again
            out = out + self.net(x)
        return out


def benchmark_cases() -> list[dict]:
    repeat = int(os.environ.get("FIXTURE_SLOWDOWN", "1"))
    return [{
        "name": "fixture.tiny_mlp",
        "make_model": lambda: TinyMLP(repeat=repeat),
        "make_batch": lambda bs, device: ((torch.randn(bs, 64, device=device),),
                                          torch.randint(0, 10, (bs,), device=device)),
        "loss_fn": nn.functional.cross_entropy,
        "make_optimizer": lambda params: torch.optim.Adam(params, lr=1e-3),
        "batch_size": 128,
    }]
