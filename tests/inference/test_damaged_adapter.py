"""An adapter whose weights hold NaN or inf is damaged: every image it decodes is NaN (a black PNG) and every
metric of it NaN. load_adapter refuses it in one line naming the weights file, so radar-generate, radar-eval and
RadarPipeline write nothing (radar-eval wrote NaN tokens into eval.json, radar-generate black PNGs, exit 0)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cli_checks import assert_refused
from radar_train.export import load_adapter, save_adapter
from radar_train.inputs import InputError
from radar_train.models import load_latent_decoder

pytestmark = pytest.mark.usefixtures("one_thread")


def _spoiled(adapter: Path, where: Path, value: float, file: str = "adapter_model.safetensors") -> Path:
    """A copy of `adapter` at `where` with one value of one tensor of `file` set to `value`; returns the file."""
    shutil.copytree(adapter, where)
    tensors = load_file(str(where / file))
    key = sorted(tensors)[0]
    tensors[key].view(-1)[3] = value
    save_file(tensors, str(where / file))
    return where / file


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_load_adapter_refuses_weights_with_nan_or_inf_naming_the_file(tmp_path, value):
    from radar_train.bench.pipeline import random_adapter

    dec, ident = load_latent_decoder("tiny")
    out = save_adapter(random_adapter(dec, rank=2, seed=0)[0], tmp_path / "good", {"base": {"vae": ident.to_dict()}})
    load_adapter(load_latent_decoder("tiny")[0], out, ident)  # (the copy's original loads)
    weights = _spoiled(out, tmp_path / "bad", value)
    with pytest.raises(InputError) as e:
        load_adapter(load_latent_decoder("tiny")[0], weights.parent, ident)
    assert str(e.value).startswith(f"{weights}: 1 tensor(s) hold NaN or inf values (e.g. ")
    assert str(e.value).endswith("the adapter is damaged")


def test_load_adapter_refuses_weights_that_are_not_floating_point_naming_the_file(tmp_path):
    """A hand-converted weights file of integers loaded without a word (peft copies them into its float layers)."""
    from radar_train.bench.pipeline import random_adapter

    dec, ident = load_latent_decoder("tiny")
    out = save_adapter(random_adapter(dec, rank=2, seed=0)[0], tmp_path / "good", {"base": {"vae": ident.to_dict()}})
    shutil.copytree(out, tmp_path / "ints")
    weights = tmp_path / "ints" / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    save_file({k: (v * 1000).to(torch.int32) for k, v in tensors.items()}, str(weights))
    with pytest.raises(InputError) as e:
        load_adapter(load_latent_decoder("tiny")[0], weights.parent, ident)
    assert str(e.value) == (f"{weights}: {len(tensors)} tensor(s) are not floating point (e.g. {sorted(tensors)[0]}, "
                            f"torch.int32): not LoRA weights radar-train wrote")


@pytest.mark.parametrize("where", ["lora", "film"])
def test_save_adapter_writes_no_adapter_whose_trained_weights_hold_nan(tmp_path, where):
    """A fit whose weights went NaN (or an API caller's) gets no adapter folder that every reader would refuse."""
    from radar_train.bench.pipeline import random_adapter, random_conditioned

    dec, ident = load_latent_decoder("tiny")
    peft_model, merged = random_adapter(dec, rank=2, seed=1)
    film = random_conditioned(merged, num_classes=10, embed_dim=4).film
    spoiled = next(p for n, p in peft_model.named_parameters() if "lora_B" in n) if where == "lora" else film.embedding
    with torch.no_grad():
        spoiled.view(-1)[0] = float("nan")
    name = "base_model.+lora_B" if where == "lora" else "label_conditioning.embedding"
    with pytest.raises(ValueError, match=r"not written: 1 of the adapter's trained tensors hold NaN or inf \(e\.g\. "
                                         + name):
        save_adapter(peft_model, tmp_path / "out", {"base": {"vae": ident.to_dict()}}, conditioning=film)
    assert list(tmp_path.iterdir()) == []


def test_a_label_conditioned_adapter_whose_film_holds_nan_is_refused_naming_its_file(tmp_path):
    from radar_train.bench.pipeline import random_adapter, random_conditioned

    dec, ident = load_latent_decoder("tiny")
    peft_model, merged = random_adapter(dec, rank=2, seed=1)
    film = random_conditioned(merged, num_classes=10, embed_dim=4).film
    out = save_adapter(peft_model, tmp_path / "good", {"base": {"vae": ident.to_dict()}}, conditioning=film)
    load_adapter(load_latent_decoder("tiny")[0], out, ident, num_classes=10)
    weights = _spoiled(out, tmp_path / "bad", float("nan"), "label_conditioning.safetensors")
    with pytest.raises(InputError) as e:
        load_adapter(load_latent_decoder("tiny")[0], weights.parent, ident, num_classes=10)
    assert str(e.value).startswith(f"{weights}: 1 tensor(s) hold NaN or inf values")
    assert "the adapter's label conditioning is damaged" in str(e.value)


def test_radar_generate_and_radar_eval_refuse_an_adapter_with_nan_weights_writing_nothing(trained_run, tmp_path):
    weights = _spoiled(trained_run["adapter"], tmp_path / "nan", float("nan"))
    roots = (tmp_path, trained_run["cache"])
    needles = [f"{weights}: 1 tensor(s) hold NaN or inf values", "the adapter is damaged"]
    assert_refused("generate", ["--adapter", str(weights.parent), "--classes", "0", "--seeds", "0", "--output",
                                "gen", "--device", "cpu"], tmp_path, roots, needles)
    assert_refused("eval", ["--cache", str(trained_run["cache"]), "--adapter", str(weights.parent), "--output",
                            "ev", "--device", "cpu"], tmp_path, roots, needles)
    assert any(torch.isnan(t).any() for t in load_file(str(weights)).values())  # (the copy is spoiled)
