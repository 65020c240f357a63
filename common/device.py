"""Choose a device (auto | cpu | cuda | mps) and describe it for the result files."""
from __future__ import annotations

import ctypes
import functools
import glob
import os
import platform
import shutil
import subprocess
import sys

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
# set by choose_device("auto") when an NVIDIA GPU is present but torch cannot use it; recorded in the JSON
FALLBACK: dict | None = None


# glibc's malloc hands every freed block above its mmap threshold (128 KiB at first) back to the system at once, and
# trims the heap's free top above 128 KiB: a training step's large temporaries (oneDNN's LSTM workspace, the
# convolutions' buffers) then come from fresh pages, which the kernel zeroes on first touch, every step. Kept in the
# process instead, measured on the 2-core AVX-512 EPYC (one thread, median training step): 07's LSTM at batch 128
# 26.8 -> 12.2 ms, 04's course and improved CNNs 73 -> 54 and 111 -> 72 ms, 09's course model 66 -> 47 ms; the
# steps whose buffers stay small (05's MLPs, the GRU) unchanged. Without it the same step took either time from one
# process to the next (glibc raises its threshold by itself after the first large free), which was most of the A/B
# gate's noise. The mmap threshold: 256 MiB (the LSTM's workspace at batch 512 is larger than 32 MiB), or 32 MiB
# where glibc refuses that (older versions cap it there).
CPU_ALLOCATOR = {"mmap_threshold": (256 * 2 ** 20, 32 * 2 ** 20), "trim_threshold": 2 ** 30}
ALLOCATOR: dict | None = None   # what tune_cpu_allocator set in this process (recorded in the result's environment)


def tune_cpu_allocator() -> dict | None:
    """Keep freed memory in the process (``CPU_ALLOCATOR`` through glibc's ``mallopt``); the same figures, faster
    and steadier timings. Returns what it set, or None: not glibc (no ``mallopt``, or it refused), or the user's
    own ``MALLOC_*`` settings in the environment, which win. Idempotent; forked workers inherit it."""
    global ALLOCATOR
    if ALLOCATOR is not None:
        return ALLOCATOR
    if any(k.startswith("MALLOC_") for k in os.environ) or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt   # this process's C library
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3   # glibc's <malloc.h>
    mmap = next((t for t in CPU_ALLOCATOR["mmap_threshold"] if mallopt(m_mmap_threshold, t) == 1), None)
    if mmap is None or mallopt(m_trim_threshold, CPU_ALLOCATOR["trim_threshold"]) != 1:
        return None
    ALLOCATOR = {"via": "glibc mallopt", "mmap_threshold": mmap, "trim_threshold": CPU_ALLOCATOR["trim_threshold"]}
    return ALLOCATOR


class DeviceError(RuntimeError):
    """The requested device is unknown or not available on this machine."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def choose_device(name: str = "auto") -> torch.device:
    """Return the device for ``name``.

    ``auto`` picks CUDA, then MPS, then falls back to the CPU; where an NVIDIA GPU is present but
    unusable it says so on stderr and records why in :data:`FALLBACK`. Asking explicitly for a device
    that is not there raises :class:`DeviceError` with a message saying so, rather than
    failing later deep inside torch.
    """
    global FALLBACK
    name = (name or "auto").lower()
    if name not in DEVICE_CHOICES:
        raise DeviceError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        chosen = torch.device("mps") if _mps_available() else torch.device("cpu")
        if nvidia_gpu_present():
            # never silently: a GPU is there but unusable (e.g. a driver too old for this torch build)
            reason = cuda_unusable_reason()
            FALLBACK = {"requested": "auto", "chosen": chosen.type, "reason": reason}
            print(f"warning: --device auto: an NVIDIA GPU is present but torch cannot use it ({reason}); "
                  f"running on {chosen.type} (recorded in the result's environment.device_fallback)", file=sys.stderr)
        return chosen
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but CUDA is not available on this machine "
                          f"(torch.cuda.is_available() is False: {cuda_unusable_reason()}); use --device cpu or auto")
    if name == "mps" and not _mps_available():
        raise DeviceError("--device mps was asked for, but MPS is not available on this machine")
    return torch.device(name)


def nvidia_gpu_present() -> bool:
    """Whether this machine shows signs of an NVIDIA GPU (device nodes, driver, nvidia-smi), without CUDA."""
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/proc/driver/nvidia/version")
                or shutil.which("nvidia-smi"))


def cuda_unusable_reason() -> str | None:
    """Why torch cannot use CUDA here, in words (None when it can)."""
    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return "CUDA_VISIBLE_DEVICES is set to an empty string (no GPU visible)"
    if not nvidia_gpu_present():
        return "no NVIDIA GPU or driver found (no /dev/nvidia*, /proc/driver/nvidia or nvidia-smi)"
    try:
        torch.cuda.init()   # raises with torch's own reason, e.g. "The NVIDIA driver on your system is too old"
    except Exception as e:  # noqa: BLE001 - any failure is the answer
        return f"{type(e).__name__}: {e}".strip()
    if torch.cuda.device_count() < 1:
        return "CUDA initialised but reports no device"
    return None


def cuda_driver_version() -> int | None:
    """The CUDA version the installed driver supports (cuDriverGetVersion, e.g. 12080), or None."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int(0)
        return int(v.value) if lib.cuDriverGetVersion(ctypes.byref(v)) == 0 else None
    except (OSError, AttributeError):
        return None


@functools.cache
def nvidia_smi_gpus(timeout_s: float = 5.0) -> list[dict] | None:
    """One dict per GPU from ``nvidia-smi --query-gpu`` (driver, name, UUID, MIG mode, memory), or None."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    fields = ("index", "name", "uuid", "driver_version", "mig.mode.current", "memory.total", "compute_cap")
    try:
        out = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return [dict(zip(fields, (v.strip() for v in line.split(",")))) for line in out.stdout.splitlines() if line.strip()]


def gpu_info() -> dict:
    """Driver and GPU identity for the result files: cheap and without side effects where no GPU is.

    CUDA is only initialised where torch says it is available; nvidia-smi (if present) is asked
    once per process with a short timeout.
    """
    info = {"cuda_available": torch.cuda.is_available(), "torch_cuda_build": torch.version.cuda,
            "cuda_driver_version": None, "nvidia_driver": None, "gpu_count": 0, "gpus": [],
            "unusable_reason": None}
    present = nvidia_gpu_present()
    if present:
        info["cuda_driver_version"] = cuda_driver_version()
        smi = nvidia_smi_gpus() or []
        info["nvidia_driver"] = smi[0]["driver_version"] if smi else None
        info["nvidia_smi"] = smi
    if info["cuda_available"]:
        info["gpu_count"] = torch.cuda.device_count()
        for i in range(info["gpu_count"]):
            p = torch.cuda.get_device_properties(i)
            uuid = str(getattr(p, "uuid", "") or "") or None
            smi = info.get("nvidia_smi") or []
            smi_row = next((r for r in smi if uuid and uuid in r.get("uuid", "")), None)
            if smi_row is None:   # no UUID match (e.g. a MIG instance): one GPU seen both ways is the same one
                smi_row = smi[0] if len(smi) == 1 and info["gpu_count"] == 1 else {}
            info["gpus"].append({"index": i, "name": p.name, "uuid": uuid, "capability": f"{p.major}.{p.minor}",
                                 "memory_gib": round(p.total_memory / 2**30, 2),
                                 "mig_mode": smi_row.get("mig.mode.current"), "nvidia_smi_uuid": smi_row.get("uuid")})
    else:
        info["unusable_reason"] = cuda_unusable_reason()
    return info


def peak_gpu_memory() -> int | None:
    """Peak bytes torch allocated on the current CUDA device in this process (None where CUDA never ran)."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return int(torch.cuda.max_memory_allocated())


def _first_cpuinfo() -> dict:
    """The first processor's "key: value" lines of /proc/cpuinfo ({} where there is none)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():   # a blank line ends the first processor's block
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where present)."""
    return _first_cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_identity() -> dict:
    """What tells two CPUs of one model name apart ("AMD EPYC" names AVX2 and AVX-512 parts alike): the vector
    instruction set torch's CPU kernels dispatch to (``torch.backends.cpu.get_cpu_capability()``: DEFAULT,
    AVX2, AVX512, ...) and /proc/cpuinfo's cpu family and model numbers (None where absent)."""
    fields = _first_cpuinfo()
    number = {k: int(fields[k]) if fields.get(k, "").isdigit() else None for k in ("cpu family", "model")}
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_family": number["cpu family"],
            "cpu_model_number": number["model"]}


def describe_device(device: torch.device) -> dict:
    """Name, type and (on CUDA) capability and memory of ``device``, plus the CPU (model name, ``cpu_identity``)
    and threads. On the CPU the name carries the instruction set, e.g. "AMD EPYC (AVX512)"."""
    device = torch.device(device)
    info = {"type": device.type, "cpu_model": cpu_model(), **cpu_identity(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 2))
    elif device.type == "mps":
        info.update(name="Apple MPS")
    else:
        info.update(name=f"{info['cpu_model']} ({info['cpu_capability']})")
    return info


def to_device(t: torch.Tensor, device: torch.device, pin: bool = True) -> torch.Tensor:
    """``t`` on ``device``; from the CPU to CUDA through pinned memory with ``non_blocking`` (no host wait).

    A no-op where ``t`` is already there (the CPU path is unchanged). torch keeps the pinned buffer
    alive until the copy has run.
    """
    device = torch.device(device)
    if t.device == device or (device.type == t.device.type and device.index is None):
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return (t.pin_memory() if pin and not t.is_pinned() else t).to(device, non_blocking=True)
    return t.to(device)


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (needed before reading a clock on CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
