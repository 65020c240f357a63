"""Choose a device (auto | cpu | cuda | mps) and describe it for the result files."""
from __future__ import annotations

import platform

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


class DeviceError(RuntimeError):
    """The requested device is unknown or not available on this machine."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def choose_device(name: str = "auto") -> torch.device:
    """Return the device for ``name``.

    ``auto`` picks CUDA, then MPS, then falls back to the CPU. Asking explicitly for a device
    that is not there raises :class:`DeviceError` with a message saying so, rather than
    failing later deep inside torch.
    """
    name = (name or "auto").lower()
    if name not in DEVICE_CHOICES:
        raise DeviceError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but CUDA is not available on this machine "
                          "(torch.cuda.is_available() is False); use --device cpu or auto")
    if name == "mps" and not _mps_available():
        raise DeviceError("--device mps was asked for, but MPS is not available on this machine")
    return torch.device(name)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where present)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: torch.device) -> dict:
    """Name, type and (on CUDA) capability and memory of ``device``, plus CPU model and threads."""
    device = torch.device(device)
    info = {"type": device.type, "cpu_model": cpu_model(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 2))
    elif device.type == "mps":
        info.update(name="Apple MPS")
    else:
        info.update(name=info["cpu_model"])
    return info


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (needed before reading a clock on CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
