"""RadarPipeline, radar-generate and radar-eval on a briefly trained tiny adapter."""
import json
from pathlib import Path
import warnings

import pytest
import torch
from PIL import Image

from radar_train.config import AccelArgs, FastVARArgs, ModelArgs, SamplingConfig
from radar_train.inference import PipelineArgs, RadarPipeline


def _pipe(adapter, merge=True, decode_precision="fp32", **model_kw) -> RadarPipeline:
    return RadarPipeline.from_config(PipelineArgs(model=ModelArgs(**model_kw), accel=AccelArgs("fastvar"),
                                                  sampling=SamplingConfig(cfg=1.5, top_k=64, top_p=0.96),
                                                  adapter=str(adapter), merge_adapter=merge, device="cpu",
                                                  decode_precision=decode_precision))


def test_pipeline_adapter_reproduces_the_trained_student(trained_run):
    """The adapted decoder of the pipeline = the training module's student (adapters on), restored
    from the run's last Lightning checkpoint."""
    from radar_train.train.module import module_from_hparams

    ckpt = torch.load(trained_run["run"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    module = module_from_hparams(ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"], strict=False)
    module.eval()
    f = torch.randn(3, 8, 8, 8)
    with torch.no_grad():
        student = module.decode(f, adapters=True)[0].clamp(-1, 1).add(1).mul(0.5)
        plain = module.decode(f, adapters=False)[0].clamp(-1, 1).add(1).mul(0.5)
    pipe = _pipe(trained_run["adapter"])
    torch.testing.assert_close(pipe.decode(f, adapter=True), student, atol=2e-5, rtol=0)
    torch.testing.assert_close(pipe.decode(f, adapter=False), plain, atol=2e-5, rtol=0)
    assert (pipe.decode(f, adapter=True) - plain).abs().max() > 1e-3  # the adapter does something


def test_merged_equals_unmerged(trained_run):
    f = torch.randn(2, 8, 8, 8)
    merged, unmerged = _pipe(trained_run["adapter"], True), _pipe(trained_run["adapter"], False)
    assert type(unmerged.adapted_decoder).__name__ == "PeftModel"
    assert type(merged.adapted_decoder).__name__ == "LatentDecoder"
    torch.testing.assert_close(merged.decode(f, adapter=True), unmerged.decode(f, adapter=True), atol=2e-5, rtol=0)


def test_decode_precision_runs_the_decoder_under_autocast_and_is_in_the_fingerprint(trained_run):
    from radar_train.export import decode_with_labels

    f = torch.randn(2, 8, 8, 8)
    fp32, bf16 = _pipe(trained_run["adapter"]), _pipe(trained_run["adapter"], decode_precision="bf16")
    assert fp32.decode_dtype is None and bf16.decode_dtype == torch.bfloat16
    assert _pipe(trained_run["adapter"], decode_precision="auto").decode_dtype is None  # auto: fp32 on the CPU
    for adapter, dec in ((True, bf16.adapted_decoder), (False, bf16.decoder)):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            want = decode_with_labels(dec, f).float().clamp(-1, 1).add(1).mul(0.5)
        got = bf16.decode(f, adapter=adapter)
        assert got.dtype == torch.float32 and torch.equal(got, want)
        assert not torch.equal(got, fp32.decode(f, adapter=adapter))
    assert "decode_precision" not in fp32.fingerprint()  # (progress saved before the option still matches)
    assert bf16.fingerprint() == {**fp32.fingerprint(), "decode_precision": "torch.bfloat16"}
    with pytest.raises(ValueError, match="decode_precision must be one of auto, fp32, .*, got 'bf17'"):
        _pipe(trained_run["adapter"], decode_precision="bf17")


def test_adapter_of_another_vqvae_is_refused(trained_run):
    with pytest.raises(ValueError, match="was trained for the VQ-VAE random:tiny:seed=0"):
        _pipe(trained_run["adapter"], init_seed=7)
    # of another VQ-VAE and for another method: refused without a warning about the method first
    with warnings.catch_warnings(), pytest.raises(ValueError, match="was trained for the VQ-VAE"):
        warnings.simplefilter("error")
        RadarPipeline.from_config(PipelineArgs(model=ModelArgs(preset="tiny", init_seed=7),
                                               accel=AccelArgs("fastvar", FastVARArgs(preset="aggressive")),
                                               adapter=str(trained_run["adapter"]), device="cpu"))


def test_an_adapter_trained_on_two_accelerations_warns_only_for_a_third(trained_run, tmp_path):
    import shutil

    import yaml

    stagevar = RadarPipeline.from_config(PipelineArgs(accel=AccelArgs("stagevar"), device="cpu")).accel.describe()
    both = tmp_path / "both"
    shutil.copytree(trained_run["adapter"], both)
    meta = yaml.safe_load((both / "radar_config.yaml").read_text())
    assert [c["accel"]["method"] for c in meta["caches"]] == ["fastvar"]
    meta["caches"].append({**meta["caches"][0], "path": "cache/tiny_stagevar", "accel": stagevar})
    (both / "radar_config.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    for accel in (AccelArgs("fastvar"), AccelArgs("stagevar")):  # either is the adapter's own
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            RadarPipeline.from_config(PipelineArgs(accel=accel, adapter=str(both), device="cpu"))
    with pytest.warns(UserWarning, match="another acceleration .*method: fastvar vs none"):
        RadarPipeline.from_config(PipelineArgs(accel=AccelArgs("none"), adapter=str(both), device="cpu"))


def test_adapter_for_another_var_warns_in_the_pipeline_and_in_radar_eval(trained_run, tmp_path):
    """Every 256 px VAR shares the VQ-VAE, so an adapter trained on one VAR's latents loads on another's: it was
    silent. (The tiny preset's VQ-VAE stays the random one of seed 0; the VAR is another's.)"""
    import shutil

    from radar_train.inference.evaluate import evaluate_restoration
    from radar_train.models import build_var, get_preset
    from radar_train.models.checkpoint import save_weights
    from radar_train.models.init import init_random_

    other = build_var(get_preset("tiny").var)
    init_random_(other, seed=7)
    other_file = "var_seed7.safetensors"
    save_weights(other, tmp_path / other_file)
    with pytest.warns(UserWarning, match=r"trained on latents of another VAR than the pipeline's \(tiny random:tiny:"
                                         r"seed=0 vs depth 4 file:[0-9a-f]{12}, trained vs now\)"):
        RadarPipeline.from_config(PipelineArgs(model=ModelArgs("tiny", var_checkpoint=str(tmp_path / other_file)),
                                               adapter=str(trained_run["adapter"]), device="cpu"))
    cache = tmp_path / "cache_of_another_var"
    shutil.copytree(trained_run["cache"], cache)
    m = json.loads((cache / "manifest.json").read_text())
    m["model"]["var"].update(kind="file", value="f" * 64)  # (as made with another VAR file: only read here)
    (cache / "manifest.json").write_text(json.dumps(m))
    with pytest.warns(UserWarning, match=r"radar-eval: adapter .* trained on latents of another VAR than .*_var's "
                                         r"\(tiny random:tiny:seed=0 vs tiny file:ffffffffffff, trained"):
        evaluate_restoration(str(cache), str(trained_run["adapter"]), shards=[4])


def test_adapter_for_another_method_warns(trained_run):
    with pytest.warns(UserWarning, match="trained on latents of another acceleration .*preset: default vs aggressive"):
        RadarPipeline.from_config(PipelineArgs(accel=AccelArgs("fastvar", FastVARArgs(preset="aggressive")),
                                               adapter=str(trained_run["adapter"]), device="cpu"))
    # the same preset in other blocks only (`layers`) is another method too
    with pytest.warns(UserWarning, match="layers: None vs \\[0\\]"):
        RadarPipeline.from_config(PipelineArgs(accel=AccelArgs("fastvar", FastVARArgs(layers=[0])),
                                               adapter=str(trained_run["adapter"]), device="cpu"))
    with warnings.catch_warnings():  # the adapter's own method: no warning
        warnings.simplefilter("error")
        pipe = RadarPipeline.from_config(PipelineArgs(accel=AccelArgs("fastvar", FastVARArgs()),
                                                      adapter=str(trained_run["adapter"]), device="cpu"))
        # nor for its settings given one by one, without the preset's name (it warned "preset: default vs None")
        prune = pipe.accel.describe()["prune"]
        RadarPipeline.from_config(PipelineArgs(accel=AccelArgs("fastvar", FastVARArgs(preset=None, prune=prune)),
                                               adapter=str(trained_run["adapter"]), device="cpu"))
    with pytest.warns(UserWarning, match=r"another acceleration .*\(preset: default vs None; prune: "):
        RadarPipeline.from_config(PipelineArgs(accel=AccelArgs("fastvar", FastVARArgs(preset=None, prune={6: 0.5})),
                                               adapter=str(trained_run["adapter"]), device="cpu"))


def test_generate_is_deterministic_and_uses_the_adapter(trained_run):
    pipe = _pipe(trained_run["adapter"])
    a = pipe.generate([1, 2], [5, 6])
    b = pipe.generate([2], [6])
    assert a.dtype == torch.uint8 and a.shape == (2, 3, 32, 32)
    # per-sample seeds: a sample's tokens do not depend on its batch; its decode only up to the float round-off
    # of the CPU's convolutions, which is not bit-identical across batch sizes (at most one uint8 level)
    ta, tb = pipe.sample_latents([1, 2], [5, 6]).indices, pipe.sample_latents([2], [6]).indices
    assert all(torch.equal(x[1], y[0]) for x, y in zip(ta, tb))
    assert (a[1].int() - b[0].int()).abs().max() <= 1
    plain = pipe.generate([1, 2], [5, 6], use_adapter=False)
    assert not torch.equal(a, plain)
    cmp = pipe.compare([1, 2], [5, 6])
    assert torch.equal(cmp["accelerated+adapter"], a) and torch.equal(cmp["accelerated"], plain)


def test_radar_generate_writes_pngs_and_a_grid(trained_run, tmp_path, cli):
    out = tmp_path / "gen"
    cli("generate", "--adapter", str(trained_run["adapter"]), "--classes", "0-2", "--seeds", "0,1",
            "--sampling.top_k", "64", "--grid_scale", "3", "--output", str(out), "--device", "cpu", cwd=trained_run["work"])
    for folder in ("vanilla", "accelerated", "restored"):
        assert len(list((out / folder).glob("*.png"))) == 6
    with Image.open(out / "vanilla" / "class0002_seed1.png") as im:
        assert im.size == (32, 32)
    with Image.open(out / "grid.png") as im:
        w, h = im.size
    tile = 32 * 3
    # 6 rows and 3 columns of 96 px tiles, 2 px gaps, a title row and a label column
    assert 3 * tile < w < 3 * tile + 120 and 6 * tile < h < 6 * tile + 40
    meta = json.loads((out / "generate.json").read_text())
    assert meta["columns"] == ["vanilla", "accelerated", "accelerated+adapter"]
    # what makes the PNGs besides classes and seeds (it recorded none of these)
    assert meta["sampling"]["top_k"] == 64 and meta["sampling"]["noise"] == "per_sample"
    assert (meta["batch_size"], meta["precision"], meta["decode_precision"]) == (16, "torch.float32", "torch.float32")
    assert meta["label_conditioned"] is False and meta["merge_adapter"] is True and meta["vae"] and meta["var"]
    assert meta["radar_train"] == __import__("radar_train").__version__  # (the code that made them)
    # rerun into the same folder without an adapter: no earlier restored/ left beside the new images
    cli("generate", "--classes", "5", "--seeds", "3", "--sampling.top_k", "64", "--output", str(out), "--device", "cpu",
        "--overwrite", cwd=trained_run["work"])
    assert sorted(p.name for p in out.iterdir()) == ["accelerated", "generate.json", "grid.png", "vanilla"]
    assert [p.name for p in (out / "vanilla").iterdir()] == ["class0005_seed3.png"]


def test_radar_eval_reports_restoration_on_held_out_shards(trained_run, tmp_path, cli):
    out = tmp_path / "eval"
    cli("eval", "--cache", str(trained_run["cache"]), "--adapter", str(trained_run["adapter"]),
            "--output", str(out), "--device", "cpu", cwd=trained_run["work"])
    r = json.loads((out / "eval.json").read_text())
    for key in ("psnr_baseline", "psnr_adapted", "ssim_baseline", "ssim_adapted", "gap_closed", "harmlessness_psnr",
                "num_pairs"):
        assert key in r
    assert r["num_pairs"] == 16 and r["shards"] == [4]
    assert r["radar_train"] == __import__("radar_train").__version__  # (the code that measured it)
    assert r["gap_closed"] > 0 and r["psnr_adapted"] > r["psnr_baseline"]
    md = (out / "eval.md").read_text()
    assert "gap closed" in md and "held-out pairs (shards 4) of " in md  # (shards as ranges, not a Python list)


def test_radar_eval_finds_the_adapters_validation_shards_from_another_folder(trained_run, tmp_path, cli):
    """The adapter records its cache's path as training was given it (relative to that run's folder); radar-eval
    run elsewhere still finds the validation shards (by the cache's content), and refuses the training ones."""
    from radar_train.export import read_radar_config

    recorded = [c["path"] for c in read_radar_config(trained_run["adapter"])["caches"]]
    assert recorded and not any(Path(p).is_absolute() for p in recorded)  # what makes the folder matter
    out = tmp_path / "eval"
    cli("eval", "--cache", str(trained_run["cache"]), "--adapter", str(trained_run["adapter"]),
        "--output", str(out), "--device", "cpu", cwd=tmp_path)
    assert json.loads((out / "eval.json").read_text())["shards"] == [4]
    from radar_train.inference.evaluate import evaluate_restoration

    with pytest.raises(ValueError, match="are training shards of the adapter"):
        evaluate_restoration(str(trained_run["cache"]), str(trained_run["adapter"]), shards=[0])


def test_radar_eval_errors_are_one_line(trained_run, tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "radar_train.cli.eval", "--cache", str(tmp_path / "nope"),
                        "--adapter", str(trained_run["adapter"])], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nope" in r.stderr


@pytest.mark.parametrize("config,needle", [
    ({}, "peft_type None, expected 'LORA'"),
    ({"peft_type": "NOPE"}, "peft_type 'NOPE'"),
    ({"peft_type": "LORA"}, "no r, lora_alpha, target_modules"),
    ({"peft_type": "LORA", "r": "8", "lora_alpha": 8, "target_modules": ["conv"]}, "r is '8'"),
])
def test_an_adapter_config_peft_cannot_use_is_one_error_line_naming_it(trained_run, tmp_path, config, needle):
    """A JSON object that is not a LoRA config: peft's KeyError tracebacks ('peft_type', 'model_type') before."""
    import shutil
    import subprocess
    import sys

    d = tmp_path / "adapter"
    shutil.copytree(trained_run["adapter"], d)
    (d / "adapter_config.json").write_text(json.dumps(config))
    r = subprocess.run([sys.executable, "-m", "radar_train.cli.eval", "--cache", str(trained_run["cache"]),
                        "--adapter", str(d), "--output", str(tmp_path / "eval")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"error: {d / 'adapter_config.json'}: not a peft LoRA config") and needle in r.stderr
    assert not (tmp_path / "eval").exists()


def test_official_noise_follows_the_first_seed_of_the_call():
    """sampling.noise official: one generator per call, seeded with the first sample's seed (the official
    g_seed), so a call is reproducible and other seeds give other images (the seeds were ignored)."""
    pipe = RadarPipeline.from_config(PipelineArgs(model=ModelArgs(), accel=AccelArgs("fastvar"),
                                                  sampling=SamplingConfig(noise="official"), device="cpu"))
    a, again, other = (pipe.generate([1, 2], seeds) for seeds in ([0, 1], [0, 1], [7, 8]))
    assert torch.equal(a, again) and not torch.equal(a, other)
    pair, pair_again = pipe.compare([1, 2], [0, 1]), pipe.compare([1, 2], [0, 1])
    assert all(torch.equal(pair[k], pair_again[k]) for k in pair)
    assert torch.equal(pair["accelerated"], a)  # the pair's accelerated run is the plain one


def test_decode_takes_a_caches_float16_latents_and_names_f_hat_when_it_is_no_latent_batch():
    """Anything else failed deep inside torch (a numpy array: "'numpy.ndarray' object has no attribute 'float'";
    4 channels: a conv's weight-size message)."""
    pipe = RadarPipeline.from_config(PipelineArgs(model=ModelArgs(), device="cpu"))
    f = pipe.sample_latents([1, 2], [0, 1]).f_hat
    half = f.half()
    torch.testing.assert_close(pipe.decode(half, adapter=False), pipe.decode(half.float(), adapter=False), rtol=0,
                               atol=0)
    for bad, error, says in [(f.numpy(), TypeError, "got ndarray"), (f.long(), TypeError, "got Tensor of torch.int64"),
                             (f[:, :4], ValueError, "got (2, 4, 8, 8)"), (f[0], ValueError, "got (8, 8, 8)")]:
        with pytest.raises(error) as e:
            pipe.decode(bad, adapter=False)
        assert str(e.value).startswith("f_hat must be ") and str(e.value).endswith(says), e.value


def test_radar_eval_reads_back_from_the_device_once_not_once_per_batch(trained_run):
    """Each readback waits for the batch's kernels (the host cannot queue the next batch meanwhile): the per-image
    metrics and the LPIPS sums stay on the device until the end. Counted by where the reads are made: as many with
    4 batches as with one, and the same results."""
    from torch.overrides import TorchFunctionMode

    from radar_train.inference.evaluate import evaluate_restoration

    reads = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.__float__}  # (numpy() needs a host
    # tensor: the loader's latents, or one moved by .cpu() first)

    class Count(TorchFunctionMode):
        n = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in reads:
                import traceback

                caller = [f.filename for f in traceback.extract_stack()[:-1] if "radar_train" in f.filename]
                if caller and caller[-1].replace("\\", "/").endswith(("inference/evaluate.py", "train/metrics.py")):
                    Count.n += 1
            return func(*args, **(kwargs or {}))

    results = {}
    for batch in (16, 4):
        Count.n = 0
        with Count():
            r = evaluate_restoration(str(trained_run["cache"]), str(trained_run["adapter"]), batch_size=batch)
        results[batch] = (Count.n, r)
    (n16, r16), (n4, r4) = results[16], results[4]
    assert r16["num_pairs"] == r4["num_pairs"] == 16 and n4 == n16, (n4, n16)
    assert len(r4["by_latent_distance"]) == len(r16["by_latent_distance"]) == 4
    for a, b in zip(r4["by_latent_distance"], r16["by_latent_distance"]):
        assert a == pytest.approx(b, rel=1e-5)
    assert r4["psnr_adapted"] == pytest.approx(r16["psnr_adapted"], rel=1e-6)


def test_a_load_adapter_that_raises_leaves_the_pipeline_as_it_was(trained_run):
    """With warnings as errors (`-W error`, pytest's filterwarnings = error) the warning about another acceleration
    raised out of load_adapter after the adapter was already in place: the call failed, yet the pipeline decoded with
    the new adapter."""
    pipe = RadarPipeline.from_config(PipelineArgs(accel=AccelArgs("fastvar", FastVARArgs(preset="aggressive")),
                                                  device="cpu"))
    before = pipe.generate([1, 2], [0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="another acceleration"):
            pipe.load_adapter(str(trained_run["adapter"]))
    assert (pipe.adapted_decoder, pipe.adapter_dir, pipe.adapter_meta, pipe.adapter_merged) == (None, None, None, None)
    assert torch.equal(pipe.generate([1, 2], [0, 1]), before)


def test_the_pipeline_keeps_its_adapter_by_its_absolute_path(trained_run, tmp_path, monkeypatch):
    """An adapter given by a relative path was read again from wherever the process had chdir'd to (fingerprint:
    a raw FileNotFoundError, or 'replaced while it was read' for another folder of the same name there)."""
    adapter = Path(trained_run["adapter"])
    monkeypatch.chdir(adapter.parent)
    pipe = _pipe(adapter.name)
    fingerprint = pipe.fingerprint()
    assert pipe.adapter_dir == str(adapter.absolute())
    monkeypatch.chdir(tmp_path)
    (tmp_path / adapter.name).mkdir()  # another folder of the same name
    assert pipe.fingerprint() == fingerprint


@pytest.mark.parametrize("call", [
    lambda: PipelineArgs(model=ModelArgs("tiny"), merge_adapter="false", device="cpu"),
    lambda: RadarPipeline.from_config(PipelineArgs(model=ModelArgs("tiny"), device="cpu")).load_adapter(None),
    lambda: RadarPipeline.from_config(PipelineArgs(model=ModelArgs("tiny"), device="cpu")).load_adapter("x", merge=1),
], ids=["merge_adapter-a-string", "adapter-none", "merge-an-int"])
def test_arguments_of_the_wrong_kind_are_refused_naming_them(call):
    """merge_adapter="false" merged (a non-empty string is true), load_adapter(None) failed inside os.stat."""
    from radar_train.inference.pipeline import check_pipeline_args

    with pytest.raises(TypeError, match=r"^(merge_adapter|adapter|merge) must be"):
        args = call()
        if isinstance(args, PipelineArgs):
            check_pipeline_args(args)
