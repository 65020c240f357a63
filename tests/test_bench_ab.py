"""The A/B timing gate (tools.bench_ab) through its real path: git history -> base tree -> two worker
processes -> interleaved timing -> verdict, on scratch repositories with one tiny benchmark case.

An injected 2x slowdown (the model's layers run twice per forward) is caught by name; the same commit
against itself passes; bad input (unknown REF, no git history, a base that cannot be imported, no
blessed commit) exits 2 with one clear message; cases in only one tree are listed, not failed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tools import bench_ab

REPO = Path(__file__).resolve().parent.parent

CASE_MODULE = textwrap.dedent('''
    """A stand-in experiment with one benchmark case; REPEAT > 1 is an injected slowdown."""
    import torch
    from torch import nn

    REPEAT = {repeat}


    class TinyMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))

        def forward(self, x):
            out = self.net(x)
            for _ in range(REPEAT - 1):
                out = out + self.net(x)
            return out


    def benchmark_cases():
        return [{{"name": "{name}", "make_model": TinyMLP,
                 "make_batch": lambda bs, device: ((torch.randn(bs, 64, device=device),),
                                                   torch.randint(0, 10, (bs,), device=device)),
                 "loss_fn": nn.functional.cross_entropy,
                 "make_optimizer": lambda params: torch.optim.SGD(params, lr=1e-3),
                 "batch_size": 256}}]
''')
FAST = ["--rounds", "6", "--target-ms", "15", "--warmup", "2"]


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


def write_case(root: Path, repeat: int = 1, name: str = "01.tiny_mlp", stem: str = "01_tiny") -> None:
    (root / "experiments").mkdir(parents=True, exist_ok=True)
    (root / "experiments" / f"{stem}.py").write_text(CASE_MODULE.format(repeat=repeat, name=name))


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repository with one committed experiment (REPEAT = 1), blessed."""
    root = tmp_path / "repo"
    write_case(root)
    git(root, "init", "-q")
    git(root, "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    git(root, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "base")
    return root


def ab(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "tools.bench_ab", "--repo", str(root),
                           "--json", str(root.parent / "ab.json"), *args],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_injected_2x_slowdown_is_caught_by_name_and_aa_passes(repo):
    p = ab(repo, "--bless", "first base")
    assert p.returncode == 0, p.stderr
    blessed = json.loads((repo / "tests" / "benchmarks" / "blessed.json").read_text())
    assert blessed["commit"] == git(repo, "rev-parse", "HEAD") and blessed["reason"] == "first base"

    same = ab(repo, *FAST, "--threshold", "1.4")          # A/A: the blessed commit against itself
    assert same.returncode == 0, same.stdout + same.stderr
    rec = json.loads((repo.parent / "ab.json").read_text())
    assert {r["benchmark"] for r in rec["results"]} == {"forward[01.tiny_mlp]", "train_step[01.tiny_mlp]"}
    assert all(0.7 < r["ratio"] < 1.4 for r in rec["results"]) and rec["failures"] == []

    write_case(repo, repeat=2)                               # the candidate: twice the work per forward
    slow = ab(repo, *FAST, "--threshold", "1.4")
    assert slow.returncode == 1, slow.stdout + slow.stderr
    assert "uncommitted changes" in slow.stdout and "experiments/01_tiny.py" in slow.stdout
    assert "A/B GATE FAILED" in slow.stdout and "forward[01.tiny_mlp]: " in slow.stdout
    rec = json.loads((repo.parent / "ab.json").read_text())
    fwd = next(r for r in rec["results"] if r["kind"] == "forward")
    assert fwd["verdict"] == "SLOWER" and fwd["ratio"] > 1.4 and fwd["ci90"][0] > 1.0
    assert rec["base"] == blessed["commit"] and rec["uncommitted"] == ["experiments/01_tiny.py"]


def test_cases_in_one_tree_only_are_listed_not_failed(repo):
    write_case(repo, name="02.new_model", stem="02_new")
    (repo / "experiments" / "01_tiny.py").unlink()
    p = ab(repo, "HEAD", *FAST)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "new (only in the candidate, not gated): 02.new_model" in p.stdout
    assert "removed (only in the base): 01.tiny_mlp" in p.stdout


def test_candidate_that_cannot_be_imported_fails(repo):
    (repo / "experiments" / "03_broken.py").write_text("raise ImportError('no such thing')\n")
    p = ab(repo, "HEAD", *FAST)
    assert p.returncode == 1
    assert "experiments.03_broken: the candidate's benchmark cases cannot be imported (ImportError: no such thing)" in p.stdout


@pytest.mark.parametrize("setup, args, message", [
    ("none", ["no-such-ref"], "no commit 'no-such-ref'"),
    ("none", [], "no blessed commit yet; record one with: bash run_all.sh --bench-bless"),
    ("tarball", ["HEAD"], "is not a git checkout (a tarball?)"),
    ("broken_base", ["HEAD"], "the base tree (") ,
])
def test_bad_input_exits_2_with_one_message(repo, tmp_path, setup, args, message):
    root = repo
    if setup == "tarball":
        root = tmp_path / "tarball"
        shutil.copytree(repo, root, ignore=shutil.ignore_patterns(".git"))
    if setup == "broken_base":
        (repo / "experiments" / "01_tiny.py").write_text("raise RuntimeError('base is broken')\n")
        git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "broken")
        write_case(repo)   # the candidate is fine again
    p = ab(root, *args, *FAST)
    assert p.returncode == 2, p.stdout + p.stderr
    assert message in p.stderr and p.stderr.count("bench_ab:") == 1
    if setup == "broken_base":
        assert "has no importable benchmark cases" in p.stderr and "base is broken" in p.stderr


def test_bootstrap_interval_and_verdict():
    ratios = [1.0, 1.02, 0.98, 1.01, 0.99, 1.03]
    lo, hi = bench_ab.bootstrap_interval(ratios)
    assert 0.98 <= lo <= 1.0 <= hi <= 1.03 and bench_ab.bootstrap_interval(ratios) == (lo, hi)  # seeded
    assert bench_ab.verdict(2.0, 1.8, 2.2, 1.3) == "SLOWER"
    assert bench_ab.verdict(1.5, 0.9, 2.0, 1.3) == "ok"       # above the threshold but not confidently above 1
    assert bench_ab.verdict(1.2, 1.1, 1.3, 1.3) == "ok"       # confidently slower, but within the threshold
    assert bench_ab.verdict(0.5, 0.4, 0.6, 1.3) == "faster"


def test_noise_summary_sets_the_threshold(repo, tmp_path):
    assert ab(repo, "--bless", "base").returncode == 0
    runs = []
    for i, worst in enumerate([1.05, 1.12, 0.9]):
        rec = {"tool": "tools.bench_ab", "results": [{"benchmark": "forward[x]", "ratio": worst},
                                                     {"benchmark": "train_step[x]", "ratio": 1.01}]}
        runs.append(tmp_path / f"aa{i}.json")
        runs[-1].write_text(json.dumps(rec))
    p = ab(repo, "--noise", *map(str, runs), "--write-threshold")
    assert p.returncode == 0, p.stderr
    # worst excess 0.12 (1.12; 1/0.9 = 1.111 is smaller) -> 1 + 2 x 0.12 = 1.24 -> rounded up to 1.25
    assert "worst median ratio 1.120 (forward[x]" in p.stdout
    assert json.loads((repo / "tests" / "benchmarks" / "blessed.json").read_text())["threshold"] == 1.25
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    q = ab(repo, "--noise", str(bad))
    assert q.returncode == 2 and "not an A/B result JSON" in q.stderr


def test_committed_blessed_file_names_a_commit_of_this_history_and_a_measured_threshold():
    blessed = bench_ab.load_blessed(REPO)
    assert len(blessed["commit"]) == 40 and blessed["reason"].strip()
    assert bench_ab.MIN_THRESHOLD <= blessed["threshold"] < 2.0        # a 2x slowdown must stay catchable
    assert "A/A runs" in blessed["threshold_note"]
    if (REPO / ".git").exists():
        assert bench_ab.resolve_commit(REPO, blessed["commit"]) == blessed["commit"]
