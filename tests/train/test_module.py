"""RadarLoraModule on synthetic latents: what trains, what a checkpoint holds, export -> reload."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from radar_train.export.adapter import ADAPTER_FILES, ADAPTER_WEIGHTS, load_adapter, read_radar_config
from radar_train.models import ModelIdentity, load_latent_decoder
from radar_train.train.module import MonitorArgs, OutputArgs, RadarLoraModule
from radar_train.train.optim import OptimArgs, WarmupCosine
from tiny_training import LabelledPairs

STEPS = 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):

    """(module before training: state dict copy, trained module, run folder) after STEPS steps."""
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    module = RadarLoraModule(optim=OptimArgs(learning_rate=1e-2, warmup_steps=1),
                             output=OutputArgs(save_every_n_steps=2))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = pl.Trainer(default_root_dir=str(root), accelerator="cpu", devices=1, precision="32-true",
                         max_steps=STEPS, enable_progress_bar=False, enable_model_summary=False, logger=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, DataLoader(LabelledPairs(16), batch_size=4, shuffle=False))
    return before, module, root


def test_only_lora_parameters_change_when_training(trained):
    before, module, _ = trained
    after = module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    lora_b = {k for k in before if ".lora_B." in k}
    assert changed and all(".lora_" in k for k in changed)
    assert lora_b <= changed  # every adapter learned something


def test_checkpoint_holds_only_the_lora_weights_and_the_training_state(trained):
    _, module, root = trained
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["last.ckpt", f"step-{STEPS:06d}.ckpt"]
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    lora_keys = {k for k in module.state_dict() if ".lora_" in k}
    assert set(ckpt["state_dict"]) == lora_keys
    assert ckpt["global_step"] == STEPS
    assert ckpt["optimizer_states"][0]["state"] and ckpt["lr_schedulers"][0]["last_epoch"] == STEPS
    assert ckpt["radar"]["base"]["vae"]["value"] == "tiny:seed=0"
    frozen_bytes = sum(v.numel() for k, v in module.state_dict().items() if ".lora_" not in k)
    assert sum(v.numel() for v in ckpt["state_dict"].values()) < frozen_bytes


def test_exported_adapter_loaded_into_a_fresh_decoder_reproduces_the_student(trained, tmp_path, make_batch):
    _, module, _ = trained
    out = module.export(tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == sorted(ADAPTER_FILES)
    x = make_batch(3, seed=7)["fhat_lq"]
    module.eval()
    with torch.no_grad():
        student = module.decode(x)[0]
        fresh, ident = load_latent_decoder("tiny")
        base_out = fresh(x)
        unmerged = load_adapter(fresh, out, identity=ident, merge=False)
        assert torch.equal(unmerged(x), student)
        merged = unmerged.merge_and_unload()
        assert torch.allclose(merged(x), student, atol=1e-5)
        assert not torch.allclose(base_out, student, atol=1e-3)  # the adapter is not the identity
    meta = read_radar_config(out)
    assert meta["global_step"] == STEPS and meta["lora"]["rank"] == 16


def test_loading_an_adapter_onto_another_vqvae_is_refused(trained, tmp_path):
    _, module, _ = trained
    out = module.export(tmp_path / "adapter")
    other, _ = load_latent_decoder("tiny", init_seed=5)
    with pytest.raises(ValueError, match="trained for the VQ-VAE random:tiny:seed=0"):
        load_adapter(other, out, identity=ModelIdentity("random", "tiny:seed=5", {}))


def test_resuming_with_another_base_decoder_is_refused(trained):
    _, _, root = trained
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    other = RadarLoraModule(decoder=type(trained[1].decoder_args)(preset="tiny", init_seed=3))
    with pytest.raises(ValueError, match="was trained on the VQ-VAE random:tiny:seed=0"):
        other.on_load_checkpoint(ckpt)


def test_warmup_then_cosine_schedule():
    f = WarmupCosine(warmup=10, total=110, floor=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_invalid_settings_are_reported_together():
    from radar_train.train.lora import LoraArgs

    with pytest.raises(ValueError) as e:
        RadarLoraModule(lora=LoraArgs(rank=0), optim=OptimArgs(learning_rate=-1))
    assert "model.lora.rank" in str(e.value) and "model.optim.learning_rate" in str(e.value)
    with pytest.raises(ValueError) as e:  # refused here, not by AdamW once the run folder exists
        RadarLoraModule(optim=OptimArgs(betas=(1.5, 0.999), weight_decay=-1))
    assert "model.optim.betas must be two numbers in [0, 1), got [1.5, 0.999]" in str(e.value)
    assert "model.optim.weight_decay must be >= 0, got -1" in str(e.value)


@pytest.mark.parametrize("ckpt,mode", [(True, "blocks"), ("blocks", "blocks"), ("norms", "norms")])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(make_batch, ckpt, mode):
    batch = make_batch(n=2, seed=3)
    results = []
    for ckpt, mode in ((False, None), (ckpt, mode)):
        torch.manual_seed(0)
        module = RadarLoraModule(optim=OptimArgs(activation_checkpointing=ckpt))
        g = torch.Generator().manual_seed(0)
        for n, p in module.net.named_parameters():  # non-zero LoRA B, so that every LoRA tensor gets a gradient
            if "lora_B" in n:
                with torch.no_grad():
                    p.normal_(std=0.01, generator=g)
        assert module.net.base_model.model.decoder.checkpointing == mode
        loss = module.compute_loss(batch)[0]
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in module.net.named_parameters() if p.requires_grad}))
    (l0, g0), (l1, g1) = results
    assert torch.allclose(l0, l1, atol=1e-6)
    assert g0.keys() == g1.keys() and len(g0) > 0
    assert all(torch.allclose(g0[k], g1[k], atol=1e-6, rtol=1e-4) for k in g0)
    assert any(g.abs().sum() > 0 for g in g0.values())


def test_export_of_a_checkpoint_trained_with_lpips_needs_no_lpips_files(trained, tmp_path):
    """The loss shapes no tensor: a checkpoint whose LPIPS weight files are gone (another machine) exports."""
    from radar_train.train.export import export_checkpoint

    _, _, root = trained
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["loss"] = {**ckpt["hyper_parameters"]["loss"], "lpips_weight": 1.0,
                                        "lpips_vgg": str(tmp_path / "gone" / "vgg16.pth"),
                                        "lpips_heads": str(tmp_path / "gone" / "vgg.pth")}
    torch.save(ckpt, tmp_path / "lpips.ckpt")
    export_checkpoint(tmp_path / "lpips.ckpt", tmp_path / "a")
    export_checkpoint(root / "checkpoints" / "last.ckpt", tmp_path / "b")
    a, b = load_file(tmp_path / "a" / ADAPTER_WEIGHTS), load_file(tmp_path / "b" / ADAPTER_WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_validation_counts_a_distributed_samplers_padding_once(tiny_cache):
    """16 pairs on 3 ranks: 6 each, the last rank's final 2 are repeats of pairs that other ranks count. That
    rank's validation counts its 4 own pairs only (its sums are those of the 4 alone), and a rank of nothing
    but repeats counts none."""
    from radar_train.cache.reader import BlockShuffleSampler, PairDataset

    ds = PairDataset(tiny_cache, [14])
    torch.manual_seed(0)
    module = RadarLoraModule(monitor=MonitorArgs(images_every_n_steps=0))

    def validate(loader):
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False)
        trainer.validate(module, loader, verbose=False)
        loss = trainer.callback_metrics.get("val/loss")  # (none without a pair)
        return module.val_stats.sums.clone(), None if loss is None else float(loss)

    last = BlockShuffleSampler(ds, shuffle=False, rank=2, world_size=3)
    assert len(last) == 6 and last.unique_count() == 4
    sums, loss = validate(DataLoader(ds, sampler=last, batch_size=4))
    own = torch.utils.data.Subset(ds, last.rank_order()[:4].tolist())
    want_sums, want_loss = validate(DataLoader(own, batch_size=4))
    assert sums[0] == 4 and torch.equal(sums, want_sums) and loss == want_loss
    only_repeats = BlockShuffleSampler(ds, shuffle=False, rank=8, world_size=9)
    assert len(only_repeats) == 2 and only_repeats.unique_count() == 0
    sums, loss = validate(DataLoader(ds, sampler=only_repeats, batch_size=4))
    assert sums[0] == 0 and loss is None


def test_validation_under_a_mixed_precision_decodes_in_float32_like_radar_eval(tiny_cache):
    """radar-eval decodes in float32; validation under bf16-mixed used to decode in bf16 (other metrics for the
    same adapter and pairs: PSNR capped by bf16's rounding)."""
    from radar_train.cache.reader import PairDataset

    loader = DataLoader(torch.utils.data.Subset(PairDataset(tiny_cache, [14]), range(4)), batch_size=4)
    torch.manual_seed(0)
    module = RadarLoraModule(monitor=MonitorArgs(images_every_n_steps=0))

    def validate(precision):
        trainer = pl.Trainer(accelerator="cpu", devices=1, precision=precision, logger=False,
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.validate(module, loader, verbose=False)
        return module.val_stats.sums.clone(), float(trainer.callback_metrics["val/loss"])

    (mixed, mixed_loss), (full, full_loss) = validate("bf16-mixed"), validate("32-true")
    assert mixed[0] == 4 and torch.equal(mixed, full) and mixed_loss == full_loss


class _MetricsLogger(pl.loggers.Logger):
    """Every log_metrics call, as (step, metrics)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "record"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, dict(metrics)))


def test_training_metrics_are_logged_once_per_optimizer_step_over_its_micro_batches(tmp_path):
    """With gradient accumulation, train/psnr_student and train/ssim_student are the mean over the step's
    micro-batches, logged once at the step (not once per micro-batch at the same step)."""
    from radar_train.train.metrics import psnr_per_image, ssim_per_image, to_unit

    torch.manual_seed(0)
    module = RadarLoraModule(optim=OptimArgs(learning_rate=1e-2, warmup_steps=1),
                             monitor=MonitorArgs(images_every_n_steps=0, train_metrics_every_n_steps=1),
                             output=OutputArgs(checkpoints=False, export_final=False))
    pairs = LabelledPairs(16)
    with torch.no_grad():  # the first step's student: the LoRA starts at the identity (B = 0)
        _, _, student, teacher = module.compute_loss({"fhat_hq": pairs.hq[:8], "fhat_lq": pairs.lq[:8]})
        s01, t01 = to_unit(student), to_unit(teacher)
        want = {"train/psnr_student": float(psnr_per_image(s01, t01).mean()),
                "train/ssim_student": float(ssim_per_image(s01, t01).mean())}
    logger = _MetricsLogger()
    trainer = pl.Trainer(default_root_dir=str(tmp_path), accelerator="cpu", devices=1, precision="32-true",
                         max_steps=2, accumulate_grad_batches=2, enable_progress_bar=False,
                         enable_model_summary=False, logger=logger, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, DataLoader(pairs, batch_size=4, shuffle=False))
    logged = [(step, m) for step, m in logger.calls if "train/psnr_student" in m]
    assert [step for step, _ in logged] == [0, 1]
    assert logged[0][1] == pytest.approx(want, rel=1e-5)
