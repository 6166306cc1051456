"""Device and numeric precision choices for running a network (no heavy imports).

Kept apart from :mod:`inference.predictor` so the trainer can use it on a
machine that has torch but none of the DICOM/imaging libraries (the GPU
training bundle, ``training/device_bundle.py``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch

from contourd.errors import InferenceError

Precision = Literal["auto", "fp32", "bf16", "fp16"]

__all__ = ["Precision", "cpu_supports_bf16", "resolve_device", "resolve_precision"]


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 (AVX512-BF16 or AMX) per /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="ignore")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``/``"cuda[:n]"`` as given.

    Raises
    ------
    InferenceError
        When CUDA is asked for but absent.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(
            f"device {device!r} was requested but torch {torch.__version__} sees no CUDA "
            "device; use device 'auto' or 'cpu'"
        )
    return dev


def resolve_precision(precision: Precision, device: torch.device) -> torch.dtype:
    """The autocast dtype for ``precision`` on ``device`` (float32 = no autocast)."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32
