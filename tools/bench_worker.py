"""One tree's side of the A/B timing gate: a worker process that times that tree's benchmark cases on request.

``tools.bench_ab`` starts two of these, one per source tree (the blessed base and the candidate), and
asks them in turn to time the same case, so that both are measured on this machine, in this run, under
the same load. This file is deliberately standalone (the standard library and torch only): the
controller copies it next to the trees and runs ``python bench_worker.py --tree DIR``, so each side
imports its own ``experiments`` and ``common`` and nothing of the other.

Protocol: one JSON object per line. The worker first answers
``{"cases": [...], "problems": {module: error}}`` and then serves requests from stdin:

* ``{"op": "setup", "case": NAME, "kind": "forward"|"train_step", "warmup": W}``: builds the model and
  batch as the experiment's ``benchmark_cases()`` describes (seeded), warms up W calls and answers
  ``{"one_s": seconds of one call}``;
* ``{"op": "time", "iterations": N, "repeats": R}``: times N calls of the set-up call, R times back to
  back (garbage collector off), and answers ``{"seconds": the fastest of the R}``;
* ``{"op": "quit"}``.

What the experiments print goes to stderr; stdout carries the protocol alone.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path


def discover(tree: Path) -> tuple[dict, dict]:
    """``({case name: case}, {module: problem})`` from every ``experiments/NN_*.py`` of ``tree``."""
    cases, problems = {}, {}
    for path in sorted((tree / "experiments").glob("[0-9][0-9]_*.py")):
        module = f"experiments.{path.stem}"
        try:
            got = list(importlib.import_module(module).benchmark_cases())
        except BaseException as e:  # noqa: BLE001 - a SystemExit or syntax error is a problem to report
            problems[module] = f"{type(e).__name__}: {e}"
            continue
        for case in got:
            cases[case["name"]] = case
    return cases, problems


def build(case: dict, kind: str, device):
    """The timed call for one case: a no-grad forward in eval mode, or a full training step."""
    import torch
    torch.manual_seed(0)
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    model = case["make_model"]().to(device)
    inputs, target = case["make_batch"](case["batch_size"], device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    if kind == "forward":
        model.eval()

        def call():
            with torch.no_grad():
                model(*inputs)
            sync()
        return call
    model.train()
    opt, loss_fn = case["make_optimizer"](model.parameters()), case["loss_fn"]

    def call():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(*inputs), target).backward()
        opt.step()
        sync()
    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", required=True, type=Path, help="the source tree whose experiments/ to time")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()

    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                      # anything the experiments print goes to stderr
    sys.stdout = sys.stderr
    tree = args.tree.resolve()
    sys.path.insert(0, str(tree))
    os.chdir(tree)

    def answer(obj):
        protocol.write(json.dumps(obj) + "\n")

    try:
        import torch
        # the experiments' numerics, the same on both sides (see common.repro.seed_everything)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False   # as the scripts train (common.repro)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        # the scripts' allocator settings (common.device.tune_cpu_allocator), the same on both sides: without
        # them one process times a step up to 2x slower than the next. The controller's common/device.py (copied
        # beside this file by tools.bench_ab), loaded under another name: the timed tree's own ``common`` is
        # imported by its experiments alone
        here = Path(__file__).resolve()
        copied = here.with_name("worker_device.py")
        spec = importlib.util.spec_from_file_location(
            "_bench_worker_device", copied if copied.exists() else here.parents[1] / "common" / "device.py")
        own_device = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(own_device)
        allocator = own_device.tune_cpu_allocator()
        device = torch.device(args.device)
        cases, problems = discover(tree)
    except BaseException as e:  # noqa: BLE001
        answer({"fatal": f"{type(e).__name__}: {e}"})
        return
    answer({"cases": sorted(cases), "problems": problems, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "cpu_allocator": allocator})

    default_threads = torch.get_num_threads()
    call = None
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "quit":
                break
            if req["op"] == "setup":
                call = None
                gc.collect()
                torch.set_num_threads(default_threads)
                call = build(cases[req["case"]], req["kind"], device)
                for _ in range(req.get("warmup", 2)):
                    call()
                t0 = time.perf_counter()
                call()
                answer({"one_s": time.perf_counter() - t0})
            elif req["op"] == "time":
                # the fastest of a few back-to-back measurements: interference from the rest of the
                # machine only ever adds time, so the minimum is the least disturbed figure
                gc.disable()
                best = float("inf")
                for _ in range(req.get("repeats", 1)):
                    t0 = time.perf_counter()
                    for _ in range(req["iterations"]):
                        call()
                    best = min(best, time.perf_counter() - t0)
                gc.enable()
                answer({"seconds": best})
        except BaseException as e:  # noqa: BLE001 - report, let the controller decide
            gc.enable()
            answer({"error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    main()
