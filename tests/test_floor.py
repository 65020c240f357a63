"""tools.floor: the training FLOPs of a run and the least time they take at the machine's matmul rate.

Checked on the committed AVX2 run and the benchmarks recorded on the same CPU (results/reference/epyc-avx2-2cpu):
the samples and FLOPs recomputed here by hand from the JSONs, the refusals (another machine's benchmarks, a smoke
result, a file that is no benchmark JSON), and the README's sentence against the tool's figures.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tools import floor

REPO = Path(__file__).resolve().parent.parent
AVX2 = REPO / "results/reference/epyc-avx2-2cpu"
AVX512 = REPO / "results/reference/epyc-avx512-2cpu"
BENCH = AVX2 / "benchmarks.json"


def bench_cases() -> tuple[float, dict]:
    bench = json.loads(BENCH.read_text())
    infos = [b["extra_info"] for b in bench["benchmarks"] if b["extra_info"]["device"] == "cpu"]
    ref = next(i["gflops"] for i in infos if i["kind"] == "reference")
    return ref, {i["case"]: i for i in infos if i["kind"] == "train_step"}


def test_the_floor_of_the_avx2_run_counts_each_models_samples_at_its_step_flops():
    gflops, steps, machine = floor.read_bench(BENCH)
    ref, cases = bench_cases()
    assert gflops == ref and machine == {"name": "AMD EPYC (AVX2)", "cpu_family": 25, "cpu_model_number": 1}
    rows = {r["experiment"]: r for r in floor.floor_rows(AVX2, gflops, steps, machine)}
    assert set(rows) == {"03_tabular_training", "04_clouds_cnn", "05_water_potability_clean",
                         "05_water_potability_course", "06_electricity_rnn", "07_lstm_vs_gru",
                         "08_omniglot_multi_input", "09_omniglot_multi_output"}   # 01 and 02 train nothing
    clouds = json.loads((AVX2 / "04_clouds_cnn.json").read_text())
    t = clouds["timings"]
    improved = t["improved.train_s"] * t["improved.train_samples_per_s"]   # 5 seeds x 60 epochs x 474 images
    assert improved == pytest.approx(5 * 60 * 474, rel=1e-6)
    assert rows["04_clouds_cnn"]["parts"]["improved"] == pytest.approx(
        improved * cases["04.improved_cnn"]["flops_per_sample"] / 1e12)
    # the folds: 3 x 316 fitting images, the course model 30 candidate epochs, the improved one its 60
    assert rows["04_clouds_cnn"]["parts"]["improved folds"] == pytest.approx(
        3 * 316 * 60 * cases["04.improved_cnn"]["flops_per_sample"] / 1e12)
    assert rows["04_clouds_cnn"]["parts"]["course folds"] == pytest.approx(
        3 * 316 * 30 * cases["04.course_cnn"]["flops_per_sample"] / 1e12)
    gru = json.loads((AVX2 / "07_lstm_vs_gru.json").read_text())["timings"]["per_seed"]
    gru_samples = sum(s * r for s, r in zip(gru["gru.train_s"], gru["gru.train_windows_per_s"]))
    assert rows["07_lstm_vs_gru"]["parts"]["gru"] == pytest.approx(
        gru_samples * cases["07.course_gru"]["flops_per_sample"] / 1e12)
    # 08 records its four runs' samples together: counted at the cheaper model's FLOPs (a lower bound)
    om = json.loads((AVX2 / "08_omniglot_multi_input.json").read_text())["timings"]
    cheaper = min(cases["08.course_model_two_input"]["flops_per_sample"],
                  cases["08.improved_two_input"]["flops_per_sample"])
    assert rows["08_omniglot_multi_input"]["tflop"] == pytest.approx(
        om["train_s"] * om["train_samples_per_s"] * cheaper / 1e12)
    for r in rows.values():
        assert r["floor_s"] == pytest.approx(r["tflop"] * 1e12 / (gflops * 1e9))
    total = sum(r["floor_s"] for r in rows.values())
    assert total > 900   # the 15 minutes cannot hold for this work on this CPU
    assert rows["04_clouds_cnn"]["floor_s"] > 0.5 * total


def test_the_floor_refuses_another_machines_benchmarks_a_smoke_result_and_a_file_that_is_no_benchmark(tmp_path):
    gflops, steps, machine = floor.read_bench(BENCH)
    with pytest.raises(floor.FloorError, match=r"ran on AMD EPYC \(AVX512\) .* the benchmarks on AMD EPYC \(AVX2\)"):
        floor.floor_rows(AVX512, gflops, steps, machine)
    smoke = json.loads((AVX2 / "06_electricity_rnn.json").read_text())
    smoke["config"]["smoke"] = True
    (tmp_path / "06_electricity_rnn.json").write_text(json.dumps(smoke))
    with pytest.raises(floor.FloorError, match="a --smoke result"):
        floor.floor_rows(tmp_path, gflops, steps, machine)
    shutil.copy(AVX2 / "01_tensors_and_layers.json", tmp_path / "06_electricity_rnn.json")
    with pytest.raises(floor.FloorError, match="no result that trains a model"):
        floor.floor_rows(tmp_path, gflops, steps, machine)
    (tmp_path / "bench.json").write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(floor.FloorError, match="not a pytest-benchmark JSON"):
        floor.read_bench(tmp_path / "bench.json")
    assert floor.main([str(AVX512), str(BENCH)]) == 2
    assert floor.main([str(AVX2), str(BENCH), "--gflops", "0"]) == 2


def test_the_floor_divides_by_the_rate_given(capsys):
    """--gflops: the same FLOPs over another rate (a larger matmul's): twice the rate, half the floor."""
    gflops, steps, machine = floor.read_bench(BENCH)
    total = sum(r["floor_s"] for r in floor.floor_rows(AVX2, gflops, steps, machine))
    assert floor.main([str(AVX2), str(BENCH), "--gflops", str(2 * gflops), "--goal-s", "100"]) == 0
    out = capsys.readouterr().out
    assert f"floor (s) at {2 * gflops:,.0f} GFLOP/s" in out
    assert f"The training floor of these results is {total / 2:,.0f} s, above a goal of 100 s." in out


def test_the_readme_says_what_the_floor_tool_finds_for_the_avx2_run(capsys):
    assert floor.main([str(AVX2), str(BENCH)]) == 0
    out = capsys.readouterr().out
    gflops, steps, machine = floor.read_bench(BENCH)
    rows = floor.floor_rows(AVX2, gflops, steps, machine)
    total_tflop, total_s = sum(r["tflop"] for r in rows), sum(r["floor_s"] for r in rows)
    assert f"The training floor of these results is {total_s:,.0f} s, above a goal of 900 s." in out
    _, cases = bench_cases()
    best = max(c["gflops_fraction_of_reference"] for c in cases.values())
    readme = " ".join((REPO / "README.md").read_text().split())
    assert (f"counts {total_tflop:.0f} TFLOP of training in that run, which at that CPU's 1024x1024 matmul rate "
            f"({gflops:.0f} GFLOP/s) take at least {total_s:,.0f} s") in readme
    clouds = next(r for r in rows if r["experiment"] == "04_clouds_cnn")
    assert f"04 alone is {clouds['floor_s']:,.0f} s of it" in readme
    assert f"the fastest training step here (04's improved CNN) runs at {best:.2f} of that rate" in readme
    assert max(cases, key=lambda c: cases[c]["gflops_fraction_of_reference"]) == "04.improved_cnn"
