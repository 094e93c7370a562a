"""Counter-based noise: matches an independent pure-Python hash, uniform statistics, stream separation."""
import math

import pytest
import torch

from radar_train import noise


def _lowbias32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def _ref_hash(key: int, i: int) -> int:
    return _lowbias32(_lowbias32(_lowbias32(i) ^ (key & 0xFFFFFFFF)) ^ ((key >> 32) & 0x7FFFFFFF))


def test_hash_matches_pure_python_reference():
    keys = [0, 1, 2**62 + 12345, 987654321987654321]
    counter = [0, 1, 2, 2**31 - 1, 2**32 - 1, 5_000_000]
    h = noise.hash32(torch.tensor(keys), torch.tensor(counter))
    assert h.tolist() == [[_ref_hash(k, i) for i in counter] for k in keys]


def test_uniform_statistics_and_range():
    u = noise.uniform(torch.tensor([7, 8]), 200_000)
    assert u.min() > 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002
    c = torch.corrcoef(torch.stack([u[0, :-1], u[0, 1:], u[1, :-1]]))  # lag-1 and cross-stream
    assert c[0, 1].abs() < 0.01 and c[0, 2].abs() < 0.01


def test_offsets_continue_the_stream_and_normals_are_standard():
    k = torch.tensor([42])
    full = noise.uniform(k, 1000)
    assert torch.equal(noise.uniform(k, 500, offset=500), full[:, 500:])
    z = noise.normal(torch.tensor([3]), 100_000)
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02
    g = noise.gumbel(torch.tensor([5]), 100_000)
    assert abs(g.mean().item() - 0.5772) < 0.02 and abs(g.var().item() - math.pi**2 / 6) < 0.05


def test_a_one_kernel_hash_is_used_only_where_it_gives_the_passes_integers():
    """check_fused accepts a candidate only if it equals the elementwise passes on the probe; a wrong or failing
    candidate is refused (the passes run). Off CUDA there is no fused hash."""
    cpu = torch.device("cpu")
    assert noise.check_fused(noise._hash_passes, cpu)
    assert not noise.check_fused(lambda c, k0, k1: noise._hash_passes(c, k0, k1) ^ (c == 2**32 - 1), cpu)  # one edge
    assert not noise.check_fused(lambda c, k0, k1: noise._hash_passes(c & 0x7FFFFFFF, k0, k1), cpu)  # bit 31 lost
    assert not noise.check_fused(lambda c, k0, k1: 1 / 0, cpu)
    assert noise.fused_hash(cpu) is None


@pytest.mark.gpu
def test_the_cuda_hash_is_one_checked_kernel_with_the_cpus_integers():
    dev = torch.device("cuda")
    fused = noise.fused_hash(dev)
    assert fused is not None  # (jiterator built it and check_fused accepted it on this device)
    g = torch.Generator().manual_seed(3)
    keys = torch.randint(0, 2**63 - 1, (64,), generator=g)
    counter = torch.randint(0, 2**40, (64, 3000), generator=g)
    ref = noise.hash32(keys, counter)
    assert torch.equal(noise.hash32(keys.to(dev), counter.to(dev)).cpu(), ref)
    assert torch.equal(noise.uniform(keys.to(dev), 5000).cpu(), noise.uniform(keys, 5000))  # (exact in float32)
