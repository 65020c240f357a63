"""The reliability audit across the whole suite: interruption, bad CLI values, bad data, --rerun.

Per-experiment reproducibility (same seed -> identical metrics and history; other seed -> other
values), divergence (exit 3, status "diverged") and missing data (exit 2) are tested in each
experiment's own test file; run_all.sh's carrying on past a failure in test_run_all.py; checkpoints
in test_checkpoints.py; the compare tool's bad inputs in test_compare.py.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, real_data, run_script

EXPERIMENTS = sorted(p.stem for p in (REPO / "experiments").glob("[0-9][0-9]_*.py"))


def test_there_are_nine_experiments():
    assert [e[:2] for e in EXPERIMENTS] == [f"{i:02d}" for i in range(1, 10)]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@real_data("electricity")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_mid_epoch_keeps_previous_result_and_leaves_no_temporaries(results_dir, sig):
    # A previous result that must survive the interrupted run byte for byte.
    previous = results_dir / "06_electricity_rnn.json"
    previous.write_text('{"previous": "result"}\n')
    cmd = [sys.executable, str(REPO / "experiments" / "06_electricity_rnn.py"), "--results-dir", str(results_dir),
           "--seeds", "1", "--max-epochs", "5"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    seen, deadline = [], time.monotonic() + 240
    try:
        for line in proc.stdout:  # wait until training is under way (the first epoch has finished)
            seen.append(line)
            if "epoch 1/5" in line or time.monotonic() > deadline:
                break
        assert any("epoch 1/5" in s for s in seen), "".join(seen)
        proc.send_signal(sig)  # now inside epoch 2 of 5
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert previous.read_text() == '{"previous": "result"}\n'
    assert _files(results_dir) == ["06_electricity_rnn.json"]  # no temporary, partial JSON or plot


def _module(name: str):
    return importlib.import_module(f"experiments.{name}")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_bad_cli_values_are_refused(name, capsys):
    mod = _module(name)
    with pytest.raises(SystemExit) as e:
        mod.parse(["--device", "tpu"])
    assert e.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        mod.parse(["--seeds", "-1"])
    assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.parse(["--help"])
    help_text = capsys.readouterr().out
    epoch_options = [o for o in ("--epochs", "--max-epochs") if f"{o} " in help_text or f"{o}\n" in help_text]
    for option in epoch_options:
        with pytest.raises(SystemExit) as e:
            mod.parse([option, "-3"])
        assert e.value.code == 2 and "must be >= 1, got -3" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA, so --device cuda is valid here")
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_device_cuda_without_cuda_is_a_clear_error(name, tmp_path, capsys):
    rc = _module(name).main(["--device", "cuda", "--smoke", "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "CUDA is not available" in err and "Traceback" not in err
    assert _files(tmp_path) == []


def test_corrupt_image_among_valid_ones_stops_cleanly_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setenv("CACHE_DIR", str(tmp_path / "cache"))
    for split in ("clouds_train", "clouds_test"):
        for c in ("clear sky", "cumulus clouds"):
            d = tmp_path / "data" / "clouds" / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(d / f"{i}.jpg")
    bad = tmp_path / "data" / "clouds" / "clouds_test" / "cumulus clouds" / "1.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "results"
    rc = _module("04_clouds_cnn").main(["--smoke", "--data-dir", str(tmp_path / "data"), "--results-dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot decode image file" in err and str(bad) in err and "Traceback" not in err
    assert not out.exists() or _files(out) == []


def test_malformed_csv_stops_cleanly_and_writes_nothing(tmp_path, capsys, monkeypatch):
    d = tmp_path / "data" / "electricity"
    d.mkdir(parents=True)
    (d / "electricity_train.csv").write_text("timestamp,consumption\n2013-12-31 23:45:00,oops\n")
    (d / "electricity_test.csv").write_text("timestamp,consumption\n2014-01-01 00:00:00,0.1\n")
    out = tmp_path / "results"
    rc = _module("06_electricity_rnn").main(["--smoke", "--data-dir", str(tmp_path / "data"), "--results-dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "non-numeric value 'oops' in column 'consumption'" in err and "electricity_train.csv" in err
    assert not out.exists() or _files(out) == []


def test_missing_data_dir_is_named(tmp_path, capsys, monkeypatch):
    rc = _module("03_tabular_training").main(["--smoke", "--data-dir", str(tmp_path / "nowhere"),
                                             "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and str(tmp_path / "nowhere") in err


def test_rerun_reexecutes_the_recorded_configuration(results_dir, tmp_path):
    _, first = run_script("01_tensors_and_layers", "--smoke", "--seed", "7", "--seeds", "2", results_dir=results_dir)
    again_dir = tmp_path / "again"
    _, again = run_script("01_tensors_and_layers", "--rerun", str(results_dir / "01_tensors_and_layers.json"),
                          "--results-dir", str(again_dir), results_dir=again_dir)
    assert again["seeds"] == first["seeds"] == [7, 8]
    assert again["config"]["smoke"] is True
    assert again["metrics"] == first["metrics"]
    everything_recorded = {"config", "seeds", "data", "environment"}
    assert everything_recorded <= set(again)
    for key in ("git_commit", "script_sha256", "torch", "torchvision", "torchmetrics"):
        assert again["environment"][key] == first["environment"][key]
    assert again["data"]["fingerprint"] == first["data"]["fingerprint"]
