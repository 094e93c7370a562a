"""Golden numbers of test_losses.py::test_lpips_matches_the_reference_package.

Runs the `lpips` package (0.1.4, net="vgg") with seeded random weights (the layout of torchvision's VGG16
and of lpips' v0.1 linear heads) on seeded inputs and prints the distances. Needs `lpips` and a torchvision
whose `models.vgg16()` builds the standard 31-layer `features` (random init); nothing is downloaded:

    pip install --target /tmp/lp lpips==0.1.4 torchvision   # or any env with both
    PYTHONPATH=/tmp/lp python tests/train/scripts/lpips_golden.py
"""
from __future__ import annotations

import torch


def seeded_weights(seed: int = 0) -> tuple[dict, dict]:
    """(torchvision-layout VGG16 feature weights, lpips-layout head weights), deterministic."""
    g = torch.Generator().manual_seed(seed)
    chans = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 512), (512, 512),
             (512, 512), (512, 512), (512, 512), (512, 512)]
    idx = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    vgg = {}
    for i, (ci, co) in zip(idx, chans):
        vgg[f"features.{i}.weight"] = torch.randn(co, ci, 3, 3, generator=g) * (2 / (ci * 9)) ** 0.5
        vgg[f"features.{i}.bias"] = torch.randn(co, generator=g) * 0.01
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) * 0.1
             for k, c in enumerate((64, 128, 256, 512, 512))}
    return vgg, heads


def seeded_inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, 3, 32, 32, generator=g) * 2 - 1, torch.rand(3, 3, 32, 32, generator=g) * 2 - 1


def main() -> None:
    import lpips

    vgg, heads = seeded_weights()
    ref = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False).eval()
    feats = {}
    for s in range(1, 6):
        for name, mod in getattr(ref.net, f"slice{s}").named_children():
            for k in mod.state_dict():
                feats[f"{name}.{k}"] = vgg[f"features.{name}.{k}"]
            mod.load_state_dict({k: vgg[f"features.{name}.{k}"] for k in mod.state_dict()})
    for k in range(5):
        getattr(ref, f"lin{k}").model[1].weight.data.copy_(heads[f"lin{k}.model.1.weight"])
    a, b = seeded_inputs()
    with torch.no_grad():
        print([round(x, 7) for x in ref(a, b).flatten().tolist()])


if __name__ == "__main__":
    main()
