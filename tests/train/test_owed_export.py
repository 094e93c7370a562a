"""A step export or final/ that a kill (or a SLURM requeue save) cut off is written when the run resumes.

Without a validation at an export step, the run's checkpoint of that step is saved (a callback) before the
module exports step-NNNNNN/ (its own end-of-step hook): a run killed between the two resumes past the step.
The state on disk after such a kill is made here by removing the export after a run that ended at the step;
the resumed run must write it again, with the same tensors (with model.ema, the average)."""
from __future__ import annotations

import shutil

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import load_file

from radar_train.train.ema import EmaArgs
from radar_train.train.module import OutputArgs, RadarLoraModule
from radar_train.train.optim import OptimArgs


def _fit(root, steps: int, loader, ema: EmaArgs, ckpt_path=None) -> None:
    torch.manual_seed(0)
    module = RadarLoraModule(optim=OptimArgs(learning_rate=1e-2, warmup_steps=1, schedule_steps=4),
                             output=OutputArgs(save_every_n_steps=2, export_every_n_steps=2), ema=ema)
    trainer = pl.Trainer(default_root_dir=str(root), accelerator="cpu", devices=1, precision="32-true",
                         max_steps=steps, enable_progress_bar=False, enable_model_summary=False, logger=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, loader(), ckpt_path=ckpt_path)


def _same(folder, want: dict) -> None:
    got = load_file(str(folder / "adapter_model.safetensors"))
    assert got.keys() == want.keys() and want
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("ema", [EmaArgs(), EmaArgs(decay=0.5)], ids=["plain", "ema"])
def test_a_resumed_run_writes_the_exports_its_checkpoint_owes(tmp_path, make_loader, ema):
    _fit(tmp_path, 2, make_loader, ema)
    export, final, last = tmp_path / "step-000002", tmp_path / "final", str(tmp_path / "checkpoints" / "last.ckpt")
    want, want_final = (load_file(str(f / "adapter_model.safetensors")) for f in (export, final))
    # what a kill between the last step's checkpoint and its exports leaves: resumed at its end, Lightning runs
    # no training loop (no on_train_start / on_train_end), and the run wrote neither, ever again
    shutil.rmtree(export)
    shutil.rmtree(final)
    _fit(tmp_path, 2, make_loader, ema, ckpt_path=last)
    _same(export, want)
    _same(final, want_final)

    shutil.rmtree(export)  # a kill between a step's checkpoint and its export, the run then going on
    _fit(tmp_path, 4, make_loader, ema, ckpt_path=last)
    _same(export, want)
    assert (tmp_path / "step-000004").is_dir()


def test_a_resumed_run_leaves_an_existing_step_export_alone(tmp_path, make_loader):
    _fit(tmp_path, 2, make_loader, EmaArgs())
    files = sorted(p for p in (tmp_path / "step-000002").iterdir())
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    _fit(tmp_path, 4, make_loader, EmaArgs(), ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before


@pytest.mark.parametrize("ema", [EmaArgs(), EmaArgs(decay=0.5)], ids=["plain", "ema"])
def test_a_run_continued_and_killed_before_its_final_export_replaces_the_earlier_ends_final(tmp_path, make_loader,
                                                                                            ema):
    """A run ended at step 2 (final/ of step 2), continued to step 4 and killed between its last checkpoint and
    final/'s export: the resume ended at once with exit 0 and kept step 2's final/ as the run's adapter."""
    from radar_train.export.adapter import read_radar_config, run_step_of

    _fit(tmp_path, 2, make_loader, ema)
    final, last = tmp_path / "final", str(tmp_path / "checkpoints" / "last.ckpt")
    shutil.copytree(final, tmp_path / "final_of_step_2")
    shutil.copy(last, tmp_path / "step_2.ckpt")
    _fit(tmp_path, 4, make_loader, ema, ckpt_path=last)
    want = load_file(str(final / "adapter_model.safetensors"))
    shutil.rmtree(final)  # what the kill leaves: step 4 saved, final/ still the earlier end's
    shutil.copytree(tmp_path / "final_of_step_2", final)
    assert run_step_of(final) == 2
    _fit(tmp_path, 4, make_loader, ema, ckpt_path=last)
    _same(final, want)
    assert read_radar_config(final)["global_step"] == run_step_of(final) == 4

    files = sorted(final.iterdir())  # final/ of the step: left alone by another resume at the end
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    _fit(tmp_path, 4, make_loader, ema, ckpt_path=last)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(final.iterdir())} == before
    # and so is a final/ of a later step, by a resume at the end of an earlier one (a checkpoint kept by hand)
    _fit(tmp_path, 2, make_loader, ema, ckpt_path=str(tmp_path / "step_2.ckpt"))
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(final.iterdir())} == before
