"""Device and numeric-precision choices for running a backbone."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys

import torch

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BELOW_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Stop glibc from handing freed activation buffers back to the kernel after each batch.

    PyTorch's CPU allocator is plain ``malloc``. With glibc's defaults, buffers of a few
    MB (every activation of a forward pass) are ``mmap``-ed and ``munmap``-ed, or trimmed
    from the heap top, on every batch, so each forward pass page-faults its activations
    afresh. BENCHMARKS.md section 1 measures the page faults and the extraction rate with
    the defaults and after this call. The cost is that memory freed below 1 GiB is kept for reuse rather
    than returned, so the process's peak memory does not shrink back while it runs.

    Returns
    -------
    bool
        True when the setting was applied (glibc); False elsewhere (nothing changes).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt)
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            return set(next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), []))
    except OSError:
        return set()


def cpu_has_amx() -> bool:
    """True when the CPU has AMX tiles for bf16 matrix maths."""
    return "amx_bf16" in _cpu_flags()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AMX tiles or AVX512-BF16), not by emulation."""
    return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r} (auto, cpu or cuda)")
    return torch.device(device)


def default_batch_size(device: torch.device) -> int:
    """Images per forward pass when ``--batch-size`` is not given: 16 on the CPU, 32 on CUDA.

    On a 2-core CPU (BENCHMARKS.md section 1, two runs of 3 alternating rounds) Lite0's
    whole extraction path in fp32 was fastest at 16 (medians 114 and 93 img/s against 107
    and 91 at 32), level with 32 in bf16, and 16 needs less memory (1168 against 1493 MB
    peak in fp32). A GPU keeps 32, where larger batches fill the device better.

    Parameters
    ----------
    device : torch.device
        The device the forward passes run on.

    Returns
    -------
    int
    """
    return 32 if device.type == "cuda" else 16


def resolve_precision(precision: str, device: torch.device, native_bf16: bool | None = None) -> str:
    """Pick the autocast precision for extraction and for fine-tuning.

    ``auto`` is fp16 autocast on CUDA; on the CPU it is bf16 where the CPU computes bf16
    natively (AMX or AVX512-BF16) and fp32 elsewhere, where bf16 is emulated and its
    conversions cost more than they save. BENCHMARKS.md section 15 measured bf16 against
    fp32 features over 23 paired runs on two datasets (mean val accuracy 0.9483 against
    0.9481) for an extraction 1.4x to 2.4x as fast on an AMX CPU; section 20 measures both
    precisions on the CPU at hand (on an AVX512-BF16 CPU without AMX: extraction 1.57x, a
    fine-tuning epoch 1.15x as fast in bf16; on an AMX CPU: extraction 1.48x, a fine-tuning
    epoch level with fp32). Training keeps fp32 master weights.

    Parameters
    ----------
    precision : {"auto", "fp32", "bf16", "fp16"}
    device : torch.device
    native_bf16 : bool, optional
        Whether the CPU has native bf16; read from the CPU's flags when not given.
    """
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if (cpu_has_native_bf16() if native_bf16 is None else native_bf16) else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r} (auto, fp32, bf16 or fp16)")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("--precision fp16 is only supported on CUDA; use bf16 or fp32 on CPU")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
