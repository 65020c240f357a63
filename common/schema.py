"""The result JSON's schema (version 1), in one torch-free module: the writer (``common.results``) and
the suite's tools (``tools.compare``, ``tools.summary``, ``tools.report``) import it from here.

``schema_version, experiment, status (ok|failed|diverged), started_at, finished_at, headline,
data{name, source, fingerprint, sizes, ...}, config, seeds, metrics (flat name -> number; the mean over
seeds), std (flat, over seeds), per_seed (flat name -> list), history, timings{wall_s, train_s,
train_samples_per_s, eval_s, ...}, environment{...}``; since the protocol work also ``deviations``
(a list, possibly empty: where the script departs from the course transcript, and why) and ``selection``
(how anything chosen was chosen on validation data; null when nothing is chosen), and since the speed
work an optional ``targets`` (per model: the validation figure it aims at, and the training seconds until
each run first reached it). Older results lack the last three; readers treat them as unknown, not as empty.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "diverged")
REQUIRED_KEYS = ("schema_version", "experiment", "status", "started_at", "finished_at", "headline", "data",
                 "config", "seeds", "metrics", "std", "per_seed", "history", "timings", "environment")


DEVIATION_KEYS = ("what", "course", "here", "why")          # each entry may add "flag"
SELECTION_KEYS = ("validation", "chosen", "candidates", "criterion", "final_model")
TARGET_KEYS = ("metric", "target", "higher_is_better", "budget_s", "runs", "reached", "within_budget")
TARGET_RUN_KEYS = ("time_to_target_s", "epochs_to_target", "best", "best_epoch", "train_s")


def check_deviations(deviations) -> list[dict]:
    """``deviations`` if it is a list of dicts with the keys ``DEVIATION_KEYS`` (strings); ValueError otherwise."""
    if not isinstance(deviations, list):
        raise ValueError(f"deviations must be a list, got {type(deviations).__name__}")
    for i, d in enumerate(deviations):
        missing = [k for k in DEVIATION_KEYS if not (isinstance(d, dict) and isinstance(d.get(k), str) and d[k].strip())]
        if missing:
            raise ValueError(f"deviations[{i}] lacks non-empty string(s) {missing}: {d!r}")
        if "flag" in d and not (isinstance(d["flag"], str) and d["flag"].strip()):
            raise ValueError(f"deviations[{i}]: 'flag' must be an option string, got {d['flag']!r}")
    return deviations


def check_selection(selection) -> dict | None:
    """``selection`` if it is None or a dict with the keys ``SELECTION_KEYS``; ValueError otherwise.

    ``validation``: how the validation data was carved from the training data (split sizes or folds);
    ``chosen``: what was chosen -> the chosen value; ``candidates``: what was tried; ``criterion``: the
    validation figure the choice maximised or minimised; ``final_model``: retrained on train+validation or kept.
    """
    if selection is None:
        return None
    missing = [k for k in SELECTION_KEYS if not isinstance(selection, dict) or k not in selection]
    if missing:
        raise ValueError(f"selection lacks keys {missing}")
    return selection


def check_targets(targets) -> dict | None:
    """``targets`` if it is None or {model: record} with the keys ``TARGET_KEYS``, each run of ``runs`` with the
    keys ``TARGET_RUN_KEYS`` (``common.results.target_record`` builds them); ValueError otherwise."""
    if targets is None:
        return None
    if not isinstance(targets, dict):
        raise ValueError(f"targets must be a dict, got {type(targets).__name__}")
    for name, rec in targets.items():
        missing = [k for k in TARGET_KEYS if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise ValueError(f"targets[{name!r}] lacks keys {missing}")
        for run, r in rec["runs"].items():
            missing = [k for k in TARGET_RUN_KEYS if not isinstance(r, dict) or k not in r]
            if missing:
                raise ValueError(f"targets[{name!r}].runs[{run!r}] lacks keys {missing}")
    return targets


def check_result(record, where: str = "<result>") -> dict:
    """``record`` if it is a result of this schema; ValueError naming ``where`` otherwise."""
    if not isinstance(record, dict) or record.get("schema_version") != SCHEMA_VERSION:
        got = record.get("schema_version") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{where}: not a result of schema_version {SCHEMA_VERSION} (got {got!r})")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"{where}: result JSON lacks keys {missing}")
    return record


NOISE_TOLERANCE = 1e-6   # equal figures computed in float32 and float64 differ by less; never a real difference


def compare_means(a: float, sd_a: float, b: float, sd_b: float, n_seeds: int | None = None) -> str:
    """The suite's one noise rule, used by every script's comparisons and by tools.report: ``"within noise"``
    when |a - b| <= max(sd_a, sd_b) (the larger spread over seeds, plus ``NOISE_TOLERANCE``), else ``"higher"``
    or ``"lower"`` (a against b). With fewer than two seeds there is no spread to judge by, and a higher/lower
    finding says so: ``"higher (one seed: no spread to judge noise by)"``.
    """
    if abs(a - b) <= max(sd_a or 0.0, sd_b or 0.0) + NOISE_TOLERANCE:
        return "within noise"
    finding = "higher" if a > b else "lower"
    return finding + (" (one seed: no spread to judge noise by)" if n_seeds is not None and n_seeds < 2 else "")


def load_json(path: str | os.PathLike, if_missing: str = "no such file"):
    """The JSON value in ``path``; ValueError naming the file (and ``if_missing`` when it does not exist)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: {if_missing}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a JSON file ({e.msg} at line {e.lineno})") from None


def read_result(path: str | os.PathLike) -> dict:
    """Read a result JSON and check it is this schema; raise ValueError naming the file otherwise."""
    return check_result(load_json(path), str(path))
