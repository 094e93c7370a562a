"""Option values a command must refuse up front, in the shape of tests/test_bad_input.py: each case exits
with a non-zero status and one `error:` line (the last line of stderr) naming the option at fault, no
traceback, and leaves every file as it was with nothing new written. Before these checks, the Trainer values
were tracebacks (two of them after the run folder was written), radar-demo ran the cache, training and export
before radar-generate refused its --classes, radar-bench cache measured nothing (or failed naming a temporary
file), and an init_seed past 64 bits was torch's 'Overflow when unpacking long long'.

One tiny cache is built once for the module (so that a fit given a bad value would otherwise start); each
case runs in its own empty working folder.
"""
from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
from cli_checks import assert_refused, build_small_cache, call_cli

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAST_64_BITS = str(2 ** 64 + 5)


@pytest.fixture(scope="module")
def world(tmp_path_factory, build_cache) -> dict[str, Path]:
    w = tmp_path_factory.mktemp("world")
    cache = build_small_cache(build_cache, w / "cache")
    # a configs folder whose model has cache and train configs but no generate config (the demo's last steps)
    for stage in ("cache", "train"):
        (w / "configs_no_generate" / stage).mkdir(parents=True)
        shutil.copy(CONFIGS / stage / "tiny.yaml", w / "configs_no_generate" / stage / "tiny.yaml")
    return {"w": w, "cache": cache}


def fit_args(w: dict, t: Path, *extra: str) -> list[str]:
    caches = json.dumps([{"path": str(w["cache"]), "train_shards": "0", "val_shards": "1"}])
    return ["fit", "--config", str(CONFIGS / "train" / "tiny.yaml"), "--data.caches", caches,
            "--trainer.default_root_dir", str(t / "run"), "--trainer.max_steps", "2", "--trainer.val_check_interval",
            "2", "--trainer.enable_progress_bar", "false", "--model.monitor.images_every_n_steps", "0",
            "--model.monitor.train_metrics_every_n_steps", "0", "--data.batch_size", "4", "--data.val_batch_size", "16",
            *extra]


def demo_args(*extra: str) -> list[str]:
    return ["--output", "demo", "--model", "tiny", "--train_steps", "1", *extra]


def bench_cache_args(*extra: str) -> list[str]:
    # the reader part only (no --cache_config needed), small, with a --json that must not be written
    return ["cache", "--parts", "[reader]", "--num_pairs", "128", "--workers", "[0]", "--json", "rows.json", *extra]


def _generate_opts() -> list[str]:
    return ["--config", str(CONFIGS / "generate" / "tiny.yaml"), "--device", "cpu", "--output", "gen"]


# (id, cli, argv(world, cwd), needles that the error line must hold)
CASES = [
    # radar-train fit: Trainer settings radar-train's machinery cannot follow (an OverflowError after config.yaml and
    # tb/; a traceback at the first step; a message blaming a callback the user never gave; LearningRateMonitor's
    # refusal after config.yaml)
    ("fit-without-any-length", "train",
     lambda w, t: fit_args(w, t, "--trainer.max_steps", "-1", "--trainer.max_epochs", "-1", "--trainer.max_time",
                           "00:00:01:00"),
     ["--trainer.max_steps -1 with --trainer.max_epochs -1 (its default beside --trainer.max_time) gives the run "
      "no length", "--model.optim.schedule_steps"]),
    ("fit-with-only-a-time-budget", "train",  # (max_epochs unset: Lightning's -1 beside a max_time)
     lambda w, t: fit_args(w, t, "--trainer.max_steps", "-1", "--trainer.max_time", "00:00:01:00"),
     ["--trainer.max_steps -1 with --trainer.max_epochs -1 (its default beside --trainer.max_time) gives the run "
      "no length", "--model.optim.schedule_steps"]),
    ("fit-overfitting-batches", "train", lambda w, t: fit_args(w, t, "--trainer.overfit_batches", "2"),
     ["--trainer.overfit_batches 2: not supported"]),
    ("fit-fast-dev-run-resuming", "train",
     lambda w, t: fit_args(w, t, "--trainer.fast_dev_run", "true", "--ckpt_path", "last"),
     ["--trainer.fast_dev_run with --ckpt_path last: a smoke test of one batch resumes nothing"]),
    ("fit-without-lightning-checkpointing", "train",
     lambda w, t: fit_args(w, t, "--trainer.enable_checkpointing", "false"),
     ["--trainer.enable_checkpointing false: the run's checkpoints are radar-train's own",
      "give --model.output.checkpoints false to save none"]),
    ("fit-lr-monitor-without-a-logger", "train",
     lambda w, t: fit_args(w, t, "--trainer.logger", "false", "--trainer.callbacks+=LearningRateMonitor"),
     ["--trainer.callbacks LearningRateMonitor needs a logger, and --trainer.logger is false"]),
    ("fit-one-lr-monitor-without-a-logger", "train",  # (one callback, not a list)
     lambda w, t: fit_args(w, t, "--trainer.logger", "false", "--trainer.callbacks", json.dumps(
         {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"})),
     ["--trainer.callbacks LearningRateMonitor needs a logger, and --trainer.logger is false"]),
    # radar-train fit: Trainer values
    ("fit-accumulating-zero-batches", "train", lambda w, t: fit_args(w, t, "--trainer.accumulate_grad_batches", "0"),
     ["--trainer.accumulate_grad_batches", ">= 1"]),
    ("fit-validating-every-zero-steps", "train", lambda w, t: fit_args(w, t, "--trainer.val_check_interval", "0"),
     ["--trainer.val_check_interval"]),
    ("fit-validating-every-1.5-epochs", "train", lambda w, t: fit_args(w, t, "--trainer.val_check_interval", "1.5"),
     ["--trainer.val_check_interval", "(0, 1]"]),
    ("fit-max-steps-below-minus-one", "train", lambda w, t: fit_args(w, t, "--trainer.max_steps", "-5"),
     ["--trainer.max_steps", "-1"]),
    ("fit-on-an-accelerator-not-here", "train", lambda w, t: fit_args(w, t, "--trainer.accelerator", "mps"),
     ["--trainer.accelerator"]),
    ("fit-on-zero-devices", "train", lambda w, t: fit_args(w, t, "--trainer.devices", "0"), ["--trainer.devices"]),
    # (found by an adversarial pass: Lightning's TypeError and ValueError were a traceback / named no option)
    ("fit-on-a-list-of-devices-on-the-cpu", "train",
     lambda w, t: fit_args(w, t, "--trainer.accelerator", "cpu", "--trainer.devices", "[0, 1]"),
     ["--trainer.devices: `devices` selected with `CPUAccelerator` should be an int > 0"]),
    ("fit-on-an-accelerator-with-an-index", "train", lambda w, t: fit_args(w, t, "--trainer.accelerator", "cpu:1"),
     ["--trainer.accelerator: You selected an invalid accelerator name"]),
    ("fit-into-an-empty-run-folder-name", "train", lambda w, t: fit_args(w, t, "--trainer.default_root_dir", ""),
     ["--trainer.default_root_dir is empty: name the run folder (. for the current folder)"]),
    # YAML reads `~` (a home no shell expanded: `=~`), null and `#...` as null: the fit ran in the current folder
    *[(f"fit-into-a-run-folder-yaml-reads-as-null-{v}", "train",
       lambda w, t, v=v: fit_args(w, t, f"--trainer.default_root_dir={v}"),
       ["--trainer.default_root_dir is not set (~, null, an empty value and a text starting with # read as YAML null)"])
      for v in ("~", "null", "#run")],
    # bytes of a Latin-1 terminal (surrogates): TensorBoard's writer failed after the checks, leaving tb/ there
    ("fit-into-a-run-folder-that-is-not-utf-8", "train",
     lambda w, t: fit_args(w, t, "--trainer.default_root_dir", str(t / "caf\udce9")),
     ["caf\\udce9' is not a UTF-8 path", "name the run folder in UTF-8"]),
    ("cache-into-an-output-yaml-reads-as-null", "cache",
     lambda w, t: ["run", "--config", str(CONFIGS / "cache" / "tiny.yaml"), "--device", "cpu", "--output=~"],
     ["output is not set", "~, null, an empty value and a text starting with # read as YAML null"]),
    ("generate-with-a-dash-c-it-does-not-take", "generate", lambda w, t: ["-c", "nonexist.yaml", "--output", "g"],
     ["unrecognized arguments: -c nonexist.yaml"]),  # (it said "config file not found (-c)": only fit's -c is one)
    # (an adversarial pass: quoted as `--overwrite=true`, which the user had not typed)
    ("export-wds-with-a-bare-flag-it-does-not-take", "cache", lambda w, t: ["export-wds", "c", "--output", "x",
                                                                           "--overwrite"],
     ["unrecognized arguments: --overwrite (`radar-cache export-wds --help`"]),
    ("fid-with-zero-workers", "fid", lambda w, t: ["--save_npz", "true", "--num_workers", "0", "--output", "f"],
     ["--num_workers must be >= 1, got 0"]),
    ("fid-with-a-worker-count-but-no-index", "fid", lambda w, t: ["--save_npz", "true", "--num_workers", "4",
                                                                  "--output", "f"],
     ["give both --num_workers and --worker_index"]),
    # checked by Lightning only inside the fit, after config.yaml and tb/ (a run that trains nothing: exit 0)
    ("fit-validating-past-the-epoch", "train",
     lambda w, t: fit_args(w, t, "--trainer.val_check_interval", "50", "--trainer.check_val_every_n_epoch", "1"),
     ["--trainer.val_check_interval 50", "(4 per rank)", "check_val_every_n_epoch null"]),
    ("fit-limited-to-no-batch", "train", lambda w, t: fit_args(w, t, "--trainer.limit_train_batches", "0"),
     ["--trainer.limit_train_batches 0", "nothing would be trained"]),
    ("fit-with-fewer-pairs-per-rank-than-a-batch", "train",  # (it blamed --trainer.limit_train_batches 1.0)
     lambda w, t: fit_args(w, t, "--data.batch_size", "16", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                           "--trainer.accelerator", "cpu"),
     ["16 training pairs over 2 ranks are 8 per rank, fewer than --data.batch_size 16", "nothing would be trained"]),
    ("fit-limited-to-a-fraction-of-no-batch", "train", lambda w, t: fit_args(w, t, "--trainer.limit_train_batches", "0.1"),
     ["--trainer.limit_train_batches 0.1"]),
    ("fit-for-zero-epochs", "train", lambda w, t: fit_args(w, t, "--trainer.max_epochs", "0"),
     ["--trainer.max_epochs 0 trains nothing"]),
    # radar-train validate (an adversarial pass: 0 batches measured nothing and exited 0; -1 named only --trainer;
    # best was Lightning's API wording)
    ("validate-zero-batches", "train",
     lambda w, t: ["validate", *fit_args(w, t, "--trainer.limit_val_batches", "0")[1:]],
     ["--trainer.limit_val_batches 0 validates nothing"]),
    ("validate-a-negative-batch-count", "train",
     lambda w, t: ["validate", *fit_args(w, t, "--trainer.limit_val_batches", "-1")[1:]],
     ["--trainer.limit_val_batches: You have passed invalid value -1 for limit_val_batches"]),
    ("validate-the-best-checkpoint", "train", lambda w, t: ["validate", *fit_args(w, t, "--ckpt_path", "best")[1:]],
     ["--ckpt_path best: give the best step's checkpoint file", "best-step-NNNNNN.ckpt, which a run with "
      "--model.early_stopping.final_adapter best, or auto with early stopping, keeps), or last"]),
    ("fit-decoder-init-seed-past-64-bits", "train",
     lambda w, t: fit_args(w, t, "--model.decoder.init_seed", PAST_64_BITS), ["--model.decoder.init_seed", "2**63"]),
    # radar-demo: the grid's classes and seeds, and the generate config, before any step
    ("demo-classes-that-are-no-list", "demo", lambda w, t: demo_args("--classes", "abc"), ["--classes", "abc"]),
    ("demo-classes-beyond-the-model", "demo", lambda w, t: demo_args("--classes", "0-12"),
     ["--classes", "10-12 outside", "tiny"]),
    ("demo-a-class-twice", "demo", lambda w, t: demo_args("--classes", "0,3,0"), ["--classes", "0 more than once"]),
    ("demo-seeds-that-are-no-list", "demo", lambda w, t: demo_args("--seeds", "0..3"), ["--seeds"]),
    ("demo-a-seed-past-64-bits", "demo", lambda w, t: demo_args("--seeds", PAST_64_BITS), ["--seeds", "64 bits"]),
    ("demo-without-a-generate-config", "demo",
     lambda w, t: demo_args("--configs", str(w["w"] / "configs_no_generate")), ["generate", "tiny.yaml", "--model"]),
    # radar-bench cache
    ("bench-cache-zero-repeats", "bench", lambda w, t: bench_cache_args("--repeats", "0"), ["--repeats", ">= 1"]),
    ("bench-cache-no-parts", "bench", lambda w, t: bench_cache_args("--parts", "[]"), ["--parts"]),
    ("bench-accel-official-config-without-the-official-code", "bench",
     lambda w, t: ["accel", "--setup.preset", "tiny", "--methods", "[none]", "--official_config", "missing.json",
                   "--json", "rows.json"], ["--official_config missing.json", "--official_var"]),
    ("bench-cache-zero-pairs", "bench", lambda w, t: bench_cache_args("--num_pairs", "0"), ["--num_pairs"]),
    ("bench-cache-pairs-within-the-untimed-batch", "bench", lambda w, t: bench_cache_args("--num_pairs", "64"),
     ["--num_pairs", "first batch"]),
    ("bench-cache-negative-workers", "bench", lambda w, t: bench_cache_args("--workers", "[0, -1]"),
     ["--workers", "-1"]),
    ("bench-cache-no-workers", "bench", lambda w, t: bench_cache_args("--workers", "[]"), ["--workers is empty"]),
    # (--check said "fine", the run then refused the engine once its models were loaded)
    *[(f"cache-run{check}-with-graphs-on-the-cpu", "cache",
       lambda w, t, check=check: ["run", "--config", str(CONFIGS / "cache" / "tiny.yaml"), "--device", "cpu",
                                  "--output", "c", "--sampling.engine", "graphs", *([check] if check else [])],
       ["sampling.engine graphs needs a CUDA device (the model is on cpu)"]) for check in ("", "--check")],
    # --model.init_seed: the seed of the random weights, a 64-bit torch seed
    ("cache-run-init-seed-past-64-bits", "cache",
     lambda w, t: ["run", "--config", str(CONFIGS / "cache" / "tiny.yaml"), "--device", "cpu", "--output", "c",
                   "--model.init_seed", PAST_64_BITS], ["model.init_seed", "2**63"]),
    ("generate-init-seed-past-64-bits", "generate",
     lambda w, t: [*_generate_opts(), "--model.init_seed", PAST_64_BITS], ["model.init_seed", "2**63"]),
    ("calibrate-init-seed-past-64-bits", "accel",
     lambda w, t: ["calibrate", "--model.preset", "tiny", "--num_samples", "2", "--batch_size", "2", "--output",
                   "r.yaml", "--model.init_seed", PAST_64_BITS], ["model.init_seed", "2**63"]),
    # radar-fid: the seeds of its samples, before any model or reference is loaded
    ("fid-negative-base-seed", "fid",
     lambda w, t: ["--save_npz", "true", "--model.preset", "tiny", "--num_samples", "4", "--base_seed", "-1",
                   "--output", "a/b"], ["--base_seed", "-1"]),
    ("fid-base-seed-past-64-bits", "fid",
     lambda w, t: ["--save_npz", "true", "--model.preset", "tiny", "--num_samples", "4", "--base_seed",
                   str(2 ** 63 - 1), "--output", "a/b"], ["--base_seed", "2**63 - 4"]),
    # --device: a name torch parses but this tool does not run on
    *[(f"{cli}-on-{dev}", cli, argv, ["--device", repr(dev), "is not a device"]) for dev in ("mps", "meta")
      for cli, argv in (("generate", lambda w, t, dev=dev: [*_generate_opts()[:-4], "--device", dev, "--output", "gen"]),
                        ("fid", lambda w, t, dev=dev: ["--save_npz", "true", "--model.preset", "tiny", "--num_samples",
                                                       "4", "--device", dev, "--output", "f"]))],
    # radar-toy measure: a model of another world, and sampler settings, before the reconstruction and FID baselines
    ("toy-measure-of-a-model-of-another-world", "toy",
     lambda w, t: ["measure", "--setup.model.preset", "tiny", "--setup.methods", "[]", "--output", "m"],
     ["--setup.model.preset tiny", "32 px images of 10 classes"]),
    ("toy-measure-negative-guidance", "toy",
     lambda w, t: ["measure", "--setup.sampling.cfg", "-1", "--setup.methods", "[]", "--output", "m"],
     ["--setup.sampling.cfg must be a finite number >= 0"]),
    ("eval-negative-distance-bins", "eval",
     lambda w, t: ["--cache", str(w["cache"]), "--adapter", str(t), "--distance_bins", "-1", "--output", "e"],
     ["--distance_bins must be >= 0, got -1"]),
    ("calibrate-negative-init-seed", "accel",
     lambda w, t: ["calibrate", "--model.preset", "tiny", "--num_samples", "2", "--batch_size", "2", "--output",
                   "r.yaml", "--model.init_seed", "-1"], ["model.init_seed", "-1"]),
]


@pytest.mark.parametrize("cli,make_argv,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_option_is_one_error_line_and_changes_nothing(world, tmp_path, cli, make_argv, needles):
    assert_refused(cli, make_argv(world, tmp_path), tmp_path, (world["w"], tmp_path), needles)


def test_a_rank_variable_that_is_no_number_is_named(world, tmp_path, monkeypatch):
    """Lightning read RANK as int() at import: `error: invalid literal for int() with base 10: 'abc'`."""
    from cli_checks import assert_refused

    monkeypatch.setenv("RANK", "abc")
    assert_refused("train", fit_args(world, tmp_path), tmp_path, (tmp_path,),
                   ["environment variable RANK='abc' is not an integer"])


@pytest.mark.parametrize("env,needles", [
    # a rank variable left in the shell: a single-process fit skipped the run folder's checks and lock as a rank
    # other than 0 would, yet wrote as rank 0, over the run there, silently (Lightning's rank-zero lines muted)
    ({"RANK": "1"}, ["environment RANK=1: that makes this process another rank than 0", "unset RANK"]),
    ({"SLURM_PROCID": "1", "NODE_RANK": "0"}, ["environment SLURM_PROCID=1", "unset SLURM_PROCID"]),
    # a batch script's --ntasks without srun (Lightning's RuntimeError was a traceback) or a garbled count
    ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "2"}, ["the SLURM job's environment (SLURM_NTASKS=2)",
                                                  "Use `--ntasks-per-node=2` instead"]),
    ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "abc"}, ["environment variable SLURM_NTASKS='abc' is not an integer"]),
])
def test_launcher_variables_a_single_process_fit_cannot_honour_are_refused_before_it_writes(world, tmp_path,
                                                                                             monkeypatch, env, needles):
    from cli_checks import assert_refused

    if "SLURM_NTASKS" not in env:  # (a run's adapter there, which such a fit replaced; the folder check says so first)
        (tmp_path / "run" / "final").mkdir(parents=True)
        (tmp_path / "run" / "final" / "adapter_model.safetensors").write_bytes(b"the user's adapter")
    monkeypatch.delenv("SLURM_JOB_NAME", raising=False)  # (bash / interactive: Lightning takes no SLURM job then)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    held = signal.getsignal(signal.SIGUSR1)  # (radar-train under SLURM notes the requeue signal for its process)
    try:
        assert_refused("train", fit_args(world, tmp_path), tmp_path, (tmp_path,), needles)
    finally:
        signal.signal(signal.SIGUSR1, held)


def test_an_init_seed_within_64_bits_is_taken():
    from radar_train.config import ModelArgs

    assert ModelArgs(init_seed=2 ** 63 - 1).init_seed == 2 ** 63 - 1
    assert ModelArgs(init_seed=0).problems() == [] and ModelArgs().problems() == []
    with pytest.raises(ValueError, match=r"model.init_seed must be in \[0, 2\*\*63\)"):
        ModelArgs(init_seed=2 ** 63)


@pytest.mark.parametrize("option,value,package,needles", [
    ("accelerator", "tpu", "torch_xla", ["--trainer.accelerator tpu", "torch_xla"]),
    ("strategy", "deepspeed", "deepspeed", ["--trainer.strategy deepspeed", "DeepSpeed"]),
])
def test_a_trainer_choice_whose_package_is_missing_is_one_error_line(world, tmp_path, option, value, package,
                                                                   needles):
    """Lightning raises an ImportError (torch_xla) or a MisconfigurationException (deepspeed) for them: a
    traceback, or an error line naming all of --trainer."""
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    assert_refused("train", fit_args(world, tmp_path, f"--trainer.{option}", value), tmp_path, (world["w"], tmp_path),
                   needles)


@pytest.mark.parametrize("cli,argv,abbreviated", [
    ("cache", ["run", "--config", str(CONFIGS / "cache" / "tiny.yaml"), "--output", "c", "--worker", "0"], "--worker"),
    ("train", ["fit", "--config", str(CONFIGS / "train" / "tiny.yaml"), "--trainer.max_step", "2"],
     "--trainer.max_step"),
    ("train", ["export", "--ck", "last.ckpt", "--output", "a"], "--ck"),
    ("generate", ["--model.preset", "tiny", "--class", "0", "--seeds", "0", "--output", "g"], "--class"),
    ("fid", ["--model.preset", "tiny", "--num_sample", "4", "--save_npz", "true", "--output", "f"], "--num_sample"),
    ("bench", ["accel", "--setup.batch", "2"], "--setup.batch"),
    ("accel", ["calibrate", "--model.preset", "tiny", "--num_sample", "2", "--output", "r.yaml"], "--num_sample"),
    ("demo", ["--out", "d"], "--out"),
])
def test_an_option_spelt_in_part_is_unknown_not_expanded(tmp_path, cli, argv, abbreviated):
    """`--worker 3` was taken as `--worker_index 3` by jsonargparse 4, with a two-paragraph deprecation warning above
    the command's output (jsonargparse 5 refuses it): every command takes options as spelt in full. The line points
    to the help that lists the options: the subcommand's, where there is one."""
    program = f"radar-{cli} {argv[0]}" if not argv[0].startswith("-") else f"radar-{cli}"
    assert_refused(cli, argv, tmp_path, (tmp_path,),
                   [f"unrecognized arguments: {abbreviated} ", f"(`{program} --help` lists the options)"])


@pytest.mark.parametrize("value,says", [
    ("[[13, 0.5]]", "--accel.fastvar.prune: expected dict[int, float] or null, got [[13, 0.5]] ("),
    ("{a: 0.5}", "--accel.fastvar.prune: expected dict[int, float] or null, got {'a': 0.5} (invalid literal for int()"),
])
def test_a_value_of_none_of_an_options_types_is_said_in_a_few_words(tmp_path, value, says):
    """jsonargparse says "Does not validate against any of the Union subtypes; Subtypes: [...]; Errors: - Expected a
    <class 'dict'>; - Expected a <class 'NoneType'>; Given value type: ...": the types and the value, and only
    what an error adds to "not of this type"."""
    line = assert_refused("accel", ["show", "--model.preset", "tiny", "--accel.method", "fastvar",
                                    "--accel.fastvar.prune", value], tmp_path, (tmp_path,), [says])
    assert "Union subtypes" not in line and "NoneType" not in line


def test_a_yaml_mapping_without_the_space_after_a_colon_gets_the_hint(tmp_path):
    """`[{path:cache/a}]` is YAML for a key `path:cache/a` with no value: jsonargparse's "Option 'path:cache/a' is not
    accepted" alone did not say why."""
    assert_refused("train", ["fit", "--config", str(CONFIGS / "train" / "tiny.yaml"), "--data.caches",
                             "[{path:cache/a}]"], tmp_path, (tmp_path,),
                   ["--data.caches", "write a space after the colon, path: cache/a"])


@pytest.mark.parametrize("cli, argv, needle", [
    ("generate", ["--classes", "0", "--seeds", "[010]", "--output", "g"],  # (it said "use ... a list")
     "--seeds: '[010]': 010, a number with a leading zero, reads in YAML as another number (octal); write it without "
     "the zero (10)"),
    ("generate", ["--classes", "0", "--seeds", "0", "--batch_size", "1:5", "--output", "g"],
     "--batch_size: 1:5 reads in YAML as the number 65, not as written"),
    ("cache", ["run", "--config", str(CONFIGS / "cache" / "tiny.yaml"), "--output", "c", "--plan.base_seed", "010"],
     None),  # (a plain 010 is read as written, 10: not refused)
    ("cache", ["run", "--config", str(CONFIGS / "cache" / "tiny.yaml"), "--output", "c", "--plan.classes", "[010]"],
     "plan.classes must be \"all\", \"START:STOP\", \"0-3,7\" or a list of ints, got '[010]'"),
    ("train", ["fit", "--config", str(CONFIGS / "train" / "tiny.yaml"), "--data.caches",
               "[{path: cache/tiny, train_shards: 0-3, val_shards: 1:5}]"],
     "--data.caches: 1:5 reads in YAML as the number 65, not as written: quote it ('1:5')"),
])
def test_a_number_yaml_reads_otherwise_than_written_on_the_command_line_is_refused(tmp_path, cli, argv, needle):
    """As in a config file (`read_yaml`): `--seeds '[010]'` was seed 8 and `val_shards: 1:5` shard 65, silently."""
    if needle is None:
        code, err = call_cli(cli, [*argv, "--check"], tmp_path)
        assert code == 0, err
        return
    line = assert_refused(cli, argv, tmp_path, (tmp_path,), [needle])
    assert "write a space after the colon" not in line  # (1:5 in a value's place is no mapping meant)


@pytest.mark.parametrize("value, typed", [("{6:1.5}", "6:1.5"), ("{6:5, 8: 0.5}", "6:5")])
def test_numbers_without_the_space_after_a_colon_get_the_hint(tmp_path, value, typed):
    """`{6:1.5}` is YAML for one base-60 number (361.5) with no value: jsonargparse's error said "unsupported operand
    type(s) for +: 'float' and 'str'" (radar-cache run, radar-generate, radar-accel alike)."""
    a, b = typed.split(":")
    assert_refused("accel", ["show", "--model.preset", "tiny", "--accel.method", "fastvar", "--accel.fastvar.prune",
                             value], tmp_path, (tmp_path,),
                   ["--accel.fastvar.prune", f"(YAML reads {typed} as one base-60 number: write a space after the "
                                             f"colon, {a}: {b})"])
    assert_refused("cache", ["run", "--config", str(CONFIGS / "cache" / "tiny.yaml"), "--output", "c",
                             f"--accel.fastvar.prune={value}"], tmp_path, (tmp_path,), [f"{a}: {b})"])


def test_export_to_an_empty_output_is_refused_before_its_start_line(tmp_path, capsys):
    """It printed `radar-train export: x.ckpt -> ` on stdout, then the error."""
    code, err = call_cli("train", ["export", "--ckpt", "x.ckpt", "--output", ""], tmp_path)
    assert code == 2 and err.strip() == "error: --output is empty: name the output (. for the current folder)", err
    assert capsys.readouterr().out == ""
    # (nor a checkpoint that is not there: its checks come before the start line)
    code, err = call_cli("train", ["export", "--ckpt", "x.ckpt", "--output", "out"], tmp_path)
    assert code == 2 and "x.ckpt" in err and capsys.readouterr().out == ""


@pytest.mark.parametrize("accumulate, limit, advice", [
    (3, None, "train on a multiple of 12 pairs per rank"), (2, 3, "give --trainer.limit_train_batches a multiple of 2"),
    (2, None, None)])
def test_an_epoch_that_accumulation_does_not_divide_is_said_once_the_checks_pass(world, tmp_path, caplog, accumulate,
                                                                                 limit, advice):
    """Lightning ends such an epoch with a step of the batches left (a d36 recipe's 625 batches of 8 pairs,
    accumulated 2 by 2, ended each epoch with a step of 8 pairs whose gradient weighed half)."""
    more = [] if limit is None else ["--trainer.limit_train_batches", str(limit)]
    argv = fit_args(world, tmp_path, "--trainer.accumulate_grad_batches", str(accumulate), *more)
    code, err = call_cli("train", argv, tmp_path)
    assert code == 0, err
    said = [r.getMessage() for r in caplog.records if "an epoch holds" in r.getMessage()]
    if advice is None:
        assert said == []
        return
    batches = limit or 4
    k = accumulate
    assert said == [f"radar-train fit: an epoch holds {batches} batches per rank, not a multiple of "
                    f"--trainer.accumulate_grad_batches {k}: Lightning ends each epoch with an optimizer step "
                    f"of the 1 batch(es) left (a gradient 1/{k} of a full step's), and a val_check_interval in "
                    f"batches then falls inside a step, where the run saves nothing; for steps of {k} whole "
                    f"batches, {advice}"]


def test_the_accumulation_warning_is_held_while_a_later_check_refuses_the_fit(world, tmp_path):
    argv = fit_args(world, tmp_path, "--trainer.accumulate_grad_batches", "3", "--trainer.val_check_interval", "50",
                    "--trainer.check_val_every_n_epoch", "1")
    import subprocess
    import sys

    # (in a process of its own: its stderr as the user sees it, the log handlers' lines included)
    r = subprocess.run([sys.executable, "-m", "radar_train.cli.train", *argv], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error: --trainer.val_check_interval 50"), r.stderr
    assert r.stderr.count("\n") == 1, r.stderr


@pytest.mark.parametrize("argv, needles", [
    (["--classes", "0", "--seeds", "80", "--grid_scale", "1000"],
     ["--grid_scale 1000, --grid_rows 64: the grid of 1 sample x 2 images of 32000 px would be 64006 x 32004 px"]),
    (["--classes", "0-9", "--seeds", "0-9999", "--grid_rows", "0"],
     ["--grid_scale 0, --grid_rows 0: the grid of 100000 samples", "give a smaller --grid_scale or --grid_rows"]),
])
def test_radar_generate_refuses_a_grid_too_large_to_draw_before_any_model_loads(tmp_path, argv, needles):
    """--grid_scale 1000 ran every sample, then ran out of memory drawing the grid (or the kernel killed the
    process, leaving its lock), and the line blamed the batch size."""
    assert_refused("generate", ["--config", str(CONFIGS / "generate" / "tiny.yaml"), "--output", "g", *argv],
                   tmp_path, (tmp_path,), needles)


def test_an_adapter_given_as_a_run_folder_is_pointed_to_its_final_adapter(tmp_path):
    """The line advised `radar-train export ... --output RUN`, which the export refuses (a folder of other files)."""
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (run / "final" / name).write_text("{}")
    (run / "config.yaml").write_text("x: 1\n")
    argv = ["--config", str(CONFIGS / "generate" / "tiny.yaml"), "--output", "g", "--classes", "0", "--seeds", "80"]
    assert_refused("generate", [*argv, "--adapter", "run"], tmp_path, (tmp_path,), [f"a run folder's adapter is "
                                                                                      f"{Path('run') / 'final'}"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert_refused("generate", [*argv, "--adapter", "other"], tmp_path, (tmp_path,), ["--output NEW_FOLDER"])
