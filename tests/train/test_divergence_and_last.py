"""A run whose training diverges stops before an update writes NaN into its weights, keeping the step before; a
checkpoint damaged on disk is refused; `--ckpt_path last` goes on from the newest checkpoint of the run, also
when the run was killed after saving a step's file and before last.ckpt followed it."""
from __future__ import annotations

import logging
import os
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from radar_train.cli.train import check_ckpt_path
from radar_train.inputs import InputError, load_torch
from radar_train.train.module import is_trained_key
from cli_checks import zip_data_offset
from tiny_training import run_train_cli, tiny_fit_argv


def _ckpt(root: Path, name: str) -> dict:
    return torch.load(root / "checkpoints" / name, map_location="cpu", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("caught_at", ["validation", "save"])
def test_a_diverging_run_stops_keeping_its_checkpoints_as_they_were(tiny_cache, tmp_path, capsys, caught_at):
    """Two good steps, then the run resumed at a learning rate of 1e30: step 3's update makes the LoRA weights huge,
    step 4's gradients are NaN and so are the weights after its update. Before, the run trained on with NaN
    weights, saved them over its good checkpoints, exported a NaN final/ and exited 0. Now the weights are checked
    before the step-4 validation (or, without one, before the step-4 save) and the run stops there."""
    run = tmp_path / "run"
    extra = ("--trainer.logger", "false") + (("--trainer.val_check_interval", "100", "--trainer.log_every_n_steps",
                                              "100") if caught_at == "save" else ())
    assert run_train_cli(tiny_fit_argv(tiny_cache, run, 2, *extra)) == 0
    shutil.rmtree(run / "final")
    kept = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    assert sorted(kept) == ["last.ckpt", "step-000002.ckpt"]
    capsys.readouterr()
    argv = tiny_fit_argv(tiny_cache, run, 6, "--model.optim.learning_rate", "1e30", "--model.optim.warmup_steps", "0",
                         "--ckpt_path", "last", *extra)
    assert run_train_cli(argv) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert not any("Traceback" in ln for ln in err)
    errors = [ln for ln in err if ln.startswith("error:")]
    assert errors == [err[-2]] and errors[0].startswith("error: training diverged by step 4: the trained LoRA weights "
                                                        "hold NaN or inf")
    assert re.search(r"lower --model\.optim\.learning_rate \(this step's rate \d\.\d+e\+29\)", errors[0])
    assert err[-1] == (f"radar-train: nothing is saved of the diverged weights; the run's last checkpoint stays as it "
                       f"was ({run / 'checkpoints' / 'last.ckpt'}: with the settings changed, resume from it with "
                       f"--ckpt_path last)")
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == kept
    assert not (run / "final").exists()
    trained = {k: v for k, v in _ckpt(run, "last.ckpt")["state_dict"].items() if is_trained_key(k)}
    assert trained and all(bool(torch.isfinite(v).all()) for v in trained.values())


def test_the_weights_check_looks_at_the_trained_weights_only_and_names_the_step():
    from types import SimpleNamespace

    from radar_train.train.finite import TrainingDiverged, check_finite_weights

    module = torch.nn.Linear(3, 2)
    module.weight.requires_grad_(False)
    trainer = SimpleNamespace(callback_metrics={"train/loss": torch.tensor(2.5)}, global_step=7,
                              optimizers=[torch.optim.SGD(module.parameters(), lr=0.25)])
    with torch.no_grad():
        module.weight[0, 0] = float("nan")  # (frozen: not a trained weight)
    check_finite_weights(trainer, module)
    with torch.no_grad():
        module.bias[1] = float("-inf")
    with pytest.raises(TrainingDiverged, match=r"^training diverged by step 7: the trained LoRA weights hold NaN or inf; "
                                               r"the training loss is 2\.5; lower --model\.optim\.learning_rate "
                                               r"\(this step's rate 0\.25\)"):
        check_finite_weights(trainer, module)


def _fake_checkpoint(path: Path, step: int, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {"w": torch.arange(4.0)}}, path)
    os.utime(path, (mtime, mtime))
    return path


def test_last_is_the_newest_of_last_ckpt_and_the_step_files(tmp_path):
    """A save writes the step's file, then last.ckpt: a run killed in between has a newer step file (or, at its first
    save, no last.ckpt at all), which `last` takes. A step file of a higher step that is older than last.ckpt (the run
    went on from an earlier checkpoint since) is not."""
    run, ck = tmp_path / "run", tmp_path / "run" / "checkpoints"
    step2 = _fake_checkpoint(ck / "step-000002.ckpt", 2, 1000)
    assert check_ckpt_path("last", run)[0] == step2  # (killed at its first save: no last.ckpt)
    last = _fake_checkpoint(ck / "last.ckpt", 2, 1001)
    assert check_ckpt_path("last", run)[0] == last
    step4 = _fake_checkpoint(ck / "step-000004.ckpt", 4, 1002)
    path, state = check_ckpt_path("last", run)
    assert path == step4 and state["global_step"] == 4  # (killed between step 4's two files)
    os.utime(step4, (900, 900))
    assert check_ckpt_path("last", run)[0] == last
    assert check_ckpt_path(str(step2), run)[0] == step2  # (a file named is that file)
    os.utime(step4, (1002, 1002))
    assert check_ckpt_path("last", run, "validate")[0] == step4


@pytest.mark.slow
def test_a_run_killed_before_its_first_last_ckpt_goes_on_with_ckpt_path_last(tiny_cache, tmp_path, caplog):
    """Before, `--ckpt_path last` refused the folder ("holds a run already but no checkpoint for --ckpt_path last"),
    so a job script that always passes it failed at every restart."""
    caplog.set_level(logging.INFO, logger="radar_train")
    run = tmp_path / "run"
    assert run_train_cli(tiny_fit_argv(tiny_cache, run, 2, "--trainer.logger", "false")) == 0
    (run / "checkpoints" / "last.ckpt").unlink()
    config = (run / "config.yaml").read_text()
    assert run_train_cli(tiny_fit_argv(tiny_cache, run, 4, "--trainer.logger", "false", "--ckpt_path", "last")) == 0
    assert "step-000002.ckpt is the run's newest checkpoint (the run was killed, or its save of last.ckpt failed, " \
           "after saving it), so the run goes on from it" in caplog.text
    assert _ckpt(run, "last.ckpt")["global_step"] == 4
    # (the step file it went on from goes once a newer one is saved, as any older step file: Lightning keeps the
    # checkpoint a run resumed from, which stayed for good beside the newer ones)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step-000004.ckpt"]
    # (the run's config keeps `last`, as a resume from last.ckpt writes it: the config run again resumes the run)
    assert (run / "config.yaml").read_text() == config.replace("max_steps: 2", "max_steps: 4").replace(
        "ckpt_path: null", "ckpt_path: last")


@pytest.mark.slow
def test_last_is_the_runs_last_ckpt_never_a_users_file_named_like_it(tiny_cache, tmp_path, caplog):
    """Lightning's own lookup for `last` takes the newest checkpoints/last*.ckpt: a user's step-2 backup named
    last-step2-backup.ckpt (newer by mtime, as a copy of the folder makes it) was resumed from, the run went back
    two steps, and its last.ckpt and step exports were replaced with another history."""
    run, ck = tmp_path / "run", tmp_path / "run" / "checkpoints"
    assert run_train_cli(tiny_fit_argv(tiny_cache, run, 2, "--trainer.logger", "false")) == 0
    backup = ck / "last-step2-backup.ckpt"
    shutil.copy(ck / "last.ckpt", backup)
    assert run_train_cli(tiny_fit_argv(tiny_cache, run, 4, "--trainer.logger", "false", "--ckpt_path", "last")) == 0
    os.utime(backup)  # (the newest last*.ckpt now)
    kept = backup.read_bytes()
    lightning_log = logging.getLogger("lightning.pytorch")  # (its own handler, not propagated: caplog's added)
    lightning_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
            assert run_train_cli(tiny_fit_argv(tiny_cache, run, 6, "--trainer.logger", "false", "--ckpt_path",
                                               "last")) == 0
    finally:
        lightning_log.removeHandler(caplog.handler)
    assert f"Restoring states from the checkpoint path at {ck / 'last.ckpt'}" in caplog.text, caplog.text[-2000:]
    assert "last-step2-backup" not in caplog.text and backup.read_bytes() == kept
    assert _ckpt(run, "last.ckpt")["global_step"] == 6


def test_load_torch_refuses_a_checkpoint_whose_data_fails_its_crc(tmp_path):
    """torch's reader takes the damaged bytes as data: the CRC of each zip entry is checked first."""
    path = tmp_path / "c.ckpt"
    torch.save({"w": torch.arange(1000.0)}, path)
    assert torch.equal(load_torch(path)["w"], torch.arange(1000.0))
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        entry = next(i for i in z.infolist() if i.file_size == 4000)
    start = zip_data_offset(data, entry)
    data[start + 100:start + 104] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    assert torch.isnan(torch.load(path, map_location="cpu", weights_only=True)["w"][25])  # (torch reads it as NaN)
    with pytest.raises(InputError, match=rf"^{path}: checkpoint is damaged: the data of its entry \S+/data/0 fails its "
                                         r"CRC check$"):
        load_torch(path)


def test_a_run_resumed_with_another_save_interval_keeps_one_last_ckpt_and_one_step_file(tiny_cache, tmp_path):
    """Lightning keys the checkpoint callback's state by its save interval: resumed with another
    model.output.save_every_n_steps, the run found no state, wrote last-v1.ckpt beside a last.ckpt it left at the old
    step (which `radar-train export --ckpt RUN/checkpoints/last.ckpt` then exported) and kept every step file."""
    run = tmp_path / "run"
    assert run_train_cli(tiny_fit_argv(tiny_cache, run, 2, "--trainer.logger", "false")) == 0
    assert run_train_cli(tiny_fit_argv(tiny_cache, run, 4, "--trainer.logger", "false", "--ckpt_path", "last",
                                       "--model.output.save_every_n_steps", "1")) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step-000004.ckpt"]
    assert _ckpt(run, "last.ckpt")["global_step"] == 4
