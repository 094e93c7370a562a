"""Named configs vs the official state-dict key lists, the φ table, weight loading and its errors."""
import json
import re
import zipfile
from pathlib import Path

import pytest
import torch

from radar_train.models import (MODEL_PRESETS, VAR, VQVAE, CheckpointError, build_var, build_vqvae, get_preset,
                                load_models, save_weights)
from radar_train.models.checkpoint import load_var_weights, load_vqvae_weights
from radar_train.models.configs import VARConfig, VQVAEConfig
from radar_train.models.init import init_random_
from radar_train.models.quantizer import MultiScaleQuantizer


@pytest.fixture(scope="module")
def official_keys(fixtures_dir):
    return json.loads((fixtures_dir / "checkpoint_keys.json").read_text())


def _entries(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("depth", [16, 20, 24, 30, 36])
def test_official_var_config_matches_checkpoint_keys_on_meta(depth, official_keys):
    preset = get_preset(f"var-d{depth}")
    var = build_var(preset.var, "meta")
    assert all(t.is_meta for t in var.state_dict().values())  # nothing allocated
    ours = _entries(var.state_dict())
    ref = {e["name"]: tuple(e["shape"]) for e in official_keys["var"][f"d{depth}"]["entries"]}
    assert set(ours) - set(ref) == set(), "keys we have that the official file lacks"
    assert set(ref) - set(ours) == set(), "official keys we lack"
    assert ours == ref
    n_params = sum(p.numel() for p in var.parameters())
    assert n_params == official_keys["var"][f"d{depth}"]["num_parameters"]


@pytest.mark.parametrize("which", ["ch160v4096z32_256", "ch160v4096z32_512"])
def test_official_vae_config_matches_checkpoint_keys_on_meta(which, official_keys):
    preset = get_preset("var-d36" if which.endswith("512") else "var-d16")
    vae = build_vqvae(preset.vae, "meta")
    assert all(t.is_meta for t in vae.state_dict().values())
    ref = {e["name"]: tuple(e["shape"]) for e in official_keys["vae"][which]["entries"]}
    assert _entries(vae.state_dict()) == ref
    assert sum(p.numel() for p in vae.parameters()) == official_keys["vae"][which]["num_parameters"]


def test_phi_index_table(fixtures_dir):
    rows = json.loads((fixtures_dir / "phi_index_table.json").read_text())["rows"]
    assert len(rows) > 50
    for row in rows:
        q = MultiScaleQuantizer(8, 4, tuple(range(1, row["SN"] + 1)), share_quant_resi=row["share_quant_resi"],
                                default_qresi_counts=row["default_qresi_counts"])
        assert q.num_phi == row["num_phi"], row
        assert q.phi_indices(row["SN"]) == row["phi_index_per_scale"], row
    assert MultiScaleQuantizer(8, 4, tuple(range(1, 11))).phi_indices() == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


def test_tiny_preset_is_deterministic():
    a_vae, a_var, a_id, _ = load_models("tiny")
    b_vae, b_var, b_id, _ = load_models("tiny")
    for x, y in ((a_vae, b_vae), (a_var, b_var)):
        for (k, v), (_, w) in zip(x.state_dict().items(), y.state_dict().items()):
            assert torch.equal(v, w), k
    assert a_id == b_id
    c_vae, _, c_id, _ = load_models("tiny", init_seed=5)
    assert c_id != a_id
    assert not torch.equal(c_vae.decoder.conv_in.weight, a_vae.decoder.conv_in.weight)


def test_save_load_roundtrip_safetensors_and_pth(tmp_path, tiny_models):
    vqvae, var = tiny_models
    preset = get_preset("tiny")
    save_weights(var, tmp_path / "var.safetensors")
    torch.save(var.state_dict(), tmp_path / "var.pth")
    save_weights(vqvae, tmp_path / "vae.safetensors")
    for f in ("var.safetensors", "var.pth"):
        loaded = load_var_weights(build_var(preset.var, "meta"), tmp_path / f)
        for k, v in var.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k
    v2, r2, vid, rid = load_models("tiny", vae_checkpoint=str(tmp_path / "vae.safetensors"),
                                   var_checkpoint=str(tmp_path / "var.pth"))
    assert vid.kind == "file" and len(vid.value) == 64
    x = torch.randn(2, vqvae.config.z_channels, 8, 8)
    torch.testing.assert_close(v2.fhat_to_img(x), vqvae.fhat_to_img(x), atol=0, rtol=0)


def _write_tiny(tmp_path, tiny_models):
    vqvae, var = tiny_models
    save_weights(var, tmp_path / "var.safetensors")
    save_weights(vqvae, tmp_path / "vae.safetensors")
    return tmp_path / "vae.safetensors", tmp_path / "var.safetensors"


def test_error_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pth: checkpoint file not found"):
        load_var_weights(build_var(get_preset("tiny").var, "meta"), tmp_path / "nope.pth")


@pytest.mark.parametrize("content,says", [
    (b"", "not a readable checkpoint"),
    (b"not a checkpoint at all", "checkpoint is not a file torch.save wrote"),
    (b"PK\x03\x04truncated-zip", "not a readable checkpoint (truncated"),
])
def test_error_not_a_checkpoint(tmp_path, content, says):
    p = tmp_path / "broken.pth"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"broken\.pth: {re.escape(says)}") as e:
        load_var_weights(build_var(get_preset("tiny").var, "meta"), p)
    assert "\n" not in str(e.value)


def test_error_truncated_real_checkpoint(tmp_path, tiny_models):
    torch.save(tiny_models[1].state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    assert zipfile.is_zipfile(tmp_path / "full.pth")
    with pytest.raises(CheckpointError, match=r"cut\.pth: not a readable checkpoint"):
        load_var_weights(build_var(get_preset("tiny").var, "meta"), tmp_path / "cut.pth")


def test_error_var_given_as_vqvae_and_reverse(tmp_path, tiny_models):
    vae_f, var_f = _write_tiny(tmp_path, tiny_models)
    preset = get_preset("tiny")
    with pytest.raises(CheckpointError, match=r"var\.safetensors: is a VAR transformer checkpoint, but was given as the VQ-VAE"):
        load_vqvae_weights(build_vqvae(preset.vae, "meta"), var_f)
    with pytest.raises(CheckpointError, match=r"vae\.safetensors: is a VQ-VAE checkpoint, but was given as the VAR"):
        load_var_weights(build_var(preset.var, "meta"), vae_f)
    with pytest.raises(CheckpointError, match="given as the VQ-VAE"):
        load_models("tiny", vae_checkpoint=str(var_f), var_checkpoint=str(vae_f))


def test_error_depth_mismatch_names_the_config(tmp_path):
    """A d20-shaped checkpoint loaded as d16: the message says which config the file is."""
    d20 = build_var(get_preset("var-d20").var, "meta")
    fake = {k: torch.empty(0) for k in d20.state_dict()}  # names only; the shape summary needs real shapes
    fake["class_emb.weight"] = torch.empty(1001, 1280)
    fake["pos_1LC"] = torch.empty(1, 680, 1280)
    save_weights(fake, tmp_path / "var_d20.safetensors")
    with pytest.raises(CheckpointError, match=r"var_d20\.safetensors: is a VAR with depth 20, width 1280 — the var-d20 "
                                              r"config; the config asks for depth 16, width 1024 \(var-d16\)"):
        load_var_weights(build_var(get_preset("var-d16").var, "meta"), tmp_path / "var_d20.safetensors")


def test_error_missing_and_unexpected_keys(tmp_path, tiny_models):
    sd = dict(tiny_models[1].state_dict())
    del sd["head.bias"]
    sd["blocks.0.attn.extra"] = torch.zeros(3)
    save_weights(sd, tmp_path / "odd.safetensors")
    with pytest.raises(CheckpointError, match=r"odd\.safetensors: does not match the model: 1 missing key\(s\) e\.g\. "
                                              r"head\.bias; 1 unexpected key\(s\) e\.g\. blocks\.0\.attn\.extra"):
        load_var_weights(build_var(get_preset("tiny").var, "meta"), tmp_path / "odd.safetensors")


def test_error_official_preset_without_files():
    with pytest.raises(ValueError, match=r"var-d16.*needs model\.vae_checkpoint and model\.var_checkpoint.*var_d16\.pth"):
        load_models("var-d16")


def test_unknown_preset_lists_available():
    with pytest.raises(ValueError, match=r"unknown model preset 'd17'; available: .*var-d16"):
        get_preset("d17")


def test_presets_cover_the_named_configs():
    assert {"var-d16", "var-d20", "var-d24", "var-d30", "var-d36", "tiny"} <= set(MODEL_PRESETS)
    assert get_preset("var-d36").var.shared_aln and get_preset("var-d36").image_size == 512
    assert get_preset("var-d16").image_size == 256


# ---------------------------------------------------------------- generality beyond tiny_a
GENERAL_CONFIGS = [
    dict(var=dict(shared_aln=True), vae=dict(share_quant_resi=0)),
    dict(var=dict(attn_l2_norm=False, num_heads=2), vae=dict(share_quant_resi=1)),
    dict(var=dict(num_classes=3, mlp_ratio=2.5), vae=dict(quant_resi=0.0, share_quant_resi=3)),
    dict(var=dict(patch_nums=(2, 3, 5)), vae=dict(patch_nums=(2, 3, 5), using_znorm=True, share_quant_resi=2)),
]


@pytest.mark.parametrize("spec", GENERAL_CONFIGS)
def test_teacher_forcing_equals_kv_cached_steps_for_other_configs(spec):
    """For configs unlike tiny_a (shared AdaLN, no l2-norm attention, first scale > 1 token, other φ
    sharing, cosine codebook), the scale-causal teacher-forced forward equals the KV-cached steps."""
    from radar_train.sampling import NextScaleSampler, SamplingConfig

    pn = spec["vae"].get("patch_nums", (1, 2, 3, 4))
    vcfg = VQVAEConfig(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1, patch_nums=pn,
                       **{k: v for k, v in spec["vae"].items() if k != "patch_nums"})
    kw = dict(num_classes=5, depth=2, embed_dim=32, num_heads=4, patch_nums=pn, vocab_size=32, z_channels=4)
    kw.update(spec["var"])
    var = init_random_(VAR(VARConfig(**kw)), 3).eval()
    vqvae = init_random_(VQVAE(vcfg), 4).eval()
    sampler = NextScaleSampler(var, vqvae.quantize, SamplingConfig(cfg=2.0, top_k=1, top_p=0.0, noise="official"))
    labels = torch.tensor([0, 2, var.num_classes])
    res = sampler.sample(labels, g_seed=0, trace=True)
    with torch.no_grad():
        x = vqvae.indices_to_var_input(res.indices)
        tf = var(labels, x)
        tf_u = var(torch.full_like(labels, var.num_classes), x)
    raw = torch.cat([res.trace[f"raw_logits.{si}"] for si in range(len(pn))], dim=1)
    torch.testing.assert_close(tf, raw[:3], atol=5e-5, rtol=1e-5)
    torch.testing.assert_close(tf_u, raw[3:], atol=5e-5, rtol=1e-5)
    torch.testing.assert_close(vqvae.indices_to_fhat(res.indices), res.f_hat, atol=1e-5, rtol=0)


def test_encode_decode_shapes_and_indices_roundtrip(tiny_models):
    vqvae, _ = tiny_models
    img = torch.rand(2, 3, vqvae.config.image_size, vqvae.config.image_size) * 2 - 1
    with torch.no_grad():
        idx = vqvae.img_to_indices(img)
        fh = vqvae.img_to_fhat(img)
        torch.testing.assert_close(vqvae.indices_to_fhat(idx), fh[-1], atol=1e-5, rtol=0)
        out = vqvae.fhat_to_img(fh[-1])
    assert [i.shape[1] for i in idx] == [p * p for p in vqvae.patch_nums]
    assert out.shape == img.shape and out.min() >= -1 and out.max() <= 1


def test_attention_constant_cache_follows_parameter_updates(tiny_models):
    """The no-grad cache of the qkv bias / q multiplier must not serve stale values after a weight update."""
    _, var = tiny_models
    var = init_random_(VAR(var.config), 1).eval()
    attn = var.blocks[0].attn
    x = torch.randn(2, 5, var.C)
    with torch.no_grad():
        before = attn(x)
        attn.q_bias.add_(0.5)
        after = attn(x)
        attn.q_bias.sub_(0.5)
        again = attn(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(before, again, atol=1e-6, rtol=0)
    with torch.enable_grad():
        attn(x).sum().backward()  # grad path computes fresh constants and backpropagates into them
    assert attn.q_bias.grad is not None and attn.scale_mul_1H11.grad is not None


def test_save_weights_writes_the_same_bytes_for_the_same_tensors_and_metadata(tmp_path):
    """The file's sha256 is the weights' identity: it must not depend on the order safetensors happens to
    write the metadata in (a hash map's, which changes between runs)."""
    from safetensors import safe_open

    sd = {"b.weight": torch.randn(3, 5), "a.bias": torch.arange(7, dtype=torch.int64), "c": torch.ones(2, dtype=torch.float16)}
    meta = {f"key{i}": f"value{i}" for i in range(8)}
    a = save_weights(sd, tmp_path / "a.safetensors", metadata=meta)
    b = save_weights(dict(reversed(list(sd.items()))), tmp_path / "b.safetensors", metadata=dict(reversed(list(meta.items()))))
    assert a.read_bytes() == b.read_bytes()
    assert int.from_bytes(a.read_bytes()[:8], "little") % 8 == 0
    with safe_open(str(a), framework="pt") as f:
        assert f.metadata() == meta
        for k, v in sd.items():
            assert torch.equal(f.get_tensor(k), v)


def _tokens(vqvae, var, dtype=None) -> list[torch.Tensor]:
    from radar_train.sampling import NextScaleSampler, SamplingConfig

    sampler = NextScaleSampler(var, vqvae.quantize, SamplingConfig(cfg=1.5, top_k=10, noise="official"),
                               autocast_dtype=dtype)
    return sampler.sample(torch.tensor([1, 2]), g_seed=0, batch_size=2).indices


def test_var_file_converted_wholesale_to_fp16_loads_with_integer_buffers(tmp_path, tiny_models):
    """{k: v.half()} also turns the integer buffer lvl_1L into float16: loading turns it back into int64 (as
    the official copying load_state_dict does), so the model samples as from the original file."""
    vqvae, var = tiny_models
    cfg = get_preset("tiny").var
    # weights that fp16 holds exactly, so both files carry the same values
    sd = {k: v.half().to(v.dtype) if v.is_floating_point() else v for k, v in var.state_dict().items()}
    save_weights(sd, tmp_path / "var.safetensors")
    torch.save({k: v.half() for k, v in sd.items()}, tmp_path / "var_fp16.pth")
    a = load_var_weights(build_var(cfg, "meta"), tmp_path / "var.safetensors").eval()
    b = load_var_weights(build_var(cfg, "meta"), tmp_path / "var_fp16.pth").eval()
    assert b.lvl_1L.dtype == torch.int64 and torch.equal(b.lvl_1L, var.lvl_1L)
    for k, v in a.state_dict().items():
        assert b.state_dict()[k].dtype == v.dtype and torch.equal(b.state_dict()[k], v), k
    for x, y in zip(_tokens(vqvae, a), _tokens(vqvae, b)):
        assert torch.equal(x, y)


def test_var_file_with_fractional_integer_buffer_is_refused(tmp_path, tiny_models):
    _, var = tiny_models
    sd = dict(var.state_dict())
    sd["lvl_1L"] = sd["lvl_1L"].float() + 0.5
    save_weights(sd, tmp_path / "var.safetensors")
    with pytest.raises(CheckpointError, match=r"var\.safetensors: lvl_1L holds torch.float32 values that are not whole"):
        load_var_weights(build_var(get_preset("tiny").var, "meta"), tmp_path / "var.safetensors")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_integer_values_where_the_model_has_floating_weights_are_refused_by_the_check_too(tmp_path, tiny_models,
                                                                                        suffix):
    """An int64 head.weight passed `radar-cache run --check` and failed the run's load_state_dict with a traceback
    ('Only Tensors of floating point and complex dtype can require gradients')."""
    vqvae, var = tiny_models
    sd = dict(var.state_dict())
    sd["head.weight"] = sd["head.weight"].round().long()
    path = tmp_path / f"var{suffix}"
    torch.save(sd, path) if suffix == ".pth" else save_weights(sd, path)
    for check_only in (True, False):
        with pytest.raises(CheckpointError) as e:
            load_var_weights(build_var(get_preset("tiny").var, "meta"), path, check_only=check_only)
        assert str(e.value) == (f"{path}: 1 tensor(s) not of a floating-point type where the model's are, e.g. "
                                f"head.weight holds torch.int64 values where the model keeps torch.float32")
    sd = dict(vqvae.state_dict())
    sd["decoder.conv_out.weight"] = sd["decoder.conv_out.weight"].to(torch.int32)
    torch.save(sd, tmp_path / "vae.pth")
    with pytest.raises(CheckpointError, match="decoder.conv_out.weight holds torch.int32 values"):
        load_vqvae_weights(build_vqvae(get_preset("tiny").vae, "meta"), tmp_path / "vae.pth")
    sd = dict(vqvae.state_dict())  # a buffer of counts as integers (the VQ-VAE's codebook use): loads, cast
    sd["quantize.ema_vocab_hit_SV"] = sd["quantize.ema_vocab_hit_SV"].round().long()
    torch.save(sd, tmp_path / "vae_hits.pth")
    loaded = load_vqvae_weights(build_vqvae(get_preset("tiny").vae, "meta"), tmp_path / "vae_hits.pth")
    hits = loaded.state_dict()["quantize.ema_vocab_hit_SV"]
    want = sd["quantize.ema_vocab_hit_SV"]
    assert hits.dtype == vqvae.quantize.ema_vocab_hit_SV.dtype and torch.equal(hits, want.to(hits.dtype))


@pytest.mark.parametrize("wrap", [
    lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},  # torch.compile's module
    lambda sd: {f"module._orig_mod.{k}": v for k, v in sd.items()},  # compiled, then DDP
    lambda sd: {"model": {"arch": "var", "depth": 2}, "ema": sd},  # a first wrapper key of no state dict
    lambda sd: {"trainer": {"config": {}}, "state_dict": {f"module.{k}": v for k, v in sd.items()}},
], ids=["compiled", "ddp-of-compiled", "ema-after-a-model-of-settings", "state-dict-after-a-trainer"])
def test_state_dicts_of_compiled_models_and_behind_a_wrapper_key_of_other_things_load(tmp_path, tiny_models, wrap):
    """'_orig_mod.' keys were 'neither a VAR nor a VQ-VAE checkpoint'; {'model': settings, 'ema': state dict} was
    'no state dict found (top-level keys: ['arch', 'depth'])', the keys of the inner dict."""
    _, var = tiny_models
    torch.save(wrap(var.state_dict()), tmp_path / "var.pth")
    loaded = load_var_weights(build_var(get_preset("tiny").var, "meta"), tmp_path / "var.pth")
    for k, v in var.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_a_file_of_no_state_dict_names_its_own_top_level_keys(tmp_path):
    torch.save({"model": {"arch": "var", "depth": 2}, 3: "three", "args": {}}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError) as e:
        load_var_weights(build_var(get_preset("tiny").var, "meta"), tmp_path / "x.pth")
    assert str(e.value) == f"{tmp_path / 'x.pth'}: no state dict found (top-level keys: ['3', 'args', 'model'])"


def test_var_runs_on_weights_made_under_inference_mode(tmp_path, tiny_models):
    """Tensors made under torch.inference_mode() have no version counter (the attention constants' cache
    key): a VAR loaded or cast there samples the same tokens as outside."""
    vqvae, var = tiny_models
    save_weights(var, tmp_path / "var.safetensors")
    want = _tokens(vqvae, var)
    cast = load_var_weights(build_var(var.config, "meta"), tmp_path / "var.safetensors").eval().cast_body_(torch.bfloat16)
    want_bf16 = _tokens(vqvae, cast, torch.bfloat16)
    with torch.inference_mode():
        loaded = load_var_weights(build_var(var.config, "meta"), tmp_path / "var.safetensors").eval()
        assert loaded.blocks[0].attn.q_bias.is_inference()
        got = _tokens(vqvae, loaded)
    cast = load_var_weights(build_var(var.config, "meta"), tmp_path / "var.safetensors").eval()
    with torch.inference_mode():
        cast.cast_body_(torch.bfloat16)
        got_bf16 = _tokens(vqvae, cast, torch.bfloat16)
    for x, y in zip(want + want_bf16, got + got_bf16):
        assert torch.equal(x, y)


def test_a_torchscript_file_named_as_weights_is_refused_by_name_without_a_warning(tmp_path):
    """torch.load warns about a TorchScript archive before failing: that warning was a line of its own above
    the command's one error line."""
    import warnings

    from radar_train.inputs import InputError, load_torch
    from radar_train.models.checkpoint import read_state_dict

    path = tmp_path / "vae.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    for load in (read_state_dict, load_torch):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(InputError, match=r"vae\.pt: .*is a TorchScript archive \(torch\.jit\.save\), not a "
                                                 r"file of weights"):
                load(path)
        assert [str(w.message) for w in caught] == []


def test_official_trainer_checkpoint_gives_its_var_and_its_vqvae(tmp_path, tiny_models):
    """The official trainer writes {'trainer': {'config', 'var_wo_ddp', 'vae_local', 'var_opt'}, 'args', ...}: the
    same file named as both checkpoints gives each model its own part."""
    vqvae, var = tiny_models
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    trainer = {"config": {"lr": 1e-4}, "var_wo_ddp": var.state_dict(), "vae_local": vqvae.state_dict(),
               "var_opt": opt.state_dict()}
    torch.save({"epoch": 3, "iter": 0, "trainer": trainer, "args": {"depth": 2}}, tmp_path / "ar-ckpt-last.pth")
    ckpt = str(tmp_path / "ar-ckpt-last.pth")
    v2, r2, _, _ = load_models("tiny", vae_checkpoint=ckpt, var_checkpoint=ckpt)
    for k, v in vqvae.state_dict().items():
        assert torch.equal(v2.state_dict()[k], v), k
    for k, v in var.state_dict().items():
        assert torch.equal(r2.state_dict()[k], v), k


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("which,key", [("var", "class_emb.weight"), ("vae", "decoder.conv_in.weight")])
def test_weights_holding_nan_or_inf_are_refused_naming_the_file_and_a_tensor(tmp_path, tiny_models, bad, which, key):
    """(They loaded: radar-generate wrote black images and exited 0, radar-cache wrote a class's samples as one
    constant token.) VAR's causal mask keeps its -inf entries: the official files carry it so."""
    vqvae, var = tiny_models
    model = var if which == "var" else vqvae
    sd = dict(model.state_dict())
    assert bool(torch.isinf(sd["attn_bias_for_masking"]).any()) if which == "var" else True  # (the mask: accepted)
    sd[key] = sd[key].clone()
    sd[key].view(-1)[3] = bad
    for name, save in (("w.safetensors", save_weights), ("w.pth", torch.save)):
        save(sd, tmp_path / name)
        load = load_var_weights if which == "var" else load_vqvae_weights
        build = build_var(get_preset("tiny").var, "meta") if which == "var" else build_vqvae(get_preset("tiny").vae,
                                                                                                "meta")
        with pytest.raises(CheckpointError, match=rf"^{re.escape(str(tmp_path / name))}: 1 tensor\(s\) hold NaN or inf "
                                                  rf"values \(e\.g\. {re.escape(key)}\): the weights are damaged$"):
            load(build, tmp_path / name)
        load(build, tmp_path / name, check_only=True)  # (the checks alone read no values: --check)


@pytest.mark.parametrize("make,says", [
    (lambda p: torch.save({"w": torch.ones(2)}, p, pickle_protocol=4),
     "was pickled with protocol 4 or later, which torch's weights-only loader does not read (pickle operand 149)"),
    (lambda p: p.write_bytes(__import__("pickle").dumps(_Evil(), protocol=2)),
     "holds a Python object (posix.system) besides tensors and plain values"),
    (lambda p: p.write_bytes(b"\x80\x02S'abc'\n."),  # (an instruction of protocol 0 after a protocol-2 header)
     "is damaged or not a file torch.save wrote (pickle operand 83 where"),
])
def test_a_file_weights_only_loading_refuses_is_one_line_that_never_advises_turning_it_off(tmp_path, make, says):
    """(A crafted pickle calling os.system got torch's text: 'Re-running torch.load with weights_only set to False
    will likely succeed' — the advice that runs it.)"""
    import warnings

    p = tmp_path / "w.pth"
    make(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (torch's "Detected pickle protocol 4" was a line of its own)
        with pytest.raises(CheckpointError) as e:
            load_var_weights(build_var(get_preset("tiny").var, "meta"), p)
    text = str(e.value)
    assert text.startswith(f"{p}: checkpoint {says}") and "\n" not in text, text
    assert "weights_only set to `False`" not in text and "PyTorch 2.6" not in text
    assert not (tmp_path / "ran").exists() and not (Path.cwd() / "ran").exists()


class _Evil:
    def __reduce__(self):
        import os

        return os.system, ("touch ran",)


@pytest.mark.parametrize("path,says", [("", "an empty path was given as a checkpoint file"),
                                       ("/dev/zero", "/dev/zero: is not a regular file (a device, pipe or socket)")])
def test_an_empty_path_or_a_device_is_refused_before_any_read(path, says):
    with pytest.raises(CheckpointError, match=re.escape(says)):
        load_var_weights(build_var(get_preset("tiny").var, "meta"), path)


def test_a_weights_file_replaced_while_it_is_read_is_refused_not_recorded_as_the_other(tmp_path, tiny_models,
                                                                                     monkeypatch):
    """The weights were read, then the file hashed for the identity a cache records: a file replaced between the
    two gave one file's weights under the other's identity."""
    import radar_train.models as models

    vqvae, _ = tiny_models
    save_weights(vqvae, tmp_path / "vae.safetensors")
    other = dict(vqvae.state_dict())
    other["decoder.conv_in.bias"] = other["decoder.conv_in.bias"] + 1
    save_weights(other, tmp_path / "other.safetensors")
    real = models.load_vqvae_weights

    def load_then_replace(model, path, *a, **k):
        out = real(model, path, *a, **k)
        (tmp_path / "other.safetensors").replace(path)  # (another job's copy landing meanwhile)
        return out

    monkeypatch.setattr(models, "load_vqvae_weights", load_then_replace)
    with pytest.raises(CheckpointError, match=r"vae\.safetensors: changed while it was being read"):
        load_models("tiny", vae_checkpoint=str(tmp_path / "vae.safetensors"))
    save_weights(vqvae, tmp_path / "vae.safetensors")
    monkeypatch.setattr(models, "load_vqvae_weights", real)
    assert load_models("tiny", vae_checkpoint=str(tmp_path / "vae.safetensors"))[2].kind == "file"
