"""Numeric precision of a training run: fp32, or bf16 autocast (the default on CUDA); TF32
matmuls on CUDA. bf16 keeps fp32's exponent range, so no loss scaling is needed."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16")


def resolve_precision(precision: str | None, device: str) -> str:
    """`precision`, or the default for `device`: bf16 on CUDA, fp32 elsewhere."""
    if precision is not None:
        return precision
    return "bf16" if str(device).startswith("cuda") else "fp32"


def configure_matmuls(device: str) -> None:
    """TF32 for fp32 matmuls and convolutions on CUDA (Ampere and newer: ~2x, 10-bit mantissa)."""
    if str(device).startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(precision: str, device: str) -> contextlib.AbstractContextManager:
    """The forward's autocast context: bf16 on `device` for "bf16", nothing for "fp32"."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
