"""radar-train end to end: configs parse, fit writes the run folder and TensorBoard logs, export, resume,
one-line errors, DDP with two CPU processes."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tiny_training import run_train_cli as _run
from tiny_training import tiny_fit_argv

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"
ALL_CONFIGS = sorted(CONFIGS.rglob("*.yaml"))


def _tiny_args(cache: str, root: Path, steps: int, *extra: str) -> list[str]:
    """tiny_fit_argv with per-step logging, train metrics and images every 2 steps, validation batches of 16."""
    return tiny_fit_argv(cache, root, steps, "--trainer.log_every_n_steps", "1",
                         "--model.monitor.train_metrics_every_n_steps", "2", "--model.monitor.images_every_n_steps", "2",
                         "--data.val_batch_size", "16", *extra)


def test_a_fit_in_micro_batches_says_its_pairs_per_step_and_its_validation_cadence_in_steps(tiny_cache, tmp_path,
                                                                                            caplog):
    """val_check_interval counts micro-batches: with accumulate_grad_batches 2 its 2 are one optimizer step."""
    with caplog.at_level("INFO", logger="radar_train"):
        assert _run(_tiny_args(tiny_cache, tmp_path / "run", 2, "--trainer.accumulate_grad_batches", "2")) == 0
    lines = [r.getMessage() for r in caplog.records if "accumulate_grad_batches" in r.getMessage()]
    assert lines == ["radar-train fit: 8 pairs per optimizer step per device, in 2 micro-batches of 4 "
                     "(trainer.accumulate_grad_batches); validation every 2 micro-batches = 1 optimizer step "
                     "(trainer.val_check_interval counts micro-batches)"]
    # TensorBoard's learning rate once per optimizer step (it was logged at each micro-batch's start)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/lr")] == [0, 1]
    caplog.clear()
    with caplog.at_level("INFO", logger="radar_train"):
        assert _run(_tiny_args(tiny_cache, tmp_path / "whole", 1)) == 0
    assert not [r for r in caplog.records if "accumulate_grad_batches" in r.getMessage()]


def test_ckpt_path_last_before_a_first_save_says_the_fit_starts_at_step_0(tiny_cache, tmp_path, caplog):
    """--ckpt_path last is what a job script passes every time (a requeue resumes); before the run's first save it
    starts at step 0, said once in our words (Lightning's warning hinted at save_last=True, which the run has)."""
    root = tmp_path / "run"
    fresh = f"radar-train fit: --ckpt_path last: no checkpoints/last.ckpt in {root} yet, so the fit starts at step 0"
    with caplog.at_level("INFO", logger="radar_train"):
        assert _run(_tiny_args(tiny_cache, root, 2, "--ckpt_path", "last")) == 0
    assert [r.getMessage() for r in caplog.records if "--ckpt_path last" in r.getMessage()] == [fresh]
    caplog.clear()
    with caplog.at_level("INFO", logger="radar_train"):  # resumed from its step 2: nothing to say
        assert _run(_tiny_args(tiny_cache, root, 3, "--ckpt_path", "last")) == 0
    assert not [r for r in caplog.records if "--ckpt_path last" in r.getMessage()]


def test_validate_without_a_checkpoint_says_it_validates_the_adapter_as_initialised(tiny_cache, tmp_path, caplog):
    """Its metrics are the baseline's (LoRA B = 0): said, so that they are not read as a trained adapter's."""
    args = ["validate", *_tiny_args(tiny_cache, tmp_path / "run", 2)[1:]]
    with caplog.at_level("INFO", logger="radar_train"):
        assert _run(args) == 0
    said = [r.getMessage() for r in caplog.records if "radar-train validate: no --ckpt_path" in r.getMessage()]
    assert len(said) == 1 and "the adapter as initialised is validated" in said[0]
    # (its metrics line said "checkpoint step 0", of a checkpoint it had not loaded)
    assert any(r.getMessage().startswith("adapter as initialised, step 0: val PSNR") for r in caplog.records)


def test_tensorboard_has_a_validations_scalars_and_grid_at_its_step_and_validate_at_its_checkpoints(
        tiny_cache, tmp_path, caplog):
    """The fit's val/ scalars were one step before the grid and the console line of the same validation (Lightning
    logs a validation before it counts its step), and radar-train validate logged every checkpoint's at step 0,
    naming no checkpoint anywhere. A run ending between validations exports the last validation's metrics, which
    radar_config.yaml now says are of that step, not of the step exported."""
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = tmp_path / "run"
    assert _run(_tiny_args(tiny_cache, root, 5, "--model.monitor.images_every_n_steps", "2")) == 0
    meta = yaml.safe_load((root / "final" / "radar_config.yaml").read_text())
    assert meta["global_step"] == 5 and meta["metrics_step"] == 4 and meta["metrics"]
    with caplog.at_level("INFO", logger="radar_train"):
        # (max_epochs 0, which trains nothing, does not concern validate: it was refused)
        assert _run(["validate", "--config", str(root / "config.yaml"), "--ckpt_path", "last",
                     "--trainer.max_epochs", "0"]) == 0
    assert any(r.getMessage().startswith("checkpoint step 5: val PSNR student") for r in caplog.records)

    def steps(folder: Path) -> dict:
        acc = EventAccumulator(str(folder))
        acc.Reload()
        return {**{t: [e.step for e in acc.Scalars(t)] for t in ("val/psnr_student", "val/loss")},
                **{t: [e.step for e in acc.Images(t)] for t in acc.Tags()["images"]}}

    assert steps(root / "tb") == {"val/psnr_student": [2, 4], "val/loss": [2, 4], "val/samples": [0, 2, 4, 5]}
    (validated,) = (root / "tb" / "validate").iterdir()
    assert steps(validated) == {"val/psnr_student": [5], "val/loss": [5]}
    hparams = yaml.safe_load((validated / "hparams.yaml").read_text())
    assert hparams["checkpoint_step"] == 5 and hparams["ckpt_path"] == str(root / "checkpoints" / "last.ckpt")

    # the checkpoint validated from another folder, with other save settings: Lightning's warnings about restoring the
    # fit's callbacks (which a validation does not use) are not shown; on shards it trained on, a warning says so
    # (radar-eval refuses them; validate labelled their metrics as a validation's without a word)
    import warnings

    assert not [r for r in caplog.records if r.getMessage().startswith("radar-train validate: ")]  # (held-out)
    caplog.clear()
    on_shard_1 = json.dumps([{"path": tiny_cache, "train_shards": None, "val_shards": "1"}])
    with warnings.catch_warnings(record=True) as said, caplog.at_level("WARNING", logger="radar_train"):
        warnings.simplefilter("always")
        assert _run(["validate", *_tiny_args(tiny_cache, tmp_path / "elsewhere", 5)[1:], "--ckpt_path",
                     str(root / "checkpoints" / "last.ckpt"), "--model.output.save_every_n_steps", "100",
                     "--data.caches", on_shard_1]) == 0
    shown = [str(w.message) for w in said]
    assert not [m for m in shown if "callbacks used to create the checkpoint" in m or "dirpath has changed" in m], shown
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"radar-train validate: shards 1 of {tiny_cache} are training shards of the checkpoint "
        f"{root / 'checkpoints' / 'last.ckpt'}: these metrics include pairs it was trained on (not held-out)"]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=[str(p.relative_to(CONFIGS)) for p in ALL_CONFIGS])
def test_every_train_config_parses_with_the_cli(config, capsys):
    assert _run(["fit", "--config", str(config), "--print_config"]) == 0
    out = capsys.readouterr().out
    assert "model:" in out and "caches:" in out and "default_root_dir:" in out


def test_fit_writes_the_run_folder_logs_and_an_adapter_that_export_reproduces(tiny_cache, tmp_path, capsys,
                                                                            monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, EventAccumulator

    root = tmp_path / "run"
    assert _run(_tiny_args(tiny_cache, root, 4)) == 0
    files = _files(root)
    events = [f for f in files if f.startswith("tb/events.out.tfevents")]
    assert len(events) == 1
    assert [f for f in files if f not in events] == [
        "checkpoints/last.ckpt", "checkpoints/step-000004.ckpt", "config.yaml", "final/adapter_config.json",
        "final/adapter_model.safetensors", "final/radar_config.yaml", "tb/hparams.yaml"]
    ea = EventAccumulator(str(root / "tb"), size_guidance={SCALARS: 0, IMAGES: 0}).Reload()
    tags = set(ea.Tags()["scalars"])
    for tag in ("train/loss", "train/lr", "train/samples_per_s", "train/psnr_student", "val/loss", "val/psnr_student",
                "val/psnr_baseline", "val/ssim_student", "val/ssim_baseline", "val/gap_closed_mse", "val/delta_psnr",
                "val/psnr_harmless", "params/trainable", "params/frozen"):
        assert tag in tags, tag
    assert len(ea.Scalars("val/gap_closed_mse")) == 2  # validation after steps 2 and 4
    # every 2nd step, and only there (a value logged with self.log was written again at each later step)
    assert [e.step for e in ea.Scalars("train/psnr_student")] == [1, 3]
    assert [e.step for e in ea.Images("val/samples")] == [0, 2, 4]  # once per step: the end meets the cadence

    out = tmp_path / "exported"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".exported.tmp-0123abcd-{int(dead.stdout)}-{socket.gethostname()}"  # a killed export's
    (stale / "adapter_model.safetensors").parent.mkdir()
    (stale / "adapter_model.safetensors").write_bytes(b"half")
    monkeypatch.chdir(root)  # (the checkpoint named relative to the working folder)
    assert _run(["export", "--ckpt", "checkpoints/last.ckpt", "--output", str(out)]) == 0
    monkeypatch.chdir(tmp_path)
    assert not stale.exists()
    recorded = yaml.safe_load((out / "radar_config.yaml").read_text())["source_checkpoint"]
    assert recorded == str((root / "checkpoints" / "last.ckpt").resolve())  # (it was 'checkpoints/last.ckpt')
    a, b = load_file(out / "adapter_model.safetensors"), load_file(root / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "adapter_config.json").read_text()) == json.loads(
        (root / "final" / "adapter_config.json").read_text())

    assert _run(_tiny_args(tiny_cache, root, 6, "--ckpt_path", "last")) == 0
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6 and ckpt["radar"]["global_step"] == 6


@pytest.mark.parametrize("extra,message", [
    (["--model.decoder.init_seed", "1"], "does not match the decoder"),
    (["--model.lora.targets", "conv"], "matches no Conv2d"),
    (["--model.loss.lpips_weight", "1"], "model.loss.lpips_weight > 0 needs model.loss.lpips_vgg"),
])
def test_bad_input_is_one_error_line_and_status_2(tiny_cache, tmp_path, capsys, extra, message):
    assert _run(_tiny_args(tiny_cache, tmp_path / "run", 2, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_cache_manifest_without_a_chunk_size_is_one_error_line_naming_it(tiny_cache, tmp_path, capsys):
    import shutil

    from cli_checks import assert_one_line_error

    cache = shutil.copytree(tiny_cache, tmp_path / "cache")
    manifest = json.loads((cache / "manifest.json").read_text())
    del manifest["storage"]
    (cache / "manifest.json").write_text(json.dumps(manifest))
    assert _run(_tiny_args(str(cache), tmp_path / "run", 2)) == 2
    assert_one_line_error(capsys.readouterr().err, f"{cache / 'manifest.json'}", "storage.chunk_size is missing")
    assert not (tmp_path / "run").exists()


def test_a_shuffle_seed_past_64_bits_trains(tiny_cache, tmp_path):
    # seed * 1_000_003 overflowed the block order's generator at the first batch, after the run folder was written
    assert _run(_tiny_args(tiny_cache, tmp_path / "run", 2, "--data.shuffle_seed", str(10 ** 14),
                           "--model.output.export_final", "false")) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_label_conditioning_of_another_class_count_is_refused_before_the_run_folder_is_written(tiny_cache, tmp_path,
                                                                                              capsys):
    """The tiny cache's labels are those of a 10-class generator: a FiLM of 7 classes is refused by the CLI's
    early data check, so neither a new run folder nor an earlier attempt's leftovers are written."""
    film = ["--model.label_conditioning.kind", "film", "--model.label_conditioning.num_classes", "7"]
    new = tmp_path / "new"
    assert _run(_tiny_args(tiny_cache, new, 2, *film)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "model.label_conditioning has 7" in err[-1] and tiny_cache in err[-1]
    assert not new.exists()

    early = tmp_path / "early"  # what an attempt that never reached a checkpoint leaves: a new fit may reuse it
    (early / "tb").mkdir(parents=True)
    (early / "config.yaml").write_text("earlier: attempt\n")
    before = {p: p.read_bytes() if p.is_file() else None for p in early.rglob("*")}
    assert _run(_tiny_args(tiny_cache, early, 2, *film)) == 2
    assert "model.label_conditioning has 7" in capsys.readouterr().err.strip().splitlines()[-1]
    assert {p: p.read_bytes() if p.is_file() else None for p in early.rglob("*")} == before


@pytest.mark.slow
def test_a_run_folder_holding_only_a_slurm_requeue_save_is_a_run_resumed_with_ckpt_path_hpc(tiny_cache, tmp_path,
                                                                                            capsys):
    """A job requeued before its first regular checkpoint leaves RUN/hpc_ckpt_1.ckpt beside config.yaml and tb/.
    A new fit is refused as a run (not as a foreign folder) and told the option that finds the save: `last`
    looks only in checkpoints/ (it would start over), so it is refused too; `hpc` resumes from the save."""
    import shutil

    root = tmp_path / "run"
    assert _run(_tiny_args(tiny_cache, root, 1)) == 0
    (root / "checkpoints" / "last.ckpt").rename(root / "hpc_ckpt_1.ckpt")
    shutil.rmtree(root / "checkpoints")
    shutil.rmtree(root / "final")
    before = {p: p.read_bytes() if p.is_file() else None for p in root.rglob("*")}
    capsys.readouterr()
    assert _run(_tiny_args(tiny_cache, root, 2)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: --trainer.default_root_dir {root} holds a run already (hpc_ckpt_1.ckpt): resume it "
                       f"with --ckpt_path hpc, or choose a new run folder")
    assert _run(_tiny_args(tiny_cache, root, 2, "--ckpt_path", "last")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --ckpt_path last: ") and "hpc_ckpt_1.ckpt" in err[-1] \
        and err[-1].endswith("with --ckpt_path hpc")
    assert {p: p.read_bytes() if p.is_file() else None for p in root.rglob("*")} == before

    assert _run(_tiny_args(tiny_cache, root, 2, "--ckpt_path", "hpc")) == 0
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["radar"]["global_step"] == 2
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["last.ckpt", "step-000002.ckpt"]


def test_ckpt_path_hpc_without_a_requeue_save_is_one_error_line(tiny_cache, tmp_path, capsys):
    root = tmp_path / "run"
    assert _run(_tiny_args(tiny_cache, root, 2, "--ckpt_path", "hpc")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --ckpt_path hpc: --trainer.default_root_dir {root} holds no hpc_ckpt_N.ckpt (the checkpoint "
        f"Lightning saves when SLURM requeues a job); use --ckpt_path last or a file")
    assert not root.exists()


def test_export_of_a_missing_checkpoint_is_one_error_line(tmp_path, capsys):
    assert _run(["export", "--ckpt", str(tmp_path / "none.ckpt"), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'none.ckpt'}: radar-train checkpoint not found"
    assert not (tmp_path / "out").exists()


def test_a_parse_error_points_to_the_subcommands_help(tmp_path, capsys):
    """`radar-train --help` lists the subcommands, not their options: the hint names `radar-train fit --help`."""
    assert _run(["fit", "--trainer.max_steps", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--data.caches" in err and err.endswith("(`radar-train fit --help` lists the options)")
    assert _run(["export", "--bogus", "1"]) == 2
    assert capsys.readouterr().err.strip().endswith("(`radar-train export --help` lists the options)")


def test_fit_help_leads_with_the_options_people_change(capsys):
    assert _run(["fit", "--help"]) == 0
    out = capsys.readouterr().out.splitlines()
    head = "\n".join(out[:40])
    for option in ("--config", "--data.caches", "--model.lora.rank", "--model.loss.", "--trainer.max_steps",
                   "--model.optim.learning_rate", "--ckpt_path last", "--trainer.default_root_dir"):
        assert option in head, option
    assert not any(ln.startswith("usage:") for ln in out[:20])
    full = "\n".join(out[40:])  # then every option
    assert "--model.lora.dropout" in full and "--trainer.accumulate_grad_batches" in full


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_runs_and_writes_one_checkpoint(tiny_cache, tmp_path):
    """Stopped first by a Ctrl-C that reaches rank 1 only (`kill -INT`): both ranks save step 2 and report Ctrl-C,
    status 130 (rank 0, which noted nothing itself, reported SIGTERM and the run exited 143); then resumed."""
    root = tmp_path / "ddp"
    args = _tiny_args(tiny_cache, root, 3, "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                      "--trainer.strategy", "ddp", "--model.output.save_every_n_steps", "3")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "scripts"), str(CONFIGS.parents[1])])}
    env.pop("SLURM_JOB_ID", None)
    ctrl_c = [{"class_path": "self_term.SelfTerm", "init_args": {"step": 2, "signal": "SIGINT", "rank": 1}}]
    proc = subprocess.run([sys.executable, "-m", "radar_train.cli.train", *args, "--trainer.callbacks",
                           json.dumps(ctrl_c)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert proc.stderr.count("stopped by Ctrl-C") == 2 and "stopped by SIGTERM" not in proc.stderr
    assert torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 2
    # last.ckpt's save failed (a full disk) after step-000002.ckpt's: rank 0 copies the step file to last.ckpt, and
    # every rank takes it as the run's own (else the next save went to last-v1.ckpt beside it)
    (root / "checkpoints" / "last.ckpt").unlink()
    proc = subprocess.run([sys.executable, "-m", "radar_train.cli.train", *args, "--ckpt_path", "last"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "last.ckpt: a copy of step-000002.ckpt" in proc.stderr, proc.stderr[-3000:]
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["last.ckpt", "step-000003.ckpt"]
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["radar"]["training"]["trainer"]["world_size"] == 2
    assert (root / "final" / "adapter_model.safetensors").is_file()
    # the run's own lines once, not once per process
    out = proc.stdout + proc.stderr
    for line in ("LoRA r=", "radar-train fit: run folder", "pairs: "):
        assert out.count(line) == 1, (line, out[-3000:])


@pytest.mark.slow
def test_ddp_on_webdataset_tars_that_split_unevenly_runs_the_same_steps_on_both_ranks(tiny_cache, tmp_path):
    """3 training tars over 2 ranks (2 + 1) and one validation tar: a rank that ran out of batches left the
    other waiting in its gradient all-reduce (a crash or a hang), and the rank without a validation tar had
    no image batch."""
    from radar_train.cache.wds import export_wds

    export_wds(tiny_cache, str(tmp_path / "wds"), progress=False)
    root = tmp_path / "ddp"
    caches = json.dumps([{"path": str(tmp_path / "wds"), "train_shards": "0-2", "val_shards": "14", "format": "wds"}])
    args = _tiny_args(tiny_cache, root, 10, "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                      "--trainer.strategy", "ddp", "--model.output.save_every_n_steps", "10",
                      "--data.caches", caches, "--trainer.val_check_interval", "null")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("SLURM_JOB_ID", None)
    proc = subprocess.run([sys.executable, "-m", "radar_train.cli.train", *args], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 10  # epochs of 4 batches on each rank (rank 1's share of 16 pairs)
    assert "every rank's epoch is 4 batches (per rank: [8, 4])" in proc.stdout + proc.stderr


def test_webdataset_tars_that_give_a_device_no_batch_are_refused_before_anything_is_written(tiny_cache, tmp_path):
    """3 training tars over 4 CPU processes: one rank would read none. Found before the run folder is written or
    the processes are launched (before, inside the fit: config.yaml and tb/ were there, and every rank failed)."""
    from cli_checks import assert_refused

    from radar_train.cache.wds import export_wds

    export_wds(tiny_cache, str(tmp_path / "wds"), progress=False)
    caches = json.dumps([{"path": str(tmp_path / "wds"), "train_shards": "0-2", "val_shards": "14", "format": "wds"}])
    args = _tiny_args(tiny_cache, tmp_path / "run", 4, "--trainer.accelerator", "cpu", "--trainer.devices", "4",
                      "--trainer.strategy", "ddp", "--data.caches", caches)
    assert_refused("train", args, tmp_path, (tmp_path,),
                   ["the 3 WebDataset training tars", "by 4 rank(s)", "give a rank no batch of data.batch_size 4"])


def test_a_precision_that_casts_the_module_logs_its_image_grid(tiny_cache, tmp_path):
    """`--trainer.precision 64-true` (as bf16-true / 16-true on a GPU) casts the whole module; the fixed image
    batch of the TensorBoard grid gets the steps' precision too (it crashed the run before its first step)."""
    root = tmp_path / "run"
    assert _run(_tiny_args(tiny_cache, root, 2, "--trainer.precision", "64-true")) == 0
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    acc = EventAccumulator(str(root / "tb"), size_guidance={IMAGES: 0})
    acc.Reload()
    assert [e.step for e in acc.Images("val/samples")] == [0, 2]
    assert (root / "final").is_dir()


def test_the_datamodules_warnings_print_as_warning_lines(tiny_cache, tmp_path):
    """(`data.caches[0] (...): shards 2-15 ... are left out of training` printed as a bare line among the INFO ones.)"""
    import shutil

    from tiny_training import tiny_fit_argv

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    shutil.rmtree(next(cache.glob("shard-00003*")))  # (an incomplete cache: shard 3 missing)
    argv = tiny_fit_argv(str(cache), tmp_path / "run", 1, "--trainer.logger", "false")
    caches = json.dumps([{"path": str(cache), "train_shards": None, "val_shards": "14"}])  # (every complete one)
    argv[argv.index("--data.caches") + 1] = caches
    r = subprocess.run([sys.executable, "-m", "radar_train.cli.train", *argv], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if "left out of training" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"warning: data.caches[0] ({cache}): shards 3 "), r.stderr[-2000:]


def test_validates_data_warnings_are_said_once_by_a_multi_process_run(tiny_cache, monkeypatch, caplog):
    """Every process of a DDP radar-train validate said them (fit's data warnings come from rank 0 only)."""
    from types import SimpleNamespace

    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from radar_train.cache.schema import read_manifest
    from radar_train.cli.train import say_validation_data

    dm = SimpleNamespace(caches=[SimpleNamespace(path=tiny_cache)], splits=[([0, 1], [14])],
                         manifests={tiny_cache: read_manifest(tiny_cache)})
    meta = {"caches": [{"path": tiny_cache, "train_shards": [14]}]}  # (recorded by path: its shards are the cache's)
    said = {}
    for rank in (0, 1):
        monkeypatch.setattr(rank_zero_only, "rank", rank)
        caplog.clear()
        with caplog.at_level("WARNING", logger="radar_train"):
            say_validation_data(meta, dm, "last.ckpt")
        said[rank] = [r.getMessage() for r in caplog.records]
    assert said == {0: [f"radar-train validate: shards 14 of {tiny_cache} are training shards of the checkpoint "
                        f"last.ckpt: these metrics include pairs it was trained on (not held-out)"], 1: []}


def test_fit_check_runs_the_checks_of_the_options_and_the_run_folder_and_writes_nothing(tmp_path, capsys):
    """radar-train fit --check (slurm/pipeline.sh's, before it submits the cache jobs): no cache, no model read."""
    from cli_checks import assert_one_line_error, call_cli

    config = str(Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny.yaml")
    code, err = call_cli("train", ["fit", "--config", config, "--trainer.default_root_dir", "new", "--check",
                                   "--data.caches.path", "no_cache_yet"], tmp_path)
    assert code == 0, err
    assert "radar-train fit --check: the options and the run folder new pass the checks" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("notes")
    code, err = call_cli("train", ["fit", "--config", config, "--trainer.default_root_dir", "mine", "--check"],
                         tmp_path)
    assert code == 2
    assert_one_line_error(err, "not a run folder (it holds notes.txt)")
    code, err = call_cli("train", ["fit", "--config", config, "--trainer.max_stepz", "3", "--check"], tmp_path)
    assert code == 2 and "--trainer.max_stepz" in err


@pytest.mark.parametrize("option, said", [
    (["--model.lora.rank", "0"], "error: invalid training config: model.lora.rank must be >= 1, got 0"),
    (["--model.optim.learning_rate", "-1"], "error: invalid training config: model.optim.learning_rate must be > 0"),
    (["--data.batch_size", "0"], "error: invalid data config: data.batch_size and data.val_batch_size must be >= 1"),
    (["--model.decoder.preset", "nosuch"], "error: --model.decoder.preset: unknown model preset 'nosuch'"),
    (["--model.lora.targets", "nosuch_regex"],
     "error: invalid training config: model.lora.targets 'nosuch_regex' matches no Conv2d of the decoder"),
    (["--model.label_conditioning.kind", "film", "--model.label_conditioning.norms", "zz"],
     "error: invalid training config: model.label_conditioning.norms 'zz' matches no GroupNorm of the decoder"),
])
def test_fit_check_refuses_the_option_values_a_fit_refuses_in_the_same_line(tmp_path, option, said):
    """`fit --check` passed values the fit refused (its checks ran when the module and the datamodule were built,
    after --check ended), and a fit named --model.decoder.preset `model.preset`, which is no option of it."""
    from cli_checks import assert_one_line_error, call_cli

    config = str(Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny.yaml")
    argv = ["fit", "--config", config, "--trainer.default_root_dir", "run", "--data.caches.path", "none", *option]
    for check in (["--check"], []):  # (the fit: refused before it reads the cache, which does not exist)
        code, err = call_cli("train", argv + check, tmp_path)
        assert code == 2 and assert_one_line_error(err).startswith(said), (check, err)
    assert list(tmp_path.iterdir()) == []


def test_fit_check_refuses_a_resume_past_max_steps_as_the_fit_does(tiny_cache, tmp_path):
    from cli_checks import assert_one_line_error, call_cli, snapshot

    run = tmp_path / "run"
    _run(_tiny_args(tiny_cache, run, 2))
    before = snapshot(run)
    config = str(Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny.yaml")
    argv = ["fit", "--config", config, "--trainer.default_root_dir", str(run), "--data.caches.path", tiny_cache,
            "--ckpt_path", "last", "--trainer.max_steps", "1"]
    for check in (["--check"], []):
        code, err = call_cli("train", argv + check, tmp_path)
        assert code == 2, err
        assert_one_line_error(err, "checkpoints/last.ckpt is at step 2, past --trainer.max_steps 1")
    assert snapshot(run) == before


def test_export_of_a_run_on_a_vae_file_named_relative_to_its_folder_names_it_and_takes_vae_checkpoint(tmp_path,
                                                                                                       monkeypatch):
    """The checkpoint records the VQ-VAE file as the fit was given it (relative to the folder it ran in): exported
    from elsewhere it was 'base.pth: checkpoint file not found' (a file the user never named, called a checkpoint),
    and export had no option to name it."""
    from cli_checks import assert_one_line_error, call_cli
    from radar_train.models import load_models

    repo = Path(__file__).resolve().parents[2]
    proj, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    proj.mkdir()
    elsewhere.mkdir()
    torch.save(load_models("tiny", with_var=False)[0].state_dict(), proj / "base.pth")
    code, err = call_cli("cache", ["run", "--config", str(repo / "configs/cache/tiny.yaml"), "--output", "cache",
                                   "--model.vae_checkpoint", "base.pth", "--plan.images_per_class", "null",
                                   "--plan.num_samples", "16", "--plan.shard_size", "8"], proj)
    assert code == 0, err
    code, err = call_cli("train", ["fit", "--config", str(repo / "configs/train/tiny.yaml"),
                                   "--trainer.default_root_dir", "run", "--trainer.max_steps", "1",
                                   "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
                                   "--model.decoder.vae_checkpoint", "base.pth", "--data.batch_size", "4",
                                   "--model.monitor.images_every_n_steps", "0",
                                   "--data.caches", '[{path: cache, train_shards: "0", val_shards: "1"}]'], proj)
    assert code == 0, err
    ckpt = str(proj / "run" / "checkpoints" / "last.ckpt")
    code, err = call_cli("train", ["export", "--ckpt", ckpt, "--output", "a"], elsewhere)
    assert code == 2
    assert_one_line_error(err, f"--ckpt {ckpt}: the VQ-VAE file it was trained with, base.pth (as the fit named it:",
                          "--vae_checkpoint")
    torch.save({k: v + 1 for k, v in torch.load(proj / "base.pth").items()}, elsewhere / "other.pth")
    code, err = call_cli("train", ["export", "--ckpt", ckpt, "--output", "a", "--vae_checkpoint", "other.pth"],
                         elsewhere)
    assert code == 2
    assert_one_line_error(err, "--vae_checkpoint other.pth: not the VQ-VAE", "was trained on")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["other.pth"]
    code, err = call_cli("train", ["export", "--ckpt", ckpt, "--output", "a", "--vae_checkpoint",
                                   str(proj / "base.pth")], elsewhere)
    assert code == 0, err
    a, b = load_file(elsewhere / "a" / "adapter_model.safetensors"), load_file(proj / "run" / "final" /
                                                                               "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
