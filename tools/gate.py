"""Reference-normalised throughput: each model's time relative to this machine's own matmul, vs a baseline.

*Information for comparing machines, not CI's pass/fail.* Dividing by a matmul cancels clock speed,
not microarchitecture (measured: normalised ratios of the same code span 0.40-2.50 between a 2-core
AVX-512 Xeon and a 2-core AVX2 EPYC), so CI gates on ``tools.bench_ab`` instead: the same-run A/B
comparison against the blessed commit. This tool stays for reading one machine's figures against
the committed ones (``results/reference/<machine>/benchmarks.json``, ``tools.compare`` shows them
side by side).

Every benchmark's median time is divided by the median time of the reference kernel
(``test_reference_matmul[<device>]``, a 1024x1024 fp32 matmul) measured in the same pytest-benchmark
run: the *normalised* figure. ``tests/benchmarks/baseline.json`` holds the committed normalised
figures (made on the machine it names) and a threshold.

    python -m tools.gate check [BENCH_JSON] [--confirm BENCH_JSON2] [--baseline B] [--threshold T] [--partial] [--allow-new]
    python -m tools.gate update BENCH_JSON [BENCH_JSON ...] [--threshold T] [--provisional] [--stat median|min]
    python -m tools.gate noise BENCH_JSON [BENCH_JSON ...] [--stat median|min]

``check`` (default JSON: ``.benchmarks/ci.json``, what ``run_all.sh --test`` writes) exits 1 naming
every benchmark whose normalised median is worse than ``baseline * threshold``, with the ratio; a
benchmark missing from the baseline fails too (an ungated model is a hole; ``--allow-new`` only warns),
except on a device the baseline has no figures for at all (e.g. ``cuda`` against a CPU baseline),
which is reported as not gated. Baseline entries the run lacks are listed as a warning (e.g. a
``-k`` subset); a run with no benchmarks fails unless ``--partial``.

``update`` writes the baseline: per benchmark the median, over the given runs, of the normalised
median. With 3 or more runs it also sets the threshold from their noise:
``max(MIN_THRESHOLD, 1 + K_SPREAD * worst slow tail)`` rounded up to 0.05, where a benchmark's slow tail
is ``max/median - 1`` of its normalised medians over the runs (``noise`` prints it, and the full spread). With fewer runs the
threshold already in the baseline is kept (``--threshold`` sets it by hand).

Measuring noise and refreshing the baseline (on an otherwise idle machine)::

    for i in 1 2 3 4 5; do .venv/bin/python -m pytest tests/benchmarks -q --benchmark-json=/tmp/bench/run$i.json; done
    .venv/bin/python -m tools.gate noise /tmp/bench/run*.json
    .venv/bin/python -m tools.gate update /tmp/bench/run*.json

Exit status: 0 pass, 1 regression (or missing figures), 2 unusable input.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import statistics
import sys
from pathlib import Path

from common.schema import load_json

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASELINE = REPO_ROOT / "tests" / "benchmarks" / "baseline.json"
DEFAULT_JSON = REPO_ROOT / ".benchmarks" / "ci.json"
REFERENCE_PREFIX = "test_reference_matmul"
K_SPREAD = 3.0          # threshold = 1 + K_SPREAD * worst observed slow tail ...
MIN_THRESHOLD = 1.3     # ... but never tighter than this
DEFAULT_THRESHOLD = 1.5  # before any noise measurement


class GateError(Exception):
    """Unusable input (not a benchmark JSON, no reference kernel, ...): exit 2 with this message."""


# ------------------------------------------------------------------------------------ reading
def load_benchmark_json(path: str | Path) -> dict:
    """Read a pytest-benchmark JSON (keys ``benchmarks`` and ``machine_info``) or raise GateError."""
    path = Path(path)
    try:
        data = load_json(path, f"no such file (run pytest with --benchmark-json={path} first)")
    except ValueError as e:
        raise GateError(str(e)) from None
    if not isinstance(data, dict) or "benchmarks" not in data or "machine_info" not in data:
        raise GateError(f"{path}: not a pytest-benchmark JSON (expected keys 'benchmarks' and 'machine_info')")
    return data


def _kind(b: dict) -> str:
    info = b.get("extra_info") or {}
    if info.get("kind"):
        return info["kind"]
    return "reference" if b.get("name", "").startswith(REFERENCE_PREFIX) else "other"


def _device(b: dict) -> str:
    info = b.get("extra_info") or {}
    if info.get("device"):
        return info["device"]
    name = b.get("name", "")
    return name.rsplit("-", 1)[-1].rstrip("]") if "[" in name else "cpu"


def normalised(data: dict, path: str | Path = "<json>", stat: str = "median") -> dict[str, dict]:
    """``{benchmark name: {norm, median_s, ref_median_s, device, case, kind, gflops, fraction}}``.

    ``norm`` = median time / the same device's reference-kernel median time (same run); with
    ``stat="min"`` the fastest round of each instead (more robust on a loaded machine).
    """
    refs = {}
    for b in data["benchmarks"]:
        if _kind(b) == "reference":
            refs[_device(b)] = b
    out = {}
    for b in data["benchmarks"]:
        if _kind(b) == "reference":
            continue
        dev = _device(b)
        if dev not in refs:
            raise GateError(f"{path}: {b['name']} ran on {dev} but the run has no reference kernel "
                            f"({REFERENCE_PREFIX}[{dev}]) to normalise it by; run the whole tests/benchmarks")
        ref = refs[dev]
        info = b.get("extra_info") or {}
        median, ref_median = float(b["stats"][stat]), float(ref["stats"][stat])
        ref_gflops = (ref.get("extra_info") or {}).get("flops", 0) / ref_median / 1e9 if ref_median else None
        gflops = info.get("flops_per_batch", 0) / median / 1e9 if median else None
        out[b["name"]] = {"norm": median / ref_median, "median_s": median, "ref_median_s": ref_median,
                          "device": dev, "case": info.get("case", b["name"]), "kind": _kind(b),
                          "gflops": gflops, "ref_gflops": ref_gflops,
                          "fraction": gflops / ref_gflops if gflops is not None and ref_gflops else None}
    return out


def load_baseline(path: str | Path) -> dict:
    try:
        base = load_json(path, "no baseline yet; create it with: python -m tools.gate update BENCH_JSON...")
    except ValueError as e:
        raise GateError(str(e)) from None
    if not isinstance(base, dict) or not isinstance(base.get("benchmarks"), dict) or "threshold" not in base:
        raise GateError(f"{path}: not a gate baseline (expected keys 'threshold' and 'benchmarks')")
    return base


# ------------------------------------------------------------------------------------ check
def best_of(runs: list[dict[str, dict]]) -> dict[str, dict]:
    """Per benchmark, the run with the lowest normalised figure: a regression must show in every run.

    Used to confirm a failed check with a second, independent benchmark run, so that a passing
    disturbance of the machine (e.g. the kernel writing back a freshly installed venv) cannot fail
    CI on its own, while a real 2x slowdown fails both runs.
    """
    out = {}
    for run in runs:
        for name, r in run.items():
            if name not in out or r["norm"] < out[name]["norm"]:
                out[name] = r
    return out


def check(run: dict[str, dict], baseline: dict, threshold: float | None = None, partial: bool = False,
          allow_new: bool = False) -> tuple[bool, list[str]]:
    """Compare normalised figures with the baseline; return ``(passed, report lines)``."""
    threshold = float(threshold if threshold is not None else baseline["threshold"])
    base = baseline["benchmarks"]
    base_devices = {v.get("device", "cpu") for v in base.values()}
    lines, failures, warnings = [], [], []
    if not run:
        msg = "the run holds no model benchmarks (was tests/benchmarks deselected or disabled?)"
        return (partial, [f"gate: {msg}" + ("; nothing to gate (--partial)" if partial else "")])
    header = f"{'benchmark':<52} {'normalised':>10} {'baseline':>9} {'ratio':>6} {'GFLOP/s':>8} {'of ref':>7}  verdict"
    lines += [header, "-" * len(header)]
    for name in sorted(run):
        r = run[name]
        gf = f"{r['gflops']:.3g}" if r.get("gflops") else "-"
        frac = f"{r['fraction']:.1%}" if r.get("fraction") else "-"
        if name in base:
            b = float(base[name]["normalised"])
            ratio = r["norm"] / b
            verdict = "ok" if ratio <= threshold else f"SLOWER x{ratio:.2f}"
            if ratio > threshold:
                failures.append(f"{name}: normalised median {r['norm']:.4g} is {ratio:.2f}x the baseline {b:.4g} "
                                f"(threshold {threshold:.2f}x)")
            lines.append(f"{name:<52} {r['norm']:>10.4g} {b:>9.4g} {ratio:>6.2f} {gf:>8} {frac:>7}  {verdict}")
        else:
            if r["device"] not in base_devices:
                verdict = f"not gated (baseline has no {r['device']} figures)"
            elif allow_new:
                verdict = "NEW, not in baseline (warning)"
                warnings.append(f"{name} is not in the baseline")
            else:
                verdict = "NEW, not in baseline"
                failures.append(f"{name}: not in the baseline, so not gated; add it with "
                                f"python -m tools.gate update BENCH_JSON...")
            lines.append(f"{name:<52} {r['norm']:>10.4g} {'-':>9} {'-':>6} {gf:>8} {frac:>7}  {verdict}")
    gone = sorted(set(base) - set(run))
    if gone:
        warnings.append(f"{len(gone)} baseline benchmark(s) not in this run: {', '.join(gone)}")
    lines += [f"warning: {w}" for w in warnings]
    if failures:
        lines.append(f"gate FAILED ({len(failures)} of {len(run)} benchmarks, threshold {threshold:.2f}x):")
        lines += [f"  {f}" for f in failures]
    else:
        lines.append(f"gate passed: {len(run)} benchmarks within {threshold:.2f}x of the baseline")
    return not failures, lines


# ------------------------------------------------------------------------------------ noise / update
def spreads(runs: list[dict[str, dict]]) -> dict[str, dict]:
    """Per benchmark over several runs: min, median, max of the normalised medians, spread, CV."""
    out = {}
    for name in sorted({n for r in runs for n in r}):
        vals = [r[name]["norm"] for r in runs if name in r]
        mean = statistics.fmean(vals)
        out[name] = {"n": len(vals), "min": min(vals), "median": statistics.median(vals), "max": max(vals),
                     "spread": max(vals) / min(vals) - 1.0,
                     "slow_tail": max(vals) / statistics.median(vals) - 1.0,
                     "cv": statistics.stdev(vals) / mean if len(vals) > 1 and mean else 0.0}
    return out


def suggested_threshold(sp: dict[str, dict]) -> float:
    """``max(MIN_THRESHOLD, 1 + K_SPREAD x worst slow tail)``, rounded up to 0.05.

    The gate is one-sided (slower than the baseline median fails), so the noise that matters is
    how much slower than its median a benchmark ran on an unchanged tree: the slow tail
    ``max / median - 1``. (The full spread ``max / min - 1`` also counts runs that were *faster*,
    e.g. a bimodal kernel choice, which can never fail the gate.)
    """
    worst = max((s["slow_tail"] for s in sp.values()), default=0.0)
    return max(MIN_THRESHOLD, math.ceil((1.0 + K_SPREAD * worst) * 20 - 1e-9) / 20)


def noise_report(runs: list[dict[str, dict]], ref_medians: list[dict[str, float]]) -> list[str]:
    sp = spreads(runs)
    lines = [f"noise over {len(runs)} runs (normalised figure = a benchmark's time / the reference kernel's, same run)",
             f"{'benchmark':<52} {'n':>2} {'min':>9} {'median':>9} {'max':>9} {'spread':>7} {'slow':>6} {'CV':>6}"]
    for name, s in sp.items():
        lines.append(f"{name:<52} {s['n']:>2} {s['min']:>9.4g} {s['median']:>9.4g} {s['max']:>9.4g} "
                     f"{s['spread']:>7.1%} {s['slow_tail']:>6.1%} {s['cv']:>6.1%}")
    for dev in sorted({d for r in ref_medians for d in r}):
        vals = [r[dev] for r in ref_medians if dev in r]
        lines.append(f"reference kernel [{dev}] median over runs: min {min(vals) * 1e3:.2f} ms, max "
                     f"{max(vals) * 1e3:.2f} ms (spread of raw times {max(vals) / min(vals) - 1:.1%})")
    if sp:
        worst = max(sp, key=lambda n: sp[n]["slow_tail"])
        lines.append("spread = max/min - 1; slow = max/median - 1 (how much slower than its median an unchanged "
                     "benchmark ran: the noise a one-sided gate must tolerate)")
        lines.append(f"worst slow tail: {sp[worst]['slow_tail']:.1%} ({worst}); suggested threshold "
                     f"max({MIN_THRESHOLD}, 1 + {K_SPREAD:g} x {sp[worst]['slow_tail']:.3f}) = {suggested_threshold(sp):.2f}")
        if suggested_threshold(sp) >= 2.0:
            lines.append("WARNING: with this noise the gate cannot catch a 2x slowdown; measure on an idle machine "
                         "or with BENCH_THOROUGH=1")
    return lines


def _ref_medians(data: dict) -> dict[str, float]:
    return {_device(b): float(b["stats"]["median"]) for b in data["benchmarks"] if _kind(b) == "reference"}


def build_baseline(paths: list[Path], previous: dict | None, threshold: float | None = None,
                   provisional: bool = False, stat: str = "median") -> dict:
    datas = [load_benchmark_json(p) for p in paths]
    runs = [normalised(d, p, stat) for d, p in zip(datas, paths)]
    if not any(runs):
        raise GateError(f"{', '.join(map(str, paths))}: no model benchmarks to make a baseline from")
    sp = spreads(runs)
    if threshold is not None:
        thr, note = float(threshold), "set by hand (--threshold)"
    elif len(runs) >= 3:
        thr = suggested_threshold(sp)
        worst = max(sp, key=lambda n: sp[n]["slow_tail"])
        note = (f"from the noise of {len(runs)} runs: worst slow tail (max/median - 1 of the normalised {stat}s) "
                f"{sp[worst]['slow_tail']:.1%} ({worst}); threshold = max({MIN_THRESHOLD}, 1 + {K_SPREAD:g} x worst "
                f"slow tail), rounded up to 0.05")
    elif previous is not None:
        thr = float(previous["threshold"])
        note = previous.get("threshold_note", "kept from the previous baseline") + \
            f" (kept: only {len(runs)} run(s) given to this update)"
    else:
        thr, note = DEFAULT_THRESHOLD, f"default {DEFAULT_THRESHOLD}: not measured yet (give update 3+ runs)"
    mi = datas[0]["machine_info"]
    first_ref = next((b for b in datas[0]["benchmarks"] if _kind(b) == "reference"), {})
    benchmarks = {}
    for name, s in sp.items():
        r0 = next(r[name] for r in runs if name in r)
        benchmarks[name] = {"normalised": s["median"], "spread": round(s["spread"], 4),
                            "slow_tail": round(s["slow_tail"], 4), "runs": s["n"],
                            "device": r0["device"], "case": r0["case"], "kind": r0["kind"],
                            "median_s": statistics.median(r[name]["median_s"] for r in runs if name in r)}
    return {
        "_comment": ("Normalised figures for the throughput gate (common/gate.py): each benchmark's median time "
                     "divided by the reference kernel's median time in the same run. Regenerate with "
                     "'python -m tools.gate update BENCH_JSON...' (see README, section Benchmarks)."),
        "provisional": bool(provisional),
        "threshold": thr,
        "threshold_note": note,
        "stat": stat,
        "k_spread": K_SPREAD, "min_threshold": MIN_THRESHOLD,
        "reference": "test_reference_matmul: 1024x1024 fp32 torch.mm",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "runs": len(runs),
        "machine": {"cpu": (mi.get("cpu") or {}).get("brand_raw"), "node": mi.get("node"),
                    "python": mi.get("python_version"),
                    "threads": (first_ref.get("extra_info") or {}).get("threads"),
                    "bench_mode": (first_ref.get("extra_info") or {}).get("mode")},
        "benchmarks": benchmarks,
    }


def _write(path: Path, obj: dict) -> None:
    import os
    import tempfile
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------ CLI
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.gate", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="gate one run against the baseline")
    c.add_argument("bench_json", nargs="?", type=Path, default=DEFAULT_JSON)
    c.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE)
    c.add_argument("--threshold", type=float, default=None, help="override the baseline's threshold")
    c.add_argument("--partial", action="store_true", help="a run without benchmarks (or without a JSON) passes (subset runs)")
    c.add_argument("--allow-new", action="store_true", help="benchmarks missing from the baseline only warn")
    c.add_argument("--confirm", type=Path, default=None, metavar="BENCH_JSON2",
                   help="a second, independent run: a benchmark fails only if it is too slow in both")
    u = sub.add_parser("update", help="write the baseline from one or more runs (median over runs)")
    u.add_argument("bench_json", nargs="+", type=Path)
    u.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE)
    u.add_argument("--threshold", type=float, default=None, help="set the threshold by hand")
    u.add_argument("--provisional", action="store_true", help="mark the baseline provisional (noisy machine)")
    n = sub.add_parser("noise", help="each benchmark's spread over several runs, and the threshold it suggests")
    n.add_argument("bench_json", nargs="+", type=Path)
    for p in (u, n):
        p.add_argument("--stat", choices=("median", "min"), default="median",
                       help="which per-benchmark statistic to normalise (the baseline records it; check follows it)")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "check":
            base = load_baseline(a.baseline)
            if a.partial and not a.bench_json.exists():   # pytest-benchmark writes nothing when no benchmark ran
                print(f"gate: {a.bench_json} absent: no benchmarks ran in this subset; nothing to gate (--partial)")
                return 0
            run = normalised(load_benchmark_json(a.bench_json), a.bench_json, base.get("stat", "median"))
            if a.confirm:
                run = best_of([run, normalised(load_benchmark_json(a.confirm), a.confirm, base.get("stat", "median"))])
            ok, lines = check(run, base, a.threshold, a.partial, a.allow_new)
            print(f"gate: {a.bench_json}" + (f" confirmed by {a.confirm} (best of the two)" if a.confirm else "")
                  + f" vs {a.baseline}" + (" (PROVISIONAL baseline)" if base.get("provisional") else ""))
            print("\n".join(lines))
            return 0 if ok else 1
        if a.cmd == "update":
            previous = load_baseline(a.baseline) if a.baseline.exists() else None
            base = build_baseline(a.bench_json, previous, a.threshold, a.provisional, a.stat)
            _write(a.baseline, base)
            print(f"wrote {a.baseline}: {len(base['benchmarks'])} benchmarks from {base['runs']} run(s), "
                  f"threshold {base['threshold']:.2f} ({base['threshold_note']})")
            return 0
        datas = [load_benchmark_json(p) for p in a.bench_json]
        runs = [normalised(d, p, a.stat) for d, p in zip(datas, a.bench_json)]
        print("\n".join(noise_report(runs, [_ref_medians(d) for d in datas])))
        return 0
    except GateError as e:
        print(f"gate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
