"""Label-conditioned PAA (model.label_conditioning kind film): step 0 is the plain LoRA decoder, only LoRA and FiLM
train, the adapter folder round-trips, plain peft still loads its LoRA part, decoding without labels is refused."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from radar_train.export import (ADAPTER_FILES, LABEL_CONDITIONING_WEIGHTS, LabelConditionedDecoder,
                                decode_with_labels, load_adapter, read_radar_config)
from radar_train.inputs import InputError
from radar_train.models import load_latent_decoder
from radar_train.train.conditioning import LabelConditioningArgs
from radar_train.train.module import OutputArgs, RadarLoraModule, is_trained_key
from radar_train.train.optim import OptimArgs

FILM = LabelConditioningArgs(kind="film", embed_dim=8)
STEPS = 4


class _LabelledPairs(torch.utils.data.Dataset):
    """Random tiny-model latent pairs (8, 8, 8) with labels 0..9: fhat_lq = fhat_hq + noise."""

    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.hq = torch.randn(n, 8, 8, 8, generator=g)
        self.lq = self.hq + 0.5 * torch.randn(n, 8, 8, 8, generator=g)
        self.labels = torch.arange(n) % 10

    def __len__(self) -> int:
        return len(self.hq)

    def __getitem__(self, i: int) -> dict:
        return {"fhat_hq": self.hq[i], "fhat_lq": self.lq[i], "label": self.labels[i]}


def _random_lora_(module: RadarLoraModule, seed: int = 0) -> None:
    """Non-zero LoRA B, so that the adapter is not the identity and every LoRA tensor gets a gradient."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in module.net.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.02, generator=g)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(state dict before training, trained conditioned module, run folder) after STEPS steps."""
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    module = RadarLoraModule(optim=OptimArgs(learning_rate=1e-2, warmup_steps=1), output=OutputArgs(save_every_n_steps=2),
                             label_conditioning=FILM)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = pl.Trainer(default_root_dir=str(root), accelerator="cpu", devices=1, precision="32-true",
                         max_steps=STEPS, enable_progress_bar=False, enable_model_summary=False, logger=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, DataLoader(_LabelledPairs(16), batch_size=4, shuffle=False))
    return before, module.eval(), root


def test_film_at_init_reproduces_the_unconditioned_lora_decoder_exactly(make_batch):
    x = make_batch(4, seed=1)["fhat_lq"]
    torch.manual_seed(0)
    plain = RadarLoraModule()
    torch.manual_seed(0)
    cond = RadarLoraModule(label_conditioning=FILM)
    _random_lora_(plain)
    _random_lora_(cond)
    with torch.no_grad():
        want = plain.decode(x)[0]
        got = cond.decode(x, labels=torch.tensor([0, 3, 7, 9]))[0]
    assert torch.equal(got, want)
    assert not torch.equal(want, plain.decode(x, adapters=False)[0])  # the LoRA acts


def test_only_lora_and_film_parameters_train(trained):
    before, module, _ = trained
    after = module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(is_trained_key(k) for k in changed)
    film = {k for k in before if k.startswith("label_cond.")}
    assert film and film <= changed  # the embedding and every projection learned something
    assert {k for k in before if ".lora_B." in k} <= changed
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(is_trained_key(n) for n in trainable)


def test_checkpoint_holds_the_lora_and_film_tensors(trained):
    _, module, root = trained
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert set(ckpt["state_dict"]) == {k for k in module.state_dict() if is_trained_key(k)}
    assert any(k.startswith("label_cond.") for k in ckpt["state_dict"])
    assert ckpt["radar"]["label_conditioning"]["kind"] == "film"
    assert read_radar_config(root / "final")["selection"] == {  # without early stopping: the last step
        "final_adapter": "last", "step": STEPS, "early_stopping": False, "stopped_early": False}
    plain = RadarLoraModule()
    with pytest.raises(ValueError, match="another LoRA layout .*label conditioning"):
        plain.on_load_checkpoint(ckpt)


def test_labels_change_the_student_and_are_required(trained, make_batch):
    _, module, _ = trained
    x = make_batch(2, seed=2)["fhat_lq"]
    with torch.no_grad():
        a = module.decode(x, labels=torch.tensor([1, 1]))[0]
        b = module.decode(x, labels=torch.tensor([2, 2]))[0]
    assert not torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="label-conditioned"):
        module.decode(x)


def test_export_and_load_round_trip_gives_the_student_for_given_labels(trained, tmp_path, make_batch):
    _, module, _ = trained
    out = module.export(tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == sorted([*ADAPTER_FILES, LABEL_CONDITIONING_WEIGHTS])
    meta = read_radar_config(out)
    section = meta["label_conditioning"]
    assert section["kind"] == "film" and section["num_classes"] == 10 and section["embed_dim"] == 8
    assert section["file"] == LABEL_CONDITIONING_WEIGHTS and len(section["norms"]) == 20
    x, labels = make_batch(3, seed=7)["fhat_lq"], torch.tensor([4, 0, 9])
    with torch.no_grad():
        student = module.decode(x, labels=labels)[0]
        fresh, ident = load_latent_decoder("tiny")
        unmerged = load_adapter(fresh, out, identity=ident, merge=False, num_classes=10)
        assert isinstance(unmerged, LabelConditionedDecoder)
        assert torch.equal(unmerged(x, labels), student)
        fresh, _ = load_latent_decoder("tiny")
        merged = load_adapter(fresh, out, identity=ident, num_classes=10)
        assert torch.allclose(merged(x, labels.tolist()), student, atol=1e-5)
        assert torch.allclose(decode_with_labels(merged, x, labels), student, atol=1e-5)


def test_a_conditioned_adapter_is_refused_without_labels_or_with_wrong_ones(trained, tmp_path, make_batch):
    _, module, _ = trained
    out = module.export(tmp_path / "adapter")
    fresh, ident = load_latent_decoder("tiny")
    dec = load_adapter(fresh, out, identity=ident)
    x = make_batch(2)["fhat_lq"]
    with pytest.raises(ValueError, match="^this adapter is label-conditioned: decode with the class labels"):
        dec(x)
    with pytest.raises(ValueError, match="1 labels for 2 latents"):
        dec(x, [1])
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9"):
        dec(x, [1, 10])
    with pytest.raises(ValueError, match="labels must be whole class numbers"):
        dec(x, [1.7, 2.0])  # not silently class 1
    assert torch.equal(dec(x, torch.tensor([1.0, 2.0])), dec(x, [1, 2]))
    with pytest.raises(ValueError, match="conditioned on 10 classes, the model has 1000"):
        load_adapter(load_latent_decoder("tiny")[0], out, identity=ident, num_classes=1000)


def test_plain_peft_loads_the_lora_part_of_a_conditioned_adapter(trained, tmp_path, make_batch):
    from peft import PeftModel

    _, module, _ = trained
    out = module.export(tmp_path / "adapter")
    x = make_batch(2, seed=4)["fhat_lq"]
    with torch.no_grad():
        module.label_cond.labels = None  # the module's LoRA alone
        with module.net.disable_adapter():
            base = module.decoder(x)
        lora_only = module.decoder(x)
        peft_model = PeftModel.from_pretrained(load_latent_decoder("tiny")[0], str(out))
        assert torch.equal(peft_model(x), lora_only)
    assert not torch.equal(lora_only, base)


def test_damaged_label_conditioning_weights_are_one_error_naming_the_file(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    _, module, _ = trained
    out = module.export(tmp_path / "adapter")
    f = out / LABEL_CONDITIONING_WEIGHTS
    tensors = load_file(f)
    tensors["embedding"] = tensors["embedding"][:5]
    save_file(tensors, str(f))
    with pytest.raises(InputError, match=f"{f}: does not match its radar_config.yaml .* e.g. embedding"):
        load_adapter(load_latent_decoder("tiny")[0], out)
    f.unlink()
    with pytest.raises(InputError, match=f"{f}: label-conditioning weights not found"):
        load_adapter(load_latent_decoder("tiny")[0], out)


@pytest.mark.parametrize("mode", ["blocks", "norms"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients_with_film(make_batch, mode):
    batch = make_batch(n=2, seed=3) | {"label": torch.tensor([2, 5])}
    results = []
    for ckpt in (False, mode):
        torch.manual_seed(0)
        module = RadarLoraModule(optim=OptimArgs(activation_checkpointing=ckpt), label_conditioning=FILM)
        _random_lora_(module)
        with torch.no_grad():  # non-zero projections, so that the embedding gets a gradient too
            for p in module.label_cond.proj:
                p.normal_(std=0.05)
        loss = module.compute_loss(batch)[0]
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}))
    (l0, g0), (l1, g1) = results
    assert torch.allclose(l0, l1, atol=1e-6)
    assert g0.keys() == g1.keys() and any(k.startswith("label_cond.") for k in g0)
    assert all(torch.allclose(g0[k], g1[k], atol=1e-6, rtol=1e-4) for k in g0)
    assert all(g0[k].abs().sum() > 0 for k in g0 if k.startswith("label_cond."))


def test_bad_label_conditioning_settings_are_reported():
    with pytest.raises(ValueError, match="model.label_conditioning.embed_dim must be >= 1"):
        RadarLoraModule(label_conditioning=LabelConditioningArgs(kind="film", embed_dim=0))
    with pytest.raises(ValueError, match="model.label_conditioning.norms 'nothing' matches no GroupNorm"):
        RadarLoraModule(label_conditioning=LabelConditioningArgs(kind="film", norms="nothing"))
