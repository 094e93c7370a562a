"""The toy world: the procedural image set, the trainers (tiny sizes), the shipped `toy` weights and
what they were documented to do, and the radar-toy command line."""
from __future__ import annotations

import json
import math

import pytest
import torch

from radar_train.models import VARConfig, VQVAEConfig, load_models
from radar_train.sampling import NextScaleSampler
from radar_train.toyworld.classifier import ClassifierTrainConfig, accuracy, train_classifier
from radar_train.toyworld.common import make_bank
from radar_train.toyworld.data import HELDOUT_SEED, NUM_CLASSES, ToyWorld, WorldConfig
from radar_train.toyworld.measure import (MeasureConfig, decode01, load_classifier, run_measure, sample_fhat,
                                          sample_plan, sharpness_vs)
from radar_train.toyworld.preset import (CLASSIFIER_FILE, INFO_FILE, TOY_VAE, TOY_VAR, VAE_FILE, VAR_FILE,
                                         WEIGHTS_DIR)
from radar_train.toyworld.train_var import VARTrainConfig, encode_bank, train_var
from radar_train.toyworld.train_vqvae import (EmaCodebook, VQVAETrainConfig, quantizer_inputs, reconstruct_bank,
                                              reconstruction_psnr, train_vqvae)

SMALL_WORLD = WorldConfig(image_size=16, supersample=2)
TINY_VAE = VQVAEConfig(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1, patch_nums=(1, 2, 4, 8),
                       norm_groups=8)
TINY_VAR = VARConfig(num_classes=NUM_CLASSES, depth=2, embed_dim=32, num_heads=2, patch_nums=(1, 2, 4, 8),
                     vocab_size=32, z_channels=4, drop_path_rate=0.0)


@pytest.fixture(scope="module")
def info() -> dict:
    return json.loads((WEIGHTS_DIR / INFO_FILE).read_text())


@pytest.fixture(scope="module")
def toy_models():
    vqvae, var, _, _ = load_models("toy")
    return vqvae, var


# ------------------------------------------------------------------------------------------ generator
def test_generator_is_deterministic_per_image_and_differs_across_seeds():
    a = ToyWorld(0).images([0, 1, 2, 3])
    assert torch.equal(a, ToyWorld(0).images([0, 1, 2, 3]))
    assert torch.equal(a[3], ToyWorld(0).images([7, 3])[1]), "an image must not depend on its batch"
    b = ToyWorld(1).images([0, 1, 2, 3])
    assert (a - b).abs().flatten(1).mean(1).min() > 0.02, "another seed must give other images"
    assert a.shape == (4, 3, 64, 64) and a.min() >= 0 and a.max() <= 1


def test_images_carry_detail_and_labels_are_balanced():
    x = ToyWorld(0).images(range(20))
    edges = (x[..., 1:] - x[..., :-1]).abs().flatten(1).amax(1)
    assert bool((edges > 0.2).all()), "every image has sharp edges"
    assert ToyWorld(0).labels(range(20)).tolist() == [i % NUM_CLASSES for i in range(20)]


# ------------------------------------------------------------------------------------------ trainers
@pytest.fixture(scope="module")
def small_bank():
    torch.manual_seed(0)
    return make_bank(0, 64, SMALL_WORLD)


def test_vqvae_training_reduces_loss(small_bank):
    cfg = VQVAETrainConfig(steps=30, batch_size=8, warmup_steps=5, restart_every=10, log_every=10)
    vqvae, m = train_vqvae(TINY_VAE, cfg, small_bank, seed=0)
    assert len(m["loss_curve"]) == 3 and m["loss_curve"][-1] < 0.8 * m["loss_curve"][0]
    assert 0 < reconstruction_psnr(vqvae, small_bank)["codebook_usage"] <= 1


def test_ema_codebook_follows_the_mean_of_the_assigned_vectors():
    weight = torch.zeros(3, 2)
    ema = EmaCodebook(weight, decay=0.5)
    z = torch.tensor([[2.0, 0.0], [4.0, 0.0], [0.0, 6.0]])
    for _ in range(30):
        ema.update_(weight, z, torch.tensor([0, 0, 1]))
    assert torch.allclose(weight[0], torch.tensor([3.0, 0.0]), atol=1e-3)
    assert torch.allclose(weight[1], torch.tensor([0.0, 6.0]), atol=1e-3)
    assert torch.equal(weight[2], torch.zeros(2)), "a code nobody picks stays where it is"
    ema.reset_(torch.tensor([2]), torch.tensor([[1.0, 1.0]]))
    ema.update_(weight, z, torch.tensor([0, 0, 1]))
    assert torch.allclose(weight[2], torch.tensor([1.0, 1.0]), atol=1e-3)


def test_quantizer_inputs_match_the_quantizers_own_indices(small_bank):
    vqvae, _ = train_vqvae(TINY_VAE, VQVAETrainConfig(steps=3, batch_size=8, warmup_steps=1), small_bank, seed=0)
    x, _ = small_bank.batch(torch.arange(4))
    with torch.no_grad():
        f = vqvae.encode(x)
        z, idx = quantizer_inputs(vqvae, f)
        ref = vqvae.quantize.f_to_indices(f)
    assert z.shape == (4 * TINY_VAR.num_tokens, TINY_VAE.z_channels)
    assert torch.equal(idx, torch.cat([r.flatten() for r in ref]))


def test_classifier_trains_on_reconstructions_too():
    bank = make_bank(0, 48)
    vqvae, _ = train_vqvae(TOY_VAE, VQVAETrainConfig(steps=1, batch_size=2, warmup_steps=1), bank, seed=0)
    recon = reconstruct_bank(vqvae, bank, 16)
    assert recon.images.dtype == torch.uint8 and recon.images.shape == (16, 3, 64, 64)
    assert torch.equal(recon.labels, bank.labels[:16])
    cfg = ClassifierTrainConfig(steps=4, batch_size=8, warmup_steps=1, log_every=2, recon_share=0.5)
    _, m = train_classifier(cfg, bank, seed=0, recon_bank=recon)
    assert len(m["loss_curve"]) == 2


def test_var_training_reduces_loss(small_bank):
    vqvae, _ = train_vqvae(TINY_VAE, VQVAETrainConfig(steps=5, batch_size=8, warmup_steps=2), small_bank, seed=0)
    tokens = encode_bank(vqvae, small_bank)
    assert tokens.targets.shape == (64, TINY_VAR.num_tokens)
    assert tokens.inputs.shape == (64, TINY_VAR.num_tokens - 1, TINY_VAE.z_channels)
    var, m = train_var(TINY_VAR, VARTrainConfig(steps=30, batch_size=16, warmup_steps=5, log_every=10), tokens, seed=0)
    assert len(m["loss_curve"]) == 3 and not var.training
    # The baseline: the tokens' marginal (unigram) entropy, the cross-entropy of the best model that ignores the
    # class, the earlier scales and the position. A VAR that learned anything from its inputs beats it.
    freq = torch.bincount(tokens.targets.flatten(), minlength=TINY_VAR.vocab_size).float()
    freq = freq[freq > 0] / freq.sum()
    marginal = -(freq * freq.log()).sum().item()
    assert marginal < math.log(TINY_VAR.vocab_size)
    with torch.no_grad():  # teacher-forced cross-entropy over every token of the set
        logits = var(tokens.labels, tokens.inputs)
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.targets.flatten()).item()
    assert ce < marginal, (ce, marginal)


def test_classifier_training_reduces_loss(small_bank):
    bank = make_bank(0, 64)  # the classifier needs 64×64 images
    cfg = ClassifierTrainConfig(steps=20, batch_size=16, warmup_steps=3, log_every=10)
    _, m = train_classifier(cfg, bank, seed=0)
    assert m["loss_curve"][-1] < m["loss_curve"][0]


# ------------------------------------------------------------------------------------------ shipped weights
def test_shipped_weights_load_as_the_toy_preset_and_fit_the_size_budget(toy_models):
    vqvae, var = toy_models
    assert vqvae.config == TOY_VAE.with_patch_nums(TOY_VAR.patch_nums) and var.config == TOY_VAR
    assert all(p.dtype == torch.float32 for p in list(vqvae.parameters()) + list(var.parameters()))
    size = sum((WEIGHTS_DIR / f).stat().st_size for f in (VAE_FILE, VAR_FILE))
    assert size <= 20 * 2**20, f"shipped VQ-VAE + VAR take {size / 2**20:.1f} MiB"


def test_shipped_vqvae_reconstructs_heldout_images_as_documented(toy_models, info):
    vqvae, _ = toy_models
    res = reconstruction_psnr(vqvae, make_bank(HELDOUT_SEED, 48))
    documented = info["metrics"]["vqvae"]["psnr_db"]  # measured on 200 held-out images by radar-toy train
    assert abs(res["psnr_db"] - documented) < 1.0
    assert res["psnr_db"] > 22.0 and res["codebook_usage"] > 0.5


def test_shipped_classifier_recognises_heldout_images_and_their_reconstructions(toy_models):
    bank = make_bank(HELDOUT_SEED, 100)
    clf = load_classifier()
    assert accuracy(clf, bank.images.float() / 255, bank.labels) >= 0.95
    recon = reconstruct_bank(toy_models[0], bank)
    assert accuracy(clf, recon.images.float() / 255, bank.labels) >= 0.95


@pytest.fixture(scope="module")
def vanilla_accuracy(toy_models) -> float:
    """Class accuracy of the vanilla samples of `radar-toy measure` (20 per class, its seeds and batches: the
    measurement behind the README's figure), the toy classifier's verdict."""
    vqvae, var = toy_models
    cfg = MeasureConfig()
    labels, seeds = sample_plan(cfg)
    sampler = NextScaleSampler(var, vqvae.quantize, cfg.sampling)
    images = decode01(vqvae, sample_fhat(sampler, labels, seeds, batch_size=cfg.batch_size))
    return accuracy(load_classifier(), images, labels)


def test_vanilla_samples_mostly_have_the_class_they_were_asked_for(vanilla_accuracy):
    assert vanilla_accuracy >= 0.6, f"class accuracy {vanilla_accuracy:.3f} (chance: 0.10)"


def test_vanilla_samples_meet_the_class_accuracy_target(vanilla_accuracy):
    assert vanilla_accuracy >= 0.9, f"class accuracy {vanilla_accuracy:.3f} (documented: 0.92; target: 0.90)"


# ------------------------------------------------------------------------------------------ command line
def test_radar_toy_train_writes_loadable_weights(tmp_path):
    from radar_train.cli.toy import main

    args = ["train", "--output", str(tmp_path), "--recipe.num_train_images", "32", "--recipe.num_heldout_images", "8",
            "--recipe.vqvae.steps", "2", "--recipe.vqvae.batch_size", "4", "--recipe.var.steps", "2",
            "--recipe.var.batch_size", "4", "--recipe.classifier.steps", "2", "--recipe.classifier.batch_size", "4"]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([VAE_FILE, VAR_FILE, CLASSIFIER_FILE, INFO_FILE])
    vqvae, var, _, _ = load_models("toy", vae_checkpoint=str(tmp_path / VAE_FILE), var_checkpoint=str(tmp_path / VAR_FILE))
    assert var.config == TOY_VAR
    info = json.loads((tmp_path / INFO_FILE).read_text())
    assert info["config"]["vqvae"]["steps"] == 2 and set(info["times"]) >= {"vqvae_s", "var_s", "total_s"}
    # the recipe's 4,000 reconstructions are at most its 32 training images: the number used is recorded
    assert info["config"]["classifier"]["recon_images"] == 4000 and info["metrics"]["classifier"]["recon_images_used"] == 32
    load_classifier(str(tmp_path / CLASSIFIER_FILE))


def test_measure_reports_the_damage_of_acceleration(tmp_path):
    cfg = MeasureConfig(methods=["fastvar:aggressive"], images_per_class=1, num_heldout_images=8, grid_samples=2)
    report = run_measure(cfg, str(tmp_path))
    row = report["methods"]["fastvar:aggressive"]
    assert row["psnr_vs_vanilla"] < 60, "aggressive FastVAR must change the images"
    assert 0 <= report["vanilla"]["class_accuracy"] <= 1
    assert report["vanilla"]["sharpness_vs_vanilla"] == 1.0 and row["sharpness_vs_vanilla"] > 0
    assert set(report["sharpness"]["baselines"]) == {"real_renders", "vqvae_reconstructions"}
    assert {p.name for p in tmp_path.iterdir()} == {"metrics.json", "metrics.md", "toyworld_grid.png"}


def test_sharpness_is_one_against_itself_and_drops_with_a_blur():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    assert sharpness_vs(x, x) == pytest.approx(1.0)
    assert sharpness_vs(blurred, x) < 0.5 < sharpness_vs(x, blurred) / 2


def test_measure_refuses_adapters_for_unmeasured_methods():
    with pytest.raises(ValueError, match="not in --setup.methods"):
        run_measure(MeasureConfig(methods=["fastvar:default"], adapters={"stagevar:paper": "x"}))
