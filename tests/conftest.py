"""Shared fixtures: the real data (skipped with a reason where DATA_DIR has none) and a script runner."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common.data import DATASET_CHECKS, data_dir  # noqa: E402


def real_data(name: str):
    """A pytest mark that skips (with the reason) when dataset ``name`` is not under DATA_DIR."""
    root = data_dir()
    present = DATASET_CHECKS[name](root)
    return pytest.mark.skipif(not present, reason=f"real {name} data not found under DATA_DIR={root} "
                                                  f"(CI sets DATA_DIR=../shared/data)")


def run_script(script: str, *args: str, results_dir: Path, timeout: int = 600, check: bool = True,
               env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict | None]:
    """Run ``experiments/<script>.py`` with ``--results-dir``; return the process and its JSON (if any)."""
    cmd = [sys.executable, str(REPO / "experiments" / f"{script}.py"), "--results-dir", str(results_dir), *args]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                             f"stderr:\n{proc.stderr[-3000:]}")
    path = results_dir / f"{script}.json"
    return proc, (json.loads(path.read_text()) if path.exists() else None)


@pytest.fixture
def results_dir(tmp_path) -> Path:
    d = tmp_path / "results"
    d.mkdir()
    return d
