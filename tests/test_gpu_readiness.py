"""GPU readiness, tested on the CPU as far as the CPU allows (issue 16).

Numerics explicit and recorded (TF32 off by default, ``--tf32``, ``--strict-determinism``), the
device-side divergence check (``results.StepLog``: same epoch/step/value as a per-step check, status
``diverged`` and exit 3), data gathered on the device in the same order as the DataLoader's, the
benchmark fixture using the experiments' settings, determinism warnings visible under pytest.ini,
``--device auto`` never falling back silently, and ``run_all.sh --gpu-check`` refusing fast (exit 2,
with the reason) where CUDA is not usable. The CUDA paths themselves run only on a GPU machine
(``bash run_all.sh --gpu-check``).
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.nn as nn

from common import cli, device as devmod, repro, results
from tests.conftest import REPO, run_script

HAS_GPU_SIGNS = devmod.nvidia_gpu_present() or torch.cuda.is_available()


@pytest.fixture
def restore_numerics():
    """Leave torch's global flags as they were (other tests rely on the defaults)."""
    b = torch.backends
    before = (dict(repro._NUMERICS), torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), b.cudnn.deterministic, b.cudnn.benchmark,
              b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision(),
              torch.utils.deterministic.fill_uninitialized_memory)
    yield
    repro._NUMERICS.update(before[0])
    torch.use_deterministic_algorithms(before[1], warn_only=before[2])
    b.cudnn.deterministic, b.cudnn.benchmark = before[3], before[4]
    torch.set_float32_matmul_precision(before[7])
    b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = before[5], before[6]
    torch.utils.deterministic.fill_uninitialized_memory = before[8]


def _parse(*argv):
    return cli.parse_args(cli.base_parser("99_test", "test"), list(argv))


# ------------------------------------------------------------------------------------------ numerics
def test_tf32_is_off_by_default_and_tf32_opts_in(restore_numerics):
    torch.backends.cudnn.allow_tf32 = True          # torch's own default for cuDNN
    args = _parse()
    state = repro.numerics_state()
    assert args.tf32 is False and state["tf32_requested"] is False
    assert state["cudnn_allow_tf32"] is False and state["cuda_matmul_allow_tf32"] is False
    assert state["float32_matmul_precision"] == "highest"
    assert state["cublas_workspace_config"] == os.environ["CUBLAS_WORKSPACE_CONFIG"]
    args = _parse("--tf32")
    repro.seed_everything(0)                         # seeding keeps the requested TF32 setting
    state = repro.numerics_state()
    assert args.tf32 and state["tf32_requested"] and state["cudnn_allow_tf32"] and state["cuda_matmul_allow_tf32"]
    # only the CUDA switches: the CPU's oneDNN matmuls stay full fp32 even with --tf32
    assert getattr(torch.backends.mkldnn.matmul, "fp32_precision", "none") in ("none", "ieee")


def test_new_tensors_are_not_nan_filled_unless_strict_and_training_steps_are_the_same_either_way(restore_numerics):
    """common.repro turns torch's NaN fill of new tensors off (a memset of every buffer; --strict-determinism turns
    it back on). Two Adam steps of a channels_last conv-BN-ReLU-pool net (04's improved CNN) and of an LSTM (07's
    oneDNN path) end with bit-identical weights with and without the fill: none of their ops reads memory nothing
    wrote (if one did, NaN against leftover bytes would tell)."""
    from experiments.clouds import ImprovedNet
    _parse()
    repro.seed_everything(0)
    assert repro.numerics_state()["fill_uninitialized_memory"] is False

    def two_steps(fill: bool) -> list[torch.Tensor]:
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.manual_seed(0)
        cnn = ImprovedNet(widths=(8, 16)).to(memory_format=torch.channels_last)
        lstm, head = nn.LSTM(1, 16, batch_first=True), nn.Linear(16, 1)
        params = [*cnn.parameters(), *lstm.parameters(), *head.parameters()]
        opt = torch.optim.Adam(params, lr=1e-2)
        x = torch.randn(8, 3, 32, 32).to(memory_format=torch.channels_last)
        y, seq, target = torch.randint(0, 7, (8,)), torch.randn(8, 24, 1), torch.randn(8, 1)
        for _ in range(2):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(cnn(x), y) + nn.functional.mse_loss(head(lstm(seq)[0][:, -1]), target)
            loss.backward()
            opt.step()
        return [p.detach().clone() for p in params]

    filled, unfilled = two_steps(True), two_steps(False)
    assert len(filled) == 14 and all(torch.equal(a, b) for a, b in zip(filled, unfilled))
    _parse("--strict-determinism")
    repro.seed_everything(0)
    assert repro.numerics_state()["fill_uninitialized_memory"] is True and torch.empty(4).isnan().all()


def test_strict_determinism_errors_where_the_default_warns(restore_numerics):
    x = torch.randn(1, 1, 4, 4)
    out, idx = nn.functional.max_pool2d(x, 2, return_indices=True)   # max_unpool has no deterministic variant
    _parse()
    repro.seed_everything(0)
    assert repro.numerics_state()["deterministic_warn_only"] is True
    with pytest.warns(UserWarning, match="does not have a deterministic implementation"):
        nn.functional.max_unpool2d(out, idx, 2)
    _parse("--strict-determinism")
    repro.seed_everything(0)
    state = repro.numerics_state()
    assert state["strict_determinism"] and state["deterministic_algorithms"] and not state["deterministic_warn_only"]
    with pytest.raises(RuntimeError, match="deterministic"):
        nn.functional.max_unpool2d(out, idx, 2)


def test_environment_records_numerics_gpu_identity_and_compute_device(restore_numerics):
    _parse()
    repro.seed_everything(0)
    env = results.environment("cpu", compute_device="cpu")
    assert env["compute_device"] == "cpu" and env["gpu_used"] is False and env["peak_gpu_memory_bytes"] is None
    num = env["numerics"]
    for key in ("tf32_requested", "cudnn_allow_tf32", "cuda_matmul_allow_tf32", "float32_matmul_precision",
                "cudnn_deterministic", "cudnn_benchmark", "deterministic_algorithms", "deterministic_warn_only",
                "strict_determinism", "cublas_workspace_config"):
        assert key in num, key
    assert num["cudnn_deterministic"] is True and num["cudnn_benchmark"] is False and num["deterministic_algorithms"]
    gpu = env["gpu"]
    for key in ("cuda_available", "torch_cuda_build", "cuda_driver_version", "nvidia_driver", "gpu_count", "gpus",
                "unusable_reason"):
        assert key in gpu, key
    if not torch.cuda.is_available():
        assert gpu["gpu_count"] == 0 and gpu["unusable_reason"]
    assert "device_fallback" in env


def test_device_auto_never_falls_back_silently(monkeypatch, capsys):
    monkeypatch.setattr(devmod, "FALLBACK", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devmod, "nvidia_gpu_present", lambda: True)
    monkeypatch.setattr(devmod, "cuda_unusable_reason", lambda: "The NVIDIA driver on your system is too old")
    assert devmod.choose_device("auto").type in ("cpu", "mps")
    err = capsys.readouterr().err
    assert "GPU is present but torch cannot use it" in err and "too old" in err
    assert devmod.FALLBACK["reason"] == "The NVIDIA driver on your system is too old"
    assert results.environment("cpu")["device_fallback"]["requested"] == "auto"
    with pytest.raises(devmod.DeviceError, match="too old"):
        devmod.choose_device("cuda")


def test_to_device_is_a_no_op_where_the_tensor_already_is():
    t = torch.arange(5)
    assert devmod.to_device(t, "cpu") is t


# ------------------------------------------------------------------------------------------ divergence
def test_step_log_reads_back_once_with_the_exact_values():
    log = results.StepLog(every=1000)
    losses = [torch.tensor(v, dtype=torch.float32) for v in (0.1, 0.7, 2.5)]
    for step, loss in enumerate(losses):
        log.add(loss, 0, step)
    assert log.values() == [loss.item() for loss in losses]
    assert sum(log.values()) == sum(loss.item() for loss in losses)   # the same host-side sum


def test_step_log_names_the_first_non_finite_step_like_a_per_step_check():
    log = results.StepLog(every=4)          # also across an automatic read-back
    values = [1.0, 2.0, 3.0, 4.0, 5.0, float("nan"), float("inf"), 8.0]
    with pytest.raises(results.Diverged) as e:
        for step, v in enumerate(values):
            log.add(torch.tensor(v), 2, step, what="output" if step == 5 else "loss")
        log.values()
    assert (e.value.epoch, e.value.step) == (2, 5) and str(e.value.value) == "nan"
    assert "output became nan at epoch 2, step 5" in str(e.value)


def test_step_log_divergence_returns_what_values_would_raise():
    log = results.StepLog()
    for step, v in enumerate([1.0, 2.0]):
        log.add(torch.tensor(v), 0, step)
    assert log.divergence() is None
    log.add(torch.tensor(float("inf")), 1, 2, what="output")
    log.add(torch.tensor(float("nan")), 1, 3)
    e = log.divergence()
    assert isinstance(e, results.Diverged) and (e.epoch, e.step, e.what) == (1, 2, "output") and e.value == float("inf")


def test_03_fit_detects_a_nan_on_the_device_at_the_same_step_as_before(restore_numerics):
    """A NaN in one training row: the epoch-end check names the epoch and the step that saw the row."""
    exp = importlib.import_module("experiments.03_tabular_training")
    n = 12
    x = torch.rand(n, 16)
    x[7, 3] = float("nan")
    y = torch.randint(0, 7, (n,))
    repro.seed_everything(0)
    model = exp.zoo_classifier(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    perm = torch.randperm(n, generator=repro.make_generator(5))       # fit's own order for seed 5
    with pytest.raises(results.Diverged) as e:
        exp.fit(model, opt, nn.CrossEntropyLoss(), (x, y), None, epochs=2, batch_size=1, seed=5,
                clock=exp.Clock("cpu"), num_classes=7, run="zoo")
    assert e.value.epoch == 0 and e.value.step == int((perm == 7).nonzero()) and e.value.run == "zoo"


@pytest.mark.slow
def test_divergence_from_the_device_flag_gives_status_diverged_and_exit_3(results_dir):
    proc, r = run_script("06_electricity_rnn", "--smoke", "--synthetic", "--seeds", "1", "--lr", "1e30",
                         results_dir=results_dir, check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert r["status"] == "diverged" and r["diverged"][0]["epoch"] == 1 and isinstance(r["diverged"][0]["step"], int)


# data on the device: DeviceBatches equals the DataLoader's batches (tests/test_06_electricity_rnn.py)


# ------------------------------------------------------------------------------------------ benchmarks
def test_benchmark_fixture_uses_the_experiments_settings_and_restores_them(restore_numerics):
    from tests.benchmarks import conftest as bench
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    torch.backends.cudnn.allow_tf32 = True
    repro._NUMERICS.update(tf32=False, strict_determinism=False)
    with bench.experiments_numerics():             # what the deterministic_like_experiments fixture does
        inside = repro.numerics_state()
        repro.seed_everything(0)
        assert inside == repro.numerics_state()      # exactly what seed_everything sets
    assert inside["cudnn_deterministic"] and not inside["cudnn_benchmark"] and not inside["cudnn_allow_tf32"]
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.allow_tf32
    assert bench.reference_n(torch.device("cpu")) == 1024 and bench.reference_n(torch.device("cuda")) >= 8192


# ------------------------------------------------------------------------------------------ pytest.ini
def test_pytest_ini_lets_determinism_warnings_through(tmp_path):
    test = tmp_path / "test_nondeterministic.py"
    test.write_text(textwrap.dedent("""
        import torch
        def test_op_without_deterministic_variant():
            torch.use_deterministic_algorithms(True, warn_only=True)
            out, idx = torch.nn.functional.max_pool2d(torch.randn(1, 1, 4, 4), 2, return_indices=True)
            torch.nn.functional.max_unpool2d(out, idx, 2)
            torch.use_deterministic_algorithms(False)
    """))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-c", str(REPO / "pytest.ini"), "--rootdir", str(tmp_path),
                           "-p", "no:cacheprovider", "-q", str(test)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "does not have a deterministic implementation" in proc.stdout, proc.stdout[-2000:]


# ------------------------------------------------------------------------------------------ --gpu-check
@pytest.mark.skipif(HAS_GPU_SIGNS, reason="this machine shows an NVIDIA GPU: the refusal is tested where none is")
def test_gpu_check_refuses_fast_with_the_reason_without_cuda(tmp_path):
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / "run_all.sh"), "--gpu-check"], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "CUDA is not usable here" in proc.stderr and "no NVIDIA GPU" in proc.stderr
    assert elapsed < 10, f"took {elapsed:.1f}s"
    proc = subprocess.run([sys.executable, "-m", "tools.gpu_check", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2 and "nothing was run" in proc.stderr
    assert not any(tmp_path.iterdir())               # nothing written


def test_gpu_check_names_torchs_reason_when_a_gpu_is_seen_but_unusable(monkeypatch, capsys, tmp_path):
    gpu_check = importlib.import_module("tools.gpu_check")
    monkeypatch.setattr(gpu_check, "quick_refusal", lambda: None)
    monkeypatch.setattr(devmod, "cuda_unusable_reason", lambda: "RuntimeError: Found no NVIDIA driver on your system")
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "Found no NVIDIA driver" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_gpu_check_writes_pass_fail_per_item_and_the_environment(monkeypatch, tmp_path, restore_numerics):
    """The flow after the CUDA check, driven on the CPU: the smoke run of 01 with --device cuda fails here,
    so the check fails (exit 1) and says which item and why, in results/gpu-check/<machine>.json."""
    gpu_check = importlib.import_module("tools.gpu_check")
    monkeypatch.setattr(gpu_check, "cuda_check", lambda: ({"name": "Fake GPU", "torch": torch.__version__,
                                                           "torch_cuda_build": torch.version.cuda}, None))
    assert gpu_check.main(["--out", str(tmp_path), "--machine", "fake", "--only", "01", "--skip-benchmarks"]) == 1
    report = json.loads((tmp_path / "fake.json").read_text())
    items = {i["name"]: i for i in report["items"]}
    assert report["passed"] is False and set(items) == {"cuda", "smoke.01"}
    assert items["cuda"]["passed"] and not items["smoke.01"]["passed"] and items["smoke.01"]["required"]
    assert "exit 2" in items["smoke.01"]["detail"]["problems"]
    assert "CUDA is not available" in items["smoke.01"]["detail"]["stderr_tail"]
    assert report["environment"]["numerics"]["cudnn_allow_tf32"] is False and "gpu" in report["environment"]
    assert (tmp_path / "fake" / "logs" / "smoke.01.log").exists()


def test_gpu_check_knows_which_capabilities_a_build_supports():
    from tools.gpu_check import _arch_supported
    archs = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
    assert _arch_supported(9, 0, archs) and _arch_supported(8, 9, archs) and _arch_supported(12, 1, archs)
    assert not _arch_supported(7, 0, archs) and not _arch_supported(11, 0, archs)
    assert _arch_supported(11, 0, archs + ["compute_100"])


# ------------------------------------------------------------------------------------------ smoke runs
@pytest.mark.slow
def test_smoke_run_records_default_numerics_and_cpu_compute(results_dir):
    _, r = run_script("01_tensors_and_layers", "--smoke", "--seeds", "1", results_dir=results_dir)
    env = r["environment"]
    assert env["compute_device"] == "cpu" and env["gpu_used"] is False and env["peak_gpu_memory_bytes"] is None
    num = env["numerics"]
    assert (num["tf32_requested"] is False and num["cudnn_allow_tf32"] is False
            and num["cuda_matmul_allow_tf32"] is False)
    assert num["float32_matmul_precision"] == "highest" and num["deterministic_warn_only"] is True
    assert num["cublas_workspace_config"] and num["cudnn_deterministic"] is True
    # at their defaults the two options stay out of config (results from before them compare equal)
    assert "tf32" not in r["config"] and "strict_determinism" not in r["config"]


@pytest.mark.slow
def test_smoke_run_records_tf32_and_strict_determinism(results_dir):
    _, r = run_script("03_tabular_training", "--smoke", "--synthetic", "--tf32", "--strict-determinism",
                      results_dir=results_dir)
    assert r["status"] == "ok"      # the CPU paths have deterministic kernels throughout
    num = r["environment"]["numerics"]
    assert num["tf32_requested"] and num["cudnn_allow_tf32"] and num["cuda_matmul_allow_tf32"]
    assert num["strict_determinism"] and num["deterministic_algorithms"] and num["deterministic_warn_only"] is False
    assert r["config"]["tf32"] is True and r["config"]["strict_determinism"] is True
