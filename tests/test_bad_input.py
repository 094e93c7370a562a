"""What a tired user types, for every command line: each case must exit with a non-zero status, print one
`error:` line (the last line of stderr) naming the option or file at fault, no traceback, and leave every
file that was there byte-identical, with nothing new written. Then the rules behind it, one test each:
an export never replaces the run folder, a refused fit leaves config.yaml alone, last.ckpt holds the
final step, radar-eval refuses the adapter's training shards, calibrate checks its output first, adapter
files get the normal mode.

One tiny world is built once for the module (a 2-shard cache, a 3-step run with its checkpoints and final/
adapter, and broken copies of them); each case runs in its own empty working folder.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_checks import (assert_one_line_error, assert_refused, assert_unchanged, build_small_cache, call_cli, snapshot,
                        zip_data_offset)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# ------------------------------------------------------------------------------------------------ the world
@pytest.fixture(scope="module")
def world(tmp_path_factory, build_cache) -> dict[str, Path]:
    w = tmp_path_factory.mktemp("world")
    cache = build_small_cache(build_cache, w / "cache")
    run = w / "run"
    code, _ = call_cli("train", fit_args(cache, run, steps=3), cwd=w)
    assert code == 0, "the world's training run failed"
    final = run / "final"
    (w / "junk.bin").write_bytes(bytes(range(256)) * 4)
    (w / "list.yaml").write_text("- a\n- b\n")
    (w / "empty.ckpt").write_bytes(b"")
    (w / "trunc.ckpt").write_bytes((run / "checkpoints" / "last.ckpt").read_bytes()[:800])
    (w / "run_trunc" / "checkpoints").mkdir(parents=True)
    shutil.copy(w / "trunc.ckpt", w / "run_trunc" / "checkpoints" / "last.ckpt")
    (w / "existing.json").write_text("{}\n")
    (w / "not_a_cache").mkdir()
    (w / "not_a_cache" / "notes.txt").write_text("mine\n")
    for name in ("missing", "trunc", "junk"):
        shutil.copytree(final, w / f"adapter_{name}")
    (w / "adapter_missing" / "adapter_model.safetensors").unlink()
    weights = w / "adapter_trunc" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (w / "adapter_junk" / "radar_config.yaml").write_bytes(bytes(range(128, 256)))
    _broken_adapters(w, final)
    _broken_checkpoints(w, run / "checkpoints" / "last.ckpt")
    shutil.copytree(cache, w / "cache_no_lq")  # a complete shard lacking an array (a partial copy)
    shutil.rmtree(w / "cache_no_lq" / "shard-00000.zarr" / "fhat_lq")
    (w / "toy_out").mkdir()
    (w / "toy_out" / "toy_vae.safetensors").write_bytes(b"earlier run")
    _broken_measuring_files(w)
    return {"w": w, "cache": cache, "run": run, "final": final, "ckpt": run / "checkpoints" / "last.ckpt"}


def _broken_measuring_files(w: Path) -> None:
    """A folder where files are named, a feature extractor that returns NaN, reference statistics and rank ratios
    holding NaN, and reference fixtures with an impossible model or no cases."""
    import numpy as np

    class NanFeatures(torch.nn.Module):
        def forward(self, x):
            return (x.float() * float("nan")).flatten(1)[:, :8]

    class Features(torch.nn.Module):
        def forward(self, x):
            return x.float().flatten(1)[:, :8]

    (w / "a_folder").mkdir()
    torch.jit.save(torch.jit.script(NanFeatures()), str(w / "inception_nan.pt"))
    torch.jit.save(torch.jit.script(Features()), str(w / "inception_pixels.pt"))
    np.savez(w / "reference_nan.npz", mu=np.full(8, np.nan), sigma=np.eye(8))
    (w / "ranks_nan.yaml").write_text("ratios: {6: [.nan, 0.5, 0.5, 0.5], 8: [0.3, 0.3, 0.3, 0.3]}\n")
    fixture = Path(__file__).parent / "fixtures" / "tiny_a"
    for name, edit in (("fixture_negative_depth", lambda c, j: c["VAR_kwargs"].update(depth=-1)),
                       ("fixture_no_cases", lambda c, j: j.update(cases={})),
                       ("fixture_case_without_outputs", lambda c, j: j["cases"]["b"].update(outputs=[])),
                       ("fixture_tolerance_a_string", lambda c, j: j["keys"]["a.out.img"].update(atol="0.1"))):
        d = w / name
        shutil.copytree(fixture, d)
        config, cases = json.loads((d / "config.json").read_text()), json.loads((d / "cases.json").read_text())
        edit(config, cases)
        (d / "config.json").write_text(json.dumps(config))
        (d / "cases.json").write_text(json.dumps(cases))


def _broken_checkpoints(w: Path, ckpt: Path) -> None:
    """Checkpoints that torch loads without complaint: bytes of a tensor's data overwritten on disk (its zip
    entry's CRC no longer matches), and trained weights that went NaN."""
    import zipfile

    data = bytearray(ckpt.read_bytes())
    with zipfile.ZipFile(ckpt) as z:
        entry = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    start = zip_data_offset(data, entry)
    data[start + 8:start + 72] = b"\xff" * 64
    (w / "flipped.ckpt").write_bytes(bytes(data))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    key = next(k for k in state["state_dict"] if "lora_B" in k)
    state["state_dict"][key] = torch.full_like(state["state_dict"][key], float("nan"))
    torch.save(state, w / "nan.ckpt")


def _broken_adapters(w: Path, final: Path) -> None:
    """Adapter folders whose files read fine but do not say or hold what they should."""
    import yaml
    from safetensors.torch import save_file

    def copy(name: str, meta_edit=None) -> Path:
        d = w / f"adapter_{name}"
        shutil.copytree(final, d)
        if meta_edit is not None:
            meta = yaml.safe_load((d / "radar_config.yaml").read_text())
            meta_edit(meta)
            (d / "radar_config.yaml").write_text(yaml.safe_dump(meta))
        return d

    copy("vae_word", lambda m: m["base"].update(vae="tiny"))
    copy("vae_no_kind", lambda m: m["base"]["vae"].pop("kind"))
    copy("caches_words", lambda m: m.update(caches=["cache/tiny"]))
    d = copy("other_rank")
    cfg = json.loads((d / "adapter_config.json").read_text())
    (d / "adapter_config.json").write_text(json.dumps({**cfg, "r": cfg["r"] * 2}))
    save_file({"foo": torch.zeros(3)}, str(copy("foreign_weights") / "adapter_model.safetensors"))


def fit_args(cache: Path, run: Path, steps: int, *extra: str) -> list[str]:
    caches = json.dumps([{"path": str(cache), "train_shards": "0", "val_shards": "1"}])
    return ["fit", "--config", str(CONFIGS / "train" / "tiny.yaml"), "--data.caches", caches,
            "--trainer.default_root_dir", str(run), "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", str(steps), "--trainer.enable_progress_bar", "false",
            "--model.output.save_every_n_steps", "2", "--model.monitor.images_every_n_steps", "0",
            "--model.monitor.train_metrics_every_n_steps", "0", "--data.batch_size", "4",
            "--data.val_batch_size", "16", *extra]


# ------------------------------------------------------------------------------------------------ the cases
def _generate_opts(w):
    return ["--config", str(CONFIGS / "generate" / "tiny.yaml"), "--device", "cpu"]


def _yaml(t: Path, name: str, text: str) -> str:
    """A config file written into the case's working folder (before its snapshot)."""
    (t / name).parent.mkdir(parents=True, exist_ok=True)
    (t / name).write_text(text)
    return str(t / name)


def _group_case(name: str, cli: str, argv_before: list[str], text: str, key: str, option: str = "--config"):
    """A config file (or group file) whose group `key` is not a mapping: one line naming the file and the key."""
    return (name, cli, lambda w, t: [*argv_before, option, _yaml(t, "bad.yaml", text)],
            ["bad.yaml", f"{key} must be a mapping"])


# (id, cli, argv(world, cwd), needles that the error line must hold)
CASES = [
    # config groups that are not mappings (a TypeError traceback, or ignored), in every entry point
    _group_case("generate-model-a-list", "generate", ["--classes", "0", "--device", "cpu", "--output", "o"],
                "model: [1, 2]\n", "model"),
    _group_case("generate-model-a-number", "generate", [], "model: 5\n", "model"),
    _group_case("generate-model-null", "generate", [], "model: null\n", "model"),
    # an unknown model preset: the option named (the model loader's line named none)
    ("generate-unknown-preset", "generate", lambda w, t: ["--model.preset", "tinyy", "--output", "o"],
     ["model.preset", "unknown model preset 'tinyy'"]),
    ("toy-measure-unknown-preset", "toy", lambda w, t: ["measure", "--setup.model.preset", "tinyy", "--output", "o"],
     ["model.preset", "unknown model preset 'tinyy'"]),
    ("bench-accel-unknown-preset", "bench", lambda w, t: ["accel", "--setup.preset", "tinyy"],
     ["--setup.preset: unknown model preset 'tinyy'"]),
    ("bench-pipeline-unknown-preset", "bench", lambda w, t: ["pipeline", "--setup.preset", "tinyy"],
     ["--setup.preset: unknown model preset 'tinyy'"]),
    ("bench-train-unknown-preset", "bench", lambda w, t: ["train", "--args.preset", "tinyy"],
     ["--args.preset: unknown model preset 'tinyy'"]),
    _group_case("generate-sampling-a-list", "generate", [], "sampling: [1]\n", "sampling"),
    _group_case("generate-accel-fastvar-a-list", "generate", [], "accel: {fastvar: [1]}\n", "accel.fastvar"),
    ("generate-model-file-a-list", "generate", lambda w, t: ["--model", _yaml(t, "bad.yaml", "[1]\n")],
     ["bad.yaml", "--model file", "mapping"]),
    _group_case("cache-run-plan-a-number", "cache", ["run", "--config", str(CONFIGS / "cache" / "tiny.yaml")],
                "plan: 3\n", "plan"),
    _group_case("fit-model-lora-a-list", "train", ["fit", "--config", str(CONFIGS / "train" / "tiny.yaml")],
                "model: {lora: [1]}\n", "model.lora"),
    _group_case("fit-trainer-a-list", "train", ["fit", "--config", str(CONFIGS / "train" / "tiny.yaml"),
                                                "--print_config"], "trainer: [1]\n", "trainer"),  # (ignored)
    _group_case("fit-model-file-with-lora-a-list", "train", ["fit", "--config", str(CONFIGS / "train" / "tiny.yaml")],
                "lora: [1]\n", "model.lora", "--model"),
    _group_case("toy-train-recipe-a-list", "toy", ["train", "--output", "out", "--print_config"], "recipe: [1]\n",
                "recipe"),  # (trained on defaults; --print_config keeps the case short)
    _group_case("toy-train-recipe-vqvae-a-number", "toy", ["train", "--output", "out"], "recipe: {vqvae: 5}\n",
                "recipe.vqvae"),
    _group_case("bench-accel-setup-a-list", "bench", ["accel"], "setup: [1]\n", "setup"),
    _group_case("bench-train-args-a-list", "bench", ["train"], "args: [1]\n", "args"),
    _group_case("bench-tradeoff-setup-a-list", "bench", ["tradeoff", "--output", "to", "--print_config"],
                "setup: [1]\n", "setup"),  # (ran on defaults)
    _group_case("eval-lpips-a-list", "eval", ["--cache", "c", "--adapter", "a"], "lpips: [1]\n", "lpips"),
    # config and group files given otherwise than `--config FILE`
    ("fit-with-a-binary-config-after-c", "train", lambda w, t: ["fit", "-c", str(w["w"] / "junk.bin")],
     ["junk.bin", "not a text file"]),
    ("fit-with-a-list-config-after-c", "train", lambda w, t: ["fit", "-c", str(w["w"] / "list.yaml")],
     ["list.yaml", "mapping"]),
    ("fit-with-a-list-config-after-config-equals", "train", lambda w, t: ["fit", f"--config={w['w'] / 'list.yaml'}"],
     ["list.yaml", "mapping"]),
    ("generate-with-a-binary-model-file", "generate", lambda w, t: ["--model", str(w["w"] / "junk.bin")],
     ["junk.bin", "--model file"]),
    ("bench-tradeoff-with-a-binary-setup-file", "bench", lambda w, t: ["tradeoff", "--setup", str(w["w"] / "junk.bin")],
     ["junk.bin", "--setup file"]),
    ("bench-train-on-another-models-cache", "bench",
     lambda w, t: ["train", "--args.preset", "toy", "--args.cache", str(w["cache"]), "--args.device", "cpu",
                   "--args.steps", "2", "--json", "rows.json"], ["--args.cache", "model tiny", "--args.preset toy"]),
    ("bench-train-micro-batches-that-do-not-divide-the-batch", "bench",
     lambda w, t: ["train", "--args.batch_size", "16", "--args.micro_batch_size", "3", "--json", "rows.json"],
     ["--args.micro_batch_size must divide --args.batch_size (16), got 3"]),
    ("bench-cache-with-a-binary-config", "bench", lambda w, t: ["cache", "--cache_config", str(w["w"] / "junk.bin")],
     ["junk.bin", "--cache_config"]),
    ("bench-cache-with-a-list-config", "bench", lambda w, t: ["cache", "--cache_config", str(w["w"] / "list.yaml")],
     ["list.yaml", "--cache_config"]),
    # required options, spelt as on the command line
    ("eval-without-cache-and-adapter", "eval", lambda w, t: [], ["required: --cache, --adapter"]),
    ("fit-without-caches", "train", lambda w, t: ["fit"], ["required: --data.caches"]),
    ("fit-with-an-unknown-checkpointing-mode", "train",
     lambda w, t: fit_args(w["cache"], t / "run", 2, "--model.optim.activation_checkpointing", "all"),
     ["--model.optim.activation_checkpointing", "norms", "blocks", "all"]),
    ("cache-export-without-output", "cache", lambda w, t: ["export-wds", str(w["cache"])], ["required: --output"]),
    # radar-train export
    ("export-into-the-run-folder", "train",
     lambda w, t: ["export", "--ckpt", str(w["ckpt"]), "--output", str(w["run"])], ["--output", "--ckpt"]),
    ("export-onto-an-existing-file", "train",
     lambda w, t: ["export", "--ckpt", str(w["ckpt"]), "--output", str(w["run"] / "config.yaml")],
     ["--output", "config.yaml", "existing file"]),
    ("export-onto-an-adapter-without-overwrite", "train",
     lambda w, t: ["export", "--ckpt", str(w["ckpt"]), "--output", str(w["final"])], ["--output", "--overwrite"]),
    ("export-onto-a-foreign-folder-even-with-overwrite", "train",
     lambda w, t: ["export", "--ckpt", str(w["ckpt"]), "--output", str(w["w"] / "not_a_cache"), "--overwrite"],
     ["not_a_cache", "not an adapter folder"]),
    ("export-of-a-truncated-checkpoint", "train",
     lambda w, t: ["export", "--ckpt", str(w["w"] / "trunc.ckpt"), "--output", "adapter"], ["trunc.ckpt", "truncated"]),
    ("export-of-an-empty-file", "train",
     lambda w, t: ["export", "--ckpt", str(w["w"] / "empty.ckpt"), "--output", "adapter"], ["empty.ckpt"]),
    ("export-of-a-folder", "train",
     lambda w, t: ["export", "--ckpt", str(w["run"] / "checkpoints"), "--output", "adapter"], ["checkpoints", "folder"]),
    ("export-of-an-adapter-file", "train",
     lambda w, t: ["export", "--ckpt", str(w["final"] / "adapter_model.safetensors"), "--output", "adapter"],
     ["adapter_model.safetensors"]),
    ("export-without-output", "train", lambda w, t: ["export", "--ckpt", str(w["ckpt"])], ["output"]),
    ("train-unknown-command", "train", lambda w, t: ["trian", "--config", "x.yaml"], ["trian"]),
    # radar-train fit
    ("fit-into-a-run-with-checkpoints", "train", lambda w, t: fit_args(w["cache"], w["run"], 5),
     ["--trainer.default_root_dir", "--ckpt_path last"]),
    ("fit-resumed-with-another-lora-rank", "train",  # refused at restore: the run's config.yaml stays the run's
     lambda w, t: fit_args(w["cache"], w["run"], 5, "--ckpt_path", "last", "--model.lora.rank", "4"),
     ["another LoRA layout"]),
    ("fit-into-a-file", "train", lambda w, t: fit_args(w["cache"], w["w"] / "junk.bin", 5),  # (was: [Errno 20])
     ["--trainer.default_root_dir", "junk.bin is an existing file: give a folder"]),
    ("fit-into-a-folder-under-a-file", "train", lambda w, t: fit_args(w["cache"], w["w"] / "junk.bin" / "run", 5),
     ["--trainer.default_root_dir", "junk.bin is a file, not a folder"]),
    ("fit-inside-the-cache", "train", lambda w, t: fit_args(w["cache"], w["cache"] / "run", 5),
     ["--trainer.default_root_dir", "--data.caches"]),
    ("fit-from-a-truncated-checkpoint", "train",
     lambda w, t: fit_args(w["cache"], t / "run", 5, "--ckpt_path", str(w["w"] / "trunc.ckpt")), ["trunc.ckpt"]),
    ("fit-resuming-a-truncated-last-ckpt", "train",
     lambda w, t: fit_args(w["cache"], w["w"] / "run_trunc", 5, "--ckpt_path", "last"), ["last.ckpt", "truncated"]),
    ("fit-with-a-binary-config", "train", lambda w, t: ["fit", "--config", str(w["w"] / "junk.bin")], ["junk.bin"]),
    ("fit-with-a-list-config", "train", lambda w, t: ["fit", "--config", str(w["w"] / "list.yaml")],
     ["list.yaml", "mapping"]),
    ("fit-with-a-missing-config", "train", lambda w, t: ["fit", "--config", "configs/train/tiny.yml"], ["tiny.yml"]),
    ("fit-with-a-negative-batch", "train", lambda w, t: fit_args(w["cache"], t / "run", 5, "--data.batch_size", "-4"),
     ["data.batch_size"]),
    ("fit-with-a-batch-larger-than-the-training-set", "train",  # 16 training pairs: no step would run
     lambda w, t: fit_args(w["cache"], t / "run", 5, "--data.batch_size", "32"), ["16 training pairs", "batch_size 32"]),
    ("fit-with-a-word-for-a-number", "train", lambda w, t: fit_args(w["cache"], t / "run", 5, "--trainer.max_steps", "ten"),
     ["--trainer.max_steps"]),
    ("fit-on-a-folder-that-is-not-a-cache", "train",
     lambda w, t: fit_args(w["w"] / "not_a_cache", t / "run", 5), ["not_a_cache", "manifest.json"]),
    ("fit-resuming-last-in-a-foreign-folder", "train",  # no checkpoint there: it would start over in it
     lambda w, t: fit_args(w["cache"], w["w"] / "not_a_cache", 5, "--ckpt_path", "last"),
     ["--trainer.default_root_dir", "notes.txt", "--ckpt_path last"]),
    ("fit-with-its-config-as-the-run-folder-s-config-yaml", "train",  # the fit would overwrite its own config
     lambda w, t: fit_args(w["cache"], t / "exp", 5, "--config",
                           _yaml(t, "exp/config.yaml", "# my run\ntrainer: {max_steps: 5}\n")),
     ["--trainer.default_root_dir", "--config", "exp/config.yaml"]),
    ("validate-last-without-a-checkpoint", "train",  # (it validated an untrained adapter)
     lambda w, t: ["validate", *fit_args(w["cache"], t / "tiyn", 5, "--ckpt_path", "last")[1:]],
     ["--ckpt_path last", "last.ckpt", "does not exist"]),
    # radar-cache
    ("cache-run-into-a-foreign-folder", "cache",
     lambda w, t: ["run", "--config", str(CONFIGS / "cache" / "tiny.yaml"), "--output", str(w["run"])],
     ["--output", "manifest.json"]),
    ("cache-run-onto-a-file", "cache",
     lambda w, t: ["run", "--config", str(CONFIGS / "cache" / "tiny.yaml"), "--output", str(w["w"] / "existing.json")],
     ["--output", "existing.json"]),
    ("cache-run-with-a-negative-batch", "cache",
     lambda w, t: ["run", "--config", str(CONFIGS / "cache" / "tiny.yaml"), "--output", "c", "--batch-size", "-1"],
     ["batch_size"]),
    ("cache-run-with-a-binary-config", "cache", lambda w, t: ["run", "--config", str(w["w"] / "junk.bin")], ["junk.bin"]),
    ("cache-status-with-a-negative-shard-count", "cache",
     lambda w, t: ["status", str(w["cache"]), "--stat_shards", "-5"], ["--stat_shards", "-1 for all"]),
    ("cache-run-inside-another-cache", "cache",
     lambda w, t: ["run", "--config", str(CONFIGS / "cache" / "tiny.yaml"), "--output", str(w["cache"] / "sub")],
     ["--output", "lies inside the cache"]),
    ("cache-run-with-seeds-past-64-bits", "cache",
     lambda w, t: ["run", "--config", str(CONFIGS / "cache" / "tiny.yaml"), "--output", "c", "--plan.base_seed",
                   str(2 ** 63 - 2)], ["plan.base_seed must be in [0, 2**63 - "]),
    ("cache-run-into-an-empty-output", "cache",
     lambda w, t: ["run", "--config", str(CONFIGS / "cache" / "tiny.yaml"), "--output", ""],
     ["--output is empty: name the output (. for the current folder)"]),
    ("generate-into-an-empty-output", "generate",
     lambda w, t: ["--config", str(CONFIGS / "generate" / "tiny.yaml"), "--output", "", "--classes", "0", "--seeds",
                   "0", "--device", "cpu"], ["--output is empty: name the output (. for the current folder)"]),
    # `~` that no shell expanded (a config file, quoted, `--output=~/x`): it made a folder named `~` here
    ("cache-run-into-an-unexpanded-tilde", "cache",
     lambda w, t: ["run", "--config", str(CONFIGS / "cache" / "tiny.yaml"), "--output=~/caches/tiny"],
     ["--output ~/caches/tiny: '~' is not expanded here (only a shell expands it, at the start of a word): give ",
      "/caches/tiny, or ./~/caches/tiny for a folder named '~'"]),
    ("fit-into-an-unexpanded-tilde", "train",
     lambda w, t: fit_args(w["cache"], Path("~/runs/a"), 2),
     ["--trainer.default_root_dir ~/runs/a: '~' is not expanded here"]),
    ("generate-into-an-unexpanded-tilde-user", "generate",
     lambda w, t: ["--config", str(CONFIGS / "generate" / "tiny.yaml"), "--output", "~nobody_here/gen", "--classes",
                   "0", "--seeds", "0", "--device", "cpu"],
     ["--output ~nobody_here/gen: '~' is not expanded here", "give the full path, or ./~nobody_here/gen"]),
    ("cache-run-with-more-shards-than-a-cache-holds", "cache",  # (a MemoryError traceback after the manifest)
     lambda w, t: ["run", "--config", str(CONFIGS / "cache" / "tiny.yaml"), "--output", "c",
                   "--plan.images_per_class", str(10 ** 14)],
     ["plan.images_per_class: 1000000000000000 samples in shards of 16 make 62500000000000 shards",
      "at most 1,000,000", "a larger plan.shard_size"]),
    ("cache-check-with-more-shards-than-a-cache-holds", "cache",
     lambda w, t: ["run", "--config", str(CONFIGS / "cache" / "tiny.yaml"), "--output", "c", "--check",
                   "--plan.images_per_class", "null", "--plan.num_samples", str(10 ** 9), "--plan.shard_size", "999"],
     ["plan.num_samples: 1000000000 samples in shards of 999 make 1001002 shards"]),
    ("calibrate-with-seeds-past-64-bits", "accel",
     lambda w, t: ["calibrate", "--model.preset", "tiny", "--num_samples", "4", "--batch_size", "2", "--seed",
                   str(2 ** 63 - 2), "--output", "r.yaml"], ["--seed"]),
    ("calibrate-no-scales", "accel",
     lambda w, t: ["calibrate", "--model.preset", "tiny", "--scales", "[]", "--output", "r.yaml"], ["--scales"]),
    ("calibrate-the-first-scale", "accel",
     lambda w, t: ["calibrate", "--model.preset", "tiny", "--scales", "1,8", "--output", "r.yaml"],  # (as shards)
     ["--scales", "first scale"]),
    ("calibrate-sca-onto-its-own-mask-file", "accel",
     lambda w, t: ["calibrate", "--model.preset", "tiny", "--accel.method", "sca", "--accel.sca.mask_file",
                   str(w["w"] / "existing.json"), "--output", str(w["w"] / "existing.json"), "--overwrite"],
     ["--output", "--accel.sca.mask_file"]),
    ("calibrate-sca-with-window-selection", "accel",
     lambda w, t: ["calibrate", "--model.preset", "tiny", "--accel.method", "sca", "--accel.sca.selection", "window",
                   "--output", "m.safetensors"], ["sca.selection window", "needs no calibration"]),
    ("cache-export-inside-the-cache", "cache",
     lambda w, t: ["export-wds", str(w["cache"]), "--output", str(w["cache"] / "wds")], ["--output", "cache"]),
    ("cache-export-onto-the-cache", "cache",
     lambda w, t: ["export-wds", str(w["cache"]), "--output", str(w["cache"])], ["--output"]),
    ("cache-export-of-a-run-folder", "cache",
     lambda w, t: ["export-wds", str(w["run"]), "--output", "wds"], ["manifest.json"]),
    ("cache-status-of-a-file", "cache", lambda w, t: ["status", str(w["w"] / "existing.json")], ["existing.json"]),
    ("cache-run-on-a-word-for-a-device", "cache",
     lambda w, t: ["run", "--config", str(CONFIGS / "cache" / "tiny.yaml"), "--output", "c", "--device", "gpu"],
     ["--device", "gpu"]),
    ("cache-verify-without-a-folder", "cache", lambda w, t: ["verify"], ["cache_dir"]),
    ("cache-unknown-command", "cache", lambda w, t: ["stats", str(w["cache"])], ["stats"]),
    # radar-eval
    ("eval-on-training-shards", "eval",
     lambda w, t: ["--cache", str(w["cache"]), "--adapter", str(w["final"]), "--shards", "0-1", "--device", "cpu"],
     ["--shards", "0", "--allow_train_shards"]),
    ("eval-with-swapped-arguments", "eval",
     lambda w, t: ["--cache", str(w["final"]), "--adapter", str(w["cache"])], ["manifest.json"]),
    ("eval-output-inside-the-cache", "eval",
     lambda w, t: ["--cache", str(w["cache"]), "--adapter", str(w["final"]), "--output", str(w["cache"] / "eval")],
     ["--output", "--cache"]),
    ("eval-output-onto-a-file", "eval",
     lambda w, t: ["--cache", str(w["cache"]), "--adapter", str(w["final"]), "--output", str(w["w"] / "existing.json")],
     ["existing.json"]),
    ("eval-adapter-missing-its-weights", "eval",
     lambda w, t: ["--cache", str(w["cache"]), "--adapter", str(w["w"] / "adapter_missing")],
     ["adapter_missing", "adapter_model.safetensors"]),
    ("eval-adapter-with-truncated-weights", "eval",
     lambda w, t: ["--cache", str(w["cache"]), "--adapter", str(w["w"] / "adapter_trunc"), "--device", "cpu"],
     ["adapter_model.safetensors", "truncated"]),
    ("eval-adapter-with-junk-metadata", "eval",
     lambda w, t: ["--cache", str(w["cache"]), "--adapter", str(w["w"] / "adapter_junk")], ["radar_config.yaml"]),
    *[(f"eval-adapter-with-{name.replace('_', '-')}", "eval",
       lambda w, t, name=name: ["--cache", str(w["cache"]), "--adapter", str(w["w"] / f"adapter_{name}"), "--shards", "1",
                                "--device", "cpu"], [f"adapter_{name}", needle])
      for name, needle in (("vae_word", "base.vae"), ("vae_no_kind", "base.vae"), ("caches_words", "caches"),
                           ("other_rank", "does not fit adapter_config.json"),
                           ("foreign_weights", "LoRA tensors missing"))],
    ("eval-on-a-missing-cache", "eval", lambda w, t: ["--cache", "cache/tiny", "--adapter", str(w["final"])],
     ["cache/tiny"]),
    ("eval-without-adapter", "eval", lambda w, t: ["--cache", str(w["cache"])], ["adapter"]),
    ("eval-with-a-made-up-device", "eval",
     lambda w, t: ["--cache", str(w["cache"]), "--adapter", str(w["final"]), "--device", "gpu"], ["--device"]),
    ("eval-with-the-lpips-heads-but-not-the-vgg", "eval",
     lambda w, t: ["--cache", str(w["cache"]), "--adapter", str(w["final"]), "--shards", "1", "--device", "cpu",
                   "--lpips.heads", str(w["w"] / "existing.json")], ["--lpips.heads without --lpips.vgg"]),
    ("eval-on-no-shards", "eval",
     lambda w, t: ["--cache", str(w["cache"]), "--adapter", str(w["final"]), "--shards", "[]", "--device", "cpu"],
     ["--shards is empty"]),
    ("eval-on-a-shard-named-twice", "eval",
     lambda w, t: ["--cache", str(w["cache"]), "--adapter", str(w["final"]), "--shards", "1,1", "--device", "cpu"],
     ["--shards 1,1 lists a shard twice"]),
    ("eval-with-zero-batch", "eval",
     lambda w, t: ["--cache", str(w["cache"]), "--adapter", str(w["final"]), "--batch_size", "0"], ["--batch_size"]),
    # radar-generate
    ("generate-classes-out-of-range", "generate", lambda w, t: [*_generate_opts(w), "--classes", "0-12"],
     ["--classes", "10"]),
    ("generate-a-class-twice", "generate", lambda w, t: [*_generate_opts(w), "--classes", "0,3,0"],
     ["--classes", "0 more than once"]),
    ("generate-zero-batch", "generate", lambda w, t: [*_generate_opts(w), "--batch_size", "0"], ["--batch_size"]),
    ("generate-onto-a-file", "generate", lambda w, t: [*_generate_opts(w), "--output", str(w["w"] / "existing.json")],
     ["existing.json"]),
    ("generate-into-the-adapter", "generate",
     lambda w, t: [*_generate_opts(w), "--adapter", str(w["final"]), "--output", str(w["final"])], ["--adapter"]),
    ("generate-with-a-cache-as-adapter", "generate", lambda w, t: [*_generate_opts(w), "--adapter", str(w["cache"])],
     ["adapter_config.json"]),
    ("generate-with-an-unknown-preset", "generate", lambda w, t: ["--model.preset", "var-d17", "--device", "cpu"],
     ["var-d17"]),
    ("generate-with-a-truncated-vae", "generate",
     lambda w, t: [*_generate_opts(w), "--model.vae_checkpoint", str(w["w"] / "trunc.ckpt")], ["trunc.ckpt"]),
    ("generate-with-bad-seeds", "generate", lambda w, t: [*_generate_opts(w), "--seeds", "0..3"], ["--seeds"]),
    ("generate-with-no-classes", "generate", lambda w, t: [*_generate_opts(w), "--classes", "[]"],
     ["--classes is empty"]),
    ("generate-with-a-negative-seed", "generate", lambda w, t: [*_generate_opts(w), "--seeds", "[-1]"],
     ["--seeds: -1 is negative"]),
    ("generate-with-a-seed-beyond-64-bits", "generate",
     lambda w, t: [*_generate_opts(w), "--seeds", "[99999999999999999999]"], ["--seeds", "64 bits"]),
    # radar-fid
    ("fid-without-the-inception-file", "fid",
     lambda w, t: ["--inception", "inception.pt", "--model.preset", "tiny", "--num_samples", "4"], ["inception.pt"]),
    ("fid-with-zero-samples", "fid",
     lambda w, t: ["--inception", str(w["w"] / "junk.bin"), "--num_samples", "0"], ["--num_samples"]),
    ("fid-onto-a-file", "fid",
     lambda w, t: ["--inception", str(w["w"] / "junk.bin"), "--output", str(w["w"] / "existing.json")], ["existing.json"]),
    ("fid-with-a-junk-inception", "fid",
     lambda w, t: ["--inception", str(w["w"] / "junk.bin"), "--model.preset", "tiny", "--num_samples", "4"],
     ["junk.bin"]),
    ("fid-with-a-folder-as-inception", "fid",
     lambda w, t: ["--inception", str(w["w"] / "a_folder"), "--model.preset", "tiny", "--num_samples", "4"],
     ["--inception", "a_folder: is a folder"]),
    ("fid-with-an-inception-returning-nan", "fid",
     lambda w, t: ["--inception", str(w["w"] / "inception_nan.pt"), "--model.preset", "tiny", "--num_samples", "4",
                   "--batch_size", "4", "--device", "cpu"], ["inception_nan.pt", "non-finite"]),
    ("fid-with-a-nan-reference", "fid",
     lambda w, t: ["--inception", str(w["w"] / "inception_pixels.pt"), "--reference", str(w["w"] / "reference_nan.npz"),
                   "--model.preset", "tiny", "--num_samples", "4", "--device", "cpu"],
     ["reference_nan.npz", "not finite"]),
    ("show-with-a-folder-as-mask-file", "accel",
     lambda w, t: ["show", "--model.preset", "tiny", "--accel.method", "sca", "--accel.sca.mask_file",
                   str(w["w"] / "a_folder")], ["a_folder: SCA mask file is a folder"]),
    ("show-with-a-folder-as-rank-file", "accel",
     lambda w, t: ["show", "--model.preset", "tiny", "--accel.method", "stagevar", "--accel.stagevar.rank_ratios",
                   str(w["w"] / "a_folder")], ["a_folder: stagevar rank-ratio file is a folder"]),
    ("show-with-nan-rank-ratios", "accel",
     lambda w, t: ["show", "--model.preset", "tiny", "--accel.method", "stagevar", "--accel.stagevar.rank_ratios",
                   str(w["w"] / "ranks_nan.yaml")], ["ranks_nan.yaml: stagevar rank ratios for scale(s) 6"]),
    # radar-accel
    ("calibrate-onto-an-existing-file", "accel",
     lambda w, t: ["calibrate", "--model.preset", "tiny", "--num_samples", "2", "--output", str(w["w"] / "existing.json")],
     ["--output", "--overwrite"]),
    ("calibrate-onto-a-folder", "accel",
     lambda w, t: ["calibrate", "--model.preset", "tiny", "--num_samples", "2", "--output", str(w["run"])], ["--output"]),
    ("calibrate-alpha-above-one", "accel",
     lambda w, t: ["calibrate", "--model.preset", "tiny", "--alpha", "1.5"], ["--alpha"]),
    ("calibrate-negative-samples", "accel",
     lambda w, t: ["calibrate", "--model.preset", "tiny", "--num_samples", "-5"], ["--num_samples"]),
    ("accel-show-unknown-method", "accel", lambda w, t: ["show", "--accel.method", "fastvarr"], ["--accel.method"]),
    ("accel-show-junk-rank-file", "accel",
     lambda w, t: ["show", "--accel.method", "stagevar", "--accel.stagevar.rank_ratios", str(w["w"] / "junk.bin")],
     ["junk.bin"]),
    # radar-bench
    ("bench-pipeline-onto-an-existing-json", "bench",
     lambda w, t: ["pipeline", "--json", str(w["w"] / "existing.json")], ["--json", "--overwrite"]),
    ("bench-train-onto-a-folder", "bench", lambda w, t: ["train", "--json", str(w["run"])], ["--json"]),
    ("bench-cache-missing-config", "bench", lambda w, t: ["cache", "--cache_config", "tiny.yaml"], ["tiny.yaml"]),
    ("bench-unknown-command", "bench", lambda w, t: ["acel"], ["acel"]),
    ("bench-unknown-attention-kernel", "bench",
     lambda w, t: ["accel", "--setup.preset", "tiny", "--setup.attention", "flashy"], ["--setup.attention"]),
    # radar-demo
    ("demo-into-a-foreign-folder", "demo", lambda w, t: ["--output", str(w["w"] / "not_a_cache"), "--model", "tiny"],
     ["not_a_cache", "notes.txt"]),
    ("demo-onto-a-file", "demo", lambda w, t: ["--output", str(w["w"] / "existing.json"), "--model", "tiny"],
     ["existing.json"]),
    ("demo-unknown-model", "demo", lambda w, t: ["--output", "demo", "--model", "tiyn"], ["tiyn.yaml"]),
    ("demo-zero-steps", "demo", lambda w, t: ["--output", "demo", "--model", "tiny", "--train_steps", "0"],
     ["--train_steps"]),
    # radar-toy
    ("toy-train-over-earlier-weights", "toy", lambda w, t: ["train", "--output", str(w["w"] / "toy_out")],
     ["--output", "toy_vae.safetensors", "--overwrite"]),
    ("toy-train-on-a-word-for-a-device", "toy", lambda w, t: ["train", "--output", "out", "--recipe.device", "gpu"],
     ["--recipe.device", "gpu"]),
    ("toy-measure-zero-images", "toy", lambda w, t: ["measure", "--setup.images_per_class", "0"], ["images_per_class"]),
    ("toy-measure-no-grid", "toy", lambda w, t: ["measure", "--setup.grid_samples", "0"], ["--setup.grid_samples"]),
    ("toy-measure-no-held-out-images", "toy", lambda w, t: ["measure", "--setup.num_heldout_images", "-1"],
     ["--setup.num_heldout_images"]),
    ("toy-measure-onto-a-file", "toy", lambda w, t: ["measure", "--output", str(w["w"] / "existing.json")],
     ["existing.json"]),
    ("toy-combine-a-file-that-is-no-result", "toy",
     lambda w, t: ["combine", "--inputs", f"[{w['w'] / 'existing.json'}, {w['w'] / 'list.yaml'}]", "--output", "out"],
     ["existing.json", "radar-toy measure metrics.json"]),
    ("toy-combine-one-input", "toy", lambda w, t: ["combine", "--inputs", f"[{w['w'] / 'existing.json'}]"],
     ["--inputs", "at least two"]),
    ("toy-train-recon-share-above-one", "toy",
     lambda w, t: ["train", "--output", str(w["w"] / "toy_out"), "--overwrite", "--recipe.classifier.recon_share",
                   "1.5", "--recipe.num_train_images", "16", "--recipe.num_heldout_images", "4", "--recipe.vqvae.steps",
                   "1", "--recipe.var.steps", "1", "--recipe.vqvae.batch_size", "4", "--recipe.var.batch_size", "4"],
     ["--recipe.classifier.recon_share"]),
    ("toy-train-negative-threads", "toy", lambda w, t: ["train", "--output", "out", "--recipe.num_threads", "-1"],
     ["--recipe.num_threads"]),
    ("toy-train-zero-batch", "toy", lambda w, t: ["train", "--output", "out", "--recipe.vqvae.batch_size", "0"],
     ["--recipe.vqvae.batch_size"]),
    ("toy-train-image-size-the-model-cannot-take", "toy",
     lambda w, t: ["train", "--output", "out", "--recipe.world.image_size", "48"], ["--recipe.world.image_size", "64"]),
    ("toy-train-no-training-images", "toy",
     lambda w, t: ["train", "--output", "out", "--recipe.num_train_images", "0"], ["--recipe.num_train_images"]),
    ("toy-measure-a-vae-as-classifier", "toy",
     lambda w, t: ["measure", "--output", "out", "--setup.classifier",
                   str(Path(__file__).resolve().parents[1] / "radar_train" / "toyworld" / "weights" /
                       "toy_vae.safetensors")], ["--setup.classifier", "toy_vae.safetensors"]),
    ("toy-measure-seeds-past-2**63", "toy", lambda w, t: ["measure", "--setup.base_seed", str(2 ** 63 - 1)],
     ["--setup.base_seed"]),
    ("toy-measure-seed-past-2**64", "toy", lambda w, t: ["measure", "--setup.base_seed", str(2 ** 64)],
     ["--setup.base_seed"]),
    ("toy-masks-negative-seed", "toy", lambda w, t: ["masks", "--output", "out", "--setup.base_seed", "-1"],
     ["--setup.base_seed"]),
    ("toy-measure-one-fid-reference-image", "toy", lambda w, t: ["measure", "--setup.fid_reference_images", "1"],
     ["--setup.fid_reference_images"]),
    ("toy-combine-a-methods-row-that-is-a-list", "toy",
     lambda w, t: (t.joinpath("bad_methods.json").write_text(json.dumps(
         {"config": {}, "vanilla": {}, "methods": {"fastvar:aggressive": [1]}, "reconstruction": {}, "toy_fid": {}})),
         ["combine", "--inputs", f"[{t / 'bad_methods.json'}, {w['w'] / 'existing.json'}]", "--output", "out"])[1],
     ["--inputs", "bad_methods.json", "methods.fastvar:aggressive"]),
    # radar-check-reference
    ("check-reference-missing-fixture", "check_reference", lambda w, t: ["fixtures/tiny_b"], ["tiny_b"]),
    ("check-reference-impossible-model", "check_reference",
     lambda w, t: [str(w["w"] / "fixture_negative_depth")], ["fixture_negative_depth/config.json", "depth must be > 0"]),
    ("check-reference-without-cases", "check_reference",
     lambda w, t: [str(w["w"] / "fixture_no_cases")], ["fixture_no_cases/cases.json: no cases"]),
    ("check-reference-case-without-outputs", "check_reference",  # (it passed on its debug tensor alone)
     lambda w, t: [str(w["w"] / "fixture_case_without_outputs")],
     ["fixture_case_without_outputs/cases.json: case 'b': 'outputs' must be a non-empty list"]),
    ("check-reference-tolerance-a-string", "check_reference",  # (float() took it)
     lambda w, t: [str(w["w"] / "fixture_tolerance_a_string")],
     ["fixture_tolerance_a_string/cases.json: keys['a.out.img']: 'atol' must be a number >= 0, got '0.1'"]),
    # outputs named by an unset variable: refused, not defaulted or taken for the current folder
    ("accel-calibrate-into-an-empty-output", "accel",
     lambda w, t: ["calibrate", "--model.preset", "tiny", "--num_samples", "1", "--batch_size", "1", "--device",
                   "cpu", "--output", ""], ["--output is empty"]),
    ("accel-calibrate-sca-into-an-empty-output", "accel",
     lambda w, t: ["calibrate", "--accel.method", "sca", "--model.preset", "tiny", "--num_samples", "1",
                   "--batch_size", "1", "--device", "cpu", "--output", ""], ["--output is empty"]),
    ("bench-accel-into-an-empty-json", "bench",
     lambda w, t: ["accel", "--setup.preset", "tiny", "--setup.device", "cpu", "--methods", "[none]", "--json", ""],
     ["--json is empty"]),
    ("demo-into-an-empty-output", "demo", lambda w, t: ["--model", "tiny", "--output", ""], ["--output is empty"]),
    # a range typed by mistake: a MemoryError after filling the memory, or minutes of counting
    ("demo-with-seeds-of-a-huge-range", "demo",
     lambda w, t: ["--model", "tiny", "--output", "o", "--seeds", "0-9000000000000000000"],
     ["--seeds: '0-9000000000000000000' lists more than 10,000,000 values"]),
    ("generate-with-a-wide-range-of-classes", "generate",
     lambda w, t: ["--config", str(CONFIGS / "generate" / "tiny.yaml"), "--classes", "0-999999", "--seeds", "0",
                   "--output", "o", "--device", "cpu"], ["--classes 10-999999 outside [0, 9]"]),
    # radar-train: checkpoints that load but must not be trained on or exported, runs that would train nothing
    ("export-of-a-checkpoint-damaged-on-disk", "train",
     lambda w, t: ["export", "--ckpt", str(w["w"] / "flipped.ckpt"), "--output", "out"],
     ["flipped.ckpt: radar-train checkpoint is damaged: the data of its entry", "fails its CRC check"]),
    ("export-of-a-checkpoint-whose-weights-are-nan", "train",
     lambda w, t: ["export", "--ckpt", str(w["w"] / "nan.ckpt"), "--output", "out"],
     ["nan.ckpt: 1 tensor(s) hold NaN or inf values", "the checkpoint (its trained weights) is damaged"]),
    ("fit-resumed-from-a-checkpoint-damaged-on-disk", "train",
     lambda w, t: fit_args(w["cache"], t / "r", 5, "--ckpt_path", str(w["w"] / "flipped.ckpt")),
     ["flipped.ckpt: --ckpt_path checkpoint is damaged", "fails its CRC check"]),
    ("fit-of-max-steps-0", "train", lambda w, t: fit_args(w["cache"], t / "r", 0),
     ["--trainer.max_steps 0 trains nothing"]),
    ("fit-resumed-past-its-max-steps", "train",  # (it trained nothing, exit 0, and rewrote config.yaml)
     lambda w, t: fit_args(w["cache"], w["run"], 2, "--ckpt_path", "last"),
     ["last.ckpt is at step 3, past --trainer.max_steps 2", "give --trainer.max_steps 3 or more"]),
    ("fit-resumed-with-another-lora-alpha", "train",  # (it trained on, its updates scaled by 1/4)
     lambda w, t: fit_args(w["cache"], w["run"], 5, "--ckpt_path", "last", "--model.lora.alpha", "4"),
     ["last.ckpt was trained with LoRA alpha 16; this run's --model.lora.alpha is 4", "scale its trained updates "
      "by 0.25"]),
    ("fit-resumed-with-a-users-folder-at-final", "train",  # (refused by the export after training, as a failed step)
     lambda w, t: (shutil.copytree(w["run"], t / "r"), shutil.rmtree(t / "r" / "final"), (t / "r" / "final").mkdir(),
                   (t / "r" / "final" / "notes.txt").write_text("mine\n"),
                   fit_args(w["cache"], t / "r", 5, "--ckpt_path", "last"))[-1],
     ["r: its final/ is not the run's adapter folder", "never replaces: move it away, then resume"]),
    ("fit-resumed-with-a-users-folder-at-a-later-step-export", "train",  # (refused by that export, mid-run)
     lambda w, t: (shutil.copytree(w["run"], t / "r"), (t / "r" / "step-000004").mkdir(),
                   (t / "r" / "step-000004" / "notes.txt").write_text("mine\n"),
                   fit_args(w["cache"], t / "r", 5, "--ckpt_path", "last"))[-1],
     ["step-000004 is not one of the run's step exports (a folder holding other files)", "move it away, then resume"]),
    ("fit-resumed-with-another-adapter-at-a-later-step-export", "train",  # (the export replaced it, unsaid)
     lambda w, t: (shutil.copytree(w["run"], t / "r"), shutil.copytree(t / "r" / "final", t / "r" / "step-000004"),
                   fit_args(w["cache"], t / "r", 5, "--ckpt_path", "last"))[-1],
     ["step-000004 is not one of the run's step exports (an adapter of another step)"]),
    ("fit-into-a-folder-holding-a-checkpoint-of-its-own-name", "train",  # (it advised `last`, refused in turn)
     lambda w, t: ((t / "k" / "checkpoints").mkdir(parents=True),
                   shutil.copy(w["run"] / "checkpoints" / "last.ckpt", t / "k" / "checkpoints" / "keep.ckpt"),
                   fit_args(w["cache"], t / "k", 5))[-1],
     ["holds a run already (checkpoints/keep.ckpt): resume it with --ckpt_path FILE"]),
    ("merge-onto-a-file-of-another-adapter-folder", "train",  # (with --overwrite, that adapter no longer loaded)
     lambda w, t: (shutil.copytree(w["run"] / "final", t / "other"),
                   ["merge", "--adapter", str(w["run"] / "final"), "--output",
                    str(t / "other" / "adapter_model.safetensors"), "--overwrite"])[-1],
     ["other/adapter_model.safetensors is inside the adapter folder", "write the merged VQ-VAE elsewhere"]),
    ("check-reference-made-up-device", "check_reference",
     lambda w, t: [str(Path(__file__).parent / "fixtures" / "tiny_a"), "--device", "gpu0"], ["--device"]),
]


@pytest.mark.parametrize("cli,make_argv,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_changes_nothing(world, tmp_path, cli, make_argv, needles):
    assert_refused(cli, make_argv(world, tmp_path), tmp_path, (world["w"], tmp_path), needles)


SUBPROCESS_CASES = ["export-into-the-run-folder", "fit-with-a-binary-config", "eval-on-training-shards"]


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_a_console_command_prints_no_traceback(world, tmp_path, case):
    _, cli, make_argv, needles = next(c for c in CASES if c[0] == case)
    before = snapshot(world["w"], tmp_path)
    r = subprocess.run([sys.executable, "-m", f"radar_train.cli.{cli}", *make_argv(world, tmp_path)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert_one_line_error(r.stderr, *needles)
    assert_unchanged(before, snapshot(world["w"], tmp_path))


@pytest.mark.parametrize("ckpt_path", [None, "last"])
def test_a_run_folder_without_a_checkpoint_gets_no_resume_advice_that_cannot_work(world, tmp_path, ckpt_path):
    """A run with --model.output.checkpoints false holds final/ only; a config.yaml left by an attempt that never
    saved: both said "resume it with --ckpt_path ...", which repeated the refusal or found nothing to resume."""
    shutil.copytree(world["final"], tmp_path / "r" / "final")
    extra = [] if ckpt_path is None else ["--ckpt_path", ckpt_path]
    line = assert_refused("train", fit_args(world["cache"], tmp_path / "r", 5, *extra), tmp_path,
                          (world["w"], tmp_path), ["r holds a run already (final) but no checkpoint that resumes it"])
    assert line.endswith("choose a new run folder, or move final away") and "--ckpt_path" not in line, line
    (tmp_path / "k").mkdir()
    shutil.copy(CONFIGS / "train" / "tiny.yaml", tmp_path / "k" / "config.yaml")
    kept = ["fit", "--config", "k/config.yaml", *fit_args(world["cache"], tmp_path / "k", 5)[1:]]
    line = assert_refused("train", kept + extra, tmp_path, (world["w"], tmp_path),
                          ["would overwrite the input --config k/config.yaml"])
    assert line.endswith("keep the config outside the run folder"), line
    shutil.copytree(world["run"] / "checkpoints", tmp_path / "k" / "checkpoints")  # (a run to resume: it says how)
    if ckpt_path is None:
        line = assert_refused("train", kept, tmp_path, (world["w"], tmp_path),
                              ["would overwrite the input --config k/config.yaml"])
        assert line.endswith("keep the config outside the run folder, or resume the run there with --ckpt_path last")


# ------------------------------------------------------------------------------------------------ the rules
def test_last_ckpt_holds_the_final_step_when_max_steps_is_not_a_multiple_of_the_interval(world):
    """3 steps, a checkpoint every 2: last.ckpt and the kept step checkpoint are those of step 3, the state
    final/ was exported from."""
    from safetensors.torch import load_file

    ckpts = sorted(p.name for p in (world["run"] / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt", "step-000003.ckpt"]
    state = torch.load(world["ckpt"], map_location="cpu", weights_only=True)
    assert state["global_step"] == 3 and state["radar"]["global_step"] == 3
    final = load_file(world["final"] / "adapter_model.safetensors")
    lora = {k: v for k, v in state["state_dict"].items() if ".lora_" in k}
    assert len(final) == len(lora) > 0
    assert sorted(v.sum().item() for v in final.values()) == pytest.approx(sorted(v.sum().item() for v in lora.values()))


def test_an_export_gets_the_normal_file_mode_and_replaces_only_with_overwrite(world, tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    out = tmp_path / "adapter"
    assert call_cli("train", ["export", "--ckpt", str(world["ckpt"]), "--output", str(out)], tmp_path)[0] == 0
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == dict.fromkeys(["adapter_config.json", "adapter_model.safetensors", "radar_config.yaml"],
                                  0o666 & ~umask)
    first = snapshot(out)
    assert call_cli("train", ["export", "--ckpt", str(world["ckpt"]), "--output", str(out)], tmp_path)[0] == 2
    assert snapshot(out) == first
    assert call_cli("train", ["export", "--ckpt", str(world["ckpt"]), "--output", str(out), "--overwrite"], tmp_path)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary or old folder left
    (tmp_path / "here").mkdir()  # an export into the (empty) working folder, named "."
    assert call_cli("train", ["export", "--ckpt", str(world["ckpt"]), "--output", "."], tmp_path / "here")[0] == 0
    assert snapshot(tmp_path / "here").keys() == {str(tmp_path / "here" / p.name) for p in out.iterdir()}


def test_eval_on_training_shards_with_the_override_warns_and_records_them(world, tmp_path):
    argv = ["--cache", str(world["cache"]), "--adapter", str(world["final"]), "--shards", "0-1", "--device", "cpu",
            "--allow_train_shards", "--output", "ev"]
    with pytest.warns(UserWarning, match="training shards") as warned:
        code, _ = call_cli("eval", argv, tmp_path)
    assert code == 0
    # raised on the command's line, so it prints as `warning: <message>`: on torch.no_grad's wrapper's line it
    # kept Python's two-line form with a torch file's name
    from radar_train.cli.common import _PACKAGE_DIR

    assert [w.filename.startswith(_PACKAGE_DIR) for w in warned if "training shards" in str(w.message)] == [True]
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["train_shard_overlap"] == [0] and report["held_out"] is False and report["shards"] == [0, 1]
    assert "NOT held-out" in (tmp_path / "ev" / "eval.md").read_text()
    held = ["--cache", str(world["cache"]), "--adapter", str(world["final"]), "--device", "cpu", "--output", "ev2"]
    assert call_cli("eval", held, tmp_path)[0] == 0
    report = json.loads((tmp_path / "ev2" / "eval.json").read_text())
    assert report["shards"] == [1] and report["held_out"] is True and report["train_shard_overlap"] == []


@pytest.mark.parametrize("method", ["stagevar", "sca"])
@pytest.mark.parametrize("engine", ["graphs", "compiled"])
def test_calibrate_refuses_a_capturing_engine_before_loading_a_model(method, engine, tmp_path, monkeypatch):
    import radar_train.models as models

    def loads(*a, **k):
        raise AssertionError("the model was loaded before the engine was checked")

    monkeypatch.setattr(models, "load_models", loads)
    before = snapshot(tmp_path)
    code, err = call_cli("accel", ["calibrate", "--model.preset", "tiny", "--accel.method", method, "--num_samples", "1",
                                   "--sampling.engine", engine, "--output", "out.file"], tmp_path)
    assert code == 2
    assert_one_line_error(err, f"--sampling.engine {engine}", "eager or auto")
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert_unchanged(before, snapshot(tmp_path))


def test_calibrate_checks_its_output_before_measuring_and_leaves_no_temporary_file(world, tmp_path, monkeypatch):
    import radar_train.accel.calibrate as calibrate
    import radar_train.models as models

    def must_not_load(*a, **k):
        raise AssertionError("models loaded before the output was checked")

    (tmp_path / "ranks.yaml").write_text("mine\n")
    with monkeypatch.context() as m:
        m.setattr(models, "load_models", must_not_load)
        code, err = call_cli("accel", ["calibrate", "--model.preset", "tiny", "--output", "ranks.yaml"], tmp_path)
    assert code == 2 and "--overwrite" in err and (tmp_path / "ranks.yaml").read_text() == "mine\n"

    def fails(*a, **k):
        raise ValueError("measurement failed")

    monkeypatch.setattr(calibrate, "calibrate_ranks", fails)
    code, err = call_cli("accel", ["calibrate", "--model.preset", "tiny", "--num_samples", "2", "--device", "cpu",
                                "--output", "ranks.yaml", "--overwrite"], tmp_path)
    assert code == 2 and "measurement failed" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranks.yaml"] and (tmp_path / "ranks.yaml").read_text() == "mine\n"


def test_a_new_fit_into_a_run_that_never_checkpointed_is_allowed_but_a_run_is_resumed_not_restarted(world, tmp_path):
    """A folder holding only config.yaml and tb/ (an attempt stopped before its first checkpoint) is reused;
    a run with checkpoints accepts --ckpt_path last (its own folder) and refuses a fresh start."""
    from radar_train.cli.train import check_run_folder
    from radar_train.outputs import OutputError

    early = tmp_path / "early"
    (early / "tb").mkdir(parents=True)
    (early / "config.yaml").write_text("trainer: {}\n")
    check_run_folder(early, None, "fit", {})
    check_run_folder(world["run"], "last", "fit", {})
    check_run_folder(world["run"], str(world["ckpt"]), "fit", {})
    with pytest.raises(OutputError, match="holds a run already"):
        check_run_folder(world["run"], str(world["w"] / "trunc.ckpt"), "fit", {})
    with pytest.raises(OutputError, match="not a run folder .*notes.txt"):
        check_run_folder(world["w"] / "not_a_cache", None, "fit", {})
    check_run_folder(world["run"], None, "validate", {})  # validate adds tb/ events, replaces nothing


@pytest.mark.parametrize("entry", ["tb", "checkpoints", "final", "step-000002"])
def test_a_fit_into_a_run_whose_folder_it_writes_into_is_read_only_is_refused_before_it_trains(world, tmp_path,
                                                                                              monkeypatch, entry):
    """A resume into a run whose checkpoints/ (or tb/, final/, a step export) may not be written trained on, and
    failed at its first save (or with a traceback from TensorBoard's writer thread, or at the export at its end).
    (The tests run as root, which writes into a read-only folder: the permission is denied through os.access.)"""
    run = shutil.copytree(world["run"], tmp_path / "r")
    (run / "step-000002").mkdir(exist_ok=True)
    denied = run / entry
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k:
                        (not mode & os.W_OK) and real(path, mode, *a, **k) if Path(path) == denied else
                        real(path, mode, *a, **k))
    assert_refused("train", fit_args(world["cache"], run, 5, "--ckpt_path", "last"), tmp_path, (tmp_path,),
                   [f"--trainer.default_root_dir {run}: cannot write into its {entry}/ (permission denied)"])
    if entry in ("tb", "checkpoints"):  # (an early leftover of a new fit, reused)
        early = tmp_path / "early"
        denied = early / entry
        (early / entry).mkdir(parents=True)
        assert_refused("train", fit_args(world["cache"], early, 5), tmp_path, (tmp_path,),
                       [f"{early}: cannot write into its {entry}/ (permission denied)"])


def test_cli_output_drops_library_deprecation_noise_and_keeps_warnings_a_user_can_act_on():
    import warnings

    from radar_train.cli.common import quiet_library_warnings

    def warn(message, category, module):
        warnings.warn_explicit(message, category, f"{module.replace('.', '/')}.py", 1, module=module)

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        quiet_library_warnings()
        warn("skip_none was deprecated", DeprecationWarning, "jsonargparse._core")
        warn("isinstance(treespec, LeafSpec) is deprecated", FutureWarning, "lightning.pytorch.utilities._pytree")
        warn("Checkpoint directory /r/checkpoints exists and is not empty.", UserWarning, "lightning.pytorch.callbacks")
        warn("It is recommended to use `self.log('val/psnr_student', ..., sync_dist=True)` when logging on epoch level "
             "in distributed setting to accumulate the metric across devices.", UserWarning,
             "lightning.pytorch.trainer.connectors.logger_connector.result")
        warn("It is recommended to use `self.log('train/loss', ..., sync_dist=True)` when logging on epoch level "
             "in distributed setting to accumulate the metric across devices.", UserWarning,
             "lightning.pytorch.trainer.connectors.logger_connector.result")
        warn("The number of training batches (8) is smaller than the logging interval", UserWarning,
             "lightning.pytorch.loops.fit_loop")
        warn('.fit(ckpt_path="last") is set, but there is no last checkpoint available. No checkpoint will be '
             'loaded. HINT: Set `ModelCheckpoint(..., save_last=True)`.', UserWarning,
             "lightning.pytorch.trainer.connectors.checkpoint_connector")
        warn("adapter was trained for fastvar, not stagevar", UserWarning, "radar_train.inference.pipeline")
        warn("our own old option", DeprecationWarning, "radar_train.config")
    assert [str(w.message) for w in shown] == [
        "It is recommended to use `self.log('train/loss', ..., sync_dist=True)` when logging on epoch level in "
        "distributed setting to accumulate the metric across devices.",
        "The number of training batches (8) is smaller than the logging interval",
        "adapter was trained for fastvar, not stagevar", "our own old option"]


def test_our_own_warnings_print_as_one_line_and_others_keep_pythons_format(monkeypatch):
    """Ours was "/…/radar_train/inference/pipeline.py:206: UserWarning: adapter … was trained on latents of another
    acceleration …" and then the source line that warned ("  self.load_adapter(adapter, merge=…)"). Others' go to the
    formatter that was there (Python's, or Lightning's, which formats its own warnings and hands on the rest)."""
    import warnings

    import radar_train
    from radar_train.cli.common import plain_own_warnings

    before = warnings.formatwarning  # (Python's, or Lightning's once it is imported: it formats its own warnings)
    monkeypatch.setattr(warnings, "formatwarning", before)
    plain_own_warnings()
    plain_own_warnings()  # (twice, as a second command in one process: not wrapped twice)
    ours = str(Path(radar_train.__file__).parent / "inference" / "pipeline.py")
    assert warnings.formatwarning("adapter a was trained for fastvar", UserWarning, ours, 206,
                                  "self.load_adapter(adapter)") == "warning: adapter a was trained for fastvar\n"
    for theirs in ("/site-packages/lightning/pytorch/loops/fit_loop.py", "/site-packages/torch/nn/modules/conv.py"):
        args = ("The number of training batches (8) is smaller", UserWarning, theirs, 3, "warn(...)")
        assert warnings.formatwarning(*args) == before(*args) and warnings.formatwarning(*args).startswith(theirs)


def test_cache_status_of_a_shard_without_an_array_reports_it_and_leaves_it_out_of_the_statistics(world, tmp_path,
                                                                                                 capsys):
    """status is a report, not a check: a complete shard lacking an array (a partial copy) is named with its
    problem, and the latent statistics are those of the other shards (verify fails on it)."""
    before = snapshot(world["w"])
    code, err = call_cli("cache", ["status", str(world["w"] / "cache_no_lq")], tmp_path)
    out = capsys.readouterr().out
    assert code == 0 and "Traceback" not in err, err
    line = next(line for line in out.splitlines() if line.startswith("left out of the latent statistics: shard 0: "))
    assert "shard-00000.zarr" in line and "fhat_lq" in line
    assert "latents over 1 shards" in out
    assert_unchanged(before, snapshot(world["w"]))
