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


def smoke_fixture(script: str, runs: dict, in_process=None):
    """A module-scoped fixture (a test module assigns it to the fixture's name) that runs
    ``experiments/<script>.py --smoke`` once per entry of ``runs`` (name -> further arguments), each into a
    results folder of its own, and gives name -> (result JSON, folder). The first runs as a subprocess (the
    command line end to end); with ``in_process`` (the imported script) the others call its ``main`` in this
    process, which is cheaper (torch's thread count, which ``main`` may set, is put back afterwards)."""
    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory) -> dict:
        import torch

        out, threads = {}, torch.get_num_threads()
        try:
            for i, (name, args) in enumerate(runs.items()):
                d = tmp_path_factory.mktemp(f"r{script[:2]}{name}")
                if in_process is None or i == 0:
                    record = run_script(script, "--smoke", *args, results_dir=d)[1]
                else:
                    assert in_process.main(["--smoke", *args, "--results-dir", str(d)]) == 0
                    record = json.loads((d / f"{script}.json").read_text())
                out[name] = (record, d)
        finally:
            torch.set_num_threads(threads)
        return out

    return fixture


def check_deviations(record: dict, expected: list[str], parse=None) -> dict:
    """Assert that ``record["deviations"]`` lists exactly the entries named ``expected`` (their "what", in
    order), each with non-empty strings "what", "course", "here" and "why". Returns what -> the options its
    "flag" parses to with ``parse`` (the script's; a flag that is not its options fails), None without one."""
    import shlex
    from unittest import mock

    entries = record["deviations"]
    assert [d.get("what") for d in entries] == list(expected)
    parsed = {}
    for d in entries:
        assert all(isinstance(d.get(k), str) and d[k].strip() for k in ("what", "course", "here", "why")), d
        parsed[d["what"]] = None
        if "flag" in d and parse is not None:   # parse() would install a SIGTERM handler and set numerics
            with mock.patch("common.cli.sigterm_as_interrupt"), mock.patch("common.repro.configure_numerics"):
                parsed[d["what"]] = parse(shlex.split(d["flag"]))
    return parsed


def check_seeds(runs: dict, *differ: str) -> None:
    """``runs["seed0"]`` and ``runs["seed0_again"]`` (the same seeds) have identical metrics and history;
    ``runs["seed1"]`` (other seeds) differs from them in each per-seed metric named in ``differ``."""
    a, b, other = (runs[name][0] for name in ("seed0", "seed0_again", "seed1"))
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]
    for key in differ:
        assert a["per_seed"][key] != other["per_seed"][key], key


def main_in_process(monkeypatch, main, argv: list[str]) -> int:
    """``main(argv)`` in this process without leaking its process-wide settings into later tests: no SIGTERM
    handler or numerics flags installed in pytest, torch's thread count and ``--synthetic-if-missing``'s flag
    restored afterwards."""
    import torch

    from common import cli, data

    monkeypatch.setattr(cli, "sigterm_as_interrupt", lambda: None)
    monkeypatch.setattr(cli.repro, "configure_numerics", lambda **kwargs: None)
    monkeypatch.setattr(data, "SYNTHETIC_IF_MISSING", data.SYNTHETIC_IF_MISSING)   # undone at teardown
    threads = torch.get_num_threads()
    try:
        return main(argv)
    finally:
        torch.set_num_threads(threads)


def omniglot_reads(monkeypatch, script, argv: list[str]) -> tuple[dict, list]:
    """Run ``script.main(argv)`` (08 or 09, in this process) recording every Omniglot prediction: returns the
    splits it made ({name: Split}) and, per ``omniglot.predict`` call on the script's image inputs, (called
    during training?, the set of rows it read)."""
    import functools

    from experiments import omniglot

    splits, calls, training = {}, [], [False]
    predict, train_run, make_splits = omniglot.predict, omniglot.train_run, omniglot.make_splits

    def recording_predict(model, inputs, idx, device, **kwargs):
        if isinstance(inputs, functools.partial) and inputs.func is script.inputs:   # not the salary table's rows
            calls.append((training[0], frozenset(idx.tolist())))
        return predict(model, inputs, idx, device, **kwargs)

    def flagged_train_run(*args, **kwargs):
        training[0] = True
        try:
            return train_run(*args, **kwargs)
        finally:
            training[0] = False

    monkeypatch.setattr(omniglot, "predict", recording_predict)
    monkeypatch.setattr(omniglot, "train_run", flagged_train_run)
    monkeypatch.setattr(omniglot, "make_splits", lambda *a, **kw: splits.update(make_splits(*a, **kw)) or dict(splits))
    # --workers 1: every run in this process, where the recording functions are
    assert main_in_process(monkeypatch, script.main, [*argv, "--workers", "1"]) == 0
    return splits, calls


def check_omniglot_selection(r: dict, select: str, epochs: dict) -> None:
    """08/09 smoke result ``r`` has a valid ``selection``: per run (``epochs``: run -> its epochs) and seed, the
    chosen epoch is a candidate (1..the run's epochs), the first maximum of that seed's validation curve ``select``, and the run's
    ``best_epoch`` figure; validation sizes are the smoke's (256 a part at most)."""
    from common import schema

    sel = schema.check_selection(r["selection"])
    assert sel["validation"]["sizes"]["validation"] == {s: min(256, r["splits"][s]["validation"]) for s in r["splits"]}
    assert sel["final_model"].startswith("kept: best-epoch checkpoint by validation accuracy")
    if any(run.endswith(".improved") for run in epochs):   # its settings: chosen by the ablations, and said so
        from experiments import omniglot
        fixed = sel["fixed"]["improved"]
        assert "08's --ablation recipe" in fixed and omniglot.RECIPE_ABLATION in fixed and "test" not in fixed
        assert f"{omniglot.IMPROVED_SCHEDULE!r} lr schedule" in fixed and "3 conv blocks" in fixed
    assert set(sel["chosen"]) == set(sel["candidates"]) == {f"{run}.epochs" for run in epochs}
    for run, n_epochs in epochs.items():
        candidates, chosen = sel["candidates"][f"{run}.epochs"], sel["chosen"][f"{run}.epochs"]
        assert candidates == list(range(1, n_epochs + 1))
        assert set(chosen) == {str(s) for s in r["seeds"]}
        for seed, epoch in chosen.items():
            curve = sel["scores"][f"{run}.{select}"][seed]
            assert epoch in candidates and len(curve) == len(candidates) and epoch == 1 + curve.index(max(curve))
        assert r["per_seed"][f"{run}.best_epoch"] == [chosen[str(s)] for s in r["seeds"]]
        assert r["per_seed"][f"{run}.{select}"] == [sel["scores"][f"{run}.{select}"][str(s)][chosen[str(s)] - 1]
                                                    for s in r["seeds"]]
