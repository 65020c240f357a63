"""Check a GPU machine in one command: ``bash run_all.sh --gpu-check`` (or ``python -m tools.gpu_check``).

In order, within a time budget (default 480 s; about 5 minutes on one large GPU):

1. ``cuda``: CUDA is usable -- a CUDA build of torch, a driver it accepts, a device whose compute
   capability this build has kernels for, and a small computation whose result matches the CPU's.
   If not, exit 2 with the reason on stderr at once, having run nothing (without a GPU it answers in
   well under 10 s, before importing torch where no NVIDIA driver is visible at all).
2. ``benchmarks``: the CUDA throughput benchmarks (``pytest tests/benchmarks -k cuda``).
3. ``smoke.<NN>``: a ``--smoke --device cuda`` run of every experiment; each must exit 0 with status
   ok, record TF32 off, and (but for 01, which computes on the CPU) have run on the GPU. Determinism
   warnings seen on stderr are listed.
4. ``rerun_identity.<NN>``: the smoke runs of 04 (cuDNN convolutions) and 06 (cuDNN RNN) once more with
   the same seeds: their metrics must be identical.
5. ``strict_determinism.04`` (informative, not required): 04 with ``--strict-determinism``; if it fails,
   the op that has no deterministic CUDA implementation is named.

Writes ``results/gpu-check/<machine>.json``: ``passed``, one entry per item (``name``, ``passed``,
``required``, ``seconds``, ``detail``) and the ``environment`` (driver, GPUs with UUID and MIG mode,
numerics). Work files (result JSONs, logs, benchmark JSON) go to ``results/gpu-check/<machine>/``.
Exit 0 when every required item passed, 1 otherwise, 2 when CUDA is not usable.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:   # common/ importable however this file is started
    sys.path.insert(0, str(REPO))
BUDGET_S = 480
RERUN_EXPERIMENTS = ("04", "06")
STRICT_EXPERIMENT = "04"
DETERMINISM_WARNING = re.compile(r"(\S+) does not have a deterministic implementation")


def quick_refusal() -> str | None:
    """Why CUDA cannot work here, from what the OS shows (no torch import: answers in milliseconds)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return "CUDA_VISIBLE_DEVICES is set to an empty string: no GPU is visible to this process"
    if not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/proc/driver/nvidia/version")
            or shutil.which("nvidia-smi")):
        return ("no NVIDIA GPU or driver on this machine (no /dev/nvidia*, no /proc/driver/nvidia, "
                "no nvidia-smi on PATH)")
    return None


def _arch_supported(major: int, minor: int, arch_list: list[str]) -> bool:
    """Whether this torch build has kernels for capability major.minor: a cubin of the same major and a
    minor not above it (sm_XY), or PTX (compute_XY) of a capability not above it, to be JIT-compiled."""
    cap = major * 10 + minor
    for arch in arch_list:
        digits = re.sub(r"\D", "", arch)
        if not digits:
            continue
        v = int(digits)
        if arch.startswith("sm_") and v // 10 == major and v <= cap:
            return True
        if arch.startswith("compute_") and v <= cap:
            return True
    return False


def cuda_check() -> tuple[dict, str | None]:
    """``(detail, reason)``: what was found, and why CUDA is not usable (None if it is)."""
    reason = quick_refusal()
    if reason:
        return {}, reason
    import torch

    from common import device as dev

    detail = {"torch": torch.__version__, "torch_cuda_build": torch.version.cuda,
              "cuda_driver_version": dev.cuda_driver_version(), "nvidia_smi": dev.nvidia_smi_gpus(),
              "arch_list": torch.cuda.get_arch_list() if torch.version.cuda else []}
    reason = dev.cuda_unusable_reason()
    if reason:
        return detail, reason
    props = torch.cuda.get_device_properties(0)
    detail.update(device_count=torch.cuda.device_count(), name=props.name,
                  capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 2))
    if detail["arch_list"] and not _arch_supported(props.major, props.minor, detail["arch_list"]):
        return detail, (f"{props.name} has compute capability {props.major}.{props.minor}, for which this torch "
                        f"build ({torch.__version__}) has no kernels (built for {', '.join(detail['arch_list'])})")
    try:  # a real computation, checked against the CPU (TF32 off: fp32 throughout)
        torch.backends.cuda.matmul.allow_tf32 = False
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(256, 256, generator=g), torch.randn(256, 256, generator=g)
        got = (a.cuda() @ b.cuda()).cpu()
        torch.cuda.synchronize()
        err = float((got - a @ b).abs().max())
    except Exception as e:  # noqa: BLE001 - a failing kernel launch is the answer
        return detail, f"a small matmul on {props.name} failed: {type(e).__name__}: {e}"
    detail["matmul_max_abs_err_vs_cpu"] = err
    if not err < 1e-3:
        return detail, f"a 256x256 matmul on {props.name} differs from the CPU's by {err:g} (expected < 1e-3)"
    return detail, None


# ------------------------------------------------------------------------------------------ items
class Checker:
    def __init__(self, out_dir: Path, budget_s: float, env: dict):
        self.out_dir, self.deadline, self.env = out_dir, time.monotonic() + budget_s, env
        self.data_args: tuple[str, ...] = ()   # ("--synthetic-if-missing",) where datasets are missing
        self.budget_s = budget_s
        self.items: list[dict] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, name: str, passed: bool, seconds: float, detail, required: bool = True) -> dict:
        item = {"name": name, "passed": bool(passed), "required": required, "seconds": round(seconds, 1),
                "detail": detail}
        self.items.append(item)
        mark = "ok  " if passed else ("FAIL" if required else "fail")
        print(f"[{mark}] {name} ({seconds:.0f}s){'' if passed else ': ' + _short(detail)}", flush=True)
        return item

    def run(self, name: str, cmd: list[str], timeout_s: float) -> tuple[subprocess.CompletedProcess | None, float, str | None]:
        """Run ``cmd`` (log to the work folder); ``(proc, seconds, why_not_run_or_timed_out)``."""
        left = self.left()
        if left < 5:
            return None, 0.0, f"not run: the time budget of {self.budget_s:.0f} s is spent"
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True,
                                  timeout=min(timeout_s, left))
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            self._log(name, out, "")
            return None, time.monotonic() - t0, f"timed out after {min(timeout_s, left):.0f} s"
        self._log(name, proc.stdout, proc.stderr)
        return proc, time.monotonic() - t0, None

    def _log(self, name: str, stdout: str, stderr: str) -> None:
        logs = self.out_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"{name}.log").write_text(f"--- stdout\n{stdout}\n--- stderr\n{stderr}\n")


def _short(detail) -> str:
    text = detail if isinstance(detail, str) else json.dumps(detail)[:400]
    return text.replace("\n", " ")[:400]


def _tail(text: str, n: int = 1500) -> str:
    return (text or "")[-n:]


def check_benchmarks(c: Checker, py: str) -> None:
    bench_json = c.out_dir / "benchmarks-cuda.json"
    cmd = [py, "-m", "pytest", "tests/benchmarks", "-q", "-p", "no:cacheprovider", "-k", "cuda",
           f"--benchmark-json={bench_json}", "--benchmark-columns=median,rounds"]
    proc, secs, why = c.run("benchmarks", cmd, 180)
    if proc is None:
        c.record("benchmarks", False, secs, why)
        return
    detail = {"returncode": proc.returncode}
    try:
        data = json.loads(bench_json.read_text())
        benches = data["benchmarks"]
        ref = next((b for b in benches if (b.get("extra_info") or {}).get("kind") == "reference"), None)
        detail.update(count=len(benches), reference_case=(ref or {}).get("extra_info", {}).get("case"),
                      reference_gflops=(ref or {}).get("extra_info", {}).get("gflops"),
                      reference_median_ms=round(ref["stats"]["median"] * 1e3, 3) if ref else None,
                      samples_per_s={b["name"]: (b.get("extra_info") or {}).get("samples_per_s")
                                     for b in benches if b is not ref})
    except (OSError, ValueError, KeyError) as e:
        detail["json_error"] = str(e)
    passed = proc.returncode == 0 and detail.get("count", 0) > 1
    if not passed:
        detail["output_tail"] = _tail(proc.stdout + proc.stderr)
    c.record("benchmarks", passed, secs, detail)


def smoke(c: Checker, py: str, script: Path, results_dir: Path, name: str, extra: tuple[str, ...] = (),
          required: bool = True, timeout_s: float = 150) -> dict | None:
    """One ``--smoke --device cuda`` run; records an item and returns the result JSON (or None)."""
    cmd = [py, str(script), "--smoke", "--device", "cuda", "--results-dir", str(results_dir), *c.data_args, *extra]
    proc, secs, why = c.run(name, cmd, timeout_s)
    if proc is None:
        c.record(name, False, secs, why, required)
        return None
    path = results_dir / f"{script.stem}.json"
    record = json.loads(path.read_text()) if path.exists() else None
    warned = sorted(set(DETERMINISM_WARNING.findall(proc.stderr)))
    detail = {"returncode": proc.returncode, "nondeterministic_ops_warned": warned}
    problems = []
    if proc.returncode != 0:
        problems.append(f"exit {proc.returncode}")
        detail["stderr_tail"] = _tail(proc.stderr)
    if record is None:
        problems.append("no result JSON")
    else:
        env = record.get("environment", {})
        num = env.get("numerics") or {}
        detail.update(status=record.get("status"), headline=record.get("headline"),
                      headline_value=(record.get("metrics") or {}).get(record.get("headline")),
                      wall_s=(record.get("timings") or {}).get("wall_s"),
                      train_samples_per_s=(record.get("timings") or {}).get("train_samples_per_s"),
                      compute_device=env.get("compute_device"), gpu_used=env.get("gpu_used"),
                      peak_gpu_memory_bytes=env.get("peak_gpu_memory_bytes"),
                      tf32=[num.get("cudnn_allow_tf32"), num.get("cuda_matmul_allow_tf32")])
        if record.get("status") != "ok":
            problems.append(f"status {record.get('status')}")
        if "--tf32" not in extra and any(num.get(k) for k in ("cudnn_allow_tf32", "cuda_matmul_allow_tf32")):
            problems.append("TF32 was on without --tf32")
        if (env.get("compute_device") or "").startswith("cuda") and not env.get("gpu_used"):
            problems.append("says it computed on cuda but no GPU memory was ever allocated")
    if problems:
        detail["problems"] = problems
    c.record(name, not problems, secs, detail, required)
    return record


def _cuda_or_cpu() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--machine", default=None, help="name of the output JSON (default: GPU name + host name)")
    p.add_argument("--out", default=str(REPO / "results" / "gpu-check"), help="folder for <machine>.json")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help="stop starting new items after this long")
    p.add_argument("--only", default=None, help="experiments to smoke-run, e.g. 04,06 (default: all)")
    p.add_argument("--skip-benchmarks", action="store_true", help="leave out the CUDA benchmarks")
    p.add_argument("--precheck", action="store_true",
                   help="only the OS-level check (no torch; any Python 3): exit 2 with the reason where no "
                        "NVIDIA GPU is visible, else 0 (run_all.sh calls it before setting up .venv)")
    args = p.parse_args(argv)
    t_start = time.monotonic()
    if args.precheck:
        reason = quick_refusal()
        if reason:
            print(f"gpu-check: CUDA is not usable here: {reason}", file=sys.stderr)
        return 2 if reason else 0

    detail, reason = cuda_check()
    if reason:
        print(f"gpu-check: CUDA is not usable here: {reason}", file=sys.stderr)
        print("gpu-check: nothing was run; run this on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2

    from common import data, repro, results

    repro.configure_numerics()          # the defaults every experiment starts from (TF32 off)
    gpu_name = detail.get("name", "gpu")
    machine = args.machine or f"{gpu_name}-{platform.node() or 'host'}"
    machine = re.sub(r"[^A-Za-z0-9._-]+", "-", machine).strip("-").lower()
    out_dir = Path(args.out) / machine
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    missing = data.missing_datasets()
    print(f"gpu-check: {gpu_name} (capability {detail.get('capability')}, {detail.get('memory_gib')} GiB), "
          f"torch {detail['torch']} (CUDA {detail['torch_cuda_build']}); data: "
          f"{'real' if not missing else 'synthetic stand-ins for ' + ', '.join(missing)}; work files in {out_dir}",
          flush=True)

    c = Checker(out_dir, args.budget_s - (time.monotonic() - t_start), env)
    if missing:  # as run_all.sh does: labelled synthetic stand-ins for what is missing, said on the command line
        c.data_args = ("--synthetic-if-missing",)
    c.record("cuda", True, time.monotonic() - t_start, detail)
    py = sys.executable
    if not args.skip_benchmarks:
        check_benchmarks(c, py)

    scripts = sorted((REPO / "experiments").glob("[0-9][0-9]_*.py"))
    if args.only:
        wanted = {f"{int(n):02d}" for n in args.only.split(",") if n.strip()}
        scripts = [s for s in scripts if s.name[:2] in wanted]
    first = {}
    for script in scripts:
        first[script.name[:2]] = smoke(c, py, script, out_dir / "smoke", f"smoke.{script.name[:2]}")

    for num in RERUN_EXPERIMENTS:   # same seed, same machine, same config: the same figures
        script = next((s for s in scripts if s.name[:2] == num), None)
        if script is None:
            continue
        name = f"rerun_identity.{num}"
        if not first.get(num):
            c.record(name, False, 0.0, "not run: the first smoke run failed")
            continue
        t0 = time.monotonic()
        again = smoke(c, py, script, out_dir / "rerun", f"smoke_again.{num}")
        if again is None:
            c.record(name, False, time.monotonic() - t0, "the second run failed")
            continue
        a, b = first[num]["metrics"], again["metrics"]
        diff = {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
        c.record(name, not diff and first[num]["per_seed"] == again["per_seed"], time.monotonic() - t0,
                 {"metrics_compared": len(a), "differences": diff} if diff else {"metrics_compared": len(a)})

    strict = next((s for s in scripts if s.name[:2] == STRICT_EXPERIMENT), None)
    if strict is not None:
        smoke(c, py, strict, out_dir / "strict", f"strict_determinism.{STRICT_EXPERIMENT}",
              extra=("--strict-determinism",), required=False)

    passed = all(i["passed"] for i in c.items if i["required"])
    report = {"machine": machine, "passed": passed, "finished_at": results.now_iso(),
              "seconds": round(time.monotonic() - t_start, 1), "budget_s": args.budget_s,
              "data": "real" if not missing else {"synthetic": missing},
              "items": c.items, "environment": results.environment(_cuda_or_cpu())}
    path = results.write_json_atomic(Path(args.out) / f"{machine}.json", report)
    failed = [i["name"] for i in c.items if i["required"] and not i["passed"]]
    print(f"gpu-check: {'PASSED' if passed else 'FAILED: ' + ', '.join(failed)} in {report['seconds']:.0f}s; "
          f"wrote {path}", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
