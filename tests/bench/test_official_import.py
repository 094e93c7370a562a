"""radar_train.bench.official: isolated import of a user-named VAR checkout, configurations, the timed call."""
import json
import sys
import types

import pytest
import torch

from radar_train.bench import official
from radar_train.bench.official import (TINY_A_KWARGS, OfficialRun, build_official, comparison_configs,
                                        load_official_code, official_kwargs)
from radar_train.models import build_var, build_vqvae, get_preset
from radar_train.models.init import init_random_


def test_import_leaves_sys_modules_and_sys_path_as_they_were(fake_official, monkeypatch):
    mine, my_dist = types.ModuleType("models"), types.ModuleType("dist")
    monkeypatch.setitem(sys.modules, "models", mine)
    monkeypatch.setitem(sys.modules, "dist", my_dist)
    path_before = list(sys.path)
    code = load_official_code(fake_official)
    assert sys.modules["models"] is mine and sys.modules["dist"] is my_dist
    assert not any(k.startswith("models.") for k in sys.modules)
    assert sys.path == path_before
    assert code.VAR.__module__ == "models.var" and code.root == fake_official.resolve()
    assert load_official_code(fake_official) is code  # imported once per folder


def test_a_folder_that_is_no_var_checkout_is_named(tmp_path):
    (tmp_path / "models").mkdir()
    with pytest.raises(FileNotFoundError, match=r"--official_var .*missing models/__init__.py, models/var.py"):
        load_official_code(tmp_path)


def test_an_import_error_of_the_foreign_code_is_one_message_and_undone(fake_official):
    (fake_official / "models" / "var.py").write_text("import dist\nimport no_such_module_here\n")
    path_before = list(sys.path)
    with pytest.raises(ValueError, match="importing its models package failed: ModuleNotFoundError"):
        load_official_code(fake_official)
    assert "dist" not in sys.modules and "models" not in sys.modules and sys.path == path_before


def test_official_kwargs_of_a_preset_equal_the_reference_constructor_arguments(fixtures_dir):
    ref = json.loads((fixtures_dir / "checkpoint_keys.json").read_text())
    for depth in (16, 30):
        p = get_preset(f"var-d{depth}")
        kw = official_kwargs(p.vae.with_patch_nums(p.var.patch_nums), p.var)
        want = dict(ref["var"][f"d{depth}"]["VAR_constructor_kwargs"])
        got = dict(kw["VAR_kwargs"])
        assert got.pop("drop_path_rate") == pytest.approx(want.pop("drop_path_rate"))
        assert got == want
        assert kw["VQVAE_kwargs"] == ref["vae"]["ch160v4096z32_256"]["VQVAE_constructor_kwargs"]


def test_tiny_is_compared_on_the_tiny_a_configuration(fixtures_dir):
    tiny = get_preset("tiny")
    assert official_kwargs(tiny.vae, tiny.var) is None  # ch_mult (1, 2, 2): not expressible officially
    cfg = json.loads((fixtures_dir / "tiny_a" / "config.json").read_text())
    assert TINY_A_KWARGS == {k: cfg[k] for k in ("VQVAE_kwargs", "VAR_kwargs")}
    vae, var, kw, source = comparison_configs("tiny", None)
    assert source.startswith("tiny_a") and kw == TINY_A_KWARGS
    assert (var.depth, var.embed_dim, vae.ch, vae.image_size) == (2, 64, 32, 64)


def test_official_config_file_is_read_and_checked(tmp_path, fixtures_dir):
    vae, var, kw, source = comparison_configs("var-d16", str(fixtures_dir / "tiny_a" / "config.json"))
    assert var.depth == 2 and source.endswith("config.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"VAR_kwargs": {}}')
    with pytest.raises(ValueError, match="bad.json: needs 'VQVAE_kwargs' and 'VAR_kwargs'"):
        comparison_configs("tiny", str(bad))
    with pytest.raises(ValueError, match="missing.json: --official_config file not found"):
        comparison_configs("tiny", str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="--official_config file is a folder, expected a file"):  # ("no such file")
        comparison_configs("tiny", str(tmp_path))


def _tiny_a_models():
    vae_cfg, var_cfg, kw, _ = comparison_configs("tiny", None)
    return init_random_(build_vqvae(vae_cfg), 1).eval(), init_random_(build_var(var_cfg), 0).eval(), kw


def test_official_models_get_our_weights_and_the_call_is_timed_in_two_parts(fake_official):
    vqvae, var, kw = _tiny_a_models()
    o_vae, o_var = build_official(load_official_code(fake_official), kw, vqvae.state_dict(), var.state_dict(),
                                  torch.device("cpu"))
    for mine, theirs in ((vqvae, o_vae), (var, o_var)):
        a, b = mine.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    img, t = OfficialRun(o_var, None, torch.device("cpu"))(torch.tensor([1, 2]), 0, 4.0, 1, 0.0)
    assert o_var.calls == 1 and img.shape == (2, 3, 64, 64)
    assert 0 < t["decode"] < t["e2e"] and t["loop"] == pytest.approx(t["e2e"] - t["decode"])
    assert "fhat_to_img" not in o_vae.__dict__  # the timing wrapper is gone after the call


def test_the_pinned_official_snapshot_samples_what_we_sample(official_snapshot, monkeypatch):
    """Same weights, same greedy samples: the official sampler and ours (official noise) give the same
    images; building the official models leaves torch's layer initialisation alone."""
    from radar_train.config import SamplingConfig
    from radar_train.sampling import NextScaleSampler, decode_images

    monkeypatch.setattr(official, "_LOADED", {})
    reset = torch.nn.Linear.reset_parameters
    vqvae, var, kw = _tiny_a_models()
    _, o_var = build_official(load_official_code(official_snapshot), kw, vqvae.state_dict(), var.state_dict(),
                              torch.device("cpu"))
    assert torch.nn.Linear.reset_parameters is reset and "models" not in sys.modules
    labels = torch.tensor([3, 7])
    theirs, _ = OfficialRun(o_var, None, torch.device("cpu"))(labels, 0, 4.0, 1, 0.0)
    sampler = NextScaleSampler(var, vqvae.quantize, SamplingConfig(cfg=4.0, top_k=1, top_p=0.0, noise="official"))
    with torch.no_grad():
        ours = decode_images(vqvae, sampler.sample(labels, g_seed=0).f_hat)
    assert (ours - theirs).abs().max() < 1e-4


def test_arguments_the_official_config_leaves_out_take_the_official_constructors_defaults(tmp_path):
    """`--official_config` holds the official VQVAE / VAR constructor arguments: one left out is the official
    default (VQVAE ch 128, VAR attn_l2_norm False), not ours (160, True: the released models' build_vae_var),
    and both sides of the benchmark are built with it (official_kwargs writes every argument out)."""
    cfg = tmp_path / "official.json"
    cfg.write_text(json.dumps({
        "VQVAE_kwargs": {"vocab_size": 64, "z_channels": 8, "v_patch_nums": [1, 2, 3, 4]},
        "VAR_kwargs": {"num_classes": 10, "depth": 2, "embed_dim": 64, "num_heads": 4, "patch_nums": [1, 2, 3, 4]}}))
    vae, var, kw, _ = comparison_configs("tiny", str(cfg))
    assert vae.ch == 128 and var.attn_l2_norm is False
    assert kw["VQVAE_kwargs"]["ch"] == 128 and kw["VAR_kwargs"]["attn_l2_norm"] is False
    cfg.write_text(json.dumps({"VQVAE_kwargs": {"vocab_size": 64, "z_channels": 8, "v_patch_nums": [1, 2], "ch": 32},
                               "VAR_kwargs": {"depth": 2, "embed_dim": 64, "num_heads": 4, "patch_nums": [1, 2],
                                              "attn_l2_norm": True}}))
    vae, var, _, _ = comparison_configs("tiny", str(cfg))
    assert vae.ch == 32 and var.attn_l2_norm is True  # given: as given
