"""The adversarial term (model.adversarial) and the spectrum loss: each gradient reaches only its own side, the
G loss waits for start_step, the discriminator trains and is checkpointed (resume is exact) but never exported,
its gradients are clipped apart from the adapters'; the amplitude-spectrum loss in closed form."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from radar_train.export import ADAPTER_FILES
from radar_train.train.adversarial import Adversarial, AdversarialArgs, PatchDiscriminator
from radar_train.train.losses import DistillLoss, LossArgs, amplitude_spectrum
from radar_train.train.module import OutputArgs, RadarLoraModule, is_trained_key
from radar_train.train.optim import OptimArgs

ADV = AdversarialArgs(weight=0.5, width=8, lr_scale=0.5)


def _images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_each_gradient_reaches_only_its_own_side():
    adv = Adversarial(ADV)
    s = _images(seed=1).requires_grad_()
    t = _images(seed=2)
    total, terms = adv(s, t, generator_on=True)
    total.backward()
    disc = list(adv.disc.parameters())
    # the student's gradient is the weighted G loss's alone, the discriminator's the D loss's alone
    s2 = s.detach().clone().requires_grad_()
    want_s, = torch.autograd.grad(-ADV.weight * adv.disc(s2).mean(), s2)
    real, fake = adv.disc(t), adv.disc(s.detach())
    d_loss = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
    want_d = torch.autograd.grad(d_loss, disc)
    torch.testing.assert_close(s.grad, want_s)
    for p, g in zip(disc, want_d):
        torch.testing.assert_close(p.grad, g)
    torch.testing.assert_close(terms["adv_d"], d_loss.detach())
    torch.testing.assert_close(total.detach(), ADV.weight * terms["adv_g"] + terms["adv_d"])


def test_before_start_step_the_student_gets_no_gradient_but_the_discriminator_trains():
    adv = Adversarial(ADV)
    s = _images(seed=1).requires_grad_()
    total, terms = adv(s, _images(seed=2), generator_on=False)
    total.backward()
    assert s.grad is None or not s.grad.any()
    grads = {n: p.grad for n, p in adv.disc.named_parameters()}
    assert all(g is not None for g in grads.values())
    # every weight learns (the head's bias may not: with every hinge active its gradient is −1 + 1 = 0)
    assert all(g.abs().sum() > 0 for n, g in grads.items() if n.endswith("weight"))
    assert torch.isfinite(terms["adv_g"])  # still reported


def test_discriminator_has_its_own_seed_and_leaves_the_global_stream_alone():
    torch.manual_seed(123)
    a = Adversarial(ADV)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)
    b = Adversarial(ADV)
    c = Adversarial(AdversarialArgs(weight=0.5, width=8, seed=1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_patch_discriminator_gives_one_logit_per_patch():
    # 64 -> 32 -> 16 -> 8 (stride 2), 7 (stride 1), 6 (head): VQGAN's n_layers 3 layout
    assert PatchDiscriminator(8, 3)(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    assert PatchDiscriminator(8, 1)(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 30, 30)


def test_invalid_adversarial_settings_are_reported_together():
    with pytest.raises(ValueError, match=r"adversarial.weight must be >= 0.*adversarial.lr_scale must be > 0"):
        RadarLoraModule(adversarial=AdversarialArgs(weight=-1, lr_scale=0))


def test_any_width_builds_and_a_discriminator_too_deep_for_the_images_is_refused():
    for width in (5, 20, 100):  # GroupNorm groups that divide the channels (32 of them at multiples of 32)
        assert PatchDiscriminator(width, 3)(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 6, 6)
    assert PatchDiscriminator(8, 4)(torch.zeros(1, 3, 48, 48)).shape == (1, 1, 1, 1)  # 48 = 3·2^4: the least
    with pytest.raises(RuntimeError):  # 47 < 3·2^4: the head has nothing left to slide over
        PatchDiscriminator(8, 4)(torch.zeros(1, 3, 47, 47))
    plain = RadarLoraModule()
    image = plain.latent_shape[-1] * 2 ** (len(plain.decoder.config.ch_mult) - 1)
    layers = next(n for n in range(1, 10) if image >> n < 3)
    RadarLoraModule(adversarial=AdversarialArgs(weight=0.5, width=8, layers=layers - 1))
    with pytest.raises(ValueError, match=f"model.adversarial.layers {layers} is too deep for {image}-pixel images"):
        RadarLoraModule(adversarial=AdversarialArgs(weight=0.5, width=8, layers=layers))


def _fit(root, steps: int, loader, ckpt_path=None, adversarial: AdversarialArgs = ADV) -> RadarLoraModule:
    torch.manual_seed(0)
    module = RadarLoraModule(optim=OptimArgs(learning_rate=1e-2, warmup_steps=1, schedule_steps=4),
                             output=OutputArgs(save_every_n_steps=2), adversarial=adversarial)
    trainer = pl.Trainer(default_root_dir=str(root), accelerator="cpu", devices=1, precision="32-true",
                         max_steps=steps, enable_progress_bar=False, enable_model_summary=False, logger=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, loader(), ckpt_path=ckpt_path)  # 8 pairs, two batches: the resume point ends an epoch
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_loader):
    """(4 steps straight, 2 steps then resumed to 4, its run folder)."""
    straight = _fit(tmp_path_factory.mktemp("straight"), 4, make_loader)
    root = tmp_path_factory.mktemp("resumed")
    _fit(root, 2, make_loader)
    resumed = _fit(root, 4, make_loader, ckpt_path=str(root / "checkpoints" / "last.ckpt"))
    return straight, resumed, root


def test_discriminator_trains_is_checkpointed_and_resumes_exactly(runs):
    straight, resumed, root = runs
    fresh = Adversarial(ADV).state_dict()
    trained = straight.adversarial.state_dict()
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh)
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert {k for k in ckpt["state_dict"] if k.startswith("adversarial.")} == \
        {f"adversarial.{k}" for k in fresh}
    assert set(ckpt["state_dict"]) == {k for k in resumed.state_dict() if is_trained_key(k)}
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if is_trained_key(k))
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert len(groups) == 2 and groups[1]["initial_lr"] == pytest.approx(1e-2 * ADV.lr_scale)


def test_exported_adapter_holds_no_discriminator(runs, tmp_path):
    _, resumed, root = runs
    final = root / "final"
    assert sorted(p.name for p in final.iterdir()) == sorted(ADAPTER_FILES)
    from safetensors.torch import load_file

    keys = load_file(str(final / "adapter_model.safetensors"))
    assert keys and not any("disc" in k or "adversarial" in k for k in keys)


def test_a_checkpoint_with_a_discriminator_is_refused_by_a_run_without(runs):
    _, _, root = runs
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    with pytest.raises(ValueError, match="another LoRA layout"):
        RadarLoraModule().on_load_checkpoint(ckpt)


def test_discriminator_gradients_are_clipped_apart_from_the_adapters(make_batch):
    torch.manual_seed(0)
    module = RadarLoraModule(adversarial=ADV)
    with torch.no_grad():
        for n, p in module.net.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.02)
    loss = module.compute_loss(make_batch(4))[0]
    loss.backward()
    lora = [p for p in module.net.parameters() if p.requires_grad]
    disc = list(module.adversarial.parameters())
    for ps in (lora, disc):  # scale both sides' gradients far above the clip norm
        for p in ps:
            p.grad.mul_(1e3)
    lora_before = [p.grad.clone() for p in lora]
    opt = torch.optim.AdamW([{"params": lora}, {"params": disc}])
    module.configure_gradient_clipping(opt, gradient_clip_val=1.0)
    norm = lambda ps: torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in ps]))
    assert norm(lora) == pytest.approx(1.0, rel=1e-4) and norm(disc) == pytest.approx(1.0, rel=1e-4)
    # each side keeps its direction: the adapters' step is not shrunk by the discriminator's gradient
    ratio = [(p.grad / b)[b != 0] for p, b in zip(lora, lora_before)]
    flat = torch.cat([r.flatten() for r in ratio])
    torch.testing.assert_close(flat, torch.full_like(flat, flat[0].item()))


# ------------------------------------------------------------------ spectrum loss
def test_amplitude_spectrum_keeps_the_energy_and_ignores_a_circular_shift():
    x = _images(1, 16)
    amp = amplitude_spectrum(x)
    torch.testing.assert_close(amp.pow(2).sum(), x.pow(2).sum())  # Parseval, orthonormal FFT
    const = torch.full((1, 1, 4, 4), 0.5)
    want = torch.zeros(1, 1, 4, 4)
    want[..., 0, 0] = 0.5 * 4  # all energy at DC: 0.5 · sqrt(16)
    torch.testing.assert_close(amplitude_spectrum(const), want)
    loss = DistillLoss(LossArgs(l1_weight=0, spectrum_weight=1.0))
    shifted = torch.roll(x, shifts=(3, 5), dims=(-2, -1))
    assert loss(shifted, x)[0] < 1e-6
    assert DistillLoss(LossArgs())(shifted, x)[0] > 0.1  # L1 sees the shift


def test_spectrum_loss_penalises_a_blur():
    x = _images(1, 16)
    blur = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    total, terms = DistillLoss(LossArgs(l1_weight=1.0, spectrum_weight=2.0))(blur, x)
    want = (amplitude_spectrum(blur) - amplitude_spectrum(x)).abs().mean()
    assert want > 0.05
    torch.testing.assert_close(terms["spectrum"], want)
    torch.testing.assert_close(total, (blur - x).abs().mean() + 2.0 * want)
