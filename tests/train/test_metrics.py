"""Restoration metrics (methods.md §5.1) against closed-form values."""
from __future__ import annotations

import math

import pytest
import torch

from radar_train.train.metrics import (RestorationStats, high_frequency_energy, psnr_per_image, ssim_per_image,
                                      to_unit)


def test_psnr_of_a_uniform_error_is_its_closed_form():
    a = torch.full((2, 3, 8, 8), 0.5)
    b = a + torch.tensor([0.1, 0.01]).view(2, 1, 1, 1)
    assert psnr_per_image(a, b).tolist() == pytest.approx([20.0, 40.0], abs=1e-4)


def test_ssim_of_identical_images_is_one():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert ssim_per_image(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)


def test_high_frequency_energy_of_a_checkerboard_a_ramp_and_a_blur():
    """A checkerboard of amplitude a: the 3x3 Laplacian is ±4a at every pixel, so the energy is 16 a²; a linear
    ramp (and a constant) has none; blurring the checkerboard (2x2 box) leaves a constant."""
    i, j = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    board = ((i + j) % 2).float().expand(1, 3, 16, 16)
    ramp = (0.03 * i + 0.01 * j).float().expand(1, 3, 16, 16)
    x = torch.cat([0.5 * board, 0.25 * board, ramp])
    assert high_frequency_energy(x).tolist() == pytest.approx([16 * 0.25, 16 * 0.0625, 0.0], abs=1e-5)
    blurred = torch.nn.functional.avg_pool2d(board, 2, stride=1)
    assert high_frequency_energy(blurred).item() == pytest.approx(0.0, abs=1e-6)


def test_ssim_of_constant_images_is_the_luminance_term():
    a, b = 0.2, 0.7
    x, y = torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b)
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # variances and covariance are 0
    assert ssim_per_image(x, y).item() == pytest.approx(expected, rel=1e-4)


def test_ssim_drops_with_noise_and_is_symmetric():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 32, 32, generator=g)
    y1 = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    y2 = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    s1, s2 = ssim_per_image(x, y1).item(), ssim_per_image(x, y2).item()
    assert 1 > s1 > s2
    assert ssim_per_image(y1, x).item() == pytest.approx(s1, abs=1e-6)


def test_gap_closed_is_one_for_a_perfect_student_and_zero_for_the_baseline():
    g = torch.Generator().manual_seed(2)
    teacher = torch.rand(4, 3, 16, 16, generator=g)
    baseline = (teacher + 0.1 * torch.randn(teacher.shape, generator=g)).clamp(0, 1)
    perfect, same = RestorationStats(), RestorationStats()
    perfect.update(teacher, baseline, teacher, harmless=teacher)
    same.update(teacher, baseline, baseline)
    p, s = perfect.compute(), same.compute()
    assert p["gap_closed_mse"] == pytest.approx(1.0)
    assert s["gap_closed_mse"] == pytest.approx(0.0)
    assert s["delta_psnr"] == pytest.approx(0.0) and s["delta_ssim"] == pytest.approx(0.0)
    assert p["psnr_harmless"] == 100.0 and "psnr_harmless" not in s


def test_gap_closed_uses_mse_summed_over_all_batches():
    teacher = torch.zeros(2, 3, 4, 4)
    stats = RestorationStats()
    # batch 1: baseline error 0.2, student 0.1; batch 2: baseline 0.4, student 0.4
    stats.update(teacher[:1], teacher[:1] + 0.2, teacher[:1] + 0.1)
    stats.update(teacher[1:], teacher[1:] + 0.4, teacher[1:] + 0.4)
    mse_s, mse_q = (0.01 + 0.16) / 2, (0.04 + 0.16) / 2
    assert stats.compute()["gap_closed_mse"] == pytest.approx(1 - mse_s / mse_q)


def test_to_unit_maps_minus_one_one_to_zero_one_and_clamps():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    assert to_unit(x).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert not math.isnan(RestorationStats().compute().get("psnr_student", 0.0))
