"""radar_train.interp: resizes as one matrix product (the sampler's bicubic upsampling, the methods' area restores)."""
import pytest
import torch
import torch.nn.functional as F
from op_names import OpNames

from radar_train import interp
from radar_train.interp import resize_matrix, upsample_bicubic

# (p, P): the 256 px schedule's token maps to its last grid, and the 512 px schedule's largest and smallest
SIZES = [(1, 16), (2, 16), (3, 16), (5, 16), (10, 16), (13, 16), (24, 32), (1, 32)]


@pytest.mark.parametrize("p, P", SIZES)
def test_the_bicubic_matrix_applies_the_kernels_weights(p, P):
    x = torch.randn(3, 4, p, p, dtype=torch.float64, generator=torch.Generator().manual_seed(p))
    w = resize_matrix(p, P, "bicubic", torch.float64, torch.device("cpu"))
    by_product = (x.reshape(12, p * p) @ w.t()).view(3, 4, P, P)
    torch.testing.assert_close(by_product, F.interpolate(x, size=(P, P), mode="bicubic"), rtol=0, atol=1e-12)


def test_the_matrices_are_kept_per_size_mode_dtype_and_device():
    cpu = torch.device("cpu")
    a = resize_matrix(4, 16, "bicubic", torch.float32, cpu)
    assert resize_matrix(4, 16, "bicubic", torch.float32, cpu) is a
    assert resize_matrix(4, 16, "area", torch.float32, cpu) is not a
    assert resize_matrix(4, 16, "bicubic", torch.float64, cpu) is not a
    assert a.shape == (256, 16) and a.dtype == torch.float32


def test_on_the_cpu_the_upsampling_is_the_kernel_bit_for_bit():
    x = torch.randn(2, 32, 5, 5)
    assert interp.matmul_resize_dtypes(x.device) == frozenset()
    assert torch.equal(upsample_bicubic(x, 16), F.interpolate(x, size=(16, 16), mode="bicubic"))


def _token_map(B, C, p, device="cpu"):
    """A sampler's token map: the embedding's output (B, p², C) transposed, so channels-last strides."""
    return torch.randn(B, p * p, C, device=device).transpose(1, 2).reshape(B, C, p, p)


@pytest.mark.parametrize("p, P", [(1, 16), (6, 16), (13, 16), (24, 32)])
def test_where_products_are_exact_the_upsampling_is_one_matrix_product(monkeypatch, p, P):
    monkeypatch.setattr(interp, "matmul_resize_dtypes", lambda device: frozenset({torch.float32}))
    x = _token_map(4, 32, p)
    upsample_bicubic(x, P)  # (the first call makes the matrix, by the kernel on the identity)
    with OpNames() as ops:
        got = upsample_bicubic(x, P)
    assert "upsample_bicubic2d" not in ops.names and ops.names.count("mm") == 1, ops.names
    assert got.shape == (4, 32, P, P) and got.is_contiguous()
    torch.testing.assert_close(got, F.interpolate(x, size=(P, P), mode="bicubic"), rtol=0, atol=2e-6)
    # under autocast the operands stay float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert upsample_bicubic(x, P).dtype == torch.float32


def test_other_dtypes_keep_the_kernel(monkeypatch):
    monkeypatch.setattr(interp, "matmul_resize_dtypes", lambda device: frozenset({torch.bfloat16, torch.float32}))
    x = _token_map(2, 8, 4).bfloat16()  # (bicubic weights are not exact in bf16)
    assert torch.equal(upsample_bicubic(x, 16), F.interpolate(x, size=(16, 16), mode="bicubic"))


def test_the_sampler_upsamples_through_it_and_keeps_its_tokens(monkeypatch):
    """The sampler's f_hat update by the matrix product gives the kernel's tokens, f_hat equal to float rounding."""
    from radar_train.config import SamplingConfig
    from radar_train.models import load_models
    from radar_train.sampling import NextScaleSampler

    vqvae, var, _, _ = load_models("tiny", device="cpu")
    s = NextScaleSampler(var, vqvae.quantize, SamplingConfig(cfg=1.5, top_k=100, top_p=0.95))
    labels, seeds = torch.tensor([0, 3, 5, 9]), [11, 12, 13, 14]
    kernel = s.sample(labels, seeds=seeds)
    monkeypatch.setattr(interp, "matmul_resize_dtypes", lambda device: frozenset({torch.float32}))
    s.sample(labels, seeds=seeds)  # (makes the matrices)
    with OpNames() as ops:
        product = s.sample(labels, seeds=seeds)
    assert "upsample_bicubic2d" not in ops.names
    assert all(torch.equal(a, b) for a, b in zip(kernel.indices, product.indices))
    torch.testing.assert_close(product.f_hat, kernel.f_hat, rtol=0, atol=1e-5)


@pytest.mark.gpu
def test_on_cuda_the_upsampling_is_a_product_unless_tf32_rounds_it():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x = _token_map(32, 32, 13, "cuda")
    ref = F.interpolate(x.contiguous(), size=(16, 16), mode="bicubic")
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.testing.assert_close(upsample_bicubic(x, 16), ref, rtol=0, atol=2e-6)
        torch.backends.cuda.matmul.allow_tf32 = True  # the product would round its operands: the kernel runs
        assert torch.equal(upsample_bicubic(x, 16), ref)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
