"""Throughput benchmarks: find every experiment's ``benchmark_cases()`` and time them with pytest-benchmark.

Discovery: every ``experiments/[0-9][0-9]_*.py`` is imported as ``experiments.<stem>``; its
``benchmark_cases()`` list gives the models. A script that fails to import, has no
``benchmark_cases`` or returns malformed cases gets a failing ``test_experiment_cases[<stem>]``
(never a silent skip). ``BENCH_CASES_MODULE=mod1,mod2`` replaces the experiments by those modules
(tests/test_gate.py uses it with ``tests.benchmarks._fixture_cases``); ``BENCH_CASES=glob`` keeps only
the cases whose name matches (e.g. ``BENCH_CASES='04.*'``).

Timing: each benchmark first runs a few warm-up calls (on CUDA at least 10 and 0.1 s, so cuDNN plans,
the allocator and clocks have settled), measures one call, then asks ``benchmark.pedantic`` for enough
iterations per round that a round lasts >= 1 ms and enough rounds to fill a time budget:

* quick (default, what ``pytest`` and CI run): 0.25 s per benchmark, 3..200 rounds;
* thorough (``BENCH_THOROUGH=1``): 3 s per benchmark, 20..5000 rounds.

``BENCH_BUDGET_S`` and ``BENCH_MIN_ROUNDS`` override the budget and the minimum rounds;
``BENCH_THREADS=N`` sets torch's thread count first (default: torch's own, recorded in extra_info).
Every benchmark runs with the scripts' allocator settings (``common.device.tune_cpu_allocator``) and the experiments' numerics (``common.repro.apply_determinism``: TF32 off,
deterministic algorithms, cuDNN deterministic, no autotuning) and records them in ``extra_info``
with the GPU's identity and peak memory (None on the CPU).
"""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import importlib
import math
import os
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from common import repro  # noqa: E402
from common.device import describe_device, gpu_info, tune_cpu_allocator  # noqa: E402

tune_cpu_allocator()   # the scripts' allocator settings (common.cli.parse_args sets them there)

if os.environ.get("BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))

CASE_KEYS = ("name", "make_model", "make_batch", "loss_fn", "make_optimizer", "batch_size")
CUDA_SKIP = ("CUDA is not available on this machine (torch.cuda.is_available() is False): "
             "the cuda benchmarks run only where a GPU is")
REFERENCE_N = 1024          # the reference kernel: an N x N fp32 matmul (2 N^3 FLOPs) on the CPU ...
REFERENCE_N_CUDA = 8192     # ... and on a GPU, where 1024^2 takes microseconds (mostly launch overhead):
                            # 8192^2 is ~1.1 TFLOP, >= 1 ms even on the largest GPUs (fp32, TF32 off)
CUDA_WARMUP_CALLS, CUDA_WARMUP_S = 10, 0.1
ROUND_MIN_S = 1e-3          # iterations per round so that one round lasts at least this long


def bench_settings() -> dict:
    thorough = os.environ.get("BENCH_THOROUGH", "") not in ("", "0")
    s = (dict(mode="thorough", budget_s=3.0, min_rounds=20, max_rounds=5000, warmup=5) if thorough
         else dict(mode="quick", budget_s=0.25, min_rounds=3, max_rounds=200, warmup=1))
    if os.environ.get("BENCH_BUDGET_S"):
        s["budget_s"] = float(os.environ["BENCH_BUDGET_S"])
    if os.environ.get("BENCH_MIN_ROUNDS"):
        s["min_rounds"] = int(os.environ["BENCH_MIN_ROUNDS"])
        s["max_rounds"] = max(s["max_rounds"], s["min_rounds"])
    return s


def experiment_modules() -> list[str]:
    """Module names to take cases from: ``BENCH_CASES_MODULE`` or every ``experiments/NN_*.py``."""
    override = os.environ.get("BENCH_CASES_MODULE", "").strip()
    if override:
        return [m.strip() for m in override.split(",") if m.strip()]
    return [f"experiments.{p.stem}" for p in sorted((REPO / "experiments").glob("[0-9][0-9]_*.py"))]


def _check_case(case, module: str) -> str | None:
    if not isinstance(case, dict):
        return f"{module}.benchmark_cases() returned a {type(case).__name__}, expected dicts"
    missing = [k for k in CASE_KEYS if k not in case]
    if missing:
        return f"{module}: case {case.get('name', '?')!r} lacks keys {missing} (contract: {list(CASE_KEYS)})"
    if "threads" in case and not (isinstance(case["threads"], int) and case["threads"] >= 1):
        return f"{module}: case {case['name']!r} has threads {case['threads']!r}, expected an int >= 1"
    if not isinstance(case["batch_size"], int) or case["batch_size"] < 1:
        return f"{module}: case {case['name']!r} has batch_size {case['batch_size']!r}, expected an int >= 1"
    bad = [k for k in CASE_KEYS[1:5] if not callable(case[k])]
    if bad:
        return f"{module}: case {case['name']!r}: {bad} must be callables"
    return None


@functools.cache
def discover() -> tuple[tuple[dict, ...], dict[str, str]]:
    """``(cases, problems)``: every valid case, and ``{module: what is wrong}`` for broken modules."""
    cases, problems, seen = [], {}, {}
    for module in experiment_modules():
        try:
            mod = importlib.import_module(module)
        except BaseException as e:  # noqa: BLE001 - a SystemExit or a syntax error must become a failing test
            problems[module] = f"import {module} failed: {type(e).__name__}: {e}"
            continue
        fn = getattr(mod, "benchmark_cases", None)
        if not callable(fn):
            problems[module] = (f"{module} has no benchmark_cases() function: every experiment must expose its "
                                f"models for the throughput benchmarks (see the contract in tests/benchmarks/conftest.py)")
            continue
        try:
            got = list(fn())
        except BaseException as e:  # noqa: BLE001
            problems[module] = f"{module}.benchmark_cases() raised {type(e).__name__}: {e}"
            continue
        for case in got:
            err = _check_case(case, module)
            if err is None and case["name"] in seen:
                err = f"{module}: case name {case['name']!r} is also used by {seen[case['name']]}"
            if err:
                problems[module] = err
                break
        else:
            for case in got:
                seen[case["name"]] = module
                cases.append({**case, "module": module})
    pattern = os.environ.get("BENCH_CASES", "").strip()
    if pattern:
        cases = [c for c in cases if fnmatch.fnmatch(c["name"], pattern)]
    return tuple(cases), problems


def device_params():
    return [pytest.param("cpu", id="cpu"),
            pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_SKIP))]


def pytest_generate_tests(metafunc):
    if "module_name" in metafunc.fixturenames:
        mods = experiment_modules()
        metafunc.parametrize("module_name", mods, ids=[m.rsplit(".", 1)[-1] for m in mods])
    if "case" in metafunc.fixturenames:
        cases, _ = discover()
        metafunc.parametrize("case", list(cases), ids=[c["name"] for c in cases])
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", device_params())


# ------------------------------------------------------------------------------------------ timing
def synchronizer(device: torch.device):
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def reference_n(device: torch.device) -> int:
    return REFERENCE_N_CUDA if torch.device(device).type == "cuda" else REFERENCE_N


def run_timed(benchmark, fn, device: torch.device | str = "cpu") -> dict:
    """Warm up ``fn``, pick iterations/rounds from one measured call and the budget, run pedantic."""
    s = bench_settings()
    for _ in range(s["warmup"]):
        fn()
    if torch.device(device).type == "cuda":   # first calls build cuDNN plans, grow the allocator, raise clocks
        t0, calls = time.perf_counter(), s["warmup"]
        while calls < CUDA_WARMUP_CALLS or (time.perf_counter() - t0 < CUDA_WARMUP_S and calls < 1000):
            fn()
            calls += 1
    one = _time_once(fn)
    if one < s["budget_s"] / 10:
        one = min(one, _time_once(fn))
    iterations = max(1, math.ceil(ROUND_MIN_S / max(one, 1e-9)))
    rounds = int(min(s["max_rounds"], max(s["min_rounds"], s["budget_s"] // max(one * iterations, 1e-9))))
    benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=0)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    median = float(stats.median) if stats is not None else one   # --benchmark-disable: no stats
    return {"median_s": median, "rounds": rounds, "iterations": iterations, "mode": s["mode"]}


def _time_once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, ... as torch's FlopCounterMode counts them).

    oneDNN and cuDNN are switched off while counting: their fused RNN/LSTM kernels are opaque to the
    counter (an LSTM would count as 0), the composite path runs the same matmuls, which it sees.
    """
    import warnings
    from torch.utils.flop_counter import FlopCounterMode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.backends.mkldnn.flags(enabled=False), torch.backends.cudnn.flags(enabled=False):
            with FlopCounterMode(display=False) as counter:
                fn()
    return int(counter.get_total_flops())


# the reference kernel's GFLOP/s per device, filled by test_reference_matmul (it runs first)
REFERENCE_GFLOPS: dict[str, float] = {}


@pytest.fixture
def device_info():
    """``describe(device) -> dict``: the device's name, the torch thread count, the numerics in force,
    and on CUDA the GPU's identity (driver, UUID, MIG mode) and the peak memory of this benchmark."""
    def describe(device: torch.device) -> dict:
        d = describe_device(device)
        info = {"device": device.type, "device_name": d.get("name"), "threads": torch.get_num_threads(),
                "torch": torch.__version__, "numerics": repro.numerics_state(), "gpu": None,
                "peak_gpu_memory_bytes": None}
        if device.type == "cuda":
            g = gpu_info()
            idx = device.index if device.index is not None else torch.cuda.current_device()
            info.update(gpu={**next((x for x in g["gpus"] if x["index"] == idx), {}),
                             "gpu_count": g["gpu_count"], "nvidia_driver": g["nvidia_driver"],
                             "cuda_driver_version": g["cuda_driver_version"], "torch_cuda_build": g["torch_cuda_build"]},
                        peak_gpu_memory_bytes=int(torch.cuda.max_memory_allocated(device)))
        return info
    return describe


@pytest.fixture(autouse=True)
def _reset_gpu_peak_memory():
    """Each benchmark's extra_info reports its own peak GPU memory, not the session's."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    yield


@pytest.fixture
def case_threads(request):
    """A case may pin torch's CPU threads (optional key ``threads``, e.g. a script that trains with 1)."""
    case = request.getfixturevalue("case")
    before = torch.get_num_threads()
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def experiments_numerics():
    """The experiments' numerics: the same function ``seed_everything`` calls sets deterministic
    algorithms, cuDNN deterministic without autotuning and TF32 off; the previous state is restored after."""
    b = torch.backends
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              b.cudnn.deterministic, b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32,
              torch.get_float32_matmul_precision(), torch.utils.deterministic.fill_uninitialized_memory)
    repro.apply_determinism()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        b.cudnn.deterministic, b.cudnn.benchmark = before[2], before[3]
        torch.set_float32_matmul_precision(before[6])
        b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = before[4], before[5]
        torch.utils.deterministic.fill_uninitialized_memory = before[7]


@pytest.fixture
def deterministic_like_experiments():
    """Benchmarks run as the experiments train (cuDNN flags, determinism, TF32 off): see experiments_numerics."""
    with experiments_numerics():
        yield
