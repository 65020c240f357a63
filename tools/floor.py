"""``python -m tools.floor RESULTS_DIR BENCH_JSON [--goal-s 900]``: the least time a run's training could take.

A speed goal is only worth chasing if the arithmetic fits in it. For each result in RESULTS_DIR this counts the
training samples its models saw and multiplies them by the FLOPs of one training step per sample (forward,
backward, optimizer: what ``tests/benchmarks`` counts with torch's FlopCounterMode for the same model and batch);
divided by the GFLOP/s of the reference 1024x1024 fp32 matmul in BENCH_JSON, that is the *floor*: the seconds the
training would take if every step ran as fast as one large matmul on this machine, with no data pipeline, no
evaluation, no Python. It is a yardstick, not the CPU's peak: a larger matmul may run faster (``--gflops`` takes
such a rate instead). No training step here comes near the reference rate (each one's
``gflops_fraction_of_reference`` in BENCH_JSON), so the floor lies well below what any run reaches: a goal near or
under it needs less arithmetic, not only faster code.

The FLOPs are a lower bound three ways: evaluation, data and baselines count nothing; runs whose samples a result
does not record count nothing (05's cross-validation; 06-09 choose their epochs on validation data inside the
recorded runs); where a result records the samples of several models together (03, 05, 08, 09), they count at the
cheapest model's FLOPs. 04's cross-validation folds count (its selection record gives the fold sizes and epochs).

BENCH_JSON: ``pytest tests/benchmarks --benchmark-json=FILE`` on the machine of the results (checked: the same CPU
name, family and model, else an error). Every figure comes from the two inputs; nothing is typed here but the
names of the models whose results record their own samples (``PER_MODEL``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.schema import read_result

# Results that record each model's training seconds and rate ("<model>.train_s", "<model>.train_samples_per_s" or
# "..._windows_per_s", totals over seeds; or their per-seed lists under "per_seed"): model -> benchmark case
PER_MODEL = {"04_clouds_cnn": {"course": "04.course_cnn", "improved": "04.improved_cnn"},
             "06_electricity_rnn": {"rnn": "06.course_rnn"},
             "07_lstm_vs_gru": {"rnn": "07.course_rnn", "lstm": "07.course_lstm", "gru": "07.course_gru"}}


class FloorError(ValueError):
    """Inputs that cannot give a floor (an unreadable file, another machine's benchmarks, a missing case)."""


def read_bench(path: Path) -> tuple[float, dict, dict]:
    """``(reference GFLOP/s, {case: FLOPs per sample of a training step}, machine)`` of a pytest-benchmark JSON."""
    try:
        bench = json.loads(path.read_text())
        cpu = bench["machine_info"]["cpu"]
        infos = [b["extra_info"] for b in bench["benchmarks"] if b["extra_info"].get("device") == "cpu"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FloorError(f"{path}: not a pytest-benchmark JSON of tests/benchmarks ({type(e).__name__}: {e})") from None
    refs = [i for i in infos if i.get("kind") == "reference"]
    steps = {i["case"]: i["flops_per_sample"] for i in infos if i.get("kind") == "train_step"}
    if not refs or not steps:
        raise FloorError(f"{path}: needs the CPU reference matmul and train_step benchmarks (run tests/benchmarks "
                         f"with -k 'reference or train_step' or everything)")
    machine = {"name": refs[0].get("device_name"), "cpu_family": cpu.get("family"),
               "cpu_model_number": cpu.get("model")}
    return refs[0]["gflops"], steps, machine


def model_samples(timings: dict, model: str) -> float:
    """Samples (windows) ``model`` trained on over all seeds, from a result's timings."""
    per_seed = timings.get("per_seed") or {}
    for rate in (f"{model}.train_samples_per_s", f"{model}.train_windows_per_s"):
        if f"{model}.train_s" in per_seed and rate in per_seed:
            return sum(s * r for s, r in zip(per_seed[f"{model}.train_s"], per_seed[rate]))
        if rate in timings:
            return timings[f"{model}.train_s"] * timings[rate]
    raise FloorError(f"no {model}.train_s and rate in the timings")


def fold_samples(selection: dict) -> dict[str, float]:
    """{model: samples} of cross-validation folds that ran every candidate epoch (04: each fold trains the most
    epochs a model's candidates list, on its ``fit`` images)."""
    fit = ((selection.get("validation") or {}).get("sizes") or {}).get("fit")
    if not fit:
        return {}
    return {key.split(".")[0]: sum(fit) * max(epochs) for key, epochs in (selection.get("candidates") or {}).items()
            if key.endswith(".epochs")}


def floor_rows(results_dir: Path, gflops: float, steps: dict, machine: dict) -> list[dict]:
    rows = []
    for path in sorted(results_dir.glob("[0-9][0-9]_*.json")):
        r = read_result(path)
        if r.get("config", {}).get("smoke"):
            raise FloorError(f"{path}: a --smoke result; the floor is of a full run")
        dev = r["environment"].get("device_info") or {}
        if any(dev.get(k) != v for k, v in machine.items()):
            raise FloorError(f"{path}: ran on {dev.get('name')} (family {dev.get('cpu_family')}, model "
                             f"{dev.get('cpu_model_number')}), the benchmarks on {machine['name']} (family "
                             f"{machine['cpu_family']}, model {machine['cpu_model_number']}): one machine, please")
        t, number = r["timings"], path.name[:2]
        cases = {c: f for c, f in steps.items() if c.startswith(number + ".")}
        if not t.get("train_s"):
            continue   # trains nothing (01, 02)
        if not cases:
            raise FloorError(f"{path}: trains a model but the benchmarks have no {number}.* train_step case")
        if r["experiment"] in PER_MODEL:
            per_model = {m: (model_samples(t, m), steps[c]) for m, c in PER_MODEL[r["experiment"]].items()}
            for m, n in fold_samples(r.get("selection") or {}).items():
                per_model[f"{m} folds"] = (n, steps[PER_MODEL[r["experiment"]][m]])
        else:   # the samples of all models together, at the cheapest model's FLOPs
            per_model = {"all": (t["train_s"] * t["train_samples_per_s"], min(cases.values()))}
        flops = sum(n * f for n, f in per_model.values())
        rows.append({"experiment": r["experiment"], "wall_s": t["wall_s"],
                     "samples": sum(n for n, _ in per_model.values()), "tflop": flops / 1e12,
                     "floor_s": flops / (gflops * 1e9), "parts": {m: n * f / 1e12 for m, (n, f) in per_model.items()}})
    if not rows:
        raise FloorError(f"{results_dir}: no result that trains a model")
    return rows


def seconds(s: float) -> str:
    return f"{s:,.0f}" if s >= 10 else f"{s:.2g}"


def ratio(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def format_table(rows: list[dict], gflops: float, goal_s: float) -> str:
    lines = [f"| experiment | wall (s) | training samples | training TFLOP | floor (s) at {gflops:,.0f} GFLOP/s | "
             f"wall / floor |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        parts = ", ".join(f"{m} {v:.1f}" for m, v in r["parts"].items()) if len(r["parts"]) > 1 else ""
        lines.append(f"| {r['experiment']} | {r['wall_s']:,.0f} | {r['samples']:,.0f} | {r['tflop']:.1f}"
                     f"{f' ({parts})' if parts else ''} | {seconds(r['floor_s'])} | "
                     f"{ratio(r['wall_s'] / r['floor_s'])} |")
    total = sum(r["floor_s"] for r in rows)
    lines.append(f"| **all** (walls added) | {sum(r['wall_s'] for r in rows):,.0f} | "
                 f"{sum(r['samples'] for r in rows):,.0f} | {sum(r['tflop'] for r in rows):.1f} | **{total:,.0f}** | |")
    verdict = "above" if total > goal_s else "within"
    lines.append(f"\nThe training floor of these results is {total:,.0f} s, {verdict} a goal of {goal_s:,.0f} s.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results_dir", type=Path, help="a full run's results folder")
    ap.add_argument("bench_json", type=Path, help="pytest-benchmark JSON of tests/benchmarks on the same machine")
    ap.add_argument("--goal-s", type=float, default=900.0, help="a wall-time goal to hold the floor against "
                    "(default 900: issue 15's 15 minutes on a 2-core AVX2 CPU)")
    ap.add_argument("--gflops", type=float, default=None, help="the rate to divide by instead of BENCH_JSON's "
                    "reference matmul (e.g. a larger matmul's, measured on the same machine)")
    a = ap.parse_args(argv)
    try:
        gflops, steps, machine = read_bench(a.bench_json)
        if a.gflops is not None:
            if a.gflops <= 0:
                raise FloorError(f"--gflops must be positive, got {a.gflops}")
            gflops = a.gflops
        rows = floor_rows(a.results_dir, gflops, steps, machine)
    except (FloorError, ValueError, OSError) as e:
        print(f"floor: {e}", file=sys.stderr)
        return 2
    print(format_table(rows, gflops, a.goal_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
