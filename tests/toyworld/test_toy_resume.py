"""radar-toy train goes on from the stage it was in: a run stopped in the VAR or the classifier (an error, SIGTERM)
keeps the trained VQ-VAE (and VAR) in OUTPUT/toy-train-progress/, and the same command ends with the bytes of an
uninterrupted run without training them again; a progress folder of another recipe is refused without
--overwrite."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_checks import assert_one_line_error, assert_unchanged, call_cli, snapshot

from radar_train.models import file_sha256
from radar_train.outputs import OutputError
from radar_train.toyworld import recipe as recipe_mod
from radar_train.toyworld.classifier import ClassifierTrainConfig
from radar_train.toyworld.preset import CLASSIFIER_FILE, INFO_FILE, VAE_FILE, VAR_FILE
from radar_train.toyworld.recipe import ToyTrainConfig, train_all
from radar_train.toyworld.train_progress import PROGRESS_DIR
from radar_train.toyworld.train_var import VARTrainConfig
from radar_train.toyworld.train_vqvae import VQVAETrainConfig

WEIGHTS = (VAE_FILE, VAR_FILE, CLASSIFIER_FILE)
ROOT = Path(__file__).resolve().parents[2]
VAR_STEPS = 25  # batches of 4: about 2 s (13 steps/s here), while the test sends SIGTERM within ms of the VQ-VAE's save


def _tiny(**kw) -> ToyTrainConfig:
    return ToyTrainConfig(num_threads=1, num_train_images=24, num_heldout_images=4,
                          vqvae=VQVAETrainConfig(steps=3, batch_size=4, warmup_steps=1),
                          var=VARTrainConfig(steps=3, batch_size=4, warmup_steps=1),
                          classifier=ClassifierTrainConfig(steps=3, batch_size=4, warmup_steps=1, recon_images=8), **kw)


def _hashes(folder: Path) -> dict:
    return {name: file_sha256(folder / name) for name in WEIGHTS}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("whole")
    threads = torch.get_num_threads()
    try:
        info = train_all(_tiny(), out)
    finally:
        torch.set_num_threads(threads)  # (the recipe's num_threads)
    assert info["resumed_stages"] == [] and not (out / PROGRESS_DIR).exists()
    return _hashes(out)


def _fails(what: str):
    def stand_in(*a, **k):
        raise RuntimeError(f"{what} failed")
    return stand_in


@pytest.mark.parametrize("stopped_in,kept", [("train_var", ["vqvae"]), ("train_classifier", ["vqvae", "var"])])
def test_a_run_that_failed_goes_on_from_its_stage_to_the_uninterrupted_files(uninterrupted, tmp_path, monkeypatch,
                                                                             stopped_in, kept):
    out = tmp_path / "weights"
    with monkeypatch.context() as m:
        m.setattr(recipe_mod, stopped_in, _fails(stopped_in))
        with pytest.raises(RuntimeError, match=f"{stopped_in} failed"):
            train_all(_tiny(), out)
    progress = out / PROGRESS_DIR
    assert sorted(p.name for p in out.iterdir()) == [PROGRESS_DIR]  # no weights file, no lock, no staging folder
    assert sorted(p.name for p in progress.iterdir()) == sorted(
        ["recipe.json"] + [f"{s}.{ext}" for s in kept for ext in ("safetensors", "json")])

    for stage in kept:  # what was saved is not trained again
        monkeypatch.setattr(recipe_mod, f"train_{stage}", _fails(f"train_{stage} (again)"))
    info = train_all(_tiny(), out)
    assert info["resumed_stages"] == kept
    assert _hashes(out) == uninterrupted and info["files"] == uninterrupted
    assert sorted(p.name for p in out.iterdir()) == sorted([*WEIGHTS, INFO_FILE])
    saved = json.loads((out / INFO_FILE).read_text())["metrics"]
    assert saved["vqvae"]["steps"] == 3 and "psnr_db" in saved["vqvae"] and saved["var"]["steps"] == 3


def test_a_run_that_failed_before_a_stage_was_done_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(recipe_mod, "train_vqvae", _fails("train_vqvae"))
    with pytest.raises(RuntimeError):
        train_all(_tiny(), tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def _stopped_in_the_var(out: Path, monkeypatch) -> None:
    """A run of _tiny() into `out` that failed in the VAR: its progress holds the VQ-VAE."""
    with monkeypatch.context() as m:
        m.setattr(recipe_mod, "train_var", _fails("train_var"))
        with pytest.raises(RuntimeError):
            train_all(_tiny(), out)


def test_the_progress_of_another_recipe_is_refused_without_overwrite(tmp_path, monkeypatch):
    out = tmp_path / "weights"
    _stopped_in_the_var(out, monkeypatch)
    before = snapshot(tmp_path)
    other = _tiny(seed=1)
    with pytest.raises(OutputError, match=r"holds the progress of a radar-toy train run of another recipe "
                                          r"\(--recipe\.seed: 0 vs 1, saved vs now\).*--overwrite"):
        train_all(other, out)
    assert_unchanged(before, snapshot(tmp_path))
    # with --overwrite the run starts over: the VQ-VAE is trained again (here it fails), the progress went
    monkeypatch.setattr(recipe_mod, "train_vqvae", _fails("train_vqvae (again)"))
    with pytest.raises(RuntimeError, match=r"train_vqvae \(again\) failed"):
        train_all(other, out, overwrite=True)
    assert list(out.iterdir()) == []  # (the folder was there before this run: it stays)


def test_the_progress_another_radar_train_saved_is_refused_naming_the_installation(tmp_path, monkeypatch):
    """The version string is the same at every commit between releases: a stage another code trained would make
    other bytes than an uninterrupted run's."""
    import radar_train.toyworld.train_progress as progress_mod

    out = tmp_path / "weights"
    _stopped_in_the_var(out, monkeypatch)
    before = snapshot(tmp_path)
    monkeypatch.setattr(progress_mod, "code_digest", lambda: "0123456789abcdef")
    with pytest.raises(OutputError, match=r"of another recipe \(radar_train_code: \"[0-9a-f]{16}\" vs "
                                          r"\"0123456789abcdef\", saved vs now\): it was saved by another radar_train "
                                          r"or torch, whose outputs can differ: go on with that installation"):
        train_all(_tiny(), out)
    assert_unchanged(before, snapshot(tmp_path))


def test_the_files_dtype_is_not_part_of_the_recipe_a_run_goes_on_with(tmp_path, monkeypatch):
    out = tmp_path / "weights"
    _stopped_in_the_var(out, monkeypatch)
    info = train_all(_tiny(weights_dtype="float32"), out)
    assert info["resumed_stages"] == ["vqvae"]


def test_a_saved_stage_changed_since_is_one_line_naming_the_folder(tmp_path, monkeypatch):
    out = tmp_path / "weights"
    _stopped_in_the_var(out, monkeypatch)
    (out / PROGRESS_DIR / "vqvae.safetensors").write_bytes(b"not weights")
    with pytest.raises(OutputError, match=r"the saved VQ-VAE in .*toy-train-progress cannot be read .*: remove .* to "
                                          r"start over"):
        train_all(_tiny(), out)


def test_the_cli_names_the_output_for_a_progress_folder_that_is_not_ours(tmp_path):
    (tmp_path / "out" / PROGRESS_DIR).mkdir(parents=True)
    (tmp_path / "out" / PROGRESS_DIR / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    code, err = call_cli("toy", ["train", "--output", "out", "--recipe.num_train_images", "24"], tmp_path)
    assert code == 2, err
    assert_one_line_error(err, "--output out: out/toy-train-progress holds notes.txt, so it is not radar-toy train "
                               "progress")
    assert_unchanged(before, snapshot(tmp_path))


def test_sigterm_in_the_var_stage_exits_143_and_the_same_command_goes_on(tmp_path):
    """A real radar-toy train process, sent SIGTERM once the VQ-VAE is saved (the VAR's VAR_STEPS take seconds)."""
    output = tmp_path / "out"
    cmd = [sys.executable, "-m", "radar_train.cli.toy", "train", "--output", str(output),
           "--recipe.num_threads", "1", "--recipe.num_train_images", "24", "--recipe.num_heldout_images", "4",
           "--recipe.vqvae.steps", "3", "--recipe.vqvae.batch_size", "4", "--recipe.vqvae.warmup_steps", "1",
           "--recipe.var.steps", str(VAR_STEPS), "--recipe.var.batch_size", "4", "--recipe.var.warmup_steps", "1",
           "--recipe.classifier.steps", "3", "--recipe.classifier.batch_size", "4",
           "--recipe.classifier.warmup_steps", "1", "--recipe.classifier.recon_images", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    saved = output / PROGRESS_DIR / "vqvae.json"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not saved.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert saved.is_file(), proc.communicate(timeout=60)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert (f"radar-toy train: stopped by SIGTERM; the trained VQ-VAE is in {output / PROGRESS_DIR}: run the same "
            f"command to go on from the VAR") in err, err
    assert sorted(p.name for p in output.iterdir()) == [PROGRESS_DIR]
    assert sorted(p.name for p in (output / PROGRESS_DIR).iterdir()) == ["recipe.json", "vqvae.json",
                                                                         "vqvae.safetensors"]
    # another recipe is refused, naming what differs; the same command goes on from the VAR
    code, err = call_cli("toy", ["train", *cmd[cmd.index("--output"):], "--recipe.var.steps", "3"], tmp_path)
    assert code == 2 and f"--recipe.var.steps: {VAR_STEPS} vs 3" in err, err
    code, err = call_cli("toy", cmd[cmd.index("train"):], tmp_path)  # (in this process: no second start-up)
    assert code == 0, err[-2000:]
    assert json.loads((output / INFO_FILE).read_text())["resumed_stages"] == ["vqvae"]
    assert sorted(p.name for p in output.iterdir()) == sorted([*WEIGHTS, INFO_FILE])
