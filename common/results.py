"""The one results writer: ``results/<experiment>.json`` (schema_version 1), written atomically.

Contract (the compare tool and users rely on it):
``schema_version, experiment, status (ok|failed|diverged), started_at, finished_at, headline,
data{name, source, fingerprint, sizes, ...}, config, seeds, metrics (flat name -> number; the
mean over seeds), std (flat, over seeds), per_seed (flat name -> list), history, timings{wall_s,
train_s, train_samples_per_s, eval_s, ...}, environment{...}``.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from .device import describe_device

from .schema import (REQUIRED_KEYS, SCHEMA_VERSION, STATUSES, check_deviations, check_selection, check_targets,  # noqa: F401
                     compare_means,
                     read_result)

REPO_ROOT = Path(__file__).resolve().parent.parent


class Diverged(RuntimeError):
    """Training produced a NaN/inf loss; carries where it happened."""

    def __init__(self, epoch: int, step: int, value: float, what: str = "loss"):
        super().__init__(f"{what} became {value} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.value, self.what = epoch, step, value, what

    def __reduce__(self):   # picklable with its attributes (a run's extra ones too): it may come from a worker
        return type(self), (self.epoch, self.step, self.value, self.what), dict(self.__dict__)

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "value": str(self.value)}


def check_finite(loss: torch.Tensor | float, epoch: int, step: int) -> None:
    """Raise :class:`Diverged` if ``loss`` is NaN or infinite.

    Reads the value on the host: on CUDA that waits for the GPU. Training loops use :class:`StepLog`
    instead, which checks once per epoch.
    """
    value = float(loss)
    if not math.isfinite(value):
        raise Diverged(epoch, step, value)


class StepLog:
    """Per-step values (losses) kept on the device and read back once: no host sync per step.

    ``add(value, epoch, step)`` keeps a reference to a 0-d tensor (no copy, no sync);
    ``values()`` reads every pending value with one transfer (one sync), raises :class:`Diverged`
    for the first NaN/inf in step order -- the same epoch, step and value a per-step check would
    have named -- and returns all values added so far as Python floats, in order. Every ``every``
    entries it reads back on its own so that memory stays bounded on long epochs. The loop goes on
    for the rest of the epoch after a NaN (the run is discarded anyway), and the values returned are
    exactly what ``loss.item()`` gave, so sums taken on the host match the per-step code bit for bit.
    """

    def __init__(self, every: int = 1000):
        self.every = every
        self._pending: list[torch.Tensor] = []
        self._where: list[tuple[int, int, str]] = []
        self._values: list[float] = []

    def add(self, value: torch.Tensor, epoch: int, step: int, what: str = "loss") -> None:
        self._pending.append(value.detach().reshape(()))
        self._where.append((epoch, step, what))
        if len(self._pending) >= self.every:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        dtype = self._pending[0].dtype
        vals = torch.stack([v.to(dtype) for v in self._pending]).tolist()   # the one sync
        where, self._pending, self._where = self._where, [], []
        for v, (epoch, step, what) in zip(vals, where):
            if not math.isfinite(v):
                raise Diverged(epoch, step, v, what=what)
        self._values.extend(vals)

    def values(self) -> list[float]:
        self._flush()
        return list(self._values)

    def divergence(self) -> "Diverged | None":
        """What ``values()`` would raise, returned instead (None: every value so far is finite)."""
        try:
            self.values()
        except Diverged as e:
            return e
        return None


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device | str, script: str | os.PathLike | None = None,
                compute_device: torch.device | str | None = None) -> dict:
    """Versions, device, CPU, threads, CUDA/cuDNN, numerics, GPU identity, git commit/dirty, script sha256.

    ``device`` is the device the script chose; ``compute_device`` where its work actually ran when
    that differs (01 computes on the CPU whatever ``--device`` says). ``numerics`` holds the
    TF32, cuDNN and determinism flags in force; ``gpu`` the driver and GPU identity; ``gpu_used``
    whether any tensor was ever allocated on a CUDA device in this process; ``peak_gpu_memory_bytes``
    torch's peak CUDA allocation (None on the CPU).
    """
    import torchmetrics
    import torchvision

    from . import device as _device
    from .repro import numerics_state

    device = torch.device(device)
    peak = _device.peak_gpu_memory()
    env = {
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "torchmetrics": torchmetrics.__version__, "numpy": np.__version__,
        "device": str(device), "device_info": describe_device(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_allocator": _device.ALLOCATOR,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "compute_device": str(torch.device(compute_device)) if compute_device is not None else str(device),
        "gpu_used": bool(peak),
        "peak_gpu_memory_bytes": peak,
        "numerics": numerics_state(),
        "gpu": _device.gpu_info(),
        "device_fallback": _device.FALLBACK,
        "git_commit": _git("rev-parse", "HEAD"),
        # dirty = tracked code or config changed since the commit; result files under results/ do not count
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")),
    }
    if script is not None:
        data = Path(script).read_bytes()
        env["script"] = str(Path(script).resolve().relative_to(REPO_ROOT)) if Path(script).resolve().is_relative_to(REPO_ROOT) else str(script)
        env["script_sha256"] = hashlib.sha256(data).hexdigest()
    return env


def aggregate_seeds(per_seed_metrics: list[dict]) -> tuple[dict, dict, dict]:
    """From one flat metrics dict per seed, return ``(mean, std, per_seed)`` flat dicts.

    ``std`` is the sample standard deviation (ddof=1; 0.0 for a single seed). A metric that
    is missing for some seed is averaged over the seeds that have it.
    """
    keys = list(dict.fromkeys(k for m in per_seed_metrics for k in m))
    mean, std, per_seed = {}, {}, {}
    for k in keys:
        vals = [float(m[k]) for m in per_seed_metrics if k in m and m[k] is not None]
        per_seed[k] = vals
        finite = [v for v in vals if math.isfinite(v)]
        mean[k] = float(np.mean(finite)) if finite else None
        std[k] = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return mean, std, per_seed


def best_epoch(scores, higher_is_better: bool = True) -> int:
    """The one best-epoch rule: the 1-based epoch of the best validation figure in ``scores`` (one per epoch, in
    order): the highest, or the lowest when not ``higher_is_better``; ties -> the earlier epoch. NaN is never
    best: it is passed over while any epoch has a number (a curve of nothing but NaN has no epoch better than
    another: epoch 1, by the tie rule). Raises ValueError on an empty curve. A loop that keeps the best epoch's
    weights asks after appending each epoch's figure: ``best_epoch(curve) == epoch`` (a strictly better one)."""
    if len(scores) == 0:
        raise ValueError("no epochs: the best epoch needs at least one validation figure")
    sign = 1 if higher_is_better else -1
    numbered = [i for i, v in enumerate(scores) if not math.isnan(v)]
    return 1 + max(numbered or [0], key=lambda i: sign * scores[i])   # max keeps the first of equals


def time_to_target(scores: list[float], seconds: list[float], target: float, higher_is_better: bool = True) -> dict:
    """When one run's validation curve first reached ``target`` (airbench's time-to-target): ``scores[i]`` is the
    validation figure and ``seconds[i]`` the training seconds so far (evaluation not counted) after epoch i + 1.
    {"time_to_target_s", "epochs_to_target" (None when never reached), "best" (the best figure reached),
    "best_epoch" (``best_epoch``'s), "train_s" (all the run's training seconds)}."""
    if len(scores) != len(seconds) or not scores:
        raise ValueError(f"one score per epoch and one time per epoch: got {len(scores)} and {len(seconds)}")
    sign = 1 if higher_is_better else -1
    hit = next((i for i, v in enumerate(scores) if sign * v >= sign * target), None)
    best = best_epoch(scores, higher_is_better)
    return {"time_to_target_s": None if hit is None else float(seconds[hit]),
            "epochs_to_target": None if hit is None else hit + 1,
            "best": float(scores[best - 1]), "best_epoch": best, "train_s": float(seconds[-1])}


def target_record(metric: str, target: float, runs: dict, budget_s: float | None = None,
                  higher_is_better: bool = True, note: str | None = None) -> dict:
    """A model's entry of the result's ``targets``: ``runs`` ({name: ``time_to_target(...)``}, e.g. per seed
    or per fold), how many reached ``target`` at all and how many within ``budget_s`` training seconds."""
    times = [r["time_to_target_s"] for r in runs.values() if r["time_to_target_s"] is not None]
    rec = {"metric": metric, "target": target, "higher_is_better": higher_is_better, "budget_s": budget_s,
           "runs": runs, "reached": len(times), "of": len(runs),
           "within_budget": None if budget_s is None else sum(t <= budget_s for t in times),
           "median_time_to_target_s": float(np.median(times)) if times else None,
           "best": (max if higher_is_better else min)(r["best"] for r in runs.values()) if runs else None}
    if note:
        rec["note"] = note
    return rec


def choose_candidate(targets: dict, best: dict, higher_is_better: bool = True, spread: dict | None = None,
                     cost: dict | None = None) -> str:
    """An ablation's pre-declared choice (04, 06 and 08 ``--ablation``): of the candidates whose every run reached
    the target (``targets``: name -> ``target_record``), the one with the least median time to it; if none did, the
    best of ``best`` (name -> mean best validation score). With ``spread`` (name -> std over seeds) and ``cost``
    (name -> seconds): among the candidates within noise of that best (``schema.compare_means``: means apart by at
    most the larger of the two stds), the cheapest. Ties -> the first listed."""
    every = [name for name, t in targets.items() if t["reached"] == t["of"]]
    if every:
        return min(every, key=lambda name: targets[name]["median_time_to_target_s"])
    top = (max if higher_is_better else min)(best, key=best.get)
    if spread is None or cost is None:
        return top
    close = [name for name in best if compare_means(best[name], spread[name], best[top], spread[top]) == "within noise"]
    return min(close, key=cost.get)


def _check_flat(name: str, d: dict) -> None:
    for k, v in d.items():
        if v is not None and not isinstance(v, (int, float, bool, list)):
            raise TypeError(f"{name}[{k!r}] must be a number (flat map), got {type(v).__name__}")


def _clean(obj):
    """Make ``obj`` JSON-safe: tensors/arrays to lists, numpy scalars to floats, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _clean(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as JSON to ``path`` so that readers see the old file or the new one, never half.

    The JSON is first serialised in memory (an unserialisable object fails before any file is
    touched), written to a temporary file in the same folder, flushed to disk and renamed over
    ``path``. On any error or interruption the temporary file is removed and the previous
    ``path`` is left as it was.
    """
    path = Path(path)
    text = json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_result(experiment: str, *, results_dir: str | os.PathLike, status: str, started_at: str,
                 config: dict, seeds: list[int], data, metrics: dict, headline: str,
                 timings: dict, device, script: str | os.PathLike | None = None,
                 std: dict | None = None, per_seed: dict | None = None, history: dict | None = None,
                 extra: dict | None = None, compute_device=None, deviations: list[dict] | None = None,
                 selection: dict | None = None, targets: dict | None = None) -> Path:
    """Write ``results_dir/<experiment>.json`` following the schema above; return its path.

    ``data`` is a :class:`common.data.DataInfo` (or a dict, or a dict of them for several
    datasets under ``data.parts``). ``metrics`` must be flat (name -> number). ``headline``
    names the metric the summary table shows. ``extra`` holds anything else the experiment
    reports (tables, notes); it never replaces contract keys. ``compute_device``: where the work
    ran when that is not ``device`` (recorded in ``environment.compute_device``).

    ``deviations``: every place the script departs from the course transcript, each a dict with
    ``what`` (the setting), ``course`` (what the transcript says), ``here`` (what the script does) and
    ``why``, and optionally ``flag`` (the option that restores the course's literal setting); written
    as the top-level ``deviations`` list (empty when the script follows the transcript throughout; null
    when the caller states nothing, which readers show as "not recorded").
    ``selection``: how anything chosen (epochs, learning rate, ...) was chosen on validation data
    (see ``schema.SELECTION_KEYS``); top-level ``selection``, null when the script chooses nothing.
    ``targets``: per model, the validation figure it aims at and the training seconds each run took to
    reach it (``target_record``); top-level ``targets``, left out when the script sets none.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    _check_flat("metrics", metrics)
    if headline not in metrics:
        raise KeyError(f"headline {headline!r} is not one of the metrics")
    for k in ("wall_s", "train_s", "train_samples_per_s"):
        timings.setdefault(k, None)
    data_json = data.to_json() if hasattr(data, "to_json") else dict(data)
    record = {
        "schema_version": SCHEMA_VERSION, "experiment": experiment, "status": status,
        "started_at": started_at, "finished_at": now_iso(), "headline": headline,
        "data": data_json, "config": config, "seeds": list(seeds), "metrics": metrics,
        "std": std or {k: 0.0 for k in metrics}, "per_seed": per_seed or {k: [v] for k, v in metrics.items()},
        "history": history or {}, "timings": timings, "environment": environment(device, script, compute_device),
    }
    record["deviations"] = None if deviations is None else check_deviations(deviations)   # None: not stated
    record["selection"] = check_selection(selection)
    if targets is not None:
        record["targets"] = check_targets(targets)
    for k, v in (extra or {}).items():
        if k in record:
            raise KeyError(f"extra key {k!r} would replace a contract key")
        record[k] = v
    return write_json_atomic(Path(results_dir) / f"{experiment}.json", record)


def sigterm_as_interrupt() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so ``finally`` clean-up runs on ``kill`` as on Ctrl-C."""
    def _handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    try:
        signal.signal(signal.SIGTERM, _handler)
    except ValueError:  # not in the main thread
        pass
