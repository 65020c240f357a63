"""Throughput of every model the experiments train: forward pass and full training step, per device.

* ``test_reference_matmul[<device>]``: a fixed 1024x1024 fp32 matmul (GFLOP/s), the machine's own
  yardstick; ``tools.gate`` divides every model's median time by this one's (same run). On CUDA it is
  8192x8192 (TF32 off): 1024^2 takes microseconds on a large GPU and would mostly time launch overhead.
* ``test_forward[<case>-<device>]``: ``model(*inputs)`` in eval mode under ``torch.no_grad()``.
* ``test_train_step[<case>-<device>]``: zero_grad, forward, loss, backward, optimizer step.

Each records in ``extra_info``: samples/s, parameter count, FLOPs per sample (FlopCounterMode, counted
once outside the timing), achieved GFLOP/s and its fraction of the reference kernel's, device name and
threads, the numerics in force (TF32, cuDNN and determinism flags) and, on CUDA, the GPU's identity and
peak memory. On CUDA the timed function ends with ``torch.cuda.synchronize()``.

A case may carry an optional ``threads`` key (torch CPU threads while it runs, as its script trains).
Quick by default (about 0.25 s per benchmark, at least 3 rounds); thorough on request::

    BENCH_THOROUGH=1 pytest tests/benchmarks --benchmark-json=out.json
"""
from __future__ import annotations

import pytest
import torch

from .conftest import REFERENCE_GFLOPS, count_flops, discover, reference_n, run_timed, synchronizer


def test_experiment_cases(module_name):
    """Every experiment script imports and exposes well-formed ``benchmark_cases()`` (else: this fails)."""
    cases, problems = discover()
    if module_name in problems:
        pytest.fail(problems[module_name], pytrace=False)
    # an empty list is allowed: the script trains no model (e.g. 01, 02); its docstring should say so


@pytest.mark.usefixtures("deterministic_like_experiments")
def test_reference_matmul(benchmark, device, device_info):
    dev = torch.device(device)
    n = reference_n(dev)
    g = torch.Generator(device=dev).manual_seed(0)   # drawn where it is used: no 2 x 256 MB upload on CUDA
    a = torch.randn(n, n, generator=g, device=dev)
    b = torch.randn(n, n, generator=g, device=dev)
    sync = synchronizer(dev)

    def matmul():
        torch.mm(a, b)
        sync()

    flops = count_flops(matmul)
    assert flops == 2 * n ** 3
    t = run_timed(benchmark, matmul, dev)
    gflops = flops / t["median_s"] / 1e9
    REFERENCE_GFLOPS[device] = gflops
    benchmark.extra_info.update(kind="reference", case=f"matmul{n}", flops=flops, gflops=round(gflops, 3),
                                **device_info(dev), **t)


def _setup(case, device):
    dev = torch.device(device)
    torch.manual_seed(0)
    model = case["make_model"]().to(dev)
    inputs, target = case["make_batch"](case["batch_size"], dev)
    if not isinstance(inputs, tuple):
        raise TypeError(f"{case['name']}: make_batch must return (inputs_tuple, target), got inputs of type "
                        f"{type(inputs).__name__}")
    return dev, model, inputs, target


def _record(benchmark, case, dev, model, flops_per_batch, t, kind, device_info):
    bs = case["batch_size"]
    gflops = flops_per_batch / t["median_s"] / 1e9
    ref = REFERENCE_GFLOPS.get(dev.type)
    benchmark.extra_info.update(
        kind=kind, case=case["name"], module=case["module"], batch_size=bs,
        params=sum(p.numel() for p in model.parameters()),
        flops_per_sample=flops_per_batch / bs, flops_per_batch=flops_per_batch,
        samples_per_s=round(bs / t["median_s"], 3), gflops=round(gflops, 4),
        gflops_fraction_of_reference=round(gflops / ref, 5) if ref else None,
        **device_info(dev), **t)


@pytest.mark.usefixtures("deterministic_like_experiments", "case_threads")
def test_forward(benchmark, case, device, device_info):
    dev, model, inputs, _ = _setup(case, device)
    model.eval()
    sync = synchronizer(dev)

    def forward():
        with torch.no_grad():
            model(*inputs)
        sync()

    flops = count_flops(forward)
    t = run_timed(benchmark, forward, dev)
    _record(benchmark, case, dev, model, flops, t, "forward", device_info)


@pytest.mark.usefixtures("deterministic_like_experiments", "case_threads")
def test_train_step(benchmark, case, device, device_info):
    dev, model, inputs, target = _setup(case, device)
    model.train()
    opt = case["make_optimizer"](model.parameters())
    loss_fn = case["loss_fn"]
    sync = synchronizer(dev)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(*inputs), target)
        loss.backward()
        opt.step()
        sync()

    step()  # creates the optimizer's state before the FLOPs are counted
    flops = count_flops(step)
    t = run_timed(benchmark, step, dev)
    _record(benchmark, case, dev, model, flops, t, "train_step", device_info)
