"""A stand-in for a FoundationVision/VAR checkout: the same layout (`models/` with absolute imports of
`models.*` and `dist`, plus `dist.py`) and API (`VQVAE(**kwargs)`, `VAR(vae_local=..., **kwargs)`,
`autoregressive_infer_cfg`, `vae_proxy[0].fhat_to_img`), built on our own classes, so the benchmark's
import isolation and timing plumbing are tested without the official code."""
from pathlib import Path

import pytest

FILES = {
    "dist.py": "def get_device():\n    return 'cpu'\n",
    "models/__init__.py": "from .vqvae import VQVAE\nfrom .var import VAR\n",
    "models/vqvae.py": '''
from radar_train.models.configs import VQVAEConfig
from radar_train.models.vqvae import VQVAE as _Ours


class VQVAE(_Ours):
    def __init__(self, test_mode=True, **kwargs):
        super().__init__(VQVAEConfig.from_official(kwargs))
''',
    "models/var.py": '''
import torch

import dist
from models.vqvae import VQVAE  # noqa: F401  (absolute import of the package itself, as the official code)
from radar_train.config import SamplingConfig
from radar_train.models.configs import VARConfig
from radar_train.models.var import VAR as _Ours
from radar_train.sampling import NextScaleSampler


class VAR(_Ours):
    def __init__(self, vae_local, flash_if_available=True, fused_if_available=True, **kwargs):
        super().__init__(VARConfig.from_official(kwargs, vae_local.config))
        self.vae_proxy = (vae_local,)
        self.rng = torch.Generator(device=dist.get_device())
        self.uniform_prob = torch.full((1, self.num_classes), 1.0 / self.num_classes)
        self.calls = 0

    @torch.no_grad()
    def autoregressive_infer_cfg(self, B, label_B, g_seed=None, cfg=1.5, top_k=0, top_p=0.0, more_smooth=False):
        self.calls += 1
        sampler = NextScaleSampler(self, self.vae_proxy[0].quantize,
                                   SamplingConfig(cfg=cfg, top_k=top_k, top_p=top_p, noise="official"))
        f_hat = sampler.sample(label_B, g_seed=g_seed).f_hat
        return self.vae_proxy[0].fhat_to_img(f_hat).add_(1).mul_(0.5)
''',
}


@pytest.fixture()
def fake_official(tmp_path, monkeypatch) -> Path:
    """Folder of the stand-in checkout (and a fresh import cache for it)."""
    from radar_train.bench import official

    root = tmp_path / "fake_var"
    for name, text in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    monkeypatch.setattr(official, "_LOADED", {})
    return root


@pytest.fixture(scope="session")
def official_snapshot() -> Path:
    """The pinned snapshot of the official code beside the checkout (../shared/reference/var_official);
    tests that need it skip when it is not there."""
    path = Path(__file__).resolve().parents[3] / "shared" / "reference" / "var_official"
    if not (path / "models" / "var.py").is_file():
        pytest.skip("the official VAR snapshot is not beside this checkout")
    return path
