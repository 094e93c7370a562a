"""The `model.adversarial` config group: a patch discriminator that rewards detail in the student's images.

L1 / L2 against the teacher regress to the mean of what the LQ latent leaves open, so the adapted decoder
smooths (docs/toyworld.md, sharpness). The adversarial term asks instead that the student's images be
indistinguishable, patch by patch, from the teacher's (the VQGAN recipe's hinge loss):

    D loss = mean relu(1 − D(teacher)) + mean relu(1 + D(student.detach()))      trains the discriminator only
    G loss = −mean D'(student),  D' = D with its parameters detached             trains the adapters only

Both go into the one training loss: the detached copies route each gradient to its own side, so one backward
and one optimizer (the discriminator is an extra parameter group at `lr_scale` × the learning rate, clipped on
its own) serve both, and resume stays exact. The discriminator trains from step 0; the G loss joins at
`start_step` (weight 0 before). It is a training-time module: checkpoints hold it, adapters never do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

__all__ = ["AdversarialArgs", "PatchDiscriminator", "Adversarial", "build_adversarial"]


@dataclass
class AdversarialArgs:
    """Adversarial (hinge, patch discriminator) term of the adapter's loss; off at weight 0."""

    weight: float = 0.0
    """Weight of the G loss (−mean D(student)) in the training loss; 0: no discriminator at all."""
    start_step: int = 0
    """Optimizer step from which the G loss counts (the discriminator trains from step 0)."""
    lr_scale: float = 1.0
    """Learning rate of the discriminator as a multiple of model.optim.learning_rate (same schedule)."""
    width: int = 64
    """Channels of the discriminator's first convolution (doubled per down-sampling layer, at most 8×)."""
    layers: int = 3
    """Depth, as VQGAN's n_layers: a stride-2 input convolution, layers − 1 more stride-2 ones and one stride-1
    (3: each logit sees a 70×70-pixel patch)."""
    seed: int = 0
    """Seed of the discriminator's initialisation (its own stream: the adapters' initialisation is unchanged)."""

    def problems(self) -> list[str]:
        p = []
        if self.weight < 0:
            p.append(f"model.adversarial.weight must be >= 0, got {self.weight}")
        if self.start_step < 0:
            p.append(f"model.adversarial.start_step must be >= 0, got {self.start_step}")
        if self.lr_scale <= 0:
            p.append(f"model.adversarial.lr_scale must be > 0, got {self.lr_scale}")
        if self.width < 1:
            p.append(f"model.adversarial.width must be >= 1, got {self.width}")
        if self.layers < 1:
            p.append(f"model.adversarial.layers must be >= 1, got {self.layers}")
        return p


class PatchDiscriminator(nn.Module):
    """PatchGAN-style: `layers` stride-2 4×4 convolutions and a stride-1 one (GroupNorm after all but the first,
    LeakyReLU 0.2), then a 1-channel 4×4 head: (B, 3, H, W) -> (B, 1, h, w) logits, one per patch.
    No BatchNorm (no running buffers: the detached functional copy is exact under any batch split)."""

    def __init__(self, width: int = 64, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = width
        for i in range(1, layers + 1):
            out = width * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            mods += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), nn.GroupNorm(math.gcd(32, out), out),
                     nn.LeakyReLU(0.2)]  # (32 groups for widths of 32's multiples, as VQGAN's; fewer otherwise)
            ch = out
        mods.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Adversarial(nn.Module):
    """The discriminator and the two hinge losses (module docstring)."""

    def __init__(self, args: AdversarialArgs):
        super().__init__()
        self.args = args
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            self.disc = PatchDiscriminator(args.width, args.layers)

    def _frozen_disc(self, x: torch.Tensor) -> torch.Tensor:
        params = {n: p.detach() for n, p in self.disc.named_parameters()}
        return functional_call(self.disc, params, (x,))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor,
                generator_on: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(weighted G loss + D loss, {"adv_g", "adv_d", "disc_real", "disc_fake"} detached) for images in
        [-1, 1]; `generator_on` false puts weight 0 on the G loss (it is still reported)."""
        s, t = student.float(), teacher.float().detach()
        real = self.disc(t)
        fake = self.disc(s.detach())
        d_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        g_loss = -self._frozen_disc(s).mean()
        weight = self.args.weight if generator_on else 0.0
        total = weight * g_loss + d_loss
        terms = {"adv_g": g_loss.detach(), "adv_d": d_loss.detach(), "disc_real": real.detach().mean(),
                 "disc_fake": fake.detach().mean()}
        return total, terms


def smallest_image(layers: int) -> int:
    """The least image side the discriminator of `layers` takes: each stride-2 convolution halves the side
    (rounding down), and the stride-1 convolution and the head (4×4, padding 1) need 3 pixels left."""
    return 3 * 2 ** layers


def build_adversarial(args: AdversarialArgs, image_size: Optional[int] = None) -> Optional[Adversarial]:
    """The Adversarial module, or None at weight 0. `image_size`: the decoder's output side; a discriminator
    too deep for it is refused (ValueError naming model.adversarial.layers)."""
    if args.weight <= 0:
        return None
    if image_size is not None and image_size < smallest_image(args.layers):
        fit = max((n for n in range(1, args.layers) if smallest_image(n) <= image_size), default=0)
        raise ValueError(f"model.adversarial.layers {args.layers} is too deep for {image_size}-pixel images (it "
                         f"needs at least {smallest_image(args.layers)}); use at most {fit}")
    return Adversarial(args)
