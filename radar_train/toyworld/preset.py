"""The `toy` model preset: the architecture of the toy world's VQ-VAE and VAR, and the weight files
shipped inside the package (made by `radar-toy train`)."""
from __future__ import annotations

from pathlib import Path

from radar_train.models.configs import ModelPreset, VARConfig, VQVAEConfig
from radar_train.toyworld.data import NUM_CLASSES

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
VAE_FILE = "toy_vae.safetensors"
VAR_FILE = "toy_var.safetensors"
CLASSIFIER_FILE = "toy_classifier.safetensors"
INFO_FILE = "toy_train.json"

TOY_PATCH_NUMS = (1, 2, 3, 4, 6, 8)
# 64×64 images, 8× downsampling to an 8×8 latent; 16 channels at full resolution (a batch-32 training step
# takes 0.9 s on 2 CPU cores, against 1.2–1.6 s with 32); GroupNorm with 8 groups (with one channel per
# group, colour is lost)
TOY_VAE = VQVAEConfig(vocab_size=512, z_channels=16, ch=16, ch_mult=(1, 2, 4, 4), num_res_blocks=1,
                      share_quant_resi=4, patch_nums=TOY_PATCH_NUMS, norm_groups=8)
TOY_VAR = VARConfig(num_classes=NUM_CLASSES, depth=4, embed_dim=128, num_heads=4, patch_nums=TOY_PATCH_NUMS,
                    vocab_size=512, z_channels=16, drop_path_rate=0.0, cond_drop_rate=0.1)

TOY_PRESET = ModelPreset(
    name="toy",
    vae=TOY_VAE,
    var=TOY_VAR,
    description="toy world (64px, 10 shape classes, 6 scales): VQ-VAE + VAR trained by radar-toy train, shipped "
                "in the package",
    packaged_files=(str(WEIGHTS_DIR / VAE_FILE), str(WEIGHTS_DIR / VAR_FILE)),
)
