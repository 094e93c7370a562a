"""VAR's VQ-VAE: encoder, quant_conv, multi-scale quantizer, post_quant_conv, decoder.

State-dict names equal the official `vae_ch160v4096z32.pth`. `LatentDecoder` is the part that turns
f_hat into an image (post_quant_conv + decoder) on its own, with the same key names — the module that
PAA adapts.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .configs import VQVAEConfig
from .quantizer import MultiScaleQuantizer
from .vae_blocks import Decoder, Encoder


def _decoder(cfg: VQVAEConfig) -> Decoder:
    return Decoder(ch=cfg.ch, ch_mult=cfg.ch_mult, num_res_blocks=cfg.num_res_blocks,
                   z_channels=cfg.z_channels, out_channels=cfg.in_channels, dropout=cfg.dropout,
                   norm_groups=cfg.norm_groups)


def _post_quant_conv(cfg: VQVAEConfig) -> nn.Conv2d:
    ks = cfg.quant_conv_ks
    return nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, stride=1, padding=ks // 2)


def clamp_image(x: torch.Tensor) -> torch.Tensor:
    """Clamp a decoder output to [-1, 1]: in place when no autograd graph is recorded (as the official
    `fhat_to_img`), out of place otherwise (same values and gradients either way)."""
    return x.clamp(-1, 1) if torch.is_grad_enabled() else x.clamp_(-1, 1)


class LatentDecoder(nn.Module):
    """f_hat (B, Cvae, P, P) -> image (B, 3, H, W) in [-1, 1] (unclamped from `forward`)."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.config = cfg
        self.post_quant_conv = _post_quant_conv(cfg)
        self.decoder = _decoder(cfg)

    @classmethod
    def sharing(cls, vqvae: "VQVAE") -> "LatentDecoder":
        """A LatentDecoder whose modules are the VQ-VAE's own (no copy: changes show in both)."""
        with torch.device("meta"):
            dec = cls(vqvae.config)
        dec.post_quant_conv, dec.decoder = vqvae.post_quant_conv, vqvae.decoder
        return dec

    def forward(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(f_hat))

    def forward_features(self, f_hat: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.decoder.forward_features(self.post_quant_conv(f_hat))

    def to_image(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Decoded image clamped to [-1, 1] (what VAR's `fhat_to_img` returns)."""
        return clamp_image(self.forward(f_hat))


class VQVAE(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(ch=cfg.ch, ch_mult=cfg.ch_mult, num_res_blocks=cfg.num_res_blocks,
                               z_channels=cfg.z_channels, in_channels=cfg.in_channels, dropout=cfg.dropout,
                               norm_groups=cfg.norm_groups)
        self.decoder = _decoder(cfg)
        self.quantize = MultiScaleQuantizer(
            cfg.vocab_size, cfg.z_channels, cfg.patch_nums, using_znorm=cfg.using_znorm, beta=cfg.beta,
            quant_resi=cfg.quant_resi, share_quant_resi=cfg.share_quant_resi,
            default_qresi_counts=cfg.default_qresi_counts,
        )
        ks = cfg.quant_conv_ks
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, stride=1, padding=ks // 2)
        self.post_quant_conv = _post_quant_conv(cfg)

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.quantize.patch_nums

    # image -> latent -> indices
    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """img in [-1, 1] (B, 3, H, W) -> f = quant_conv(encoder(img)) (B, Cvae, P, P)."""
        return self.quant_conv(self.encoder(img))

    def img_to_indices(self, img: torch.Tensor, patch_nums: Sequence[int] | None = None) -> list[torch.Tensor]:
        return self.quantize.f_to_indices(self.encode(img), patch_nums)

    def img_to_fhat(self, img: torch.Tensor, patch_nums: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Cumulative f_hat after each scale."""
        return self.quantize.f_to_indices(self.encode(img), patch_nums, to_fhat=True)

    def reconstruct(self, img: torch.Tensor) -> torch.Tensor:
        return self.fhat_to_img(self.img_to_fhat(img)[-1])

    # indices / latent -> image
    def indices_to_fhat(self, idx_list: Sequence[torch.Tensor], patch_nums: Sequence[int] | None = None,
                        cumulative: bool = False):
        return self.quantize.indices_to_fhat(idx_list, patch_nums, cumulative)

    def indices_to_var_input(self, idx_list: Sequence[torch.Tensor], patch_nums: Sequence[int] | None = None):
        return self.quantize.indices_to_var_input(idx_list, patch_nums)

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] (clamped)."""
        return clamp_image(self.decoder(self.post_quant_conv(f_hat)))

    def latent_decoder(self) -> LatentDecoder:
        """A stand-alone copy of post_quant_conv + decoder (same key names, new tensors). Built on the meta device
        and given copies of this model's tensors: no default init (work thrown away, and draws from torch's
        global RNG, which a caller's later sampling would see)."""
        with torch.device("meta"):
            dec = LatentDecoder(self.config)
        own = {k: v.detach().clone() for k, v in self.state_dict().items()
               if k.startswith(("decoder.", "post_quant_conv."))}
        dec.load_state_dict(own, assign=True)
        return dec

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training forward: (reconstruction (unclamped), VQ loss)."""
        f_hat, vq_loss, _ = self.quantize.quantize_ste(self.encode(img))
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss
