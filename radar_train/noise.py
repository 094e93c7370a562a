"""Counter-based random numbers: value i of the stream with key k is a hash of (k, i).

Every sample (and every purpose) gets its own key, derived from its seed (`seeding.derive_seed`), so a
batch of streams is drawn with a few vectorised integer ops instead of one generator per sample, the
result does not depend on the batch, and CPU and CUDA produce the same integers (the float transforms
after them agree to rounding).

The hash is three rounds of the `lowbias32` 32-bit mixer (C. Wellons) over int64 tensors holding 32-bit
values; multiplications are split in 16-bit halves so no intermediate overflows int64.
"""
from __future__ import annotations

import math

import torch

_MASK32 = 0xFFFFFFFF
_CHUNK = 1 << 24  # elements per chunk (bounds the temporaries)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x · c) mod 2³² for x in [0, 2³²) and a constant c < 2³², without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hash32(keys: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """32-bit hashes (int64 tensor) of every (key, counter) pair: keys (R,) 63-bit; counter (n,) shared
    by all keys, or (R, ...) per key -> (R, n) / (R, ...)."""
    shape = (-1,) + (1,) * max(1, counter.ndim - 1)
    k0 = (keys & _MASK32).view(shape)
    k1 = ((keys >> 32) & 0x7FFFFFFF).view(shape)
    c = counter.unsqueeze(0) if counter.ndim == 1 else counter
    h = _mix32(c & _MASK32)
    return _mix32(_mix32(h ^ k0) ^ k1)


def to_unit(h: torch.Tensor) -> torch.Tensor:
    """32-bit hashes -> float32 uniforms in (0, 1) (24-bit resolution)."""
    return ((h >> 8).float() + 0.5) * (1.0 / (1 << 24))


def gumbel_at(keys: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """Gumbel noise at explicit stream positions: keys (R,), counter (R, ...) -> (R, ...)."""
    return to_unit(hash32(keys, counter)).log_().neg_().log_().neg_()


def uniform(keys: torch.Tensor, n: int, offset: int = 0) -> torch.Tensor:
    """(R, n) float32 uniforms in (0, 1): values offset … offset+n−1 of each key's stream."""
    R = keys.shape[0]
    out = torch.empty(R, n, dtype=torch.float32, device=keys.device)
    step = max(1, _CHUNK // max(R, 1))
    for start in range(0, n, step):
        stop = min(n, start + step)
        c = torch.arange(offset + start, offset + stop, device=keys.device, dtype=torch.int64)
        out[:, start:stop] = to_unit(hash32(keys, c))
    return out


def gumbel(keys: torch.Tensor, n: int, offset: int = 0) -> torch.Tensor:
    """(R, n) standard Gumbel noise −log(−log U)."""
    return uniform(keys, n, offset).log_().neg_().log_().neg_()


def normal(keys: torch.Tensor, n: int, offset: int = 0) -> torch.Tensor:
    """(R, n) standard normals (Box–Muller on values offset… and offset+n…)."""
    u1 = uniform(keys, n, offset)
    u2 = uniform(keys, n, offset + n)
    return u1.log_().mul_(-2.0).sqrt_().mul_(torch.cos(u2.mul_(2 * math.pi)))


def key_tensor(keys, device: torch.device | str) -> torch.Tensor:
    """Stream keys (a list, possibly nested, of 63-bit ints made on the host) as an int64 tensor on `device`;
    to CUDA through pinned memory without blocking, so no host synchronisation happens."""
    return to_device(torch.tensor(keys, dtype=torch.int64), device)


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on `device`: CUDA copies go through pinned memory with non_blocking (a pageable copy
    would wait for the device to finish its queued work)."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
