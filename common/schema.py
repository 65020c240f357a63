"""The result JSON's schema (version 1), in one torch-free module: the writer (``common.results``) and
the suite's tools (``tools.compare``, ``tools.summary``, ``tools.report``) import it from here.

``schema_version, experiment, status (ok|failed|diverged), started_at, finished_at, headline,
data{name, source, fingerprint, sizes, ...}, config, seeds, metrics (flat name -> number; the mean over
seeds), std (flat, over seeds), per_seed (flat name -> list), history, timings{wall_s, train_s,
train_samples_per_s, eval_s, ...}, environment{...}``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "diverged")
REQUIRED_KEYS = ("schema_version", "experiment", "status", "started_at", "finished_at", "headline", "data",
                 "config", "seeds", "metrics", "std", "per_seed", "history", "timings", "environment")


def check_result(record, where: str = "<result>") -> dict:
    """``record`` if it is a result of this schema; ValueError naming ``where`` otherwise."""
    if not isinstance(record, dict) or record.get("schema_version") != SCHEMA_VERSION:
        got = record.get("schema_version") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{where}: not a result of schema_version {SCHEMA_VERSION} (got {got!r})")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"{where}: result JSON lacks keys {missing}")
    return record


def read_result(path: str | os.PathLike) -> dict:
    """Read a result JSON and check it is this schema; raise ValueError naming the file otherwise."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a JSON file ({e})") from None
    return check_result(record, str(path))
