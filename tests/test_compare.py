"""The compare tool (common/compare.py) and the report generator (common/report.py)."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common import results
from tools import compare, report

REPO = Path(__file__).resolve().parent.parent


def result(exp="05_water", metrics=None, std=None, seeds=(0, 1, 2), config=None, data=None, timings=None,
           device="Test CPU A", threads=2, schema=1) -> dict:
    metrics = metrics or {"adam.test_accuracy": 0.66, "baseline.majority_accuracy": 0.61}
    std = std or {k: 0.01 for k in metrics}
    return {"schema_version": schema, "experiment": exp, "status": "ok", "started_at": "t0", "finished_at": "t1",
            "headline": next(iter(metrics)), "data": data or {"name": "water", "source": "real", "fingerprint": "abc"},
            "config": config or {"epochs": 10, "lr": 0.001, "seed": 0, "seeds": len(seeds),
                                 "results_dir": "/tmp/a", "data_dir": None, "device": "cpu"},
            "seeds": list(seeds), "metrics": metrics, "std": std,
            "per_seed": {k: [v] * len(seeds) for k, v in metrics.items()}, "history": {},
            "timings": timings or {"wall_s": 10.0, "train_s": 8.0, "train_samples_per_s": 1000.0, "eval_s": 0.1},
            "environment": {"device": "cpu", "device_info": {"name": device, "type": "cpu"}, "torch_threads": threads,
                            "python": "3.11", "torch": "2.x"}}


def put(d: Path, *records: dict) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for r in records:
        (d / f"{r['experiment']}.json").write_text(json.dumps(r))
    return d


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.compare", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_the_writer_and_the_tools_share_one_torch_free_schema(tmp_path):
    from common import schema
    assert results.REQUIRED_KEYS is schema.REQUIRED_KEYS and compare.SCHEMA_VERSION is schema.SCHEMA_VERSION
    # the tools need no torch: the schema module imports none
    code = "import sys, common.schema, tools.compare, tools.summary; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_side_by_side_with_ratios_devices_and_spread_flags(tmp_path):
    a = put(tmp_path / "one_thread", result(device="Xeon X", threads=1))
    b = put(tmp_path / "two_threads", result(device="Xeon X", threads=2, std={"adam.test_accuracy": 0.01,
                                                                              "baseline.majority_accuracy": 0.0},
                                             metrics={"adam.test_accuracy": 0.70, "baseline.majority_accuracy": 0.61},
                                             timings={"wall_s": 5.0, "train_s": 4.0, "train_samples_per_s": 2000.0},
                                             config={"epochs": 10, "lr": 0.001, "seed": 0, "seeds": 3,
                                                     "results_dir": "/elsewhere", "data_dir": "/data", "device": "auto"}))
    proc = run(a, b)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "one_thread (Xeon X, 1 thr)" in out and "two_threads (Xeon X, 2 thr)" in out and "two_threads/one_thread" in out
    line = lambda q: next(l for l in out.splitlines() if l.startswith(q))
    assert "2.000" in line("train_samples_per_s") and "0.500" in line("wall_s")
    # 0.70 vs 0.66 with std 0.01: flagged; the identical baseline: not flagged
    assert "differs +0.04 > seed spread 0.01" in line("adam.test_accuracy (headline)")
    assert "differs" not in line("baseline.majority_accuracy")

    md = run(a, b, "--format", "markdown").stdout
    assert "### 05_water" in md and "| train_samples_per_s | 1000 | 2000 | 2.000 |  |" in md

    rows = list(csv.DictReader(io.StringIO(run(a, b, "--format", "csv").stdout)))
    tp = next(r for r in rows if r["quantity"] == "train_samples_per_s")
    assert float(tp["two_threads/one_thread"]) == 2.0 and tp["two_threads_device"] == "Xeon X, 2 thr"
    assert next(r for r in rows if r["quantity"].startswith("adam"))["one_thread_std"] == "0.01"


def test_single_seed_difference_is_flagged_as_such(tmp_path):
    one = dict(seeds=(0,), std={"adam.test_accuracy": 0.0, "baseline.majority_accuracy": 0.0})
    a = put(tmp_path / "a", result(**one))
    b = put(tmp_path / "b", result(**one, metrics={"adam.test_accuracy": 0.67, "baseline.majority_accuracy": 0.61}))
    out = run(a, b).stdout
    assert "differs +0.01 (1 seed, no spread)" in out


def test_float_round_off_is_not_flagged(tmp_path):
    # e.g. the same run on 1 vs 2 threads: sums in another order differ in the 9th digit, not in substance
    zero = {"adam.test_accuracy": 0.0, "baseline.majority_accuracy": 0.0}
    a = put(tmp_path / "a", result(std=zero, metrics={"adam.test_accuracy": 0.0400300001, "baseline.majority_accuracy": 0.61}))
    b = put(tmp_path / "b", result(std=zero, metrics={"adam.test_accuracy": 0.0400299999, "baseline.majority_accuracy": 0.62}))
    out = run(a, b).stdout
    line = lambda q: next(l for l in out.splitlines() if l.startswith(q))
    assert "differs" not in line("adam.test_accuracy (headline)")
    assert "differs +0.01 > seed spread 0" in line("baseline.majority_accuracy")


@pytest.mark.parametrize("change, message", [
    (dict(data={"name": "water", "source": "real", "fingerprint": "zzz"}), "different data fingerprint"),
    (dict(data={"name": "water", "source": "synthetic", "fingerprint": "abc"}), "different data source (synthetic vs real)"),
    (dict(config={"epochs": 2, "lr": 0.001, "seed": 0, "seeds": 3}), "different config: epochs=2 vs 10"),
])
def test_apples_and_oranges_are_refused_or_marked_with_force(tmp_path, change, message):
    a = put(tmp_path / "a", result())
    b = put(tmp_path / "b", result(**change))
    proc = run(a, b)
    assert proc.returncode == 2 and message in proc.stderr and "05_water: b vs a" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    forced = run(a, b, "--force")
    assert forced.returncode == 0 and "MISMATCH" in forced.stdout and message in forced.stdout


def test_nested_data_parts_are_compared(tmp_path):
    parts = lambda fp: {"parts": {"train": {"source": "real", "fingerprint": "t"}, "test": {"source": "real", "fingerprint": fp}}}
    proc = run(put(tmp_path / "a", result(data=parts("x"))), put(tmp_path / "b", result(data=parts("y"))))
    assert proc.returncode == 2 and "data.parts.test.fingerprint" in proc.stderr


@pytest.mark.parametrize("name, content, message", [
    ("notes.txt", "hello", "not a JSON file"),
    ("other.json", '{"foo": 1}', "neither a suite result (schema_version 1) nor a pytest-benchmark JSON"),
    ("old.json", json.dumps(result(schema=2)), "schema_version 2; this tool reads schema_version 1"),
    ("partial.json", '{"schema_version": 1, "experiment": "x"}', "lacks keys"),
])
def test_unusable_files_are_refused_naming_them(tmp_path, name, content, message):
    a = put(tmp_path / "a", result())
    bad = tmp_path / name
    bad.write_text(content)
    proc = run(a, bad)
    assert proc.returncode == 2 and message in proc.stderr and str(bad) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_path_and_empty_dir_are_refused(tmp_path):
    a = put(tmp_path / "a", result())
    assert "no such file or directory" in run(a, tmp_path / "nope").stderr
    (tmp_path / "empty").mkdir()
    proc = run(a, tmp_path / "empty")
    assert proc.returncode == 2 and "no suite result JSONs" in proc.stderr


def bench(samples: dict[str, float], device="Xeon X", threads=2, ref_s=0.04) -> dict:
    benches = [{"name": "test_reference_matmul[cpu]", "stats": {"median": ref_s},
                "extra_info": {"kind": "reference", "device": "cpu", "flops": 2 * 1024 ** 3, "gflops": 2 * 1024 ** 3 / ref_s / 1e9,
                               "device_name": device, "threads": threads}}]
    for name, sps in samples.items():
        benches.append({"name": name, "stats": {"median": 32 / sps},
                        "extra_info": {"kind": "train_step", "device": "cpu", "samples_per_s": sps, "batch_size": 32,
                                       "flops_per_batch": 1e6, "device_name": device, "threads": threads}})
    return {"machine_info": {"cpu": {"brand_raw": device}}, "benchmarks": benches}


def test_benchmark_jsons_and_the_relative_throughput_plot(tmp_path):
    a, b = tmp_path / "laptop.json", tmp_path / "server.json"
    a.write_text(json.dumps(bench({"test_train_step[05.water-cpu]": 1000, "test_train_step[04.cnn-cpu]": 100})))
    b.write_text(json.dumps(bench({"test_train_step[05.water-cpu]": 3000, "test_train_step[04.cnn-cpu]": 150},
                                  device="Big Xeon", threads=16, ref_s=0.01)))
    png = tmp_path / "plots" / "rel.png"
    proc = run(a, b, "--plot", png)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "laptop (Xeon X, 2 thr)" in out and "server (Big Xeon, 16 thr)" in out
    assert "3.000" in next(l for l in out.splitlines() if l.startswith("test_train_step[05.water-cpu]"))
    assert "4.000" in next(l for l in out.splitlines() if l.startswith("test_reference_matmul[cpu] GFLOP/s"))
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    ratios = compare.throughput_ratios([compare.load_source(str(a)), compare.load_source(str(b))])
    assert ratios == {"train_step[04.cnn-cpu]": [1.0, 1.5], "train_step[05.water-cpu]": [1.0, 3.0]}


def test_benchmarks_of_different_batch_are_refused(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(bench({"test_train_step[x-cpu]": 10})))
    other = bench({"test_train_step[x-cpu]": 10})
    other["benchmarks"][1]["extra_info"]["batch_size"] = 64
    b.write_text(json.dumps(other))
    proc = run(a, b)
    assert proc.returncode == 2 and "different batch_size: 64 vs 32" in proc.stderr


def test_real_writer_output_one_thread_vs_two(tmp_path):
    """Results written by common.results.write_result (as the experiments do), at 1 and at 2 threads."""
    from common.data import DataInfo
    info = DataInfo(name="water", source="real", fingerprint="f" * 64, sizes={"train": 10})
    before = torch.get_num_threads()
    try:
        for threads, sps in ((1, 500.0), (2, 900.0)):
            torch.set_num_threads(threads)
            results.write_result("05_water", results_dir=tmp_path / f"t{threads}", status="ok", started_at="s",
                                 config={"epochs": 3, "results_dir": str(tmp_path / f"t{threads}")}, seeds=[0, 1],
                                 data=info, metrics={"adam.test_accuracy": 0.6}, std={"adam.test_accuracy": 0.02},
                                 per_seed={"adam.test_accuracy": [0.58, 0.62]}, headline="adam.test_accuracy",
                                 timings={"wall_s": 1.0, "train_samples_per_s": sps}, device="cpu")
    finally:
        torch.set_num_threads(before)
    proc = run(tmp_path / "t1", tmp_path / "t2")
    assert proc.returncode == 0, proc.stderr
    assert ", 1 thr)" in proc.stdout and ", 2 thr)" in proc.stdout and "1.800" in proc.stdout


# ------------------------------------------------------------------------------------ report
def test_report_has_course_figures_baselines_plots_and_environment(tmp_path):
    rd = put(tmp_path / "results", result("05_water_potability"),
             result("09_omniglot_multi", metrics={"multi_output.alphabet_test_accuracy": 0.3}))
    (rd / "05_water_potability").mkdir()
    (rd / "05_water_potability" / "curves.png").write_bytes(b"\x89PNG fake")
    out = tmp_path / "results" / "REPORT.md"
    assert report.main([str(rd), "--out", str(out)]) == 0
    text = out.read_text()
    water = text.split("## 05_water_potability")[1].split("## 09")[0]
    assert "> 67%" in water and "baseline.majority_accuracy (baseline) | 0.61 ± 0.01" in water
    assert "![05_water_potability: curves](05_water_potability/curves.png)" in water
    omni = text.split("## 09_omniglot_multi")[1]
    assert "31%" in omni and "24%" in omni and "67%" not in omni
    assert "Test CPU A" in text and "torch 2.x" in text and "| sigmoid(6) | 0.9975 |" in text


def test_columns_name_the_worker_processes_a_run_was_spread_over(tmp_path):
    spread = result(threads=1, timings={"wall_s": 5.0, "train_s": 8.0, "train_samples_per_s": 600.0, "workers": 2})
    a, b = put(tmp_path / "a", result(threads=2)), put(tmp_path / "b", spread)
    proc = run(a, b)
    assert proc.returncode == 0, proc.stderr
    assert "(Test CPU A, 2 thr)" in proc.stdout and "(Test CPU A, 1 thr x 2 workers)" in proc.stdout


def test_readme_table_ends_with_the_whole_runs_span_from_the_scripts_clocks():
    """First start 10:00:00, the last script (started 10:01:00) ends 200 s later: the run spans 260 s, although
    the wall times add up to 300 (05's two protocols overlap); records without a start time are left out."""
    a = result("05_water_potability_course", timings={"wall_s": 100.0})
    b = result("05_water_potability_clean", timings={"wall_s": 200.0})
    a["started_at"], b["started_at"] = "2026-11-30T10:00:00+00:00", "2026-11-30T10:01:00+00:00"
    assert report.run_span_s([a, b, result("01_tensors_and_layers")]) == 260.0
    assert report.run_span_s([result("01_tensors_and_layers")]) is None
    table = report.readme_table([a, b], "REPORT.md")
    assert table.endswith("the last one's end: 4 min (260 s; runs within a script may overlap on the CPU cores: "
                          "each result's timings.workers).\n")


def test_report_refuses_a_folder_without_results(tmp_path, capsys):
    assert report.main([str(tmp_path), "--out", str(tmp_path / "R.md")]) == 2
    assert "no result JSONs" in capsys.readouterr().err


def test_the_time_to_target_table_says_per_model_how_many_runs_reached_it_and_when():
    hit = {"time_to_target_s": 140.0, "epochs_to_target": 10, "best": 0.93, "best_epoch": 12, "train_s": 180.0}
    late = dict(hit, time_to_target_s=200.0, train_s=220.0)
    miss = {"time_to_target_s": None, "epochs_to_target": None, "best": 0.91, "best_epoch": 9, "train_s": 170.0}
    omni = result("08_omniglot_multi_input")
    omni["targets"] = {"clean.improved": results.target_record("val_char_accuracy", 0.92,
                                                               {"seed 0": hit, "seed 1": late, "seed 2": miss},
                                                               budget_s=180.0)}
    mse = dict(miss, best=0.05)
    rnn = result("06_electricity_rnn")
    rnn["targets"] = {"rnn": results.target_record("val_mse", 0.036, {"seed 0": mse}, higher_is_better=False)}
    rows = report.targets_table([omni, result("05_water_potability"), rnn])
    assert rows[2] == ("| 08_omniglot_multi_input clean.improved | val_char_accuracy >= 0.92 | 2 of 3 (1 within "
                       "180 s) | 170 s | 0.93 | 180 s |")
    assert rows[3] == "| 06_electricity_rnn rnn | val_mse <= 0.036 | 0 of 1 (no budget) | not reached | 0.05 | 170 s |"
    assert len(rows) == 4 and report.targets_table([result("05_water_potability")]) == []
    assert "Time to target" in report.readme_table([omni], "REPORT.md")


def test_the_ablation_table_lists_every_candidate_and_bolds_the_rules_choice(tmp_path):
    hit = {"time_to_target_s": 40.0, "epochs_to_target": 10, "best": 0.93, "best_epoch": 12, "train_s": 50.0}
    miss = dict(hit, time_to_target_s=None, epochs_to_target=None, best=0.91)
    r = result("04_clouds_cnn")
    r.update(experiment="04_clouds_cnn.ablation", metrics={"a.best": 0.91, "b.best": 0.935}, std={})
    r["targets"] = {"a": results.target_record("val_accuracy", 0.92, {"fold 1": miss, "fold 2": dict(miss, best=0.88)}),
                    "b": results.target_record("val_accuracy", 0.92, {"fold 1": hit, "fold 2": dict(hit, time_to_target_s=44.0)})}
    r["selection"] = {"validation": {"method": "2 folds"}, "chosen": {"size, epochs": [96, 30], "candidate": "b"},
                      "candidates": {"a": [64, 20], "b": [96, 30]}, "criterion": "the rule"}
    (tmp_path / "ablation").mkdir()
    path = tmp_path / "ablation" / "04_clouds_cnn.ablation.json"
    path.write_text(json.dumps(r))
    loaded = report.load_ablations(tmp_path)
    assert [p for p, _ in loaded] == [path]
    lines = report.ablation_tables(loaded, tmp_path)
    assert lines[0].startswith("`ablation/04_clouds_cnn.ablation.json` (04_clouds_cnn.ablation, 2 runs per candidate: "
                               "fold 1, fold 2; 2 folds)")
    assert lines[2] == ("| candidate | size, epochs | best validation | each run's best | runs that reached the target "
                        "| median time to target | median epochs to target |")
    assert lines[4] == "| a | 64, 20 | 0.91 | 0.88 – 0.91 | 0 of 2 (target 0.92) | – | – |"   # the runs' spread
    assert lines[5] == "| **b** | **96, 30** | 0.935 | 0.93 | 2 of 2 (target 0.92) | 42 s | 10 |"
    assert lines[7] == "Chosen: **b**, by the rule declared before the run: the rule."
    table = report.readme_table([result("04_clouds_cnn")], "R.md", loaded, tmp_path)   # a row with baselines too
    assert "ablations behind" in table and "\n`ablation/04_clouds_cnn.ablation.json` (" in table
    assert "ablations behind" not in report.readme_table([result("04_clouds_cnn")], "R.md")


def test_an_ablation_without_a_goal_names_its_folds_as_its_runs(tmp_path):
    """04's course-model ablation sets no target: its runs are its record's folds and the target columns say n/a."""
    r = result("04_clouds_cnn")
    r.update(experiment="04_clouds_cnn.course.ablation", metrics={"a.best": 0.61, "b.best": 0.6}, std={})
    r.pop("targets", None)
    r["selection"] = {"validation": {"method": "3 folds", "folds": 3}, "chosen": {"batch, lr": [16, 1e-3],
                      "candidate": "a"}, "candidates": {"a": [16, 1e-3], "b": [32, 1e-3]}, "criterion": "the best"}
    (tmp_path / "ablation").mkdir()
    (tmp_path / "ablation" / "04_clouds_cnn.course.ablation.json").write_text(json.dumps(r))
    lines = report.ablation_tables(report.load_ablations(tmp_path), tmp_path)
    assert lines[0].startswith("`ablation/04_clouds_cnn.course.ablation.json` (04_clouds_cnn.course.ablation, "
                               "3 runs per candidate: fold 1, fold 2, fold 3; 3 folds)")
    assert lines[4] == "| **a** | **16, 0.001** | 0.61 | – | n/a | – | – |"
    assert lines[5] == "| b | 32, 0.001 | 0.6 | – | n/a | – | – |"
