"""Our sampler (noise "official") against the official VAR `autoregressive_infer_cfg`, on the sampling paths
tiny_a does not cover: labels None / int, top_p alone, cfg 1 plain multinomial, cfg 0, B = 1, the global
RNG, and a 6-scale model (our `tiny` preset's configuration, V 256).

Expected values come from the official code (tests/fixtures/official_sampling, made by
tests/fixtures/make_official_sampling.py; see its README.md). The official code is not needed here.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import safetensors.torch as st
import torch

from radar_train.config import SamplingConfig
from radar_train.models import VARConfig, VQVAEConfig, build_var, build_vqvae
from radar_train.models.checkpoint import load_var_weights, load_vqvae_weights
from radar_train.sampling import NextScaleSampler, decode_images

FIXTURE = Path(__file__).parent / "fixtures" / "official_sampling"
DOC = json.loads((FIXTURE / "cases.json").read_text())
CASES = {c["name"]: c for c in DOC["cases"]}


def _cfg(cls, d: dict):
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@pytest.fixture(scope="module")
def models():
    """{model name: (our VQVAE, our VAR)} holding the fixture's weights (strict loads)."""
    out = {}
    for name, rec in DOC["models"].items():
        files = {k: (FIXTURE / rec[k]).resolve() for k in ("vae", "var")}
        for k, f in files.items():
            assert hashlib.sha256(f.read_bytes()).hexdigest() == rec[f"{k}_sha256"], f"{f} changed since the fixture was made"
        if "our_VQVAEConfig" in rec:
            vcfg, rcfg = _cfg(VQVAEConfig, rec["our_VQVAEConfig"]), _cfg(VARConfig, rec["our_VARConfig"])
        else:
            kw = rec["official_kwargs"]
            vcfg = VQVAEConfig.from_official(kw["VQVAE_kwargs"])
            rcfg = VARConfig.from_official(kw["VAR_kwargs"], vcfg)
        vae = load_vqvae_weights(build_vqvae(vcfg, "meta"), files["vae"]).eval().requires_grad_(False)
        var = load_var_weights(build_var(rcfg, "meta"), files["var"]).eval().requires_grad_(False)
        out[name] = (vae, var)
    return out


@pytest.fixture(scope="module")
def expected():
    return st.load_file(str(FIXTURE / "expected.safetensors"))


def run_ours(models, case: dict, noise: str = "official"):
    vae, var = models[case["model"]]
    i = case["inputs"]
    sampler = NextScaleSampler(var, vae.quantize, SamplingConfig(cfg=i["cfg"], top_k=i["top_k"], top_p=i["top_p"],
                                                                 noise=noise, more_smooth=i["more_smooth"]))
    labels = torch.tensor(i["labels"]) if isinstance(i["labels"], list) else i["labels"]
    with torch.random.fork_rng(devices=[]):  # the global RNG: seeded for the case, restored afterwards
        if i["global_seed"] is not None:
            torch.manual_seed(i["global_seed"])
        if noise == "official":
            return sampler.sample(labels, g_seed=i["g_seed"], batch_size=i["B"])
        labels = torch.tensor(case["expected"]["labels_used"])
        return sampler.sample(labels, seeds=list(range(i["B"])))


def check_tokens(indices, case: dict) -> None:
    want = case["expected"]["idx"]
    assert len(indices) == len(want)
    for si, (got, exp) in enumerate(zip(indices, want)):
        exp = torch.tensor(exp, dtype=torch.long)
        assert got.shape == exp.shape, f"scale {si}: shape {tuple(got.shape)} vs official {tuple(exp.shape)}"
        bad = (got != exp).nonzero()
        assert bad.numel() == 0, (f"scale {si}: {bad.shape[0]} of {exp.numel()} tokens differ from the official "
                                  f"sampler, first at (b, l) = {tuple(bad[0].tolist())}")


@pytest.mark.parametrize("name", list(CASES))
def test_tokens_and_f_hat_equal_official(models, expected, name):
    case = CASES[name]
    res = run_ours(models, case)
    check_tokens(res.indices, case)
    e = case["expected"]
    torch.testing.assert_close(res.f_hat, expected[e["f_hat"]], atol=e["f_hat_atol"], rtol=0)
    if "image" in e:
        img = decode_images(models[case["model"]][0], res.f_hat)
        torch.testing.assert_close(img, expected[e["image"]], atol=e["image_atol"], rtol=0)


def test_fixture_covers_the_paths():
    """The cases are what this file claims to cover, and none is degenerate."""
    ins = [c["inputs"] for c in CASES.values()]
    assert any(i["labels"] is None for i in ins) and any(isinstance(i["labels"], int) and i["labels"] < 0 for i in ins)
    assert any(isinstance(i["labels"], int) and i["labels"] >= 0 for i in ins)
    assert any(i["top_k"] == 0 and i["top_p"] > 0 for i in ins)
    assert any(i["cfg"] == 1.0 and i["top_k"] == 0 and i["top_p"] == 0 for i in ins)
    assert any(i["cfg"] == 0 for i in ins) and any(i["B"] == 1 for i in ins) and any(i["g_seed"] is None for i in ins)
    assert any(len(c["expected"]["idx"]) > 4 for c in CASES.values())
    for c in CASES.values():
        d = c["diagnostics"]
        assert d["distinct_tokens"] >= 0.15 * d["num_tokens"], c["name"]


def test_check_fails_on_a_changed_token(models):
    """The token check is not vacuous: one official token changed is reported."""
    case = json.loads(json.dumps(CASES["tiny_fid_protocol"]))
    res = run_ours(models, case)
    check_tokens(res.indices, case)
    row = case["expected"]["idx"][3][1]
    row[5] = (row[5] + 1) % 256
    with pytest.raises(AssertionError, match="scale 3: 1 of"):
        check_tokens(res.indices, case)


@pytest.mark.parametrize("name", ["a_cfg1_multinomial", "tiny_top_p_only"])
def test_other_noise_gives_other_tokens(models, name):
    """The fixture tells the noise modes apart: per_sample noise with the same labels differs from it."""
    case = CASES[name]
    res = run_ours(models, case, noise="per_sample")
    with pytest.raises(AssertionError, match="tokens differ from the official"):
        check_tokens(res.indices, case)
