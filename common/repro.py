"""Seeds and determinism: the same seed on the same machine gives the same numbers."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed python, numpy and torch (CPU and every CUDA device); return a seeded generator.

    With ``deterministic`` (the default) torch is asked for deterministic kernels
    (``use_deterministic_algorithms`` with ``warn_only`` so ops that have no deterministic
    variant still run), cuDNN autotuning is switched off and cuDNN is made deterministic.
    The returned ``torch.Generator`` is meant for DataLoaders (``generator=``) and any other
    random draw that should not disturb the global stream.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return make_generator(seed)


def make_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (for DataLoader shuffling, augmentation)."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders: seed numpy and random in each worker from torch's seed.

    torch gives every worker a distinct seed derived from the loader's generator; numpy and
    python's ``random`` do not follow it on their own.
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def make_loader(dataset, batch_size: int, shuffle: bool, seed: int, **kwargs) -> torch.utils.data.DataLoader:
    """A DataLoader whose shuffling and worker seeds follow ``seed`` (reproducible order)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=make_generator(seed),
        worker_init_fn=seed_worker, **kwargs)
