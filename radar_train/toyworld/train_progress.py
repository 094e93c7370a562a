"""radar-toy train's progress folder: the same command, run again after an interruption, goes on from the
stage it was in instead of from the start.

OUTPUT/toy-train-progress/ holds `recipe.json` (the recipe of the run: what a run that goes on must share) and,
for each stage done, the trained model in float32 (`vqvae.safetensors`, `var.safetensors`: the exact weights
the next stages were given, not the float16 files the run writes at the end) with its metrics (`vqvae.json`,
`var.json`, written after the weights: a stage is done once its JSON is there). Each stage seeds itself from
the recipe, so a run that goes on ends with the bytes an uninterrupted run writes. The classifier, the last
stage, is not saved here: the run's files follow it at once. The folder goes when the run's files are in place.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Mapping

import torch

from radar_train.code_identity import code_digest
from radar_train.models import save_weights
from radar_train.outputs import (OutputError, check_progress_folder, fingerprint_differences, fresh_progress_folder,
                                 other_progress_error, read_progress_json, write_text_atomic)

__all__ = ["PROGRESS_DIR", "LOCK_NAME", "STAGES", "ToyTrainProgress"]

PROGRESS_DIR = "toy-train-progress"
LOCK_NAME = ".toy-train.lock"
RECIPE_NAME = "recipe.json"
STAGES = {"vqvae": "VQ-VAE", "var": "VAR"}  # the stages saved, in order: what each is called in messages
NEXT = {"vqvae": "the VAR", "var": "the classifier"}
_OURS = {RECIPE_NAME} | {f"{s}.{ext}" for s in STAGES for ext in ("safetensors", "json")}


def _flat(d: Mapping, prefix: str = "") -> dict:
    """{"vqvae.steps": 600, ...}: the recipe's settings by their option names (without --recipe.)."""
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


class ToyTrainProgress:
    """OUTPUT/toy-train-progress/ of a run of `recipe` (the recipe as a dict): `check` (before anything is
    written), `open`, `load` / `save` per stage, then `finish` or `release`."""

    def __init__(self, output: str | Path, recipe: Mapping):
        self.output = Path(output)
        self.dir = self.output / PROGRESS_DIR
        self.recipe = _flat(json.loads(json.dumps(dict(recipe))))
        # the code that trains the stages (the version string is the same at every commit between releases): a
        # stage another radar_train or torch saved would make other bytes than an uninterrupted run's
        self.code = {"radar_train_code": code_digest(), "torch": torch.__version__}
        self.created = False

    def check(self, overwrite: bool) -> bool:
        """Whether the run goes on from the folder (False: a fresh start). OutputError (one line) for a folder of
        that name that is not radar-toy train's, and for one of another recipe without `overwrite`."""
        if not check_progress_folder(self.output, self.dir, "radar-toy train", _OURS.__contains__):
            return False
        path = self.dir / RECIPE_NAME
        if not path.is_file():  # (a run killed while it removed the folder at its end: nothing to go on from)
            return False
        stored = read_progress_json(path, self.output, self.dir, "radar-toy train")
        code = {k: stored.pop(k, None) for k in self.code}  # (None: saved before it was recorded, 2026-12-07)
        diffs = fingerprint_differences(stored, self.recipe, prefix="--recipe.") + fingerprint_differences(
            code, self.code)
        if not diffs:
            return True
        if overwrite:
            return False
        raise other_progress_error(self.output, "radar-toy train", diffs, of="of another recipe", what="recipe")

    def open(self, go_on: bool) -> None:
        if go_on:
            return
        fresh_progress_folder(self.dir, RECIPE_NAME, {**self.recipe, **self.code})
        self.created = True

    def done(self) -> list[str]:
        """The stages saved, in order (a later one counts only after every earlier one)."""
        saved = []
        for stage in STAGES:
            if not ((self.dir / f"{stage}.json").is_file() and (self.dir / f"{stage}.safetensors").is_file()):
                break
            saved.append(stage)
        return saved

    def load(self, stage: str, model: torch.nn.Module, device: torch.device | str) -> tuple[torch.nn.Module, dict]:
        """(model, metrics) of a stage `done`: its weights loaded into `model` (a fresh one of the stage's config),
        on `device`, in eval mode."""
        from safetensors.torch import load_file

        try:
            model.load_state_dict(load_file(self.dir / f"{stage}.safetensors"))
            metrics = json.loads((self.dir / f"{stage}.json").read_text(encoding="utf-8"))
        except Exception as e:  # (written whole by this module: only a file changed since is unreadable)
            raise OutputError(f"--output {self.output}: the saved {STAGES[stage]} in {self.dir} cannot be read "
                              f"({type(e).__name__}: {str(e)[:160]}): remove {self.dir} to start over") from None
        return model.to(device).eval(), metrics

    def save(self, stage: str, model: torch.nn.Module, metrics: Mapping) -> None:
        """The stage's trained model (float32, exactly) and its metrics; the JSON last: it marks the stage done."""
        save_weights({k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()},
                     self.dir / f"{stage}.safetensors", metadata={"format": "pt", "toyworld": stage})
        write_text_atomic(self.dir / f"{stage}.json", json.dumps(dict(metrics), indent=1) + "\n")

    def said(self) -> str:
        """What an interrupted run kept, for its last line."""
        saved = self.done()
        if not saved:
            return "no stage was done"
        names = " and ".join(STAGES[s] for s in saved)
        return f"the trained {names} {'is' if len(saved) == 1 else 'are'} in {self.dir}: run the same command to " \
               f"go on from {NEXT[saved[-1]]}"

    def release(self) -> None:
        """The run stopped: the folder stays for the next run, unless this run made it and saved no stage."""
        if self.created and not self.done():
            shutil.rmtree(self.dir, ignore_errors=True)

    def finish(self) -> None:
        """The run's files are in place: the folder goes (its recipe first: no longer a folder to go on from)."""
        (self.dir / RECIPE_NAME).unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)
