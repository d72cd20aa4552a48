"""Device selection: CUDA when there is one, the CPU otherwise; nothing assumes CUDA."""

from __future__ import annotations

import ctypes
import sys

import torch

# glibc's mallopt parameters (<malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available; use --device cpu or auto")
    return device


def describe_device(device: torch.device) -> str:
    """Human-readable name of the hardware, for metadata and the app."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def keep_freed_memory(mmap_threshold_mb: int = 32, trim_threshold_mb: int = 512) -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    Every inner step allocates and frees the same few activation buffers (100 KB to a few MB). By
    default glibc serves each from a fresh ``mmap`` or trims the heap after it is freed, so the next
    step faults every page in again, which is slow on this project's virtual machines (``python -m
    benchmarks.bench`` against ``--system-malloc``: docs/performance.md). Allocations under
    ``mmap_threshold_mb`` (glibc's maximum, 32) come from the heap, and up to ``trim_threshold_mb``
    of free heap is kept. Process-wide and idempotent; returns False where it does not apply (not
    glibc), which changes nothing else.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Setting either threshold also switches off glibc's dynamic mmap threshold, so set both.
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold_mb << 20) and mallopt(_M_TRIM_THRESHOLD, trim_threshold_mb << 20))
