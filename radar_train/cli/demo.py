"""radar-demo: the tiny default end to end on the CPU."""
from __future__ import annotations

import sys
from pathlib import Path

from jsonargparse import CLI


def demo(output: str = "outputs/demo", model: str = "tiny", num_images: int = 8) -> int:
    """Sample a few images with the tiny model into a PNG grid.

    Args:
        output: folder for the results.
        model: model preset.
        num_images: images to sample.
    """
    import torch

    from radar_train.images import save_grid, to_uint8
    from radar_train.models import load_models
    from radar_train.sampling import NextScaleSampler, SamplingConfig, decode_images

    out = Path(output)
    vqvae, var, _, _ = load_models(model)
    sampler = NextScaleSampler(var, vqvae.quantize, SamplingConfig(cfg=1.5, top_k=0, top_p=0.0))
    labels = torch.arange(num_images) % var.num_classes
    res = sampler.sample(labels, seeds=list(range(num_images)))
    with torch.no_grad():
        imgs = to_uint8(decode_images(vqvae, res.f_hat))
    path = save_grid([list(imgs)], out / "samples.png", scale=4)
    print(f"samples: {path}")
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(CLI(demo, args=argv))


if __name__ == "__main__":
    main()
