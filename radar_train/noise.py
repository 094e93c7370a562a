"""Counter-based random numbers: value i of the stream with key k is a hash of (k, i).

Every sample (and every purpose) gets its own key, derived from its seed (`seeding.derive_seed`), so a
batch of streams is drawn with a few vectorised integer ops instead of one generator per sample, the
result does not depend on the batch, and CPU and CUDA produce the same integers (the float transforms
after them agree to rounding).

The hash is three rounds of the `lowbias32` 32-bit mixer (C. Wellons) over int64 tensors holding 32-bit
values; multiplications are split in 16-bit halves so no intermediate overflows int64. That is about 55
elementwise passes over the (rows, positions) int64 counters, each a kernel: on CUDA the same hash runs as one
jiterator kernel in 32-bit unsigned arithmetic (`_FUSED_SOURCE`), used once it gave the same integers as the
passes on a probe of edge and random values on the device (`fused_hash`); otherwise, and on other devices, the
passes run. The integers, and so every random stream, are the same either way.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

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


def _hash_passes(c: torch.Tensor, k0: torch.Tensor, k1: torch.Tensor) -> torch.Tensor:
    """The hash as elementwise torch passes: counters c, key halves k0 and k1 (broadcast together)."""
    return _mix32(_mix32(_mix32(c & _MASK32) ^ k0) ^ k1)


# the same hash per element in 32-bit unsigned arithmetic (wrapping multiplication): round 0 mixes the counter, rounds
# 1 and 2 the counter's mix xor each key half
_FUSED_SOURCE = """
template <typename T> T radar_hash32(T c, T k0, T k1) {
  unsigned int x = static_cast<unsigned int>(c);
  const unsigned int keys[3] = {0u, static_cast<unsigned int>(k0), static_cast<unsigned int>(k1)};
  for (int r = 0; r < 3; ++r) {
    x ^= keys[r];
    x ^= x >> 16; x *= 0x7FEB352Du; x ^= x >> 15; x *= 0x846CA68Bu; x ^= x >> 16;
  }
  return static_cast<T>(x);
}
"""
_fused: dict = {}  # CUDA device index -> the checked one-kernel hash, or None (the passes run there)


def check_fused(candidate: Callable, device: torch.device) -> bool:
    """Whether `candidate(c, k0, k1)` gives the passes' integers on `device` for a probe of counters (0 … 4095, the
    32-bit edges, values above 32 bits, negative ones) against keys with every bit pattern class (0, 1, the
    largest 63-bit key, random ones). Any error counts as no."""
    g = torch.Generator().manual_seed(0x5EED)
    keys = torch.cat((torch.tensor([0, 1, 2 ** 63 - 1, 0x7FFFFFFF, 0xFFFFFFFF]),
                      torch.randint(0, 2 ** 62, (11,), generator=g, dtype=torch.int64)))
    counter = torch.cat((torch.arange(4096), torch.tensor([2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 7, -1,
                                                           -(2 ** 33) - 5]), torch.randint(0, 2 ** 62, (64,), generator=g)))
    keys, counter = keys.to(device), counter.to(device).unsqueeze(0)
    k0, k1 = (keys & _MASK32).view(-1, 1), ((keys >> 32) & 0x7FFFFFFF).view(-1, 1)
    # broadcast keys (as every draw calls it), then the same values as contiguous tensors of one shape: jiterator
    # builds a kernel for each of the two layouts at its first call with it, so both are built here, outside any
    # CUDA graph capture
    c, a, b = counter.expand(len(keys), -1).contiguous(), k0.expand(-1, counter.shape[1]).contiguous(), \
        k1.expand(-1, counter.shape[1]).contiguous()
    try:
        return all(bool(torch.equal(candidate(*args), _hash_passes(*args))) for args in ((counter, k0, k1), (c, a, b)))
    except Exception:  # noqa: BLE001 - (a compiler or driver that cannot build it: the passes run)
        return False


def fused_hash(device: torch.device) -> Optional[Callable]:
    """The one-kernel hash on the CUDA `device` once `check_fused` accepted it there (built and checked at the first
    call outside a CUDA graph capture), else None."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index in _fused:
        return _fused[index]
    if torch.cuda.is_current_stream_capturing():  # (built and checked outside captures only: it synchronises)
        return None
    fn = None
    try:
        from torch.cuda import jiterator

        fn = jiterator._create_jit_fn(_FUSED_SOURCE)
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"radar_train.noise: the one-kernel hash could not be built on cuda:{index} ({e}); the "
                      f"elementwise passes run (the same numbers, more kernels)", stacklevel=2)
    if fn is not None and not check_fused(fn, torch.device("cuda", index)):
        warnings.warn(f"radar_train.noise: the one-kernel hash did not give the elementwise passes' integers on "
                      f"cuda:{index} (or could not be compiled there); the passes run", stacklevel=2)
        fn = None
    _fused[index] = fn
    return fn


def hash32(keys: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """32-bit hashes (int64 tensor) of every (key, counter) pair: keys (R,) 63-bit; counter (n,) shared
    by all keys, or (R, ...) per key -> (R, n) / (R, ...)."""
    shape = (-1,) + (1,) * max(1, counter.ndim - 1)
    k0 = (keys & _MASK32).view(shape)
    k1 = ((keys >> 32) & 0x7FFFFFFF).view(shape)
    c = counter.unsqueeze(0) if counter.ndim == 1 else counter
    fused = fused_hash(c.device)
    if fused is not None:
        return fused(c, k0, k1)
    return _hash_passes(c, k0, k1)


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
