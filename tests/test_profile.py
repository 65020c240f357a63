"""tools.profile: the ops' self times read from torch.profiler's trace (checked against torch's own
``key_averages``), the arguments a profiled script gets, and a whole profiled run of 01 into a folder of its own."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tools import profile as prof_tool

REPO = Path(__file__).resolve().parent.parent


def test_self_times_from_the_trace_match_torchs_key_averages(tmp_path):
    """Nested ops (a Linear's addmm inside autograd, an Optimizer.step region around its ops): the same calls
    and, op by op, the same self time as torch's key_averages (the trace rounds to nanoseconds)."""
    from torch.profiler import ProfilerActivity, profile
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters())
    x = torch.randn(256, 64)
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(5):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    p.export_chrome_trace(str(tmp_path / "trace.json"))
    ops, kernels = prof_tool.self_times(tmp_path / "trace.json")
    torch_ops = {e.key: (e.self_cpu_time_total, e.count) for e in p.key_averages()}
    assert kernels == {}
    assert {k: v[1] for k, v in ops.items()} == {k: v[1] for k, v in torch_ops.items()}
    assert ops["aten::addmm"][1] == 10 and ops["Optimizer.step#Adam.step"][1] == 5
    for name, (us, _) in ops.items():
        assert us == pytest.approx(torch_ops[name][0], rel=1e-3, abs=0.05), name


def test_self_times_subtract_only_direct_children(tmp_path):
    """outer [0, 100) holds mid [10, 60), which holds leaf [20, 30); a second thread's op is its own."""
    trace = ('{"traceEvents": ['
             '{"ph": "X", "cat": "cpu_op", "name": "outer", "pid": 1, "tid": 1, "ts": 0, "dur": 100},'
             '{"ph": "X", "cat": "user_annotation", "name": "mid", "pid": 1, "tid": 1, "ts": 10, "dur": 50},'
             '{"ph": "X", "cat": "cpu_op", "name": "leaf", "pid": 1, "tid": 1, "ts": 20, "dur": 10},'
             '{"ph": "X", "cat": "cpu_op", "name": "leaf", "pid": 1, "tid": 2, "ts": 15, "dur": 70},'
             '{"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": 5, "dur": 3},'
             '{"ph": "f", "cat": "fwdbwd", "name": "x", "pid": 1, "tid": 1, "ts": 1}]}')
    (tmp_path / "t.json").write_text(trace)
    ops, kernels = prof_tool.self_times(tmp_path / "t.json")
    assert ops == {"outer": [50.0, 1], "mid": [40.0, 1], "leaf": [80.0, 2]}
    assert kernels == {"k": [3.0, 1]}
    table = prof_tool.op_table(ops, 2)
    assert table.splitlines()[1].split()[:4] == ["leaf", "47.1%", "0.00", "2"]
    assert table.splitlines()[-1].split()[:2] == ["all", "100%"]


def test_a_profiled_script_writes_its_results_in_the_profile_folder_and_runs_one_worker(tmp_path):
    out = tmp_path / "p"
    tabular = REPO / "experiments/03_tabular_training.py"
    assert prof_tool.script_arguments(tabular, ["--smoke"], out) == [
        "--smoke", "--results-dir", str(out / "results"), "--workers", "1"]
    assert prof_tool.script_arguments(tabular, ["--workers", "2", "--results-dir", "r"], out) == [
        "--workers", "2", "--results-dir", "r"]
    lstm = REPO / "experiments/07_lstm_vs_gru.py"   # its --workers comes from experiments/electricity.py
    assert prof_tool.script_arguments(lstm, [], out)[-2:] == ["--workers", "1"]
    intro = REPO / "experiments/01_tensors_and_layers.py"   # no --workers option
    assert prof_tool.script_arguments(intro, [], out) == ["--results-dir", str(out / "results")]
    with pytest.raises(SystemExit, match=r"no experiment '42'; one of: 01, 02, 03"):
        prof_tool.find_script("42")

    proc = subprocess.run([sys.executable, "-m", "tools.profile", "01", "--top", "5", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "results" / "01_tensors_and_layers.json").is_file()
    text = (out / "01.profile.txt").read_text()
    lines = text.splitlines()
    assert lines[0] == f"# 01_tensors_and_layers.py --results-dir {out / 'results'}"
    assert lines[1].startswith("# exit status 0, ")
    assert "the script ran" in lines[2] and lines[3].split() == ["op", "share", "self", "s", "calls", "ms/call"]
    rows = lines[4:-1]
    assert len(rows) == 5 and sum(r.split()[0].startswith("aten::") for r in rows) >= 3
    shares = [float(r.split()[1].rstrip("%")) for r in rows]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 100.05
    assert text in proc.stdout


def test_the_python_profile_lists_the_scripts_functions_by_cumulative_time(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tools.profile", "01", "--python", "--top", "4", "--out",
                           str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (tmp_path / "01.profile.txt").read_text()
    assert "Ordered by: cumulative time" in text and "List reduced from" in text and "to 4 due to restriction" in text
    assert "01_tensors_and_layers.py" in text and (tmp_path / "results" / "01_tensors_and_layers.json").is_file()

