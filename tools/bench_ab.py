"""The same-run A/B timing gate: is this tree slower than the blessed commit, on this machine, right now?

Absolute times from another machine, or ratios to a calibration kernel, do not carry across CPUs
(AVX2 and AVX-512 parts scale BLAS, convolutions, recurrent kernels and Python overhead differently).
So the gate never compares with a stored figure: it builds the base tree (default: the blessed commit
in ``tests/benchmarks/blessed.json``) from the local git history, starts one worker process per tree
(``tools/bench_worker.py``: each imports its own ``experiments`` and ``common``), and times every
benchmark case, forward and training step, on both, interleaved (base, candidate, then candidate, base,
... for ``--rounds`` rounds; each turn the fastest of 3 back-to-back measurements of >= ``--target-ms``),
so that both see the same machine in the same minute. Per round the ratio candidate time / base
time; the gate reports the median ratio with a bootstrap 90 % interval and fails (exit 1)
naming every benchmark whose median ratio is above the threshold *and* whose interval lies wholly
above 1, in two measurements: a flagged benchmark is measured again in a fresh pair of processes.
The threshold comes from A/A runs (the same commit against itself; see ``--noise``) and is recorded
with the blessed commit.

    python -m tools.bench_ab [REF] [--rounds N] [--cases GLOB] [--threshold T] [--json OUT]
    python -m tools.bench_ab --bless "why the speed changed on purpose"
    python -m tools.bench_ab --noise AA1.json AA2.json ... [--write-threshold]

``bash run_all.sh --bench-ab [REF]`` and ``bash run_all.sh --bench-bless "reason"`` call the first two;
``bash run_all.sh --test`` (CI) runs the gate against the blessed commit after pytest.

Cases only in one tree are listed as new or removed, not failures. The candidate is the working tree
as it is; uncommitted changes are measured and said so. Exit status: 0 pass, 1 a slowdown (or a
candidate experiment whose cases cannot be imported), 2 unusable input (REF unknown, no git history,
a base tree whose benchmarks cannot be imported, no blessed commit).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import fnmatch
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from common.schema import load_json

REPO_ROOT = Path(__file__).resolve().parent.parent
BLESSED = Path("tests") / "benchmarks" / "blessed.json"   # relative to the repository
WORKER = Path(__file__).resolve().parent / "bench_worker.py"
DEFAULT_JSON = REPO_ROOT / ".benchmarks" / "ab.json"
DEFAULT_THRESHOLD = 1.3        # used until A/A runs have set one
MIN_THRESHOLD = 1.2            # never tighter than this ...
K_NOISE = 2.0                  # ... else 1 + K_NOISE * (worst A/A median ratio - 1), rounded up to 0.05
KINDS = ("forward", "train_step")


class ABError(Exception):
    """Unusable input (exit 2) with a message that says what to do."""


# ------------------------------------------------------------------------------------------ git
def git(repo: Path, *args: str) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise ABError("git is not installed: the A/B gate builds the base tree from the local git history") from None
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, ["git", *args], proc.stdout, proc.stderr)
    return proc.stdout.strip()


def resolve_commit(repo: Path, ref: str) -> str:
    try:
        git(repo, "rev-parse", "--git-dir")
    except subprocess.CalledProcessError:
        raise ABError(f"{repo} is not a git checkout (a tarball?): the A/B gate needs the local git history "
                      f"to build the base tree; clone the repository instead") from None
    try:
        return git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except subprocess.CalledProcessError:
        raise ABError(f"no commit {ref!r} in {repo}'s history (a typo, or a shallow clone: "
                      f"'git fetch --unshallow' brings the history)") from None


def export_tree(repo: Path, commit: str, dest: Path) -> None:
    """The files of ``commit`` under ``dest``, from the local history (``git archive``; no network)."""
    archive = dest.parent / f"{commit[:12]}.tar"
    with open(archive, "wb") as f:
        proc = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit], stdout=f,
                              stderr=subprocess.PIPE, timeout=120)
    if proc.returncode != 0:
        raise ABError(f"git archive {commit[:12]} failed: {proc.stderr.decode(errors='replace').strip()}")
    dest.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()


def uncommitted(repo: Path) -> list[str]:
    """Changed or untracked files of the candidate that the benchmarks can see (not results/)."""
    try:
        proc = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "experiments", "common", "tools",
                               "requirements.txt"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line[3:] for line in proc.stdout.splitlines() if line.strip()]   # "XY path": the status, then the path


# -------------------------------------------------------------------------------------- workers
class Worker:
    """One tree's worker process, spoken to one JSON line at a time."""

    def __init__(self, label: str, worker_py: Path, tree: Path, device: str, log: Path):
        self.label, self.log = label, log
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}   # each side imports its own tree
        env.setdefault("PYTHONHASHSEED", "0")
        self._log_file = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, str(worker_py), "--tree", str(tree), "--device", device],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log_file,
                                     text=True, bufsize=1, env=env, cwd=tree)
        self.hello = None

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            raise ABError(f"the {self.label} worker died (exit {self.proc.returncode}); its log ({self.log}):\n"
                          + self.log_tail())
        return json.loads(line)

    def ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self.read()
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def log_tail(self, n: int = 15) -> str:
        self._log_file.flush()
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


# ------------------------------------------------------------------------------------ statistics
def bootstrap_interval(ratios: list[float], level: float = 0.90, resamples: int = 2000, seed: int = 0):
    """The median's ``level`` bootstrap interval (percentile method, seeded: the same ratios, the same interval)."""
    rng = random.Random(seed)
    n = len(ratios)
    medians = sorted(statistics.median(rng.choices(ratios, k=n)) for _ in range(resamples))
    lo = medians[int((1 - level) / 2 * resamples)]
    hi = medians[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return lo, hi


def verdict(ratio: float, ci_low: float, ci_high: float, threshold: float) -> str:
    if ratio > threshold and ci_low > 1.0:
        return "SLOWER"
    if ratio < 1 / threshold and ci_high < 1.0:
        return "faster"
    return "ok"


def measure(base: Worker, cand: Worker, case: str, kind: str, rounds: int, target_s: float,
            warmup: int, repeats: int = 3) -> dict:
    """Interleaved timing of one benchmark on both trees; per-round ratios candidate/base."""
    one = {w.label: w.ask(op="setup", case=case, kind=kind, warmup=warmup)["one_s"] for w in (base, cand)}
    iterations = max(1, math.ceil(target_s / max(min(one.values()), 1e-9)))
    times = {"base": [], "candidate": []}
    for r in range(rounds):
        for w in ((base, cand) if r % 2 == 0 else (cand, base)):
            times[w.label].append(w.ask(op="time", iterations=iterations, repeats=repeats)["seconds"])
    ratios = [c / b for c, b in zip(times["candidate"], times["base"])]
    lo, hi = bootstrap_interval(ratios)
    return {"benchmark": f"{kind}[{case}]", "case": case, "kind": kind, "iterations": iterations,
            "rounds": rounds, "base_s": statistics.median(times["base"]) / iterations,
            "candidate_s": statistics.median(times["candidate"]) / iterations,
            "ratio": statistics.median(ratios), "ci90": [lo, hi], "ratios": ratios}


# ------------------------------------------------------------------------------------------- run
def load_blessed(repo: Path) -> dict:
    path = repo / BLESSED
    try:
        data = load_json(path, "no blessed commit yet; record one with: bash run_all.sh --bench-bless 'reason'")
    except ValueError as e:
        raise ABError(str(e)) from None
    if not isinstance(data, dict) or not data.get("commit"):
        raise ABError(f"{path}: expected a JSON object with a 'commit' (bash run_all.sh --bench-bless 'reason')")
    return data


def run_ab(repo: Path, ref: str | None, rounds: int, target_s: float, warmup: int, threshold: float | None,
           cases_glob: str | None, device: str, out_json: Path | None) -> int:
    repo = repo.resolve()
    blessed = None
    if ref is None:
        blessed = load_blessed(repo)
        ref = blessed["commit"]
    commit = resolve_commit(repo, ref)
    if threshold is None:
        threshold = float((blessed or _try_blessed(repo) or {}).get("threshold", DEFAULT_THRESHOLD))
    head = git(repo, "rev-parse", "HEAD")
    dirty = uncommitted(repo)
    print(f"A/B timing gate: base {commit[:12]} ({'blessed' if blessed else ref}) vs candidate "
          f"{head[:12]}{' + uncommitted changes (measured as they are: ' + ', '.join(dirty[:6]) + (' ...' if len(dirty) > 6 else '') + ')' if dirty else ''}")
    print(f"  {rounds} interleaved rounds per benchmark and tree, each the fastest of 3 runs of >= {target_s * 1e3:.0f} ms; threshold "
          f"{threshold:.2f}x (median ratio above it and its 90% interval above 1 -> SLOWER)")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_ab_") as tmp:
        tmp = Path(tmp)
        worker_py = tmp / "bench_worker.py"
        shutil.copy(WORKER, worker_py)      # the same worker code for both trees
        shutil.copy(WORKER.parent.parent / "common" / "device.py", tmp / "worker_device.py")   # its allocator settings
        export_tree(repo, commit, tmp / "base")
        pairs = []

        def start_pair():
            """A fresh pair of worker processes, one per tree, started side by side."""
            n = len(pairs)
            pair = (Worker("base", worker_py, tmp / "base", device, tmp / f"base{n}.log"),
                    Worker("candidate", worker_py, repo, device, tmp / f"candidate{n}.log"))
            pairs.append(pair)
            for w in pair:
                w.hello = w.read()
                if "fatal" in w.hello:
                    raise ABError(f"the {w.label} tree's benchmarks cannot be imported: {w.hello['fatal']}")
            return pair

        try:
            return _compare(start_pair, commit, head, dirty, rounds, target_s, warmup, threshold, cases_glob,
                            device, out_json, t_start)
        finally:
            for pair in pairs:
                for w in pair:
                    w.close()


def _try_blessed(repo: Path) -> dict | None:
    try:
        return load_blessed(repo)
    except ABError:
        return None


def _compare(start_pair, commit, head, dirty, rounds, target_s, warmup, threshold, cases_glob, device,
             out_json, t_start) -> int:
    base, cand = start_pair()
    b_cases, c_cases = set(base.hello["cases"]), set(cand.hello["cases"])
    if base.hello["problems"] and not b_cases:
        raise ABError(f"the base tree ({commit[:12]}) has no importable benchmark cases: "
                      + "; ".join(f"{m}: {e}" for m, e in base.hello["problems"].items()))
    if cases_glob:
        b_cases = {c for c in b_cases if fnmatch.fnmatch(c, cases_glob)}
        c_cases = {c for c in c_cases if fnmatch.fnmatch(c, cases_glob)}
    both = sorted(b_cases & c_cases)
    new, removed = sorted(c_cases - b_cases), sorted(b_cases - c_cases)
    for m, e in base.hello["problems"].items():
        print(f"  note: the base tree's {m} does not import ({e}); its cases count as new")
    results, failures = [], []
    for module, err in cand.hello["problems"].items():
        failures.append(f"{module}: the candidate's benchmark cases cannot be imported ({err})")
    width = max([len(f"train_step[{c}]") for c in both] + [20])
    print(f"  {'benchmark':<{width}}  {'base ms':>9}  {'cand ms':>9}  {'ratio':>6}  {'90% interval':>13}  verdict")
    for case in both:
        for kind in KINDS:
            try:
                r = measure(base, cand, case, kind, rounds, target_s, warmup)
            except RuntimeError as e:
                failures.append(f"{kind}[{case}]: could not be timed ({e})")
                print(f"  {kind}[{case}]  ERROR {e}")
                continue
            r["verdict"] = verdict(r["ratio"], *r["ci90"], threshold)
            if r["verdict"] != "ok":
                # A verdict must show twice, the second time in a fresh pair of processes: two processes
                # of the same code can differ by a steady ~1.3x for their whole life (memory layout,
                # kernel choice; seen in A/A runs), which interleaving cannot cancel. Keep the milder.
                fresh = start_pair()
                try:
                    again = measure(*fresh, case, kind, rounds, target_s, warmup)
                finally:
                    for w in fresh:
                        w.close()
                again["verdict"] = verdict(again["ratio"], *again["ci90"], threshold)
                first = {k: r[k] for k in ("ratio", "ci90", "base_s", "candidate_s", "verdict")}
                r = min(r, again, key=lambda x: abs(math.log(x["ratio"])))
                r["first_measurement"] = first
                r["second_measurement_verdict"] = again["verdict"]
                if again["verdict"] != first["verdict"]:
                    r["verdict"] = "ok"
            results.append(r)
            print(f"  {r['benchmark']:<{width}}  {r['base_s'] * 1e3:9.3f}  {r['candidate_s'] * 1e3:9.3f}  "
                  f"{r['ratio']:6.3f}  [{r['ci90'][0]:.3f}, {r['ci90'][1]:.3f}]  {r['verdict']}", flush=True)
            if r["verdict"] == "SLOWER":
                failures.append(f"{r['benchmark']}: {r['ratio']:.2f}x the base's time "
                                f"(90% interval {r['ci90'][0]:.2f}-{r['ci90'][1]:.2f}, threshold {threshold:.2f})")
    for c in new:
        print(f"  new (only in the candidate, not gated): {c}")
    for c in removed:
        print(f"  removed (only in the base): {c}")
    wall = time.perf_counter() - t_start
    worst = max(results, key=lambda r: r["ratio"], default=None)
    record = {"tool": "tools.bench_ab", "base": commit, "candidate": head, "uncommitted": dirty,
              "threshold": threshold, "rounds": rounds, "target_s": target_s, "device": device,
              "threads": cand.hello.get("threads"), "torch": cand.hello.get("torch"), "cpu": _cpu_model(),
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "wall_s": round(wall, 1),
              "new": new, "removed": removed, "failures": failures, "results": results}
    if out_json:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, out_json)
    print(f"  {len(results)} benchmarks in {wall:.0f}s; worst ratio "
          f"{worst['ratio']:.3f} ({worst['benchmark']})" if worst else f"  no benchmark in common ({wall:.0f}s)")
    if failures:
        print("A/B GATE FAILED:")
        for f in failures:
            print(f"  - {f}")
        print("If the slowdown is deliberate, record the new base: bash run_all.sh --bench-bless 'reason'")
        return 1
    print("A/B gate passed" + (f" (results in {out_json})" if out_json else ""))
    return 0


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# ------------------------------------------------------------------------------- bless and noise
def bless(repo: Path, reason: str) -> int:
    repo = repo.resolve()
    if not reason.strip():
        raise ABError("--bless needs a one-line reason (why the speed changed on purpose)")
    commit = resolve_commit(repo, "HEAD")
    path = repo / BLESSED
    old = _try_blessed(repo) or {}
    dirty = uncommitted(repo)
    record = {
        "_comment": ("The A/B timing gate's base: python -m tools.bench_ab (bash run_all.sh --test, --bench-ab) "
                     "times this commit against the working tree, interleaved, in the same run. Re-bless after a "
                     "deliberate change of speed: bash run_all.sh --bench-bless 'reason'. The threshold comes from "
                     "A/A runs: python -m tools.bench_ab --noise AA*.json --write-threshold."),
        "commit": commit, "reason": reason.strip().splitlines()[0],
        "blessed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "threshold": old.get("threshold", DEFAULT_THRESHOLD),
        "threshold_note": old.get("threshold_note", "default, before any A/A measurement"),
        "history": (old.get("history", []) + [{k: old[k] for k in ("commit", "reason", "blessed_at") if k in old}]
                    if old.get("commit") else []),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"blessed {commit[:12]} ({record['reason']}) in {path}; commit that file.")
    if dirty:
        print(f"note: uncommitted changes are NOT part of the blessed commit: {', '.join(dirty[:6])}")
    return 0


def noise(paths: list[Path], write: bool, repo: Path) -> int:
    """Summarise A/A runs (a commit against itself): the worst median ratio and the threshold it implies."""
    worst_by = {}
    for p in paths:
        try:
            rec = load_json(p)
        except ValueError as e:
            raise ABError(f"{e} (expected an A/B result JSON)") from None
        if rec.get("tool") != "tools.bench_ab":
            raise ABError(f"{p}: not an A/B result JSON (written by python -m tools.bench_ab --json)")
        for r in rec["results"]:
            worst_by[r["benchmark"]] = max(worst_by.get(r["benchmark"], 0.0), r["ratio"], 1 / r["ratio"])
    if not worst_by:
        raise ABError("no benchmark results in the given files")
    worst_name = max(worst_by, key=worst_by.get)
    worst = worst_by[worst_name]
    threshold = max(MIN_THRESHOLD, math.ceil((1 + K_NOISE * (worst - 1)) * 20 - 1e-9) / 20)
    print(f"{len(paths)} A/A runs, {len(worst_by)} benchmarks: worst median ratio {worst:.3f} ({worst_name}, "
          f"either direction) -> threshold max({MIN_THRESHOLD}, 1 + {K_NOISE:g} x {worst - 1:.3f}) = {threshold:.2f}")
    for name, w in sorted(worst_by.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  {name}: {w:.3f}")
    if write:
        rec = load_blessed(repo)
        rec["threshold"] = threshold
        rec["threshold_note"] = (f"{len(paths)} A/A runs on {_cpu_model() or 'this CPU'} "
                                 f"({os.cpu_count()} cores): worst median ratio {worst:.3f} ({worst_name}); "
                                 f"threshold = max({MIN_THRESHOLD}, 1 + {K_NOISE:g} x worst excess) rounded up to 0.05")
        (repo / BLESSED).write_text(json.dumps(rec, indent=1) + "\n")
        print(f"threshold {threshold:.2f} written to {repo / BLESSED}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_ab", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ref", nargs="?", help="base commit or ref (default: the blessed commit)")
    ap.add_argument("--bless", metavar="REASON", help="record HEAD as the new blessed base, with a one-line reason")
    ap.add_argument("--noise", nargs="+", metavar="AB_JSON", type=Path,
                    help="summarise A/A runs (REF=HEAD on an unchanged tree) and the threshold they imply")
    ap.add_argument("--write-threshold", action="store_true", help="with --noise: write the threshold to the blessed file")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds per benchmark (default 10)")
    ap.add_argument("--target-ms", type=float, default=40.0, help="the least time one measurement lasts (default 40)")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up calls per benchmark and tree (default 3)")
    ap.add_argument("--threshold", type=float, help="override the blessed threshold")
    ap.add_argument("--cases", metavar="GLOB", help="only the cases whose name matches, e.g. '07.*'")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write the results (default {DEFAULT_JSON})")
    ap.add_argument("--repo", type=Path, default=REPO_ROOT, help=argparse.SUPPRESS)   # the tests' scratch repositories
    args = ap.parse_args(argv)
    if args.rounds < 3:
        ap.error("--rounds must be at least 3 (the interval needs several ratios)")
    if args.threshold is not None and args.threshold <= 1:
        ap.error("--threshold must be above 1")
    try:
        if args.bless is not None:
            return bless(args.repo, args.bless)
        if args.noise:
            return noise(args.noise, args.write_threshold, args.repo.resolve())
        return run_ab(args.repo, args.ref, args.rounds, args.target_ms / 1e3, args.warmup, args.threshold,
                      args.cases, args.device, args.json)
    except ABError as e:
        print(f"bench_ab: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench_ab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
