"""Bad radar-bench / radar-toy options: one `error:` line naming the option (exit 2), before any work, nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_checks import assert_one_line_error, call_cli, snapshot

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_a" / "config.json"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ACCEL = ["accel", "--setup.preset", "tiny", "--setup.batch_size", "1", "--setup.device", "cpu", "--methods", "[none]",
         "--pairs", "false"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def _patch_nums_config(t: Path) -> Path:
    d = json.loads(FIXTURE.read_text())
    d["VAR_kwargs"]["patch_nums"] = [1, 2, 4]
    (t / "pn.json").write_text(json.dumps(d))
    return t / "pn.json"


def _cache(t: Path, shards: list[int], num_shards: int = 2) -> Path:
    """A synthetic cache of `num_shards` shards of 4 pairs, only `shards` of them written."""
    from radar_train.cache.synthetic import synthetic_manifest, write_synthetic_cache

    m = synthetic_manifest(4 * num_shards, 4, (4, 2, 2), (1, 2), chunk_size=4, num_classes=10)
    return write_synthetic_cache(t / "cache", m, shards=shards)


def _folder(t: Path, name: str) -> Path:
    (t / name).mkdir()
    return t / name


# (id, cli, argv(tmp, official checkout), needles of the error line)
CASES = [
    ("accel-json-under-a-file", "bench", lambda t, off: [*ACCEL, "--json", str(t / "afile" / "x.json")], ["--json", "afile"]),
    ("accel-json-is-the-official-config", "bench",
     lambda t, off: [*ACCEL, "--official_var", str(off), "--official_config", str(t / "cfg.json"), "--json", str(t / "cfg.json"),
                "--overwrite"], ["--json", "--official_config"]),
    ("accel-json-is-a-mask-file", "bench",
     lambda t, off: [*ACCEL[:-4], "--methods", f"[sca:default+mask_file={t / 'm.safetensors'}]", "--json",
                str(t / "m.safetensors"), "--overwrite"], ["--json", "mask_file"]),
    ("accel-bogus-engine", "bench", lambda t, off: [*ACCEL, "--engines", "[eager, bogus]", "--json", str(t / "e.json")],
     ["--engines", "bogus"]),
    ("accel-fp64", "bench", lambda t, off: [*ACCEL, "--setup.dtype", "fp64"], ["--setup.dtype", "bf16"]),
    ("accel-sampling-engine-instead-of-engines", "bench",  # (it had no effect: only eager was timed)
     lambda t, off: [*ACCEL, "--sampling.engine", "compiled"], ["--sampling.engine compiled", "--engines [compiled]"]),
    ("accel-zero-batch", "bench", lambda t, off: [*ACCEL, "--setup.batch_size", "0"], ["--setup.batch_size"]),
    ("accel-zero-repeats", "bench", lambda t, off: [*ACCEL, "--setup.repeats", "0", "--json", str(t / "r.json")],
     ["--setup.repeats"]),
    ("accel-negative-warmup", "bench", lambda t, off: [*ACCEL, "--setup.warmup", "-1"], ["--setup.warmup"]),
    ("accel-official-config-with-other-patch-nums", "bench",
     lambda t, off: [*ACCEL, "--official_var", str(off), "--official_config",
                str(_patch_nums_config(t))], ["--official_config", "patch_nums"]),
    # each below was refused only after work had begun (models built, runs timed), or not at all
    ("pipeline-prune-at-a-scale-the-model-lacks", "bench",
     lambda t, off: ["pipeline", "--setup.device", "cpu", "--setup.batch_size", "1", "--methods",
                     '[none, "fastvar:prune=7:0.5"]'], ["--methods[1] fastvar:prune=7:0.5", "scale 7"]),
    ("accel-top-p-past-one", "bench", lambda t, off: [*ACCEL, "--sampling.top_p", "2"], ["--sampling.top_p"]),
    ("pipeline-negative-top-k", "bench",
     lambda t, off: ["pipeline", "--setup.device", "cpu", "--sampling.top_k", "-3"], ["--sampling.top_k"]),
    ("accel-negative-seed", "bench", lambda t, off: [*ACCEL, "--setup.seed", "-5"], ["--setup.seed", "-5"]),
    ("accel-seed-past-int64", "bench", lambda t, off: [*ACCEL, "--setup.seed", str(2 ** 64)], ["--setup.seed"]),
    ("accel-last-seed-past-int64", "bench",
     lambda t, off: [*ACCEL, "--setup.seed", str(2 ** 63 - 1)], ["--setup.seed", "2**63 - 2"]),
    ("train-negative-seed", "bench", lambda t, off: ["train", "--args.seed", "-1", "--args.memory", "false"],
     ["--args.seed"]),
    ("accel-official-config-is-a-folder", "bench",
     lambda t, off: [*ACCEL, "--official_var", str(off), "--official_config", str(_folder(t, "adir"))],
     ["--official_config file is a folder, expected a file"]),
    ("accel-setup-file-missing", "bench", lambda t, off: ["accel", "--setup", "nope.yaml"],
     ["nope.yaml: --setup file not found"]),
    ("cache-unknown-override", "bench",
     lambda t, off: ["cache", "--cache_config", str(CONFIGS / "cache" / "tiny.yaml"),
                     "--parts", "[generation]", "--overrides", '["--bogus", "1"]'],
     ["--overrides", "unrecognized arguments: --bogus 1", "radar-cache run --help"]),
    ("calibrate-sca-alpha", "accel",
     lambda t, off: ["calibrate", "--model.preset", "tiny", "--accel.method", "sca", "--alpha", "0.5", "--output",
                     str(t / "x.safetensors")], ["--alpha 0.5", "does not use it"]),
    ("calibrate-sca-alpha-past-one", "accel",
     lambda t, off: ["calibrate", "--model.preset", "tiny", "--accel.method", "sca", "--alpha", "7", "--output",
                     str(t / "x.safetensors")], ["--alpha must be in (0, 1]"]),
    ("pipeline-fp64", "bench", lambda t, off: ["pipeline", "--setup.device", "cpu", "--setup.dtype", "fp64"],
     ["--setup.dtype"]),
    ("pipeline-json-is-a-mask-file", "bench",
     lambda t, off: ["pipeline", "--setup.device", "cpu", "--setup.batch_size", "1", "--methods",
                f"[sca:default+mask_file={t / 'm.safetensors'}]", "--json", str(t / "m.safetensors"), "--overwrite"],
     ["--json", "--methods[0].sca.mask_file"]),
    ("pipeline-zero-batch", "bench", lambda t, off: ["pipeline", "--setup.device", "cpu", "--setup.batch_size", "0"],
     ["--setup.batch_size"]),
    ("tradeoff-fp64", "bench", lambda t, off: ["tradeoff", "--setup.timing.dtype", "fp64", "--output", str(t / "o")],
     ["--setup.timing.dtype"]),
    ("tradeoff-negative-threads", "bench", lambda t, off: ["tradeoff", "--setup.num_threads", "-1", "--output", str(t / "o")],
     ["--setup.num_threads"]),
    ("tradeoff-one-fid-reference", "bench",
     lambda t, off: ["tradeoff", "--setup.fid_reference_images", "1", "--output", str(t / "o")],
     ["--setup.fid_reference_images"]),
    ("tradeoff-adapters-of-a-setting-not-measured", "bench",  # (it named "methods", the option of radar-toy measure)
     lambda t, off: ["tradeoff", "--setup.settings", "[fastvar:aggressive]", "--setup.adapters",
                     '{"stagevar:paper": "a"}', "--output", str(t / "o")],
     ["--setup.adapters: adapters given for ['stagevar:paper'], which are not in --setup.settings "
      "['fastvar:aggressive']"]),
    ("tradeoff-negative-base-seed", "bench",
     lambda t, off: ["tradeoff", "--setup.base_seed", "-1", "--output", str(t / "o")], ["--setup.base_seed"]),
    ("tradeoff-base-seed-past-int64", "bench",
     lambda t, off: ["tradeoff", "--setup.num_samples", "2", "--setup.timing.batch_size", "1", "--setup.base_seed",
                str(2 ** 63 - 1), "--output", str(t / "o")], ["--setup.base_seed", "2**63"]),
    ("train-json-is-the-vae-checkpoint", "bench",
     lambda t, off: ["train", "--args.memory", "false", "--args.vae_checkpoint", str(t / "m.safetensors"), "--json",
                str(t / "m.safetensors"), "--overwrite"], ["--json", "--args.vae_checkpoint"]),
    ("train-one-shard-of-cache-pairs", "bench",
     lambda t, off: ["train", "--args.memory", "false", "--args.cache_pairs", "16"], ["--args.cache_pairs", "17"]),
    ("train-cache-is-a-file", "bench",
     lambda t, off: ["train", "--args.memory", "false", "--args.cache", str(t / "afile")], ["--args.cache", "afile"]),
    ("train-cache-without-manifest", "bench",
     lambda t, off: ["train", "--args.memory", "false", "--args.cache", str(_folder(t, "empty"))],
     ["--args.cache", "manifest"]),
    ("train-cache-of-one-shard", "bench",
     lambda t, off: ["train", "--args.memory", "false", "--args.cache", str(_cache(t, [0], num_shards=1))],
     ["--args.cache", "two complete shards"]),
    ("train-cache-without-its-last-shard", "bench",
     lambda t, off: ["train", "--args.memory", "false", "--args.cache", str(_cache(t, [0], num_shards=2))],
     ["--args.cache", "shard 1 not"]),
    ("train-zero-steps", "bench", lambda t, off: ["train", "--args.steps", "0", "--args.memory", "false"], ["--args.steps"]),
    ("train-bogus-precision", "bench", lambda t, off: ["train", "--args.precision", "bogus", "--args.memory", "false"],
     ["--args.precision"]),
    ("train-float16-mixed-on-the-cpu", "bench",  # (Lightning swaps it for bf16-mixed: the rows would differ)
     lambda t, off: ["train", "--args.precision", "16-mixed", "--args.device", "cpu", "--args.memory", "false"],
     ["--args.precision 16-mixed on the CPU", "use bf16-mixed"]),
    ("toy-measure-zero-threads", "toy", lambda t, off: ["measure", "--setup.num_threads", "0"], ["--setup.num_threads"]),
    ("toy-masks-zero-threads", "toy",
     lambda t, off: ["masks", "--setup.num_threads", "0", "--setup.families", "[pts]", "--setup.budgets", "[1]"],
     ["--setup.num_threads"]),
    pytest.param("accel-cuda", "bench", lambda t, off: [*ACCEL, "--setup.device", "cuda"], ["--setup.device"],
                 marks=NO_CUDA, id="accel-cuda"),
    pytest.param("tradeoff-cuda", "bench", lambda t, off: ["tradeoff", "--setup.timing.device", "cuda"],
                 ["--setup.timing.device"], marks=NO_CUDA, id="tradeoff-cuda"),
    pytest.param("train-cuda", "bench", lambda t, off: ["train", "--args.device", "cuda", "--args.memory", "false"],
                 ["--args.device"], marks=NO_CUDA, id="train-cuda"),
]


def _params():
    for c in CASES:
        yield c if type(c) is not tuple else pytest.param(*c, id=c[0])


@pytest.mark.parametrize("name,cli,make_argv,needles", list(_params()))
def test_bad_option_is_one_error_line_before_any_work(name, cli, make_argv, needles, tmp_path, fake_official):
    (tmp_path / "afile").write_text("{}\n")
    (tmp_path / "cfg.json").write_text(FIXTURE.read_text())
    (tmp_path / "m.safetensors").write_bytes(b"mask")
    argv = make_argv(tmp_path, fake_official)
    before = snapshot(tmp_path)
    code, err = call_cli(cli, argv, tmp_path)
    assert code == 2, err
    assert_one_line_error(err, *needles)
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("argv,needle", [(["nosuch"], "unknown model preset 'nosuch'"),
                                         (["tiny", "abc"], "batch 'abc': not a whole number"),
                                         (["tiny", "0"], "batch must be >= 1"),
                                         (["tiny", "1", "fastvar:bogus"], "method fastvar:bogus: ")])
def test_the_profile_script_names_a_bad_argument_in_one_line(argv, needle, capsys):
    from radar_train.bench.profile import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert_one_line_error(capsys.readouterr().err, needle)


def test_accel_and_pipeline_take_a_budget_spec_and_say_their_progress_on_stderr(tmp_path, capsys, monkeypatch):
    """`fastvar:budget=0.5`, which --help lists, was refused by both ('parse it with the model's patch_nums'); their
    progress lines went to stdout among the tables, and RADAR_PROGRESS=off left them there."""
    argv = ["--setup.preset", "tiny", "--setup.batch_size", "1", "--setup.device", "cpu", "--setup.warmup", "0",
            "--setup.repeats", "1", "--methods", "[none, fastvar:budget=0.5]", "--sampling.top_k", "64"]
    code, err = call_cli("bench", ["accel", *argv, "--pairs", "false", "--json", "a.json"], tmp_path)
    out = capsys.readouterr().out
    assert code == 0, err
    assert {r["method"] for r in json.loads((tmp_path / "a.json").read_text())["rows"]} >= {"fastvar:budget=0.5"}
    assert "round 1/1 (timed)" in err and "accel benchmark:" in err and "round 1/1" not in out
    monkeypatch.setenv("RADAR_PROGRESS", "off")
    code, err = call_cli("bench", ["pipeline", *argv], tmp_path)
    out = capsys.readouterr().out
    assert code == 0 and err == "", err
    assert "fastvar:budget=0.5" in out and "runs 1/" not in out


def test_running_out_of_memory_is_one_line_naming_the_batch_size_given(tmp_path, capsys):
    """A batch of 10**11 was a 30-line traceback ending in the CPU allocator's RuntimeError."""
    code, err = call_cli("bench", [*ACCEL, "--setup.batch_size", str(10 ** 11), "--setup.warmup", "0",
                                   "--setup.repeats", "1", "--json", "x.json"], tmp_path)
    assert code == 1, err
    assert_one_line_error(err, "radar-bench: out of memory (an allocation of ", "GiB failed on the CPU)",
                          "lower --setup.batch_size")
    assert not (tmp_path / "x.json").exists()


def test_the_out_of_memory_line_of_cuda_and_of_other_errors():
    from radar_train.cli.common import out_of_memory

    cuda = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
                                  "79.1 GiB of which 3.2 GiB is free. Including non-PyTorch memory, ...")
    assert out_of_memory(cuda) == "out of memory (CUDA out of memory. Tried to allocate 20.00 GiB)"
    assert out_of_memory(MemoryError()) == "out of memory"
    assert out_of_memory(RuntimeError("shape mismatch")) is None


def test_the_bench_dtype_takes_every_spelling_the_pipeline_takes():
    """--setup.dtype refused bfloat16 and float32, which radar-generate's --precision and radar-cache take."""
    import torch

    from radar_train.bench.accel import resolve_device

    got = {d: resolve_device("cpu", d)[1] for d in ("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16")}
    assert got == {"auto": None, "fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                   "fp16": torch.float16, "float16": torch.float16}
