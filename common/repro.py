"""Seeds, determinism and float32 numerics: the same seed on the same machine gives the same numbers.

Numerics are explicit and recorded (``numerics_state()``, written into every result's environment):
TF32 is off by default for cuDNN convolutions/RNNs and CUDA matmuls (``float32_matmul_precision``
"highest"), ``--tf32`` opts in; deterministic algorithms warn by default on an op that has no
deterministic variant, ``--strict-determinism`` makes that an error. Nothing here changes what the
CPU computes: TF32 exists only on CUDA, and the CPU's default matmul precision is already "highest".

Under deterministic algorithms torch by default also fills every new tensor from ``torch.empty`` & co. with NaN
(``torch.utils.deterministic.fill_uninitialized_memory``), so that an op reading memory nothing wrote gives the
same NaN every time. Our ops write every element before reading it, so the fill only costs: a memset of each
convolution and batch-norm buffer and oneDNN workspace, 7-10 % of the convolutional nets' training step and 14 %
of the LSTM's (2-core AVX2 EPYC; torch's documentation: "if your program is valid and does not use uninitialized
memory as the input to an operation, then this setting can be turned off for better performance and still be
deterministic"). So it is off, and every script's figures are what they were with it on (checked bit for bit on
real data by the stop that turned it off, and by ``tests/test_gpu_readiness.py`` on training steps);
``--strict-determinism`` turns it back on, with deterministic algorithms' errors: the mode for hunting a bug.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

# cuBLAS needs this set before its first handle exists for deterministic matmuls on CUDA
CUBLAS_WORKSPACE_DEFAULT = ":4096:8"
# what the command line asked for (common.cli sets it via configure_numerics); recorded as asked
_NUMERICS = {"tf32": False, "strict_determinism": False}


def configure_numerics(tf32: bool = False, strict_determinism: bool = False) -> None:
    """Set the process-wide numerics from the command line (``--tf32``, ``--strict-determinism``).

    Called once by ``common.cli.parse_args`` before any CUDA work, so that ``CUBLAS_WORKSPACE_CONFIG``
    is in place before cuBLAS starts. TF32 flags take effect at once; determinism with the next
    :func:`apply_determinism` (every ``seed_everything``).
    """
    _NUMERICS.update(tf32=bool(tf32), strict_determinism=bool(strict_determinism))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_DEFAULT)
    apply_tf32()


def apply_tf32() -> None:
    """TF32 on or off for cuDNN (convolutions, RNNs) and CUDA matmuls, as configured (default: off).

    torch's own default lets cuDNN use TF32 (``cudnn.allow_tf32 = True``): on an Ampere or newer GPU
    the convolutions of 04/08/09 and the RNNs of 06/07 would then run with a 10-bit mantissa while
    the matmul precision reads "highest". Off unless ``--tf32``.
    """
    on = _NUMERICS["tf32"]
    if not on:
        torch.set_float32_matmul_precision("highest")   # the CPU's default too: nothing changes there
    # only the CUDA switches: set_float32_matmul_precision("high") would also let oneDNN use TF32 on a CPU
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on


def apply_determinism(deterministic: bool = True) -> None:
    """Deterministic kernels (warn-only unless ``--strict-determinism``), cuDNN deterministic, no autotuning.

    The one place these flags are set: ``seed_everything``, 04's model-only timing and the benchmark
    fixture all call it, so every measurement runs with the experiments' cuDNN settings.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_DEFAULT)
    apply_tf32()
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=not _NUMERICS["strict_determinism"])
        torch.utils.deterministic.fill_uninitialized_memory = _NUMERICS["strict_determinism"]   # see the top
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def numerics_state() -> dict:
    """The numerics actually in force now (for the result JSON and the benchmarks' extra_info)."""
    def get(obj, *names):
        for n in names:
            obj = getattr(obj, n, None)
            if obj is None:
                return None
        return obj if isinstance(obj, (bool, int, str)) else str(obj)
    b = torch.backends
    return {
        "tf32_requested": _NUMERICS["tf32"],
        "cudnn_allow_tf32": b.cudnn.allow_tf32,
        "cuda_matmul_allow_tf32": b.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        # torch >= 2.9's finer-grained view of the same switches ("ieee"/"tf32"/"none")
        "cuda_matmul_fp32_precision": get(b.cuda.matmul, "fp32_precision"),
        "cudnn_conv_fp32_precision": get(b.cudnn, "conv", "fp32_precision"),
        "cudnn_rnn_fp32_precision": get(b.cudnn, "rnn", "fp32_precision"),
        "cudnn_deterministic": b.cudnn.deterministic,
        "cudnn_benchmark": b.cudnn.benchmark,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "strict_determinism": _NUMERICS["strict_determinism"],
        "fill_uninitialized_memory": torch.utils.deterministic.fill_uninitialized_memory,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def seed_everything(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed python, numpy and torch (CPU and every CUDA device); return a seeded generator.

    With ``deterministic`` (the default) torch is asked for deterministic kernels
    (``use_deterministic_algorithms``, with ``warn_only`` so ops that have no deterministic
    variant still run, unless ``--strict-determinism``), cuDNN autotuning is switched off and cuDNN
    is made deterministic; TF32 is set as configured (off by default), see :func:`apply_determinism`.
    The returned ``torch.Generator`` is meant for DataLoaders (``generator=``) and any other
    random draw that should not disturb the global stream.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    apply_determinism(deterministic)
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
