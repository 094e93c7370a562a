"""radar-fid's progress folder: what a run keeps so that the same command, run again, goes on from where an
interrupted one stopped (a SLURM time limit or preemption, a lost node, Ctrl-C, an error) instead of
generating its samples again (50,000 per run, three runs: hours of GPU time).

OUTPUT/fid-progress/ holds

    state.safetensors            the commit point, replaced whole (a temporary file renamed): the sample count
                                 done, the run's settings (`fingerprint`) and, per run, the sums of its FID
                                 statistics (`sum/<run>` (D,), `outer/<run>` (D, D), float64)
    logits_<run>.f32             --inception_logits: the IS logits of the samples so far (float32 rows, appended)
    samples_<run>.npz.partial    --save_npz: the samples so far (NpzImageWriter)
    reference.npz                with a folder as --reference: its statistics (mu, sigma, n) and their key
                                 (fid.reference_key: the folder's files and the extractor), reused by a run that
                                 goes on while the key is the same
    part-I-of-N/                 with workers: worker I's own folder of the above (but reference.npz)
    merged/                      with workers: the merge of their samples archives (fid_merge.py), which takes
                                 each part's archive of a run as it goes

A save makes the appended files durable first (flush, fsync), then replaces state.safetensors. So the appended
files hold at least the rows the state counts; the rows after them (a run killed between the two) are dropped
when the next run goes on. The tally a save writes is the one of the last complete batch (fid.Tally), wherever
the interruption fell. The folder goes once fid.json is in place.

A run goes on from the folder only if its settings are the same (fingerprint: the model and adapter weights,
the method, the sampler, the extractors, the sample count, batch size and base seed, --save_npz, the precision
and the radar_train version); with other settings it is refused, naming what differs, unless --overwrite (the
folder is then an earlier run's output, and goes).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch

from radar_train.inference.fid import Tally
from radar_train.inference.fid_merge import MERGE_DIR, MERGE_STATE, parts_merged
from radar_train.inference.npz import NpzImageWriter, unfinished_exists
from radar_train.outputs import (OutputError, _remove, atomic_file, check_not_link, fingerprint_differences, is_temp_of,
                                 naming, other_progress_error)

__all__ = ["PROGRESS_DIR", "STATE_NAME", "REFERENCE_NAME", "LOCK_NAME", "FidProgress", "cached_reference", "part_name",
           "part_range"]

PROGRESS_DIR = "fid-progress"
STATE_NAME = "state.safetensors"
REFERENCE_NAME = "reference.npz"
LOCK_NAME = ".fid.lock"
FORMAT_VERSION = 1
ALL_RUNS = ("vanilla", "accelerated", "accelerated+adapter")


def _logits_name(run: str) -> str:
    return f"logits_{run.replace('+', '_')}.f32"


def _partial_name(npz_name: str) -> str:
    return f"{npz_name}.partial"


_PART = re.compile(r"^part-\d+-of-\d+$")


def _ours(name: str) -> bool:
    """A file name a run's (or a worker's) progress folder holds."""
    return (name in (STATE_NAME, REFERENCE_NAME) or is_temp_of(name, STATE_NAME) or is_temp_of(name, REFERENCE_NAME)
            or name in {_logits_name(r) for r in ALL_RUNS}
            or name.startswith("samples_") and (name.endswith(".npz.partial") or name.endswith(".npz.partial.old")))


def _ours_merged(name: str) -> bool:
    """A file name of the workers' merge folder (fid_merge)."""
    return (name == MERGE_STATE or is_temp_of(name, MERGE_STATE)
            or name.startswith("samples_") and (name.endswith(".npz") or name.endswith(".npz.partial")
                                                or name.endswith(".npz.partial.old")))


def _owner(root: Path, rel: Path):
    """The test of the names radar-fid writes in the folder `rel` of the progress root (None: none are)."""
    if rel == Path("."):
        return lambda n: _ours(n) or _PART.match(n) or n == MERGE_DIR
    if len(rel.parts) == 1 and _PART.match(rel.name):
        return _ours
    if rel == Path(MERGE_DIR):
        return _ours_merged
    return None


def foreign_entries(root: Path) -> list[str]:
    """The entries under the progress folder `root` that radar-fid does not write (a user's files: refused, never
    removed), relative to it; a link counts as foreign. Entries that go while it looks (another worker's merge
    removing the folder) are skipped."""
    out = []

    def walk(folder: Path) -> None:
        rel = folder.relative_to(root)
        test = _owner(root, rel)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for e in entries:
            name = (rel / e.name).as_posix()
            try:
                link, is_dir = e.is_symlink(), e.is_dir(follow_symlinks=False)
            except FileNotFoundError:
                continue
            sub = _owner(root, rel / e.name)
            if link or test is None or not test(e.name) or (is_dir and sub is None):
                out.append(name)
            elif is_dir:
                walk(Path(e.path))
            elif sub is not None and rel == Path("."):  # (a file named part-... or merged)
                out.append(name)

    if root.is_dir() and not root.is_symlink():
        walk(root)
    return out


def remove_ours(folder: Path, root: Path) -> list[str]:
    """Remove what radar-fid wrote in `folder` (inside the progress folder `root`, or `root` itself), then the
    folders left empty; what it did not write stays (returned, relative to `root`). Entries that go meanwhile
    (another worker's merge) are no error."""
    if not folder.is_dir() or folder.is_symlink():
        return []
    left = set(foreign_entries(root))
    prefix = folder.relative_to(root).as_posix()
    try:
        paths = sorted(folder.rglob("*"), key=lambda q: len(q.parts), reverse=True)
    except FileNotFoundError:
        paths = []
    for path in paths + [folder]:
        rel = path.relative_to(root).as_posix()
        if rel in left or any(rel.startswith(f"{f}/") for f in left):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                if not any(path.iterdir()):
                    path.rmdir()
            elif (test := _owner(root, path.parent.relative_to(root))) is not None and test(path.name):
                path.unlink()  # (a name of ours: again, for a file put there after `left` was made)
        except FileNotFoundError:
            pass
    return sorted(f for f in left if prefix == "." or f == prefix or f.startswith(f"{prefix}/"))


def cached_reference(output: str | os.PathLike, key: str):
    """The reference statistics an earlier run into `output` kept under `key` (fid-progress/reference.npz), or
    None (none kept, another key, or unreadable: they are computed again). Reads only."""
    from radar_train.inference.fid import GaussianStats

    path = Path(output) / PROGRESS_DIR / REFERENCE_NAME
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return GaussianStats.from_moments(z["mu"], z["sigma"], int(z["n"]))
    except (OSError, KeyError, ValueError, EOFError):
        return None


def part_name(index: int, count: int) -> str:
    return f"part-{index}-of-{count}"


def run_lock_name(part: Optional[tuple[int, int]]) -> str:
    """The lock a run holds in OUTPUT: LOCK_NAME for one run (and the merge of the parts), a worker's own for its
    part (index, count)."""
    return LOCK_NAME if part is None else f".fid.{part_name(*part)}.lock"


def part_range(num_samples: int, batch_size: int, index: int, count: int) -> tuple[int, int]:
    """Samples first .. stop - 1 of worker `index` of `count`: a contiguous share of the batches of a run of all
    the samples (the same batches, so that under official noise every sample is the one that run would make)."""
    batches = -(-num_samples // batch_size)
    return (min(index * batches // count * batch_size, num_samples),
            min((index + 1) * batches // count * batch_size, num_samples))


class FidProgress:
    """The progress folder of one radar-fid run in `output`: `check` (before anything is written), `open`
    (a fresh start, or the tally to go on from), `save`, then `finish_npz` and `remove`, or `release`. `part`
    (index, count): worker `index` of `count`, whose `num_samples` are its share, in PROGRESS_DIR/part-I-of-N/."""

    def __init__(self, output: str | os.PathLike, fingerprint: Mapping, runs: list[str], npz_names: Mapping[str, str],
                 num_samples: int, image_size: int, part: Optional[tuple[int, int]] = None):
        self.output = Path(output)
        self.root = self.output / PROGRESS_DIR
        self.part = part
        self.dir = self.root if part is None else self.root / part_name(*part)
        self._stale: list[str] = []
        self.fingerprint = json.loads(json.dumps(dict(fingerprint), default=str))
        self.runs, self.npz_names = list(runs), dict(npz_names)
        self.num_samples, self.image_size = int(num_samples), int(image_size)
        self.writers: dict[str, NpzImageWriter] = {}
        self.resumed_at: list[int] = []
        self.seconds_before = 0.0
        self.created = False
        self._logit_files: dict[str, object] = {}
        self._logits_saved: dict[str, tuple[int, int]] = {}  # run -> (chunks of its tally, bytes of its file)
        self._logit_dim: Optional[int] = None
        self._saved_done: Optional[int] = None

    @property
    def lock_name(self) -> str:
        """The lock this run holds in OUTPUT (a worker's own; the merge of the parts takes LOCK_NAME)."""
        return run_lock_name(self.part)

    # ------------------------------------------------------------------ before anything is written
    def _layout_conflicts(self) -> list[str]:
        """The root's entries of a run with another worker count: a single run's files, or other parts."""
        try:
            names = [e.name for e in self.root.iterdir()]
        except (FileNotFoundError, NotADirectoryError):
            return []
        parts = [n for n in names if n.startswith("part-")]
        if self.part is None:
            return parts + [n for n in names if n == MERGE_DIR]
        mine = f"-of-{self.part[1]}"
        return [n for n in parts if not n.endswith(mine)] + [n for n in names if _ours(n) and n != REFERENCE_NAME
                                                             and not is_temp_of(n, REFERENCE_NAME)]

    def _read_meta(self) -> dict:
        from safetensors import safe_open

        path = self.dir / STATE_NAME
        try:
            with safe_open(str(path), "pt") as f:
                meta = dict(f.metadata() or {})
            meta["fingerprint"] = json.loads(meta["fingerprint"])
            meta["done"] = int(meta["done"])
        except Exception as e:  # noqa: BLE001 - damaged or foreign: one line naming the file
            raise OutputError(f"--output {self.output}: {path} cannot be read as radar-fid progress "
                              f"({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}): remove "
                              f"{self.dir} to start over") from None
        version = meta.get("format_version")
        if version is None or not version.isdigit():
            raise OutputError(f"--output {self.output}: {path} records no format version ({version!r}): not "
                              f"progress radar-fid wrote; remove {self.dir} to start over")
        if int(version) > FORMAT_VERSION:
            raise OutputError(f"--output {self.output}: {path} is radar-fid progress of format {version}, newer than "
                              f"this radar_train reads ({FORMAT_VERSION}): upgrade radar_train, or remove {self.dir} "
                              f"to start over")
        return meta

    def check(self, overwrite: bool) -> int:
        """The sample this run goes on from (0: a fresh start). OutputError (one line) for a folder of that name
        that is not radar-fid progress, and for progress of other settings without `overwrite`."""
        for folder in (self.root, self.dir, self.root / MERGE_DIR):
            check_not_link(self.output, folder, "radar-fid")
        if (self.root.exists() or self.root.is_symlink()) and not self.root.is_dir():
            raise OutputError(f"--output {self.output}: {self.root} is not a folder of radar-fid progress: move it "
                              f"away, or choose another folder")
        foreign = foreign_entries(self.root)  # (a worker's merge removes the whole folder: none may be a user's)
        if foreign:
            raise OutputError(f"--output {self.output}: {self.root} holds {', '.join(foreign[:3])}, so it is not "
                              f"radar-fid progress: move it away, or choose another folder")
        conflicts = self._layout_conflicts()
        if conflicts and not overwrite:
            theirs = sorted({c.rsplit("-of-", 1)[1] if c.startswith("part-") else "1" for c in conflicts
                             if c != MERGE_DIR} or {"?"})
            raise OutputError(f"--output {self.output} holds the progress of a radar-fid run with other settings "
                              f"(num_workers: {' / '.join(theirs)} vs {1 if self.part is None else self.part[1]}, "
                              f"saved vs now; {', '.join(sorted(conflicts)[:3])} in {self.root}): give its settings to "
                              f"go on with it, or pass --overwrite to start over (its progress goes)")
        self._stale = conflicts
        if not (self.dir.exists() or self.dir.is_symlink()):
            return 0
        if not self.dir.is_dir():
            raise OutputError(f"--output {self.output}: {self.dir} is not a folder of radar-fid progress: move it "
                              f"away, or choose another folder")
        if not (self.dir / STATE_NAME).is_file():
            return 0  # a run stopped before its first save: nothing to go on from
        meta = self._read_meta()
        diffs = fingerprint_differences(meta["fingerprint"], self.fingerprint)
        if diffs:
            if overwrite:
                return 0
            raise other_progress_error(self.output, "radar-fid", diffs)
        # a finished share's samples that the workers' merge has taken are in merged/, not here
        taken = parts_merged(self.root) if self.part is not None and meta["done"] == self.num_samples else {}
        merged = {n for n, parts in taken.items() if parts > self.part[0]}
        missing = [_partial_name(n) for n in self.npz_names.values()
                   if not unfinished_exists(self.dir / _partial_name(n)) and n not in merged]
        if missing and meta["done"]:
            raise OutputError(f"--output {self.output}: {self.dir} lacks {', '.join(missing)}, which its progress "
                              f"records: remove {self.dir} to start over")
        return meta["done"]

    def keep_reference(self, stats, key: str) -> None:
        """Keep the reference statistics computed from a folder, for a run that goes on (after `open`)."""
        with atomic_file(self.root / REFERENCE_NAME) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, mu=stats.mu.numpy(), sigma=stats.sigma.numpy(), n=np.int64(stats.n), key=np.array(key))

    # ------------------------------------------------------------------ start
    def open(self, resume_at: int) -> Tally:
        """Create the folder (a fresh start: what an earlier run left there goes) or read it; the tally to go
        on from, with the samples files open at that sample."""
        for name in self._stale:  # (an earlier run's of another worker count, with --overwrite)
            if (self.root / name).is_dir():
                remove_ours(self.root / name, self.root)
            else:
                _remove(self.root / name)
        if not resume_at:
            if self.dir.is_dir():  # (checked: radar-fid's files only; the parts of a single run's folder are stale)
                remove_ours(self.dir, self.root)
            self.dir.mkdir(parents=True, exist_ok=True)
            self.created = True
            self._logits_saved = {r: (0, 0) for r in self.runs}
            self._open_files(0)
            return Tally()
        meta = self._read_meta()
        tally = self._load(meta, cut=True)
        done, logits = tally.done, tally.logits
        self.resumed_at = json.loads(meta.get("resumed_at", "[]")) + [done]
        self.seconds_before = float(meta.get("seconds", 0.0))
        self._logits_saved = {r: (len(logits[r]), done * self._logit_dim * 4) if r in logits else (0, 0)
                              for r in self.runs}
        if not (self.part is not None and done == self.num_samples):  # (a finished part writes no more samples:
            self._open_files(done)                                         # its files stay as they are for the merge)
        self._saved_done = done
        return tally

    def _load(self, meta: dict, cut: bool) -> Tally:
        """The saved tally (its logits cut back to its count on disk too, with `cut`)."""
        from safetensors.torch import load_file

        tensors = load_file(str(self.dir / STATE_NAME))
        done = meta["done"]
        sums = {r: (tensors[f"sum/{r}"], tensors[f"outer/{r}"]) for r in self.runs if f"sum/{r}" in tensors}
        logits = {}
        dim = meta.get("logit_dim")
        if dim is not None:
            self._logit_dim = int(dim)
            for r in self.runs:
                path = self.dir / _logits_name(r)
                need = done * self._logit_dim * 4
                if not path.is_file() or path.stat().st_size < need:
                    raise OutputError(f"--output {self.output}: {path} holds fewer than the {done} rows of logits "
                                      f"its progress records: remove {self.dir} to start over")
                if cut:
                    os.truncate(path, need)
                rows = np.fromfile(path, dtype=np.float32, count=done * self._logit_dim)
                logits[r] = (torch.from_numpy(rows.reshape(done, self._logit_dim)),)
        return Tally(done, sums, logits)

    def finished(self) -> Optional[tuple[Tally, dict]]:
        """(the saved tally, its state's metadata) when this folder holds the whole of its samples with this run's
        settings (a worker's part, read by the merge); None otherwise. Reads only."""
        if self.num_samples == 0:  # (a worker with no batch: more workers than batches)
            return Tally(), {}
        if not (self.dir / STATE_NAME).is_file():
            return None
        meta = self._read_meta()
        if fingerprint_differences(meta["fingerprint"], self.fingerprint) or meta["done"] != self.num_samples:
            return None
        return self._load(meta, cut=False), meta

    def other_settings(self) -> list[str]:
        """The differences of this folder's saved settings from this run's (saved vs now; [] when none is saved
        or they are the same): a worker run with other settings, or an earlier run's part. Reads only."""
        if self.num_samples == 0 or not (self.dir / STATE_NAME).is_file():
            return []
        return fingerprint_differences(self._read_meta()["fingerprint"], self.fingerprint)

    def partial_path(self, run: str) -> Path:
        """The unfinished samples archive of `run` (--save_npz)."""
        return self.dir / _partial_name(self.npz_names[run])

    def _open_files(self, done: int) -> None:
        for r, name in self.npz_names.items():
            self.writers[r] = NpzImageWriter(self.dir / name, self.num_samples, self.image_size,
                                             partial=self.dir / _partial_name(name), resume_at=done)

    @property
    def saved_done(self) -> int:
        """The sample count of the last save (a resumed run's: its start), 0 when nothing is saved."""
        return self._saved_done or 0

    # ------------------------------------------------------------------ during the run
    def save(self, tally: Tally, seconds: float) -> None:
        """Make `tally` (and the samples written so far) the state a later run goes on from."""
        from safetensors.torch import save_file

        if tally.done == (self._saved_done or 0):
            return  # (nothing new; a run that has done nothing saves nothing)
        for r, chunks in tally.logits.items():
            saved_chunks, saved_bytes = self._logits_saved.get(r, (0, 0))
            new = chunks[saved_chunks:]
            if new:
                self._logit_dim = int(new[0].shape[1])
                f = self._logit_files.get(r)
                if f is None:
                    f = self._logit_files[r] = open(self.dir / _logits_name(r), "ab")
                f.truncate(saved_bytes)  # (rows an interrupted save wrote go: they are written again here)
                data = b"".join(c.cpu().contiguous().numpy().astype(np.float32, copy=False).tobytes() for c in new)
                with naming(self.dir / _logits_name(r)):  # (a full disk: said of the file)
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                self._logits_saved[r] = (len(chunks), saved_bytes + len(data))  # (one assignment: both or neither)
        for w in self.writers.values():
            w.sync()
        tensors = {}
        for r, (s, outer) in tally.sums.items():
            tensors[f"sum/{r}"], tensors[f"outer/{r}"] = s.cpu().contiguous(), outer.cpu().contiguous()
        meta = {"format_version": str(FORMAT_VERSION), "done": str(tally.done),
                "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
                "resumed_at": json.dumps(self.resumed_at), "seconds": f"{self.seconds_before + seconds:.2f}"}
        if self._logit_dim is not None:
            meta["logit_dim"] = str(self._logit_dim)
        with atomic_file(self.dir / STATE_NAME) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        self._saved_done = tally.done

    def write_images(self, run: str, images: torch.Tensor) -> None:
        self.writers[run].write(images)

    # ------------------------------------------------------------------ the end
    def finish_npz(self, folder: Path) -> None:
        """Close every samples file into `folder` (a staging folder) under its final name, then drop the state
        (the folder is no longer one to go on from: its samples files left it). A close that fails (a full disk)
        puts the files closed before it back under their unfinished names, the state kept: the same command goes on
        from them (the staging folder, removed on the failure, took them all with it)."""
        closed = []
        try:
            for r, w in self.writers.items():
                w.path = Path(folder) / self.npz_names[r]
                w.close()
                closed.append(w)
        except BaseException:
            for w in closed:
                w.reopen()
            raise
        (self.dir / STATE_NAME).unlink(missing_ok=True)
        self.writers = {}

    def _close_logit_files(self) -> None:
        for f in self._logit_files.values():
            f.close()
        self._logit_files = {}

    def release(self) -> None:
        """Close the open files, leaving the folder for a later run (or removing it when this run created it
        and saved nothing)."""
        self._close_logit_files()
        for w in self.writers.values():
            w.release()
        self.writers = {}
        if self.created and self._saved_done is None:
            remove_ours(self.dir, self.root)
            if self.part is not None:
                try:
                    self.root.rmdir()  # (only when empty)
                except OSError:
                    pass

    def remove(self) -> list[str]:
        """The run is over and its report in place: what radar-fid wrote in the folder goes (with every part's,
        after their merge), and the folder if nothing else is left; returns what was left (a user's files)."""
        self._close_logit_files()
        return remove_ours(self.root, self.root)
