"""radar-cache run / status / verify through the CLI entry in-process on the tiny model: the documented
files and printout, a larger plan extending a smaller one whatever the shard and batch sizes, a config that
differs from the manifest refused, invalid settings reported together, every config under configs/cache
parsing and validating."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from radar_train.cache import schema
from radar_train.cache.reader import PairDataset
from radar_train.cache.schema import read_manifest
from radar_train.cli.cache import build_run_parser, main, run_args

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "cache" / "tiny.yaml"
# 10 classes × 4 = 40 pairs in 10 shards of 4, stored as float32
SMALL = ["--plan.images_per_class", "4", "--plan.shard_size", "4", "--batch-size", "4", "--storage.dtype", "float32",
         "--progress", "false", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()  # the tiny config sets num_threads: 1 for the process
    yield
    torch.set_num_threads(n)


def _main(*argv) -> int:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    return e.value.code


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "cache"
    n = torch.get_num_threads()
    with pytest.raises(SystemExit) as e:
        main(["run", "--config", str(TINY_CONFIG), "--output", str(out), *SMALL])
    torch.set_num_threads(n)
    assert e.value.code == 0
    return out


def test_cli_writes_exactly_the_documented_files_and_extends_the_small_plan(reference, tmp_path, capsys):
    out = tmp_path / "tiny"
    assert _main("run", "--config", str(TINY_CONFIG), "--output", str(out), "--progress", "false") == 0
    text = capsys.readouterr().out
    assert "plan:    80 samples (classes 0..9, 8 per class, seeds 0..79) in 5 shards of 16" in text
    assert "workers: 1 (single worker); this is worker 0: 5 shards, 0 done, 5 to write (80 samples)" in text
    assert "method:  fastvar" in text
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] + [schema.shard_name(s) for s in range(5)]
    files = sorted(str(p.relative_to(out / "shard-00000.zarr")) for p in (out / "shard-00000.zarr").rglob("*")
                   if p.is_file())
    assert files == sorted(["zarr.json"] + [f"{n}/zarr.json" for n in schema.ARRAY_NAMES]
                           + [f"{n}/c/0" + "/0" * (3 if n in schema.LATENT_ARRAYS else 1 if n in schema.INDEX_ARRAYS
                                                   else 0) for n in schema.ARRAY_NAMES])
    m = read_manifest(out)
    assert (m.latent_shape, m.latent_dtype, m.precision, m.patch_nums) == ([8, 8, 8], "float16", "float32",
                                                                          [1, 2, 3, 4, 6, 8])
    assert m.model["var"]["value"] == "tiny:seed=0" and m.accel["method"] == "fastvar"
    # samples 0..39 are those of the 40-sample reference (other shard and batch sizes), rounded to float16
    ds, ref = PairDataset(out), PairDataset(reference)
    for i in range(0, 40, 3):
        a, b = ds[i], ref[i]
        assert int(a["index"]) == int(b["index"]) == i
        assert torch.equal(a["fhat_hq"], b["fhat_hq"].half().float())
        assert torch.equal(a["fhat_lq"], b["fhat_lq"].half().float())
    assert _main("verify", str(out)) == 0
    assert _main("status", str(out)) == 0
    assert "5 done, 0 pending, 0 temporary" in capsys.readouterr().out
    assert _main("export-wds", str(out), "--output", str(tmp_path / "wds")) == 0
    assert "export-wds: 5 tars, 80 samples" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "wds").iterdir()) == ["index.json", "manifest.json"] + [
        f"pairs-{s:05d}.tar" for s in range(5)]


def test_a_config_that_differs_from_the_manifest_is_refused(reference, tmp_path, capsys):
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*")}
    code = _main("run", "--config", str(TINY_CONFIG), "--output", str(reference), *SMALL, "--sampling.cfg", "2.0",
                 "--plan.shard_size", "5")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "differing fields: plan.num_shards (cache: 10, now: 8); plan.shard_size (cache: 4, now: 5); " \
           "sampling.cfg (cache: 1.5, now: 2.0)" in err
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*")} == before


def test_invalid_settings_are_reported_together(tmp_path, capsys):
    code = _main("run", "--config", str(TINY_CONFIG), "--output", str(tmp_path / "x"), "--batch-size", "0",
                 "--plan.classes", "5:12", "--sampling.top_p", "1.5")
    err = capsys.readouterr().err
    assert code == 2
    for part in ("sampling.top_p must be in [0, 1)", "batch_size must be >= 1", "plan.classes 10-11 out of range"):
        assert part in err
    assert not (tmp_path / "x").exists()



def test_the_method_its_files_the_workers_and_the_device_are_reported_with_the_fields(tmp_path, capsys):
    """Before, each of these was found only once the fields were right: one error per run."""
    import torch

    device = ["--device", "cuda"] if not torch.cuda.is_available() else []
    code = _main("run", "--config", str(TINY_CONFIG), "--output", str(tmp_path / "x"), "--plan.shard_size", "0",
                 "--accel.method", "sca", "--accel.sca.mask_file", str(tmp_path / "missing.safetensors"),
                 "--num_workers", "2", "--worker_index", "4", *device)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    for part in ("plan.shard_size must be >= 1", "missing.safetensors: SCA mask file not found",
                 "worker_index 4 is outside [0, num_workers=2)"):
        assert part in err, (part, err)
    assert not device or "--device cuda: CUDA is not available" in err
    code = _main("run", "--config", str(TINY_CONFIG), "--output", str(tmp_path / "x"), "--batch-size", "0",
                 "--accel.method", "fastvar", "--accel.fastvar.preset", "nosuch")
    err = capsys.readouterr().err
    assert code == 2 and "batch_size must be >= 1" in err and "unknown fastvar preset 'nosuch'" in err
    assert not (tmp_path / "x").exists()

def test_check_reports_what_a_run_would_refuse_and_writes_nothing(tmp_path, capsys):
    """`run --check` (slurm/pipeline.sh runs it on the login node): the same one-line problems as a run, the
    output folder's included, nothing written; a CUDA device is the job's, not this machine's."""
    out = tmp_path / "x"
    code = _main("run", "--config", str(TINY_CONFIG), "--output", str(out), "--plan.shard_size", "0",
                 "--num_workers", "2", "--worker_index", "4", "--check")
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "plan.shard_size must be >= 1" in err and "worker_index 4 is outside [0, num_workers=2)" in err
    (tmp_path / "a file").write_text("mine")
    code = _main("run", "--config", str(TINY_CONFIG), "--output", str(tmp_path / "a file"), "--check")
    assert code == 2 and "is an existing file" in capsys.readouterr().err
    code = _main("run", "--config", str(TINY_CONFIG), "--output", str(out), "--device", "cuda:0", "--check")
    assert code == 0 and "are fine; nothing was written" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a file"] and (tmp_path / "a file").read_text() == "mine"


def test_check_compares_an_existing_cache_without_loading_the_weights(reference, tmp_path, capsys):
    """`run --check` on an existing cache: what the run would refuse once its weights are loaded (another
    configuration, other weights, the job's device's precision) is refused on the login node, naming the
    differing fields as the run does; the same settings pass, and the cache is left as it was."""
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*")}
    base = ("run", "--config", str(TINY_CONFIG), "--output", str(reference), *SMALL, "--check")
    assert _main(*base) == 0
    assert "(its manifest matches: the run resumes it); nothing was written" in capsys.readouterr().out
    code = _main(*base, "--sampling.cfg", "2.0", "--plan.shard_size", "5")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "manifest.json was made with another configuration; differing fields: plan.num_shards (cache: 10, " \
           "now: 8); plan.shard_size (cache: 4, now: 5); sampling.cfg (cache: 1.5, now: 2.0)" in err
    assert _main(*base, "--model.init_seed", "7") == 2
    assert 'model.var.value (cache: "tiny:seed=0", now: "tiny:seed=7")' in capsys.readouterr().err
    assert _main(*base, "--device", "cuda:0") == 2  # the job's GPU would sample in bfloat16
    assert 'precision (cache: "float32", now: "bfloat16")' in capsys.readouterr().err
    # radar-generate's spellings: fp32 is the cache's float32, bf16 another precision, said in torch's name
    assert _main(*base, "--precision", "fp32") == 0
    assert _main(*base, "--precision", "bf16") == 2
    assert 'precision (cache: "float32", now: "bfloat16")' in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*")} == before


def test_a_cache_of_a_fastvar_this_version_cannot_run_is_refused_saying_why(reference, tmp_path, capsys):
    """A cache made before ratio-0 FastVAR scales were dropped records such a scale (its LQ latents were made with
    another cache scale): no settings resume it, so the run and `--check` say that, not "use the cache's own
    settings" (which the user gave)."""
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(reference, old)
    m = json.loads((old / "manifest.json").read_text())
    m["accel"]["prune"] = {"4": 0.0, **m["accel"]["prune"]}
    (old / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    before = {p: p.read_bytes() for p in old.rglob("*") if p.is_file()}
    for extra in ([], ["--check"]):
        code = _main("run", "--config", str(TINY_CONFIG), "--output", str(old), *SMALL,
                     "--accel.fastvar.prune", "{4: 0.0, 6: 0.5, 8: 0.75}", *extra)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert "its FastVAR prune has ratio 0 at scale(s) 4" in err and "Write new pairs into another --output" in err
        assert "differing fields" not in err
    assert {p: p.read_bytes() for p in old.rglob("*") if p.is_file()} == before


def test_a_cache_of_an_sca_memory_budget_of_its_older_meaning_is_refused_saying_why(reference, tmp_path, capsys):
    """An SCA-Mask cache whose memory budget below 1 was recorded before the budget meant a share of the whole KV
    cache (no memory_budget_of): the run and `--check` say so before comparing fields; nothing changes."""
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(reference, old)
    m = json.loads((old / "manifest.json").read_text())
    m["accel"] = {"method": "sca", "preset": "default", "selection": "scores", "compute_budget": 0.5,
                  "memory_budget": 0.6, "tile": 16, "per_head": False, "kernel": "auto"}
    (old / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    before = {p: p.read_bytes() for p in old.rglob("*") if p.is_file()}
    for extra in ([], ["--check"]):
        code = _main("run", "--config", str(TINY_CONFIG), "--output", str(old), *SMALL, *extra)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert "its SCA-Mask memory_budget 0.6 was made by a radar_train before 2026-12-04" in err
        assert "Write new pairs into another --output" in err and "differing fields" not in err
    assert {p: p.read_bytes() for p in old.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("prune", [[0.5], {"6": None}, "6:0.5", {"6": "x"}], ids=["list", "null", "str", "strval"])
def test_a_damaged_fastvar_section_is_one_line_naming_the_manifest(reference, tmp_path, capsys, prune):
    import json
    import shutil

    cache = tmp_path / "c"
    shutil.copytree(reference, cache)
    m = json.loads((cache / "manifest.json").read_text())
    m["accel"]["prune"] = prune
    (cache / "manifest.json").write_text(json.dumps(m))
    for extra in ([], ["--check"]):
        code = _main("run", "--config", str(TINY_CONFIG), "--output", str(cache), *SMALL, *extra)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"{cache / 'manifest.json'} was made with another configuration; differing fields: accel.prune" in err


def test_check_reads_the_checkpoint_files_as_a_run_does(tmp_path, capsys):
    """`run --check` refuses checkpoint files the run would refuse before writing (swapped, unreadable), from
    their headers and shapes, and passes the right ones."""
    from radar_train.models import load_models, save_weights

    vqvae, var, _, _ = load_models("tiny", init_seed=3)
    vae_f, var_f = save_weights(vqvae, tmp_path / "vae.safetensors"), save_weights(var, tmp_path / "var.safetensors")
    torch.save(var.state_dict(), tmp_path / "var.pth")
    (tmp_path / "junk.pth").write_bytes(bytes(range(256)) * 4)
    base = ("run", "--config", str(TINY_CONFIG), "--output", str(tmp_path / "out"), *SMALL, "--check")
    cases = [(vae_f, var_f, True, ""), (vae_f, tmp_path / "var.pth", True, ""),
             (var_f, vae_f, False, "is a VAR transformer checkpoint, but was given as the VQ-VAE"),
             (tmp_path / "junk.pth", var_f, False, "junk.pth: checkpoint is not a file torch.save wrote")]
    for vae, var_, fine, message in cases:
        code = _main(*base, "--model.vae_checkpoint", str(vae), "--model.var_checkpoint", str(var_))
        err = capsys.readouterr().err
        assert (code == 0) == fine and message in err and err.count("\n") == (0 if fine else 1), (vae, var_, err)
    assert not (tmp_path / "out").exists()


CONFIGS = sorted((REPO / "configs" / "cache").rglob("*.yaml"))


def _mask_of_the_shapes(preset, path: Path) -> Path:
    """An SCA mask file of `preset`'s shapes (uniform tile scores; what `radar-accel calibrate` writes for it
    on real weights), for a shipped config that names a mask calibrated on the user's machine."""
    from radar_train.accel.calibrate import write_sca_mask
    from radar_train.accel.sca import default_scales, default_tile, scale_tiles
    from radar_train.config import SCAArgs

    var, pns = preset.var, list(preset.var.patch_nums)
    sides = default_scales(pns)
    tile = default_tile(pns, sides)
    scores = {name: {} for name in ("score_q", "score_kv", "score_q_head", "score_kv_head")}
    for pn in sides:
        g = scale_tiles(pns, pns.index(pn), tile)
        for name in scores:
            heads = (var.num_heads,) if name.endswith("_head") else ()
            scores[name][pn] = torch.ones(var.depth, *heads, g.nq, g.nk, dtype=torch.float64)
    model = {"preset": preset.name, "depth": var.depth, "num_heads": var.num_heads, "embed_dim": var.embed_dim,
             "var": {"kind": "file", "value": "0" * 64}}  # (calibrate records the weights' sha256)
    write_sca_mask(path, SCAArgs(), pns, scores, tile=tile, tau=1.0, rows=1, num_samples=1, seed=0, batch_size=1,
                   model=model, sampling={})
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_cache_config_parses_and_validates(path, tmp_path):
    from radar_train.accel import build_accel
    from radar_train.cache.plan import Plan
    from radar_train.models import get_preset

    text = path.read_text()
    assert text.startswith(f"# radar-cache run --config configs/cache/{path.relative_to(REPO / 'configs/cache')}")
    args = run_args(build_run_parser().parse_args(["--config", str(path)]))
    assert args.problems() == []
    preset = get_preset(args.model.preset)
    assert Plan.from_args(args.plan, preset.var.num_classes).num_samples > 0
    mask = args.accel.sca.mask_file if args.accel.method == "sca" else None
    if mask is not None and not (REPO / mask).exists():  # calibrated on the real weights by the header's command
        assert f"--accel.method sca --output {mask}" in text and f"--model.preset {preset.name}" in text, mask
        args.accel.sca.mask_file = str(_mask_of_the_shapes(preset, tmp_path / "mask.safetensors"))
    elif mask is not None:
        args.accel.sca.mask_file = str(REPO / mask)
    build_accel(args.accel, preset.var.patch_nums, preset.var.depth)  # (ConfigError: every problem)


def test_there_are_cache_configs():
    assert {p.name for p in CONFIGS} >= {"tiny.yaml", "d16_fastvar.yaml", "d16_stagevar.yaml", "d36_fastvar.yaml",
                                         "d20_sca.yaml", "d24_sca.yaml", "d30_sca.yaml"}  # (RADAR's main table)


def test_skipped_scales_are_stored_as_minus_one(tmp_path):
    out = tmp_path / "skip"
    assert _main("run", "--config", str(TINY_CONFIG), "--output", str(out), *SMALL, "--plan.images_per_class", "1",
                 "--accel.fastvar.prune", "{6: 0.5, 8: 1.0}") == 0
    g = zarr.open_group(str(out / schema.shard_name(0)), mode="r")
    lq, hq = g[schema.INDICES_LQ][:], g[schema.INDICES_HQ][:]
    last = 8 * 8  # tokens of the skipped last scale (patch_nums 1, 2, 3, 4, 6, 8)
    assert lq.dtype == np.int16 and (lq[:, -last:] == -1).all() and (lq[:, :-last] >= 0).all()
    assert (hq >= 0).all()


def test_the_labels_go_to_the_sampler_on_the_host(tmp_path, monkeypatch):
    """A plain copy of each batch's labels to a GPU waits for its queued work (the previous batch): radar-cache
    hands them to the sampler on the host, which checks them there and copies them without blocking. (The sampler
    is made to say it lives on another device than the CPU, so that a copy made before the call would show.)"""
    import radar_train.cache.generate as generate
    import radar_train.sampling as sampling

    args = run_args(build_run_parser().parse_args(["--config", str(TINY_CONFIG), "--output", str(tmp_path / "c"),
                                                   *[a.replace("-size", "_size") for a in SMALL],
                                                   "--plan.images_per_class", "1"]))
    job = generate.prepare_job(args)
    devices = []

    class Seen(Exception):
        pass

    def spy(sampler, labels, *args, **kwargs):
        devices.append(labels.device.type)
        raise Seen

    monkeypatch.setattr(sampling, "generate_pairs", spy)
    monkeypatch.setattr(sampling.NextScaleSampler, "device", property(lambda self: torch.device("meta")))
    with pytest.raises(Seen):
        generate.generate_shard_arrays(job.sampler, job.method, job.plan, 0, 4, "float32")
    assert devices == ["cpu"]


def test_shards_another_worker_completed_first_are_not_counted_as_written(tmp_path, monkeypatch):
    """Two processes with the same share (e.g. a resubmitted job while the first still runs): the one whose
    commits find the shards complete reports 0 written (it counted every sample it generated)."""
    import radar_train.cache.generate as generate

    out = tmp_path / "c"
    args = run_args(build_run_parser().parse_args(["--config", str(TINY_CONFIG), "--output", str(out),
                                                   *[a.replace("-size", "_size") for a in SMALL],
                                                   "--plan.images_per_class", "1"]))
    first, second = generate.prepare_job(args), generate.prepare_job(args)
    before = generate.scan_cache(out, first.plan.num_shards)  # what the second saw when it started
    done = first.run(print_fn=lambda s: None)
    monkeypatch.setattr(generate, "scan_cache", lambda *a: before)
    summary = second.run(print_fn=lambda s: None)
    assert done.shards_written == list(range(3)) and done.samples_written == 10
    assert summary.shards_written == [] and summary.samples_written == 0


def _interrupt_generation_at(monkeypatch, call: int) -> None:
    """Ctrl-C in the `call`-th shard's generation (radar_train.cache.generate.generate_shard_arrays)."""
    import radar_train.cache.generate as generate

    real, calls = generate.generate_shard_arrays, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "generate_shard_arrays", interrupted)


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_an_interrupted_run_leaves_its_finished_shards_and_no_temporary(tmp_path, monkeypatch, capsys, writer):
    """Ctrl-C during a shard's generation (a reviewer: exit 130 left shard-NNNNN.zarr.tmp-* behind): the shards
    written before stay complete, the interrupted one's temporary is removed, and a rerun writes only the rest."""
    import radar_train.cache.generate as generate

    real = generate.generate_shard_arrays
    _interrupt_generation_at(monkeypatch, 3)
    out = tmp_path / "c"
    assert _main("run", "--config", str(TINY_CONFIG), "--output", str(out), *SMALL, "--writer", writer) == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("shard-")) == \
        ["shard-00000.zarr", "shard-00001.zarr"]
    monkeypatch.setattr(generate, "generate_shard_arrays", real)
    assert _main("run", "--config", str(TINY_CONFIG), "--output", str(out), *SMALL, "--writer", writer) == 0
    assert "skipped 2 complete, cleared 0 temporary" in capsys.readouterr().out


@pytest.mark.parametrize("value,says", [
    ("", "model.vae_checkpoint is empty: name the weights file (or leave the option out)"),
    ("{tmp}", "model.vae_checkpoint {tmp} is a folder, expected the weights file"),
    ("/dev/zero", "model.vae_checkpoint /dev/zero is not a regular file (a device, pipe or socket)"),
])
def test_a_weights_option_that_names_no_file_says_what_it_names(tmp_path, capsys, value, says):
    """(A folder was said not to exist, and '' was read as the working folder.)"""
    value, says = value.format(tmp=tmp_path), says.format(tmp=tmp_path)
    code = _main("run", "--config", str(TINY_CONFIG), "--output", str(tmp_path / "out"), *SMALL,
                 "--model.vae_checkpoint", value, "--check")
    err = capsys.readouterr().err
    assert code == 2 and says in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_its_own_warnings_are_warning_lines_as_every_commands(tmp_path):
    """radar-cache's logged warnings read `warning: <message>` as docs/cli.md says of every command's own (they read
    `WARNING radar_train.cache.workers: ...`); its INFO lines keep their logger's name."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "radar_train.cli.cache", "run", "--config", str(TINY_CONFIG),
                          "--output", str(tmp_path / "c"), "--precision", "fp16", "--plan.images_per_class", "1",
                          "--plan.shard_size", "10", "--progress", "false"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["precision"] == "float16"  # (fp16: torch's name)
    lines = res.stderr.splitlines()
    assert ("warning: precision float16 on cpu is slow and not bitwise reproducible; float32 is advised on the CPU"
            in lines), res.stderr
    assert not any(ln.startswith("WARNING") for ln in lines), res.stderr
    assert any(ln.startswith("INFO radar_train.cache.generate: worker 0 of 1") for ln in lines), res.stderr


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_an_interrupt_while_the_last_shard_is_written_ends_a_complete_run(tmp_path, monkeypatch, capsys, writer):
    """Ctrl-C or SIGTERM while the writer wrote the last shard handed to it (the writer's exit finishes it): the run
    ended as stopped (143 under SIGTERM: a failed SLURM array task, its verify and training jobs cancelled) with
    every shard complete. It is a complete run now; an interrupt before the last shard was handed over is not."""
    from radar_train.cache.writer import ShardWriter

    real_wait, last, raised = ShardWriter.wait, 9, []  # (SMALL: 10 shards)

    def interrupted_wait(self):
        if self._pending is not None and self._pending_shard == last and not raised:
            raised.append(1)  # (as a signal landing while it waits: the write may not have begun)
            raise KeyboardInterrupt
        real_wait(self)

    monkeypatch.setattr(ShardWriter, "wait", interrupted_wait)
    out = tmp_path / "c"
    assert _main("run", "--config", str(TINY_CONFIG), "--output", str(out), *SMALL, "--writer", writer) == 0
    said = capsys.readouterr().out
    assert "radar-cache: interrupted as its last shard was written, which finished: the run is complete" in said
    assert "wrote 10 shards (40 samples)" in said
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("shard-")) == [
        f"shard-{s:05d}.zarr" for s in range(10)]
    monkeypatch.undo()
    assert _main("run", "--config", str(TINY_CONFIG), "--output", str(out), *SMALL, "--writer", writer) == 0
    assert "wrote 0 shards (0 samples), skipped 10 complete" in capsys.readouterr().out

    _interrupt_generation_at(monkeypatch, 3)  # (the last shard not yet handed over: stopped)
    assert _main("run", "--config", str(TINY_CONFIG), "--output", str(tmp_path / "d"), *SMALL, "--writer",
                 writer) == 130
