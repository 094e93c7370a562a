"""Distillation loss terms and the LPIPS loader (from local files only)."""
from __future__ import annotations

import pytest
import torch

from radar_train.train.losses import DistillLoss, LossArgs
from radar_train.train.lpips import LPIPS, SHIPPED_HEADS_SHA256, load_lpips, shipped_heads


def _imgs(seed: int, n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_l1_and_l2_terms_are_weighted_means():
    s, t = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    total, terms = DistillLoss(LossArgs(l1_weight=2.0, l2_weight=4.0))(s, t)
    assert terms["l1"].item() == pytest.approx(0.5) and terms["l2"].item() == pytest.approx(0.25)
    assert total.item() == pytest.approx(2 * 0.5 + 4 * 0.25)


def test_feature_and_identity_terms():
    s, t = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    fs = [torch.ones(1, 4, 2, 2), torch.zeros(1, 2, 4, 4)]
    ft = [torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 4, 4)]
    total, terms = DistillLoss(LossArgs(l1_weight=0, feature_weight=0.5, identity_weight=0.1))(
        s, t, fs, ft, identity=torch.full((1, 3, 4, 4), 1.0))
    assert terms["feature"].item() == pytest.approx(1.0)  # mean squared diff of the first level, 0 for the second
    assert terms["identity"].item() == pytest.approx(1.0)
    assert total.item() == pytest.approx(0.5 + 0.1)


def test_lpips_asked_for_without_local_weights_is_a_clear_problem(tmp_path):
    p = LossArgs(lpips_weight=1.0).problems()
    assert any("lpips_vgg" in x and "nothing is downloaded" in x for x in p)
    p = LossArgs(lpips_weight=1.0, lpips_vgg=str(tmp_path / "vgg16.pth"), lpips_heads=str(tmp_path / "x.pth")).problems()
    assert sum("file not found" in x for x in p) == 2


def _write_lpips_files(tmp_path):
    """Random weights in the torchvision VGG16 / lpips v0.1 layouts."""
    torch.manual_seed(0)
    ref = LPIPS()
    vgg = {f"features.{k}": v for k, v in ref.features.state_dict().items()}
    vgg["classifier.0.weight"] = torch.zeros(2, 2)  # ignored
    heads = {f"lin{k}.model.1.weight": lin.weight.abs() for k, lin in enumerate(ref.lins)}
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(heads, tmp_path / "vgg.pth")
    return str(tmp_path / "vgg16.pth"), str(tmp_path / "vgg.pth")


def test_lpips_from_local_files_is_zero_for_equal_images_and_symmetric(tmp_path):
    vgg, heads = _write_lpips_files(tmp_path)
    lp = load_lpips(vgg, heads)
    a, b = _imgs(0), _imgs(1)
    assert torch.allclose(lp(a, a), torch.zeros(2), atol=1e-6)
    d = lp(a, b)
    assert (d > 0).all() and torch.allclose(d, lp(b, a), atol=1e-6)
    total, terms = DistillLoss(LossArgs(l1_weight=0, lpips_weight=1.0, lpips_vgg=vgg, lpips_heads=heads))(a, b)
    assert total.item() == pytest.approx(d.mean().item(), rel=1e-5)


def test_lpips_files_of_the_wrong_kind_are_refused_naming_the_option(tmp_path):
    vgg, heads = _write_lpips_files(tmp_path)
    with pytest.raises(ValueError, match="model.loss.lpips_heads"):
        load_lpips(vgg, vgg)
    with pytest.raises(ValueError, match="model.loss.lpips_vgg") as e:
        load_lpips(heads, heads)
    # torch's detail, not only its first line ("Error(s) in loading state_dict for Sequential:")
    assert "not torchvision VGG16 weights (Missing key(s) in state_dict: " in str(e.value), e.value


def test_lpips_heads_default_to_torchmetrics_copy_of_the_lpips_package_file(tmp_path):
    """Unset heads load torchmetrics' lpips_models/vgg.pth, whose bytes are the lpips 0.1.4 wheel's
    lpips/weights/v0.1/vgg.pth (sha256 taken from that wheel)."""
    import hashlib

    assert hashlib.sha256(shipped_heads().read_bytes()).hexdigest() == SHIPPED_HEADS_SHA256
    vgg, _ = _write_lpips_files(tmp_path)
    lp = load_lpips(vgg)
    heads = torch.load(shipped_heads(), map_location="cpu")
    for k, lin in enumerate(lp.lins):
        assert torch.equal(lin.weight, heads[f"lin{k}.model.1.weight"])
    assert LossArgs(lpips_weight=1.0, lpips_vgg=vgg).problems() == []


def test_a_default_heads_file_that_is_not_the_lpips_one_is_refused_naming_the_option(tmp_path, monkeypatch):
    import radar_train.train.lpips as lpips_mod

    vgg, heads = _write_lpips_files(tmp_path)  # right layout, other numbers
    monkeypatch.setattr(lpips_mod, "shipped_heads", lambda: tmp_path / "vgg.pth")
    with pytest.raises(ValueError, match="model.loss.lpips_heads not given .*sha256 differs"):
        load_lpips(vgg)
    assert any("sha256 differs" in x for x in LossArgs(lpips_weight=1.0, lpips_vgg=vgg).problems())
    assert LossArgs(lpips_weight=1.0, lpips_vgg=vgg, lpips_heads=heads).problems() == []  # named: used as given
    monkeypatch.setattr(lpips_mod, "shipped_heads", lambda: tmp_path / "gone.pth")
    with pytest.raises(FileNotFoundError, match="model.loss.lpips_heads not given .*gone.pth"):
        load_lpips(vgg)


# printed by tests/train/scripts/lpips_golden.py with the lpips 0.1.4 package
LPIPS_GOLDEN = [0.0733727, 0.0725316, 0.0740186]


def test_lpips_matches_the_reference_package(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("lpips_golden", Path(__file__).parent / "scripts" / "lpips_golden.py")
    golden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(golden)
    vgg, heads = golden.seeded_weights()
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(heads, tmp_path / "vgg.pth")
    lp = load_lpips(str(tmp_path / "vgg16.pth"), str(tmp_path / "vgg.pth"))
    a, b = golden.seeded_inputs()
    with torch.no_grad():
        assert lp(a, b).tolist() == pytest.approx(LPIPS_GOLDEN, abs=2e-6)
