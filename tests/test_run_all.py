"""run_all.sh end to end, in a scratch copy of the repo with stand-in experiments.

Checks: every experiment runs in numeric order, a failing one does not stop the rest, the summary
lists them and the exit code is non-zero; bad options are refused with a clear message; the .venv
bootstrap is idempotent; missing data is announced loudly.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

OK_SCRIPT = textwrap.dedent('''
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from common import cli, results
    from common.data import DataInfo
    p = cli.base_parser(Path(__file__).stem, "stand-in")
    a = cli.parse_args(p)
    results.write_result(Path(__file__).stem, results_dir=a.results_dir, status="ok", started_at=results.now_iso(),
        config=cli.config_of(a), seeds=cli.seed_list(a), data=DataInfo("zoo", "real", "f", {}),
        metrics={"acc": 0.75}, headline="acc", timings={"wall_s": 0.1}, device="cpu")
    print("ran", Path(__file__).stem, "smoke" if a.smoke else "full", "seeds", a.seeds,
          "fallback" if a.synthetic_if_missing else "real-only")
''')


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    shutil.copy(REPO / "run_all.sh", root)
    shutil.copy(REPO / "requirements.txt", root)
    for pkg in ("common", "tools"):
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".venv").symlink_to(REPO / ".venv")
    exp = root / "experiments"
    exp.mkdir()
    (exp / "01_first.py").write_text(OK_SCRIPT)
    (exp / "02_broken.py").write_text("import sys\nprint('boom', file=sys.stderr)\nsys.exit(1)\n")
    (exp / "03_third.py").write_text(OK_SCRIPT)
    return root


def run(root: Path, *args: str, data_dir: str | None = None, env_extra: dict | None = None
        ) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    # absolute: the scratch copy runs from another folder than the one a relative DATA_DIR was given for
    env["DATA_DIR"] = str(Path(data_dir or os.environ.get("DATA_DIR", str(REPO / "data"))).resolve())
    return subprocess.run(["bash", str(root / "run_all.sh"), *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_failing_experiment_does_not_stop_the_rest(scratch, tmp_path):
    p = run(scratch, "--smoke", "--jobs", "1", "--seeds", "2", "--results-dir", str(tmp_path))
    out = p.stdout
    assert p.returncode == 1, out + p.stderr
    assert out.index("ran 01_first smoke seeds 2") < out.index("02_broken FAILED (exit 1)") < out.index("ran 03_third")
    assert "FAILED: 02_broken (exit 1)" in out
    summary = out[out.index("== summary"):]
    assert "01_first" in summary and "03_third" in summary and "acc = 0.75" in summary
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["01_first.json", "03_third.json"]
    assert "setting up .venv" not in out  # bootstrap is idempotent: nothing reinstalled


def test_smoke_runs_scripts_at_once_each_output_in_one_block_each_in_a_fresh_process(scratch, tmp_path):
    """--smoke runs one script per core (here --jobs 2); a script's output comes out whole, after its start line;
    and each script runs in its own process: what one sets (a module global, torch's threads) is not there for
    the next, and a script that exits with an exception or a message fails alone."""
    root = tmp_path / "repo"
    shutil.copytree(scratch, root, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    setter = textwrap.dedent('''
        import sys, time, torch, common
        print("04 sees", getattr(common, "MARK", None), torch.get_num_threads() == 1)
        common.MARK = "set by 04"; torch.set_num_threads(1)
        time.sleep(1); print("04 done")
    ''')
    (root / "experiments" / "04_setter.py").write_text(setter)
    (root / "experiments" / "05_setter.py").write_text(setter.replace("04", "05"))
    (root / "experiments" / "06_raises.py").write_text("raise RuntimeError('bad input')\n")
    (root / "experiments" / "07_message.py").write_text("import sys\nsys.exit('no data here')\n")
    p = run(root, "--smoke", "--jobs", "2", "--only", "4,5,6,7", "--results-dir", str(tmp_path / "r"))
    out = p.stdout
    assert p.returncode == 1, out + p.stderr
    threads_of_a_fresh_process = subprocess.run([str(REPO / ".venv/bin/python"), "-c",
                                                 "import torch; print(torch.get_num_threads() == 1)"],
                                                capture_output=True, text=True).stdout.strip()
    for n in ("04", "05"):
        block = f"{n}_setter: its output\n{n} sees None {threads_of_a_fresh_process}\n{n} done\n"
        assert block in out, out
    # both setters sleep 1 s: 05 starts before 04 ends (two at once)
    assert out.index("[2/4] 05_setter --device") < out.index("04_setter ok in"), out
    assert "06_raises: its output\nTraceback" in out and "RuntimeError: bad input" in out
    assert "07_message: its output\nno data here\n" in out
    assert "FAILED: 06_raises (exit 1) 07_message (exit 1)" in out


def test_only_runs_a_subset(scratch, tmp_path):
    p = run(scratch, "--only", "3", "--results-dir", str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ran 03_third full" in p.stdout and "01_first" not in p.stdout


def test_only_runs_each_experiment_once_in_numeric_order(scratch, tmp_path):
    p = run(scratch, "--only", "3,1,03", "--smoke", "--jobs", "1", "--results-dir", str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("ran 03_third") == 1 and p.stdout.index("ran 01_first") < p.stdout.index("ran 03_third")
    assert "[2/2]" in p.stdout and "[3/" not in p.stdout


def test_test_mode_keeps_its_own_options_and_passes_the_rest_after_double_dash(scratch):
    tests = scratch / "tests"
    tests.mkdir(exist_ok=True)
    (tests / "test_03_third.py").write_text("def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    (tests / "test_01_first.py").write_text("def test_c():\n    assert False\n")
    # --only after --test selects that experiment's tests (it used to reach pytest as an unknown option)
    p = run(scratch, "--test", "--only", "03", "--", "-k", "test_a", "-p", "no:cacheprovider")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "1 passed, 1 deselected" in p.stdout and "test_01_first" not in p.stdout
    assert "A/B timing gate skipped" in p.stdout


def test_no_temporary_file_is_left_behind_even_on_ctrl_c(scratch, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir), "DATA_DIR": str(tmp_path / "no_data")}
    p = subprocess.run(["bash", str(scratch / "run_all.sh"), "--only", "01", "--results-dir", str(tmp_path / "r")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0 and "SYNTHETIC" in p.stdout and list(tmpdir.glob("run_all_data.*")) == []
    # Ctrl-C while the data check writes its report into the temporary file: still removed
    slow = tmp_path / "slow"
    shutil.copytree(scratch, slow, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    (slow / "common" / "data.py").write_text("import time\nprint('checking', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen(["bash", str(slow / "run_all.sh"), "--only", "01"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while not any(f.stat().st_size for f in tmpdir.glob("run_all_data.*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmpdir.glob("run_all_data.*")), "the data check's temporary file never appeared"
    os.killpg(proc.pid, signal.SIGINT)   # what Ctrl-C does: the whole foreground process group
    assert proc.wait(timeout=60) != 0
    assert list(tmpdir.glob("run_all_data.*")) == []


@pytest.mark.parametrize("args, message", [
    (["--only", "07"], "no experiment numbered 07"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--seeds", "0"], "--seeds must be a positive integer"),
    (["--jobs", "0"], "--jobs must be a positive integer"),
    (["--frobnicate"], "unknown option '--frobnicate'"),
    (["--only", "4x"], "bad experiment number in --only: '4x'"),
    (["--test", "--bench-ab"], "separate modes"),
    (["--smoke", "--", "-k", "x"], "need --test"),
    (["--bench-bless"], "--bench-bless needs a one-line reason"),
])
def test_bad_options_are_refused(scratch, args, message):
    p = run(scratch, *args)
    assert p.returncode == 2 and message in p.stderr
    assert "ran " not in p.stdout


def test_missing_data_is_announced_loudly(scratch, tmp_path):
    p = run(scratch, "--only", "01", "--results-dir", str(tmp_path), data_dir=str(tmp_path / "no_data"))
    assert p.returncode == 0
    assert "SYNTHETIC stand-ins" in p.stdout and "omniglot" in p.stdout and "MISSING" in p.stdout
    # the fallback is an option on the script's own (echoed) command line, not a hidden environment switch
    assert "--synthetic-if-missing" in p.stdout and "ran 01_first full seeds 1 fallback" in p.stdout


def test_real_data_runs_without_the_fallback_even_if_the_old_environment_switch_is_set(scratch, tmp_path):
    from common.data import missing_datasets
    if missing_datasets(os.environ.get("DATA_DIR", str(REPO / "data"))):
        pytest.skip("needs every real dataset in DATA_DIR")
    p = run(scratch, "--only", "01", "--results-dir", str(tmp_path), env_extra={"SYNTHETIC_FALLBACK": "1"})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "--synthetic-if-missing" not in p.stdout and "ran 01_first full seeds 1 real-only" in p.stdout


def test_help_lists_the_options(scratch):
    p = run(scratch, "--help")
    for opt in ("--test", "--only", "--smoke", "--device", "--results-dir", "--seeds", "--jobs", "--bench-ab",
                "--bench-bless"):
        assert opt in p.stdout
