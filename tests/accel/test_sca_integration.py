"""SCA-Mask wherever a method runs: radar-cache (the manifest carries the mask file's identity),
RadarPipeline / radar-generate, radar-bench and radar-toy measure method specs."""
import json

import pytest
import torch

from radar_train.accel import ConfigError, SCAMask
from radar_train.accel.sca import args_from_spec
from radar_train.config import AccelArgs, ModelArgs, SamplingConfig, SCAArgs
from radar_train.models.checkpoint import file_sha256


@pytest.fixture(scope="module")
def tiny_mask(tmp_path_factory):
    from radar_train.cli.accel import main

    out = tmp_path_factory.mktemp("sca") / "tiny.safetensors"
    with pytest.raises(SystemExit) as e:
        main(["calibrate", "--accel.method", "sca", "--model.preset", "tiny", "--num_samples", "2", "--batch_size", "2",
              "--device", "cpu", "--output", str(out)])
    assert e.value.code == 0
    return out


def test_cache_manifest_records_the_mask_file(tiny_mask, tmp_path, build_cache):
    from radar_train.cache.config import CacheArgs, PlanArgs

    args = CacheArgs(sampling=SamplingConfig(cfg=1.5, top_k=64, top_p=0.96),
                     accel=AccelArgs("sca", sca=SCAArgs(mask_file=str(tiny_mask))),
                     plan=PlanArgs(classes=[0, 1], images_per_class=None, num_samples=2, shard_size=2),
                     output=str(tmp_path / "cache"), progress=False, device="cpu", num_threads=1)
    out = build_cache(args)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["accel"]["method"] == "sca"
    assert manifest["accel"]["mask_sha256"] == file_sha256(tiny_mask)
    assert manifest["accel"]["mask_file"] == str(tiny_mask)
    assert out == str(tmp_path / "cache")


def test_a_cache_worker_may_name_a_copy_of_the_mask_but_not_another_mask(tiny_mask, tmp_path, build_cache):
    """The mask is identified by its sha256; its path is where this worker reads it (another mount, a copy,
    relative or absolute), as for the checkpoints and StageVAR's rank ratios."""
    import shutil

    from radar_train.cache.config import CacheArgs, PlanArgs
    from radar_train.cache.status import verify_cache

    def args(mask, worker, **sca):
        return CacheArgs(sampling=SamplingConfig(cfg=1.5, top_k=64, top_p=0.96),
                         accel=AccelArgs("sca", sca=SCAArgs(mask_file=str(mask), **sca)),
                         plan=PlanArgs(classes=[0, 1], images_per_class=None, num_samples=4, shard_size=2),
                         output=str(tmp_path / "cache"), progress=False, device="cpu", num_threads=1,
                         num_workers=2, worker_index=worker)

    build_cache(args(tiny_mask, 0))
    copy = tmp_path / "elsewhere" / "mask.safetensors"
    copy.parent.mkdir()
    shutil.copy(tiny_mask, copy)
    build_cache(args(copy, 1))
    assert verify_cache(str(tmp_path / "cache"))[0] == []
    other = tmp_path / "other.safetensors"
    data = bytearray(tiny_mask.read_bytes())
    data[-1] ^= 1  # other bytes (the last byte of a tensor): another mask
    other.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"differing fields: accel\.mask_sha256") as e:
        build_cache(args(other, 1))
    assert "mask_file" not in str(e.value)


def test_pipeline_runs_sca_and_refuses_a_mask_of_other_weights(tiny_mask):
    from radar_train.inference import PipelineArgs, RadarPipeline

    args = PipelineArgs(model=ModelArgs(), accel=AccelArgs("sca", sca=SCAArgs(mask_file=str(tiny_mask))),
                        sampling=SamplingConfig(cfg=1.5, top_k=64, top_p=0.96), device="cpu")
    pipe = RadarPipeline.from_config(args)
    assert isinstance(pipe.accel, SCAMask)
    runs = pipe.compare(labels=[1, 2], seeds=[0, 1])
    assert runs["vanilla"].dtype == torch.uint8 and not torch.equal(runs["vanilla"], runs["accelerated"])
    other = PipelineArgs(model=ModelArgs(init_seed=5), accel=args.accel, device="cpu")
    with pytest.raises(ConfigError, match="calibrated on other weights"):
        RadarPipeline.from_config(other)


def test_bench_and_toy_specs():
    from radar_train.bench.accel import method_from_spec
    from radar_train.models.configs import PATCH_NUMS_256
    from radar_train.toyworld.measure import parse_method

    m = method_from_spec("sca:window+aggressive", PATCH_NUMS_256, 16)  # random d16: no calibration needed
    assert isinstance(m, SCAMask) and (m.selection, m.compute_budget, m.memory_budget, m.tile) == ("window", 0.3, 1.0, 64)
    assert m.scales == (10, 13, 16)
    a = parse_method("sca:mild+mask_file=m.safetensors+per_head+scales=6/8+tile=16")
    assert a.method == "sca" and (a.sca.preset, a.sca.mask_file, a.sca.per_head, a.sca.scales, a.sca.tile) == \
        ("mild", "m.safetensors", True, [6, 8], 16)
    assert args_from_spec("window+compute_budget=0.4").compute_budget == 0.4
    with pytest.raises(ValueError, match="unknown option 'budget'"):
        args_from_spec("budget=0.4")
    with pytest.raises(ValueError, match="cannot read tile"):
        args_from_spec("tile=big")
