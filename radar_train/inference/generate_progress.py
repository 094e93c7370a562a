"""radar-generate's work folder: the PNGs go to disk batch by batch (memory stays bounded at any number of
classes × seeds), and the same command, run again after an interruption, generates only the batches whose PNGs
are not all there.

OUTPUT/generate-progress/ holds `settings.json` (the run's settings: what a run that goes on must share) and the
PNGs made so far in vanilla/, accelerated/ and restored/, each written under a temporary name and renamed, so
that a killed run leaves no truncated image. A batch is done when every PNG of its samples is there; a batch
that is not is generated again whole (under `sampling.noise: official` a sample depends on its batch). At the
end grid.png and generate.json are written there and the entries replace an earlier run's in OUTPUT
(outputs.swap_entries); the folder goes.
"""
from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch

from radar_train.outputs import (check_progress_folder, fingerprint_differences, fresh_progress_folder,
                                 naming, other_progress_error, read_progress_json, temp_name)

__all__ = ["PROGRESS_DIR", "LOCK_NAME", "SETTINGS_NAME", "GenerateProgress", "PngBatches", "png_name"]

PNG_THREADS = 4  # (PNG compression releases the GIL: the files of a batch are written in parallel)

PROGRESS_DIR = "generate-progress"
LOCK_NAME = ".generate.lock"
SETTINGS_NAME = "settings.json"
_OURS = {SETTINGS_NAME, "vanilla", "accelerated", "restored", "grid.png", "generate.json", ".replaced"}


def png_name(cls: int, seed: int) -> str:
    return f"class{cls:04d}_seed{seed}.png"


class GenerateProgress:
    """OUTPUT/generate-progress/ of a run with `settings`: `check` (before anything is written), `open`,
    `pending`, `save_png`, then `finish` or `release`."""

    def __init__(self, output: str | os.PathLike, settings: Mapping, folders: Sequence[str]):
        self.output = Path(output)
        self.dir = self.output / PROGRESS_DIR
        self.settings = json.loads(json.dumps(dict(settings), default=str))
        self.folders = list(folders)
        self.created = False
        self.damaged: list[Path] = []  # PNGs found damaged by `pending`

    @staticmethod
    def check_folder(output: str | os.PathLike) -> None:
        """OutputError (one line) if OUTPUT/generate-progress/ exists and is not radar-generate's (`check` says it
        again with the settings; this needs none, so it runs before the models load)."""
        check_progress_folder(Path(output), Path(output) / PROGRESS_DIR, "radar-generate", _OURS.__contains__)

    def check(self, overwrite: bool) -> bool:
        """Whether the run goes on from the folder (False: a fresh start). OutputError (one line) for a folder of
        that name that is not radar-generate's, and for one of other settings without `overwrite`."""
        if not check_progress_folder(self.output, self.dir, "radar-generate", _OURS.__contains__):
            return False
        path = self.dir / SETTINGS_NAME
        if not path.is_file():  # (a run killed while it moved its finished entries out: nothing to go on from)
            return False
        diffs = fingerprint_differences(read_progress_json(path, self.output, self.dir, "radar-generate"),
                                        self.settings)
        if not diffs:
            return True
        if overwrite:
            return False
        raise other_progress_error(self.output, "radar-generate", diffs)

    def open(self, go_on: bool) -> None:
        if go_on:  # a killed run's half-written PNGs (this run holds the folder's lock: no writer is alive)
            for folder in self.folders:
                for leftover in (self.dir / folder).glob(".*.png.tmp-*"):
                    leftover.unlink(missing_ok=True)
            return
        fresh_progress_folder(self.dir, SETTINGS_NAME, self.settings)
        self.created = True

    def path(self, folder: str, cls: int, seed: int) -> Path:
        return self.dir / folder / png_name(cls, seed)

    def pending(self, batches: Sequence[Sequence[tuple[int, int]]]) -> list[int]:
        """The indices of the batches some PNG of which is missing or damaged (`damaged` lists those: they are
        generated again with their batch)."""
        self.damaged = []
        return [i for i, batch in enumerate(batches)
                if not all([self._whole(self.path(f, c, s)) for f in self.folders for c, s in batch])]  # (each file)

    def _whole(self, path: Path) -> bool:
        """Whether `path` is a PNG that reads whole. Each is renamed into place once written, but a lost node or a
        power cut before the data reached the disk can leave one empty or cut short; resumed on, it stopped the run
        at its end (radar-generate's grid reads it) or was handed out as an output."""
        from PIL import Image

        if not path.is_file():
            return False
        try:
            with Image.open(path) as im:
                im.verify()  # (every chunk and its CRC, without decoding)
            return True
        except (OSError, SyntaxError, ValueError):  # (PIL's error for a damaged chunk is a SyntaxError)
            self.damaged.append(path)
            return False

    def save_png(self, image: torch.Tensor, folder: str, cls: int, seed: int) -> None:
        """One uint8 image (3, H, W), written whole or not at all. (Not outputs.atomic_file: it scans the folder
        for a killed writer's temporaries at every file, thousands of times here; `open` clears them once.)"""
        from radar_train.images import to_pil

        final = self.path(folder, cls, seed)
        final.parent.mkdir(exist_ok=True)
        tmp = temp_name(final)
        try:
            with naming(final):  # (a full disk: said of the PNG, not of no file)
                to_pil(image).save(tmp, format="PNG")
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def load_png(self, folder: str, cls: int, seed: int) -> torch.Tensor:
        from radar_train.images import load_rgb

        return load_rgb(self.path(folder, cls, seed))

    def release(self, made_any: bool) -> None:
        """The run stopped: the folder stays for the next run, unless this run made it and wrote no image."""
        if self.created and not made_any:
            shutil.rmtree(self.dir, ignore_errors=True)

    def finish(self, entries: Sequence[str], overwrite: bool = True) -> None:
        """The folder's entries replace an earlier run's in OUTPUT (without `overwrite`, none that appeared there
        since the command's check: OutputError, the folder kept to go on from); the folder goes."""
        from radar_train.outputs import swap_entries

        swap_entries(self.dir, self.output, entries, overwrite)
        (self.dir / SETTINGS_NAME).unlink()  # (no longer a folder to go on from)
        shutil.rmtree(self.dir, ignore_errors=True)


class PngBatches:
    """Writes a batch's PNGs (`GenerateProgress.save_png`) on PNG_THREADS threads while the next batch runs on the
    device: a PNG takes about 9 ms to compress at 256 px (2026-12-05, this machine's CPU), so three columns of 32
    took about as long as the GPU takes for the batch, and the GPU waited for them. `submit(images, chunk)` the
    batch's images (uint8 on the host, by folder) once they are there, `settle()` before the next submit: it waits
    for the previous batch's files and returns its sample count (0 if none; the first failed save's error is raised
    once all of them ended). Leaving the `with` block waits for a batch still being written: `late` is its sample
    count if all of its files were written (a run stopped meanwhile counts them), else 0."""

    def __init__(self, work: GenerateProgress, threads: int = PNG_THREADS):
        self.work = work
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="radar-png")
        self._pending: Optional[tuple[list, int]] = None
        self.late = 0
        self.on_late: Optional[Callable[[int], None]] = None  # given `late` when the block is left (a progress bar)

    def submit(self, images: Mapping[str, torch.Tensor], chunk: Sequence[tuple[int, int]]) -> None:
        if self._pending is not None:
            raise RuntimeError("settle() the previous batch first")
        futures = [self.pool.submit(self.work.save_png, img, folder, c, s)
                   for folder, imgs in images.items() for (c, s), img in zip(chunk, imgs)]
        self._pending = (futures, len(chunk))

    def _finish(self) -> tuple[list, int]:
        """The pending batch's futures, all ended, and its sample count (none: [], 0); nothing is pending after."""
        if self._pending is None:
            return [], 0
        (futures, n), self._pending = self._pending, None
        wait(futures)
        return futures, n

    def settle(self) -> int:
        futures, n = self._finish()
        for f in futures:
            f.result()  # (raises the save's error)
        return n

    def __enter__(self) -> "PngBatches":
        return self

    def __exit__(self, *exc) -> None:
        try:
            futures, n = self._finish()
            self.late = n if all(f.exception() is None for f in futures) else 0
        finally:
            self.pool.shutdown(wait=True)
        if self.late and self.on_late is not None:
            self.on_late(self.late)
