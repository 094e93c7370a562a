"""radar-train merge: an adapter folded into its base VQ-VAE, written as one plain VQ-VAE file (.pth or
.safetensors) with a JSON record beside it; what it refuses, leaving every file as it was."""
from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file

from cli_checks import assert_refused, call_cli
from radar_train.config import AccelArgs, ModelArgs, SamplingConfig
from radar_train.export import load_adapter, save_adapter
from radar_train.inference import PipelineArgs, RadarPipeline
from radar_train.models import load_latent_decoder, load_models
from radar_train.models.checkpoint import file_sha256, read_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def _merge(cwd, *args: str) -> tuple[int, str]:
    return call_cli("train", ["merge", *args], cwd)


def _pipe(**kw) -> RadarPipeline:
    return RadarPipeline.from_config(PipelineArgs(model=ModelArgs(**kw.pop("model", {})), accel=AccelArgs("fastvar"),
                                                  sampling=SamplingConfig(cfg=1.5, top_k=64, top_p=0.96), device="cpu",
                                                  **kw))


@pytest.fixture(scope="module")
def toy_adapter(tmp_path_factory):
    """An adapter with random (non-zero) LoRA weights on the toy world's VQ-VAE: a base that is a file (packaged,
    stored in float16)."""
    from radar_train.bench.pipeline import random_adapter

    dec, ident = load_latent_decoder("toy")
    peft_model = random_adapter(dec, rank=2, seed=0)[0]
    out = tmp_path_factory.mktemp("toy") / "adapter"
    save_adapter(peft_model, out, {"base": {"preset": "toy", "vae": ident.to_dict()},
                                   "lora": {"rank": 2, "alpha": 2.0, "targets": "all"}})
    return out


def test_the_merged_file_decodes_as_the_merged_adapter_and_keeps_every_other_tensor(trained_run, tmp_path):
    adapter = trained_run["adapter"]
    code, err = _merge(tmp_path, "--adapter", str(adapter), "--output", "vae_radar.pth")
    assert code == 0, err
    out = tmp_path / "vae_radar.pth"
    sd = torch.load(out, map_location="cpu", weights_only=True)  # what the official code does with a .pth
    base, _, base_id, _ = load_models("tiny", with_var=False)
    want = base.state_dict()
    assert list(sd) == list(want) and all(sd[k].shape == want[k].shape and sd[k].dtype == want[k].dtype for k in sd)
    changed = sorted(k for k in sd if not torch.equal(sd[k], want[k]))
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) and k.endswith(".weight") for k in changed)
    lora_a = [k for k in load_file(adapter / "adapter_model.safetensors") if k.endswith("lora_A.weight")]
    assert len(changed) == len(lora_a)  # one merged weight per LoRA pair

    merged, _, merged_id, _ = load_models("tiny", vae_checkpoint=str(out), with_var=False)
    dec, dec_id = load_latent_decoder("tiny")
    adapted = load_adapter(dec, adapter, identity=dec_id, merge=True)
    f = torch.randn(3, 8, 8, 8)
    with torch.no_grad():
        got, ref, plain = merged.latent_decoder()(f), adapted(f), base.latent_decoder()(f)
    assert torch.equal(got, ref)
    assert (got - plain).abs().max() > 1e-3  # the adapter is in it

    record = json.loads((tmp_path / "vae_radar.pth.json").read_text())
    assert record["kind"] == "radar_merged_vqvae" and record["weights"] == "vae_radar.pth"
    assert record["sha256"] == file_sha256(out) == merged_id.value
    assert record["base"]["vae"] == {"kind": base_id.kind, "value": base_id.value}
    assert record["adapter"]["merged_modules"] == len(changed)
    assert [r["accel"]["method"] for r in record["restores"]] == ["fastvar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae_radar.pth", "vae_radar.pth.json"]


def test_generating_with_the_merged_file_is_generating_with_the_adapter(trained_run, tmp_path):
    assert _merge(tmp_path, "--adapter", str(trained_run["adapter"]), "--output", "vae.safetensors")[0] == 0
    with_adapter = _pipe(adapter=str(trained_run["adapter"])).generate([1, 2], [5, 6])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the acceleration it restores: no warning
        merged = _pipe(model={"vae_checkpoint": str(tmp_path / "vae.safetensors")})
    assert merged.adapted_decoder is None and merged.merged_vqvae["kind"] == "radar_merged_vqvae"
    assert torch.equal(merged.generate([1, 2], [5, 6], use_adapter=False), with_adapter)


def test_radar_generate_and_radar_fid_say_that_vanilla_is_decoded_with_the_merged_file_too(trained_run, tmp_path,
                                                                                           capsys):
    from pathlib import Path

    assert _merge(tmp_path, "--adapter", str(trained_run["adapter"]), "--output", "vae.pth")[0] == 0
    config = Path(__file__).resolve().parents[2] / "configs" / "generate" / "tiny.yaml"
    code, err = call_cli("generate", ["--config", str(config), "--model.vae_checkpoint", "vae.pth", "--classes", "1",
                                      "--seeds", "0", "--output", "gen"], tmp_path)
    assert code == 0, err
    note = "has a RADAR adapter merged in (radar-train merge), so vanilla/ is decoded with it too"
    assert note in capsys.readouterr().out
    written = sorted(p.name for p in (tmp_path / "gen").iterdir())
    assert written == ["accelerated", "generate.json", "grid.png", "vanilla"]
    code, err = call_cli("fid", ["--config", str(config), "--model.vae_checkpoint", "vae.pth", "--num_samples", "2",
                                 "--batch_size", "2", "--save_npz", "true", "--output", "fid"], tmp_path)
    assert code == 0, err
    out = capsys.readouterr().out
    assert ("radar-fid: note: --model.vae_checkpoint vae.pth has a RADAR adapter merged in (radar-train merge), so "
            "the vanilla run (its FID, the gap closed's baseline) is decoded with it too") in out


@pytest.mark.parametrize("edit,needle", [
    (lambda r: r.update(restores=5), "restores must be a list of the adapter's caches, got 5"),
    (lambda r: r.update(restores=[{"accel": "x"}]), "restores[0] must be an object whose accel is an object or null"),
    (lambda r: r.update(format_version=9), "format_version 9 is newer than this radar_train reads (1)"),
    (lambda r: r.pop("format_version"), "format_version must be a whole number, got None"),
])
def test_an_edited_record_of_a_merged_file_is_one_line_naming_it(trained_run, tmp_path, edit, needle):
    """The record beside the merged file, still naming its sha256, hand-edited or of a newer radar_train: one
    line naming it, before anything is written (a TypeError traceback before)."""
    from pathlib import Path

    assert _merge(tmp_path, "--adapter", str(trained_run["adapter"]), "--output", "vae.pth")[0] == 0
    record = json.loads((tmp_path / "vae.pth.json").read_text())
    edit(record)
    (tmp_path / "vae.pth.json").write_text(json.dumps(record))
    config = Path(__file__).resolve().parents[2] / "configs" / "generate" / "tiny.yaml"
    for cli, extra in (("generate", ["--classes", "1", "--seeds", "0"]),
                       ("fid", ["--num_samples", "2", "--save_npz", "true"])):
        assert_refused(cli, ["--config", str(config), "--model.vae_checkpoint", "vae.pth", *extra, "--output", "out"],
                       tmp_path, (tmp_path,), [f"error: vae.pth.json: {needle}"])


def test_the_pipeline_warns_when_a_merged_file_decodes_latents_of_another_acceleration(trained_run, tmp_path):
    assert _merge(tmp_path, "--adapter", str(trained_run["adapter"]), "--output", "vae.pth")[0] == 0
    model = {"vae_checkpoint": str(tmp_path / "vae.pth")}
    with pytest.warns(UserWarning, match=r"has a RADAR adapter merged in .*method: fastvar vs none"):
        pipe = RadarPipeline.from_config(PipelineArgs(model=ModelArgs(**model), accel=AccelArgs("none"), device="cpu"))
    assert pipe.merged_vqvae is not None
    # a record that no longer describes the file beside it (the weights replaced since) is not taken for it
    shutil.copyfile(tmp_path / "vae.pth", tmp_path / "other.pth")
    shutil.copyfile(tmp_path / "vae.pth.json", tmp_path / "other.pth.json")
    sd = torch.load(tmp_path / "other.pth", weights_only=True)
    sd["decoder.conv_out.bias"] += 1
    torch.save(sd, tmp_path / "other.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe = RadarPipeline.from_config(PipelineArgs(model=ModelArgs(vae_checkpoint=str(tmp_path / "other.pth")),
                                                      accel=AccelArgs("none"), device="cpu"))
    assert pipe.merged_vqvae is None


def test_a_file_base_is_checked_and_a_dtype_casts_only_the_floating_tensors(toy_adapter, tmp_path):
    from radar_train.toyworld.preset import VAE_FILE, WEIGHTS_DIR

    packaged = read_state_dict(WEIGHTS_DIR / VAE_FILE, "vqvae")
    assert {v.dtype for v in packaged.values() if v.is_floating_point()} == {torch.float16}
    code, err = _merge(tmp_path, "--adapter", str(toy_adapter), "--output", "v16.safetensors", "--dtype", "float16")
    assert code == 0, err
    sd = read_state_dict(tmp_path / "v16.safetensors", "vqvae")
    # (the quantizer's floating tensors in float32, with the base's values: VAR's tokens are made with them)
    quantizer = {k for k in sd if k.startswith("quantize.") and sd[k].is_floating_point()}
    assert sorted(sd) == sorted(packaged) and quantizer  # (safetensors orders its tensors by dtype)
    assert all(sd[k].dtype == (torch.float32 if k in quantizer else packaged[k].dtype) for k in sd)
    same = {k for k in sd if torch.equal(sd[k], packaged[k].to(sd[k].dtype))}
    assert {k for k in sd if not k.startswith(("decoder.", "post_quant_conv."))} <= same  # float16 to float16: exact
    assert len(set(sd) - same) == len(
        [k for k in load_file(toy_adapter / "adapter_model.safetensors") if k.endswith("lora_A.weight")])
    record = json.loads((tmp_path / "v16.safetensors.json").read_text())
    assert record["dtype"] == "float16" and record["base"]["vae_checkpoint"].endswith(VAE_FILE)

    # the same base named by --vae_checkpoint (a copy) gives the same bytes; another VQ-VAE is refused
    copy = tmp_path / "base_copy.safetensors"
    shutil.copyfile(WEIGHTS_DIR / VAE_FILE, copy)
    code, err = _merge(tmp_path, "--adapter", str(toy_adapter), "--output", "again.safetensors", "--dtype", "float16",
                       "--vae_checkpoint", str(copy))
    assert code == 0, err
    assert (tmp_path / "again.safetensors").read_bytes() == (tmp_path / "v16.safetensors").read_bytes()
    assert_refused("train", ["merge", "--adapter", str(toy_adapter), "--output", "other.pth", "--vae_checkpoint",
                             "v16.safetensors"], tmp_path, (tmp_path, toy_adapter),
                   ["--vae_checkpoint v16.safetensors", "not the VQ-VAE adapter", "was trained on"])


def test_what_merge_refuses_leaves_every_file_as_it_was(toy_adapter, trained_run, tmp_path, capsys):
    from radar_train.bench.pipeline import random_adapter, random_conditioned

    roots = (tmp_path, toy_adapter)
    (tmp_path / "mine.pth").write_bytes(b"my weights")
    refused = [
        (["--output", "mine.pth"], ["--output mine.pth exists", "--overwrite"]),
        (["--output", "vae.ckpt"], ["--output vae.ckpt", ".pth", ".safetensors"]),
        (["--output", str(toy_adapter / "vae.pth")], ["lies inside the input --adapter"]),
        (["--output", "v.pth", "--dtype", "float64"], ["--dtype"]),
    ]
    (tmp_path / "rec.pth.json").write_text("{}")
    refused.append((["--output", "rec.pth"], ["rec.pth.json exists", "--overwrite"]))
    for args, needles in refused:
        assert_refused("train", ["merge", "--adapter", str(toy_adapter), *args], tmp_path, roots, needles)

    # the base VQ-VAE file is never replaced, --overwrite or not
    base = tmp_path / "base.safetensors"
    from radar_train.toyworld.preset import VAE_FILE, WEIGHTS_DIR
    shutil.copyfile(WEIGHTS_DIR / VAE_FILE, base)
    assert_refused("train", ["merge", "--adapter", str(toy_adapter), "--output", str(base), "--vae_checkpoint",
                             str(base), "--overwrite"], tmp_path, roots, ["is the input --vae_checkpoint"])
    # a randomly initialised base takes no file; a missing folder is named
    assert_refused("train", ["merge", "--adapter", str(trained_run["adapter"]), "--output", "v.pth",
                             "--vae_checkpoint", str(base)], tmp_path, roots, ["randomly initialised", "leave it out"])
    assert_refused("train", ["merge", "--adapter", "nowhere", "--output", "v.pth"], tmp_path, roots,
                   ["--adapter folder", "nowhere"])

    # a label-conditioned adapter: its decoder takes the labels
    dec, ident = load_latent_decoder("toy")
    peft_model, merged = random_adapter(dec, rank=2, seed=1)
    film = random_conditioned(merged, num_classes=10, embed_dim=4).film
    cond = tmp_path / "conditioned"
    save_adapter(peft_model, cond, {"base": {"preset": "toy", "vae": ident.to_dict()}}, conditioning=film)
    capsys.readouterr()
    assert_refused("train", ["merge", "--adapter", str(cond), "--output", "v.pth"], tmp_path, roots,
                   ["label-conditioned", "radar-generate"])
    assert capsys.readouterr().out == ""  # (its start line came before the refusal)

    # a recorded base file that is not the one the adapter was trained on (replaced since)
    from radar_train.models.checkpoint import save_weights
    changed = read_state_dict(WEIGHTS_DIR / VAE_FILE, "vqvae")
    changed["decoder.conv_out.bias"] += 1
    save_weights(changed, tmp_path / "changed.safetensors")
    moved = tmp_path / "moved"
    shutil.copytree(toy_adapter, moved)
    with open(moved / "radar_config.yaml", "a") as f:
        f.write("training:\n  model:\n    decoder:\n      vae_checkpoint: changed.safetensors\n")
    assert_refused("train", ["merge", "--adapter", str(moved), "--output", "v.pth"], tmp_path, roots,
                   ["the VQ-VAE file the adapter records, changed.safetensors: not the VQ-VAE",
                    "pass the one it was trained on with --vae_checkpoint"])

    # an official preset's base file that is not here is asked for by name
    meta = (toy_adapter / "radar_config.yaml").read_text()
    far = tmp_path / "far"
    shutil.copytree(toy_adapter, far)
    (far / "radar_config.yaml").write_text(meta.replace("preset: toy", "preset: var-d16") +
                                           "training:\n  model:\n    decoder:\n      vae_checkpoint: gone/vae.pth\n")
    assert_refused("train", ["merge", "--adapter", str(far), "--output", "v.pth"], tmp_path, roots,
                   ["recorded as gone/vae.pth, not here", "--vae_checkpoint"])


def _altered(adapter, folder, edit=None, weights=None):
    """A copy of `adapter` with its metadata changed by `edit` (a function of the YAML text) or its weights file
    replaced by `weights` (a function of its tensors)."""
    from safetensors.torch import save_file

    shutil.copytree(adapter, folder)
    if edit is not None:
        (folder / "radar_config.yaml").write_text(edit((folder / "radar_config.yaml").read_text()))
    if weights is not None:
        save_file(weights(load_file(folder / "adapter_model.safetensors")), str(folder / "adapter_model.safetensors"))
    return folder


def test_metadata_that_does_not_describe_a_base_and_damaged_weights_are_one_line(toy_adapter, tmp_path):
    def nan(tensors):
        key = sorted(k for k in tensors if k.endswith("lora_A.weight"))[0]
        tensors[key][0, 0] = float("nan")
        return tensors

    cases = [
        (dict(edit=lambda t: t.replace("preset: toy", "preset: nonesuch")),
         ["radar_config.yaml: base.preset", "unknown model preset 'nonesuch'"]),
        (dict(edit=lambda t: t.replace("kind: file", "kind: weird")),
         ["radar_config.yaml: base.vae.kind 'weird'"]),
        (dict(edit=lambda t: t.replace("preset: toy", "preset: tiny")),  # (a file base, but no file recorded)
         ["sha256", "pass it with --vae_checkpoint"]),
        (dict(weights=nan), ["adapter_model.safetensors: 1 tensor(s) hold NaN or inf", "the adapter is damaged"]),
    ]
    for i, (change, needles) in enumerate(cases):
        bad = _altered(toy_adapter, tmp_path / f"bad{i}", **change)
        assert_refused("train", ["merge", "--adapter", str(bad), "--output", "v.pth"], tmp_path, (tmp_path,), needles)


def test_a_random_base_that_its_preset_does_not_build_names_the_metadata(trained_run, tmp_path):
    bad = _altered(trained_run["adapter"], tmp_path / "bad", edit=lambda t: t.replace("preset: tiny", "preset: toy", 1))
    assert_refused("train", ["merge", "--adapter", str(bad), "--output", "v.pth"], tmp_path, (tmp_path,),
                   ["radar_config.yaml: base.preset toy gives the VQ-VAE file:", "not the base.vae it names, random:"])


def test_a_stop_while_it_writes_leaves_neither_file_nor_a_temporary(toy_adapter, tmp_path, monkeypatch, capsys):
    from radar_train.cli.common import Stopped

    def stopped(*args, **kwargs):
        raise Stopped

    (tmp_path / "v.pth").write_bytes(b"an earlier merge")
    monkeypatch.setattr(torch, "save", stopped)  # (SIGTERM's handler raises Stopped where the process is)
    code, err = _merge(tmp_path, "--adapter", str(toy_adapter), "--output", "v.pth", "--overwrite")
    assert code == 143, err
    assert "radar-train merge: stopped by SIGTERM; nothing was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.pth"]
    assert (tmp_path / "v.pth").read_bytes() == b"an earlier merge"


def test_overwrite_replaces_both_files(toy_adapter, tmp_path):
    assert _merge(tmp_path, "--adapter", str(toy_adapter), "--output", "v.pth")[0] == 0
    first = (tmp_path / "v.pth").read_bytes()
    code, err = _merge(tmp_path, "--adapter", str(toy_adapter), "--output", "v.pth", "--dtype", "bfloat16",
                       "--overwrite")
    assert code == 0, err
    assert (tmp_path / "v.pth").read_bytes() != first
    record = json.loads((tmp_path / "v.pth.json").read_text())
    assert record["dtype"] == "bfloat16" and record["sha256"] == file_sha256(tmp_path / "v.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.pth", "v.pth.json"]  # no temporary left


def test_a_merged_file_given_without_its_adapter_is_checked_against_the_adapters_training_pairs(trained_run, tmp_path,
                                                                                                 capsys):
    """The merged file's record holds the adapter's cache records: radar-fid refuses a --base_seed of its training
    pairs and radar-generate notes them, as with --adapter (its record held no training shards: neither did)."""
    from pathlib import Path

    from cli_checks import assert_one_line_error

    assert _merge(tmp_path, "--adapter", str(trained_run["adapter"]), "--output", "vae.pth")[0] == 0
    record = json.loads((tmp_path / "vae.pth.json").read_text())
    adapter_caches = __import__("yaml").safe_load((trained_run["adapter"] / "radar_config.yaml").read_text())["caches"]
    assert record["caches"] == adapter_caches and record["caches"][0]["train_shards"]
    config = Path(__file__).resolve().parents[2] / "configs" / "generate" / "tiny.yaml"
    code, err = call_cli("fid", ["--config", str(config), "--model.vae_checkpoint", "vae.pth", "--num_samples", "2",
                                 "--batch_size", "2", "--base_seed", "0", "--save_npz", "true", "--output", "fid"],
                         tmp_path)
    assert code == 2
    line = assert_one_line_error(err, "--base_seed 0: 2 of the 2 samples (class, seed) are pairs the adapter was "
                                      "trained on", "--model.vae_checkpoint vae.pth has that adapter merged in",
                                 "give a --base_seed of 80 or more")
    assert line and not (tmp_path / "fid").exists()
    code, err = call_cli("generate", ["--config", str(config), "--model.vae_checkpoint", "vae.pth", "--classes", "0-1",
                                      "--seeds", "0-1", "--output", "gen"], tmp_path)
    assert code == 0, err
    assert ("radar-generate: note: 2 of the 4 samples (class, seed) are pairs the adapter was trained on (e.g. class 0 "
            "seed 0, in cache/tiny): with the adapter merged into the VQ-VAE file, their images are of its training "
            "data; seeds from 80 on are held out") in (out := capsys.readouterr().out), out


def test_a_sigterm_between_the_two_renames_leaves_both_files(toy_adapter, tmp_path, monkeypatch):
    """The weights renamed into place, then a SIGTERM before the record followed: the weights were left without
    their record (read as a plain VQ-VAE, with no note). The renames are the command's end: held together."""
    import os
    import signal

    import radar_train.outputs

    real, calls = os.replace, []

    def replace(src, dst):
        real(src, dst)
        calls.append(dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # (the handler runs as soon as os.kill returns)

    monkeypatch.setattr(radar_train.outputs.os, "replace", replace)
    code, err = _merge(tmp_path, "--adapter", str(toy_adapter), "--output", "v.pth")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.pth", "v.pth.json"]


def test_a_merge_into_any_adapter_folder_is_refused_even_with_overwrite(toy_adapter, tmp_path):
    """A folder that is an adapter's but holds one more file (a user's notes), or a folder inside an adapter's: the
    check looked at the output's own folder and only when it held nothing but an adapter's files, so --overwrite
    replaced another adapter's adapter_model.safetensors with the merged VQ-VAE."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(toy_adapter, other)
    (other / "notes.txt").write_text("notes")
    for output in (other / "adapter_model.safetensors", other / "sub" / "v.pth"):
        assert_refused("train", ["merge", "--adapter", str(toy_adapter), "--output", str(output), "--overwrite"],
                       tmp_path, (tmp_path,), [f"is inside the adapter folder {other}"])


def test_a_refused_base_vae_is_its_one_line_without_the_start_line(toy_adapter, tmp_path, capsys):
    """The start line came before the base VQ-VAE was loaded and checked against the adapter's (its sha256)."""
    sd = load_models("toy", with_var=False)[0].state_dict()  # the base's shapes, one weight changed
    sd["decoder.conv_in.weight"] = sd["decoder.conv_in.weight"] + 1
    torch.save(sd, tmp_path / "other.pth")
    code, err = _merge(tmp_path, "--adapter", str(toy_adapter), "--output", "v.pth", "--vae_checkpoint", "other.pth")
    assert code == 2 and err.startswith("error: --vae_checkpoint other.pth: not the VQ-VAE"), err
    assert "radar-train merge:" not in capsys.readouterr().out


def test_a_half_precision_file_keeps_the_quantizer_in_float32(toy_adapter, tmp_path):
    """The codebook and the phi convolutions decide VAR's tokens and f_hat: rounded to bfloat16 they changed the
    generator's samples (up to 126 pixel levels), not only the decode's precision."""
    assert _merge(tmp_path, "--adapter", str(toy_adapter), "--output", "v.safetensors", "--dtype", "bfloat16")[0] == 0
    sd = load_file(str(tmp_path / "v.safetensors"))
    base = load_models("toy", with_var=False)[0].state_dict()
    quant = {k: v for k, v in sd.items() if k.startswith("quantize.") and v.is_floating_point()}
    assert quant and all(v.dtype == torch.float32 and torch.equal(v, base[k].float()) for k, v in quant.items())
    assert all(v.dtype == torch.bfloat16 for k, v in sd.items() if k.startswith("decoder.") and v.is_floating_point())
