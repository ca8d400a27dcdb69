"""Where torch computes: ``--device cpu | cuda | cuda:N | mps``.

Episodes are always drawn and augmented on the CPU (their random streams are seeded CPU generators, so a
task source yields the same episodes whatever the device) and moved to the device one batch at a time.
"""

from __future__ import annotations

from pathlib import Path

import torch

DEVICE_KINDS = ("cpu", "cuda", "mps")


def resolve_device(name: str) -> torch.device:
    """The device ``name`` names, refused with the fix when the name is unknown or this machine lacks it."""
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in DEVICE_KINDS:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N (the N-th GPU) or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ValueError(f"--device {name}: PyTorch sees no CUDA GPU on this machine (torch {torch.__version__}, "
                             f"{build}); use --device cpu, or a CUDA build of torch where a GPU and its driver are")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}; "
                             "pick one of those")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: Apple's Metal (MPS) backend is not available here; use --device cpu")
    return device


def fast_bf16(device: torch.device | str) -> bool:
    """Whether bfloat16 autocast runs natively on ``device``: a CUDA GPU that supports it, or a CPU with the
    AVX-512 BF16 or AMX-BF16 instructions (read from Linux's ``/proc/cpuinfo``; elsewhere ``False``, since
    without them bf16 is emulated and slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))
