"""Deterministic seed derivation: one independent random stream per (sample seed, scale, purpose, ...)."""
from __future__ import annotations

import hashlib
import struct

import torch

_MASK63 = (1 << 63) - 1


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a fixed function of `parts` (ints or short strings).

    Injective for all practical purposes (BLAKE2b over a length-prefixed encoding), stable across
    Python/torch versions and platforms."""
    h = hashlib.blake2b(digest_size=8, person=b"radar-seed")
    for p in parts:
        b = p.encode() if isinstance(p, str) else struct.pack("<q", int(p))
        h.update(struct.pack("<I", len(b)) + (b"s" if isinstance(p, str) else b"i") + b)
    return int.from_bytes(h.digest(), "little") & _MASK63


def seed_range_problems(option: str, first: int, count: int) -> list[str]:
    """The problem with seeds first .. first + count - 1 (sample i's seed is first + i, kept as int64), named
    `option`: [] when they all lie in [0, 2**63)."""
    if 0 <= first <= 2 ** 63 - count:
        return []
    return [f"{option} must be in [0, 2**63 - {count}] (the {count} samples get seeds {first} .. + {count - 1}, "
            f"each below 2**63), got {first}"]


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g
