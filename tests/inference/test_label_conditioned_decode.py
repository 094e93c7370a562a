"""A label-conditioned adapter (radar-train --model.label_conditioning.kind film) in RadarPipeline, radar-generate,
radar-eval and the toy measurement's decode helper: the samples' labels reach the decoder, and none is refused."""
import json
from pathlib import Path

import pytest
import torch

from radar_train.config import AccelArgs, ModelArgs, SamplingConfig
from radar_train.inference import PipelineArgs, RadarPipeline

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny.yaml"


@pytest.fixture(scope="module")
def conditioned_run(trained_run, cli):
    """A label-conditioned adapter trained 20 steps on the session's tiny cache (FiLM learning rate 10x, so
    that 20 steps move it clearly)."""
    work = trained_run["work"]
    cli("train", "fit", "--config", str(TINY_CONFIG), "--trainer.max_steps", "20",
        "--trainer.val_check_interval", "20", "--trainer.default_root_dir", "run_labels",
        "--model.monitor.images_every_n_steps", "0", "--model.label_conditioning.kind", "film",
        "--model.label_conditioning.embed_dim", "16", "--model.label_conditioning.lr_scale", "10", cwd=work)
    return {**trained_run, "adapter": work / "run_labels/final", "run": work / "run_labels"}


def _pipe(adapter, merge=True) -> RadarPipeline:
    return RadarPipeline.from_config(PipelineArgs(model=ModelArgs(), accel=AccelArgs("fastvar"),
                                                  sampling=SamplingConfig(cfg=1.5, top_k=64, top_p=0.96),
                                                  adapter=str(adapter), merge_adapter=merge, device="cpu"))


def test_pipeline_decodes_with_the_labels_like_the_trained_student(conditioned_run):
    from radar_train.train.module import module_from_hparams

    ckpt = torch.load(conditioned_run["run"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    module = module_from_hparams(ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"], strict=False)
    module.eval()
    f, labels = torch.randn(3, 8, 8, 8), torch.tensor([0, 4, 9])
    with torch.no_grad():
        student = module.decode(f, labels=labels)[0].clamp(-1, 1).add(1).mul(0.5)
    pipe = _pipe(conditioned_run["adapter"])
    assert pipe.adapted_decoder.label_conditioned
    torch.testing.assert_close(pipe.decode(f, adapter=True, labels=labels), student, atol=2e-5, rtol=0)
    other = pipe.decode(f, adapter=True, labels=[1, 1, 1])
    assert (other - student).abs().max() > 1e-4  # the label matters
    with pytest.raises(ValueError, match="^this adapter is label-conditioned: decode with the class labels"):
        pipe.decode(f, adapter=True)
    torch.testing.assert_close(pipe.decode(f, adapter=False), _pipe(conditioned_run["adapter"]).decode(f, False))


def test_generate_and_compare_pass_the_sample_labels(conditioned_run):
    pipe = _pipe(conditioned_run["adapter"], merge=False)
    a = pipe.generate([1, 2], [5, 6])
    res = pipe.sample_latents([1, 2], [5, 6])
    from radar_train.images import to_uint8

    assert torch.equal(a, to_uint8(pipe.decode(res.f_hat, adapter=True, labels=[1, 2])))
    assert torch.equal(pipe.compare([1, 2], [5, 6])["accelerated+adapter"], a)


def test_the_unconditional_label_is_refused_before_sampling_when_the_adapter_decodes(conditioned_run, monkeypatch):
    """The adapter's classes exclude the unconditional label: refused before the sampling, not after it, in the
    calls that decode with the adapter; the others take it."""
    from radar_train.sampling import NextScaleSampler

    pipe = _pipe(conditioned_run["adapter"])
    start = NextScaleSampler.start

    def no_start(*a, **k):
        raise AssertionError("sampling started before the labels were checked")

    monkeypatch.setattr(NextScaleSampler, "start", no_start)
    for call in (lambda: pipe.generate([1, 10], [0, 1]), lambda: pipe.compare([10], [0])):
        with pytest.raises(ValueError, match=r"^label conditioning: labels must lie in 0\.\.9 \(the adapter's"):
            call()
    monkeypatch.setattr(NextScaleSampler, "start", start)
    assert pipe.generate([10], [0], use_adapter=False).shape[0] == 1
    assert pipe.generate([10], [0], accelerated=False).shape[0] == 1


def test_radar_generate_and_radar_eval_run_a_conditioned_adapter(conditioned_run, tmp_path, cli):
    work = conditioned_run["work"]
    cli("generate", "--adapter", str(conditioned_run["adapter"]), "--classes", "0-1", "--seeds", "0",
        "--sampling.top_k", "64", "--output", str(tmp_path / "gen"), "--device", "cpu", cwd=work)
    assert len(list((tmp_path / "gen" / "restored").glob("*.png"))) == 2
    cli("eval", "--cache", str(conditioned_run["cache"]), "--adapter", str(conditioned_run["adapter"]),
        "--output", str(tmp_path / "eval"), "--device", "cpu", cwd=work)
    r = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert r["label_conditioned"] is True and r["num_pairs"] == 16 and r["shards"] == [4]


def test_evaluate_uses_the_cache_labels(conditioned_run):
    """radar-eval's adapted images are the student's on the cache's pairs with their own labels: G_mse of the
    evaluation equals the one computed from the pairs directly."""
    from radar_train.cache.reader import PairDataset
    from radar_train.inference.evaluate import evaluate_restoration
    from radar_train.train.metrics import RestorationStats
    from radar_train.train.module import module_from_hparams

    r = evaluate_restoration(str(conditioned_run["cache"]), str(conditioned_run["adapter"]), shards=[4])
    ckpt = torch.load(conditioned_run["run"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    module = module_from_hparams(ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"], strict=False)
    module.eval()
    ds = PairDataset(conditioned_run["cache"], shards=[4])
    items = [ds[i] for i in range(len(ds))]
    hq, lq = torch.stack([it["fhat_hq"] for it in items]), torch.stack([it["fhat_lq"] for it in items])
    labels = torch.stack([it["label"] for it in items])
    stats = RestorationStats()
    with torch.no_grad():
        def img(x, adapters, lab=None):
            return module.decode(x, adapters=adapters, labels=lab)[0].clamp(-1, 1).add(1).mul(0.5)
        stats.update(img(hq, False), img(lq, False), img(lq, True, labels), img(hq, True, labels))
    assert r["gap_closed"] == pytest.approx(stats.compute()["gap_closed_mse"], abs=1e-4)


def test_toy_decode_helper_passes_each_batch_its_labels(conditioned_run):
    from radar_train.export import load_adapter
    from radar_train.models import load_latent_decoder
    from radar_train.toyworld.measure import decode01

    dec, ident = load_latent_decoder("tiny")
    dec = load_adapter(dec, conditioned_run["adapter"], identity=ident).eval()
    f, labels = torch.randn(5, 8, 8, 8), torch.tensor([3, 1, 4, 1, 5])
    with torch.no_grad():
        want = dec(f, labels).clamp(-1, 1).add(1).mul(0.5)
        torch.testing.assert_close(decode01(dec, f, batch_size=2, labels=labels), want, atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="label-conditioned"):
            decode01(dec, f)


def test_the_weights_file_named_by_the_metadata_is_one_inside_the_folder(conditioned_run, tmp_path):
    import shutil

    import yaml

    from radar_train.export import check_adapter
    from radar_train.inputs import InputError

    outside = tmp_path / "label_conditioning.safetensors"  # a usable file, but not the adapter's
    shutil.copy(conditioned_run["adapter"] / "label_conditioning.safetensors", outside)
    d = tmp_path / "adapter"
    shutil.copytree(conditioned_run["adapter"], d)
    meta = yaml.safe_load((d / "radar_config.yaml").read_text())
    meta["label_conditioning"]["file"] = "../label_conditioning.safetensors"
    (d / "radar_config.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(InputError, match="not a file name inside the adapter folder"):
        check_adapter(d)


def test_labels_given_on_the_host_are_checked_there_and_copied_to_the_device_without_a_check_on_it():
    """A check on the device (a min / max read back) or a plain copy to a GPU waits for the device's queued work (the
    sampling of these latents): host labels are checked on the host. A device that cannot read back (meta) shows it:
    a check made there would raise."""
    from radar_train.export.label_conditioning import ClassFiLM

    film = ClassFiLM({"norm": 8}, num_classes=10, embed_dim=4)
    for labels in ([1, 9, 0], torch.tensor([1, 9, 0])):
        out = film.check_labels(labels, 3, torch.device("meta"))
        assert out.device.type == "meta" and out.dtype == torch.long and out.shape == (3,)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9 \(the adapter's classes\), got 0\.\.10"):
        film.check_labels([0, 10, 3], 3, torch.device("meta"))
    with pytest.raises(ValueError, match="2 labels for 3 latents"):
        film.check_labels([0, 1], 3, torch.device("meta"))


def test_a_conditioned_adapters_weights_without_their_metadata_section_are_refused(conditioned_run, tmp_path):
    """Loaded as a plain LoRA, the adapter decoded without its FiLM, with no word (radar-generate, radar-eval and
    RadarPipeline exited 0)."""
    import shutil

    import yaml

    from radar_train.export import check_adapter
    from radar_train.inputs import InputError

    d = tmp_path / "adapter"
    shutil.copytree(conditioned_run["adapter"], d)
    meta = yaml.safe_load((d / "radar_config.yaml").read_text())
    meta.pop("label_conditioning")
    (d / "radar_config.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(InputError, match=r"radar_config.yaml: has no label_conditioning section, yet the folder "
                                         r"holds label_conditioning.safetensors"):
        check_adapter(d)
    with pytest.raises(InputError, match="has no label_conditioning section"):
        _pipe(d)


def test_decode_takes_the_labels_in_the_forms_generate_takes(conditioned_run):
    """decode(adapter=True, labels=...) read True as class 1, a bare int or a 2-d list as a batch, and said
    'got -9223372036854775808' for inf."""
    pipe = _pipe(conditioned_run["adapter"])
    f = torch.randn(1, 8, 8, 8)
    ref = pipe.decode(f, adapter=True, labels=[3])
    assert torch.equal(pipe.decode(f, adapter=True, labels=torch.tensor([3])), ref)
    for bad, kind, message in (([True], TypeError, "got a bool"), (3, TypeError, "must be a sequence"),
                               ([[3]], TypeError, "class numbers"), (["3"], TypeError, "class numbers"),
                               (torch.tensor(3), TypeError, "one-dimensional"),
                               ([float("inf")], ValueError, "whole class numbers, got inf")):
        with pytest.raises(kind, match=message):
            pipe.decode(f, adapter=True, labels=bad)


def test_radar_generate_refuses_a_class_count_and_a_progress_folder_before_the_models_load(conditioned_run,
                                                                                       tmp_path, monkeypatch):
    """Both were refused only after the models loaded (hashing a d16 checkpoint first), after the start line."""
    import shutil

    import yaml
    from cli_checks import assert_refused
    from safetensors.torch import load_file, save_file

    import radar_train.inference.pipeline as pipeline

    def no_load(*a, **k):
        raise AssertionError("the models loaded before the check")

    monkeypatch.setattr(pipeline, "load_models", no_load)
    d = tmp_path / "five"
    shutil.copytree(conditioned_run["adapter"], d)
    meta = yaml.safe_load((d / "radar_config.yaml").read_text())
    meta["label_conditioning"]["num_classes"] = 5
    (d / "radar_config.yaml").write_text(yaml.safe_dump(meta))
    tensors = load_file(d / "label_conditioning.safetensors")
    save_file({**tensors, "embedding": tensors["embedding"][:5].contiguous()}, d / "label_conditioning.safetensors")
    base = ["--classes", "0", "--seeds", "0", "--device", "cpu"]
    assert_refused("generate", [*base, "--adapter", str(d), "--output", "out"], tmp_path, (tmp_path,),
                   ["conditioned on 5 classes, the model has 10"])
    assert_refused("fid", ["--adapter", str(d), "--save_npz", "true", "--num_samples", "2", "--device", "cpu",
                           "--output", "fid"], tmp_path, (tmp_path,), ["conditioned on 5 classes, the model has 10"])
    (tmp_path / "o1" / "generate-progress").mkdir(parents=True)
    (tmp_path / "o1" / "generate-progress" / "mine.txt").write_text("mine")
    assert_refused("generate", [*base, "--output", "o1"], tmp_path, (tmp_path,),
                   ["holds mine.txt, so it is not radar-generate progress"])
    assert_refused("generate", [*base, "--accel.method", "sca", "--output", "o2"], tmp_path, (tmp_path,),
                   ["sca.mask_file is needed"])


def _edited_copy(adapter: Path, where: Path, edit) -> Path:
    """A copy of `adapter` at `where` whose radar_config.yaml `edit(meta)` changed."""
    import shutil

    import yaml

    shutil.copytree(adapter, where)
    meta = yaml.safe_load((where / "radar_config.yaml").read_text())
    edit(meta)
    (where / "radar_config.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return where


def test_the_classes_of_an_adapters_training_pairs_follow_from_its_caches_plans_and_training_shards():
    """The plan cycles its classes over the samples in order (sample i has class classes[i % n]) and cuts them into
    shards of shard_size: shards 0 and 2 of 4 pairs over 10 classes hold samples 0-3 and 8-11, classes 0-3, 8, 9."""
    from radar_train.export.label_conditioning import trained_classes

    plan = {"classes": list(range(10)), "images_per_class": 2, "num_samples": 20, "base_seed": 0, "shard_size": 4}
    assert trained_classes({"caches": [{"plan": plan, "train_shards": [0, 2]}]}) == {0, 1, 2, 3, 8, 9}
    other = {**plan, "classes": [20, 30], "images_per_class": 1, "num_samples": 2}
    assert trained_classes({"caches": [{"plan": plan, "train_shards": [1]},
                                       {"plan": other, "train_shards": [0]}]}) == {4, 5, 6, 7, 20, 30}
    for unknown in ({}, {"caches": [{"plan": plan, "train_shards": None}]}, {"caches": [{"train_shards": [0]}]},
                    {"caches": [{"plan": plan, "train_shards": [0]}, {"path": "x", "train_shards": [1]}]}):
        assert trained_classes(unknown) is None, unknown


def test_a_class_the_adapter_was_never_trained_on_is_warned_of_once(conditioned_run, tmp_path):
    """Trained on plan.classes 0-4, an adapter decoding class 7 uses that class's embedding as initialised (random),
    passed through the trained layers: RadarPipeline (radar-generate, radar-fid, radar-eval alike) said nothing."""
    from radar_train.export.label_conditioning import UntrainedClassWarning

    import warnings

    f = torch.randn(3, 8, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedClassWarning)  # (trained on every class: never a word)
        _pipe(conditioned_run["adapter"]).decode(torch.randn(10, 8, 8, 8), adapter=True, labels=list(range(10)))

    def classes_0_to_4(meta):
        for record in meta["caches"]:
            record["plan"]["classes"] = [0, 1, 2, 3, 4]

    d = _edited_copy(conditioned_run["adapter"], tmp_path / "adapter", classes_0_to_4)
    pipe = _pipe(d)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        pipe.decode(f, adapter=True, labels=[0, 4, 2])
        assert not said
        pipe.decode(f, adapter=True, labels=[0, 9, 7])
        pipe.generate([8], [0])  # (said once: a run over every class would say it for each batch)
    assert [(w.category, str(w.message)) for w in said] == [(UntrainedClassWarning, (
        f"label-conditioned adapter {d} was trained on pairs of classes 0-4 only: classes 7,9 (and any other "
        f"outside them) decode with an untrained class embedding (its random start), so its restoration is not what "
        f"validation measured and may be worse than without the adapter"))]


def test_film_weights_that_are_not_floating_point_are_refused_naming_their_file(conditioned_run, tmp_path):
    """The LoRA weights of integers were refused, the FiLM's copied in rounded without a word (radar-generate
    exited 0)."""
    from safetensors.torch import load_file, save_file

    from radar_train.export import check_adapter
    from radar_train.inputs import InputError

    d = _edited_copy(conditioned_run["adapter"], tmp_path / "adapter", lambda meta: None)
    file = d / "label_conditioning.safetensors"
    tensors = load_file(str(file))
    tensors["embedding"] = (tensors["embedding"] * 3).round().to(torch.int32)
    save_file(tensors, str(file))
    with pytest.raises(InputError) as e:
        check_adapter(d)
    assert str(e.value) == (f"{file}: 1 tensor(s) are not floating point (e.g. embedding, torch.int32): not "
                            f"label-conditioning weights radar-train wrote")


def test_a_film_of_a_norm_layer_the_decoder_lacks_is_refused_naming_the_metadata_before_the_decoder_changes(
        conditioned_run, tmp_path):
    from safetensors.torch import load_file, save_file

    from radar_train.export import load_adapter
    from radar_train.inputs import InputError
    from radar_train.models import load_latent_decoder

    name = "decoder.mid.attn_1.norm"

    def renamed(meta):
        norms = meta["label_conditioning"]["norms"]
        meta["label_conditioning"]["norms"] = {(f"{name}x" if k == name else k): v for k, v in norms.items()}

    d = _edited_copy(conditioned_run["adapter"], tmp_path / "adapter", renamed)
    tensors = load_file(str(d / "label_conditioning.safetensors"))
    tensors[f"proj.{name}x"] = tensors.pop(f"proj.{name}")
    save_file(tensors, str(d / "label_conditioning.safetensors"))
    dec = load_latent_decoder("tiny")[0]
    before = {k: v.clone() for k, v in dec.state_dict().items()}
    with pytest.raises(InputError) as e:
        load_adapter(dec, d)
    assert str(e.value).startswith(f"{d / 'radar_config.yaml'}: label_conditioning: the decoder's {name}x should be "
                                   f"a GroupNorm of ")
    assert str(e.value).endswith(" channels (missing): the adapter was made for another decoder")
    after = dec.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_merge_takes_an_adapter_whose_label_conditioning_kind_is_none_as_loading_does(tmp_path):
    """Every consumer read `label_conditioning: {kind: none}` as a plain adapter; radar-train merge refused it as
    label-conditioned."""
    from radar_train.export.merged import check_mergeable

    check_mergeable(tmp_path, {"label_conditioning": {"kind": "none"}}, "float32")
    check_mergeable(tmp_path, {"label_conditioning": None}, "float32")
    with pytest.raises(ValueError, match="is label-conditioned"):
        check_mergeable(tmp_path, {"label_conditioning": {"kind": "film", "num_classes": 10}}, "float32")
