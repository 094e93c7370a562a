"""Interpolations of small square grids as one matrix product, where the interpolation kernel is the slow way.

A resize of p×p to P×P is linear in the grid: a (P², p²) matrix, which `resize_matrix` makes by running the
interpolation itself on the identity (in float64, so each weight is rounded once to the working dtype). On CUDA
two of F.interpolate's kernels are slow at the sizes sampling uses:

- bicubic (the sampler's upsampling of each scale's token map to the last grid): the kernel runs one thread per
  output cell, each looping over every (image, channel) plane, so a 16×16 output gets 256 threads for 32 × 32
  planes: 0.22-0.29 ms per call on an H200 for any input size, nine calls per VAR-d16 sampling call (2026-12-04
  probe, benchmarks/gpu/2026-12-04c-nvidia-h200-probe-bicubic.log), where the product is one small GEMM;
- area upsampling (FastVAR's and StageVAR's restores: 70-106 µs per call in the 2026-12-04 profile).

The product computes the same weighted sums, in another order: equal values up to float rounding (bicubic), or
equal sums of at most four terms with exact weights 1, 1/2, 1/4 (area upsampling). It is used where the device's
matrix products keep the operands' precision (`matmul_resize_dtypes`): on CUDA only, and for float32 only while
TF32 matrix products are off (torch's default). On the CPU the kernels stay: the area kernel is the faster one
there, and the bicubic one, although slower than the product at batch 32 (1.1 against 0.03-0.33 ms per call on 2
cores), costs a few milliseconds of a VAR-d16 call that takes seconds on a CPU, and keeps the sampler's floats
those of the official code (the reference fixtures, the official noise's draws).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def matmul_resize_dtypes(device: torch.device) -> frozenset[torch.dtype]:
    """The dtypes in which a resize on `device` may run as a matrix product: on CUDA, bf16 and fp16 (cuBLAS
    accumulates in float32), and float32 while TF32 matrix products are off (torch's default; with TF32 on, a float32
    product would round its operands). Nothing on other devices (the module's docstring says why)."""
    if device.type != "cuda":
        return frozenset()
    exact = {torch.bfloat16, torch.float16}
    return frozenset(exact if torch.backends.cuda.matmul.allow_tf32 else exact | {torch.float32})


_MATRICES: dict[tuple, torch.Tensor] = {}


def resize_matrix(p: int, P: int, mode: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """F.interpolate(·, size=(P, P), mode=mode) of a p×p grid as a (P², p²) matrix (row-major cells), made by the
    interpolation itself on the identity in float64 and rounded once to `dtype`. Kept per (p, P, mode, dtype, device)
    for the process, so that a captured CUDA graph reads the same tensor at every replay (made again on each call
    while torch.compile traces)."""
    key, compiling = (p, P, mode, dtype, device), torch.compiler.is_compiling()
    if not compiling and key in _MATRICES:
        return _MATRICES[key]
    eye = torch.eye(p * p, device=device, dtype=torch.float64).view(p * p, 1, p, p)
    m = F.interpolate(eye, size=(P, P), mode=mode).view(p * p, P * P).t().contiguous().to(dtype)
    if not compiling:
        _MATRICES[key] = m
    return m


def area_matrix(p: int, pn: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The area resize of a p×p grid to pn×pn as a (pn², p²) matrix. For pn ≥ p each output cell averages one or
    two cells per axis, so every weight is 1, 1/2 or 1/4: exact in any float dtype."""
    return resize_matrix(p, pn, "area", dtype, device)


def upsample_bicubic(x: torch.Tensor, P: int) -> torch.Tensor:
    """F.interpolate(x, size=(P, P), mode="bicubic") of x (B, C, p, p), P ≥ p, as a new NCHW tensor: for float32 on a
    device whose float32 products are exact (`matmul_resize_dtypes`: CUDA with TF32 off) one matrix product with
    `resize_matrix` (the kernel's weights; equal up to float rounding); otherwise the kernel, on a contiguous copy on
    CUDA (the kernel reads a channels-last-strided map, as the sampler's token maps are, about 3x slower)."""
    B, C, p, _ = x.shape
    if x.dtype == torch.float32 and x.dtype in matmul_resize_dtypes(x.device):
        with torch.autocast(x.device.type, enabled=False):  # (autocast would round the float32 operands to bf16)
            w = resize_matrix(p, P, "bicubic", x.dtype, x.device)
            return torch.mm(x.reshape(B * C, p * p), w.t()).view(B, C, P, P)
    if x.is_cuda:
        x = x.contiguous()
    return F.interpolate(x, size=(P, P), mode="bicubic")
