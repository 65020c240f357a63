"""Thin shared helpers for the experiment scripts.

Importing this package sets ``CUBLAS_WORKSPACE_CONFIG`` before CUDA can start, so that
``torch.use_deterministic_algorithms(True)`` works for cuBLAS kernels on a GPU.
"""
import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
