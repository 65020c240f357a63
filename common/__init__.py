"""What the experiment scripts import: seeding, device, time splits, metrics, data, results, plots, CLI.

The suite's own tools (summary, compare, report, the timing gates) live in ``tools/``.

Importing this package sets ``CUBLAS_WORKSPACE_CONFIG`` before CUDA can start, so that
``torch.use_deterministic_algorithms(True)`` works for cuBLAS kernels on a GPU.
"""
import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
