"""The samples archives of radar-fid's workers merged into one run's, with little more disk than the samples.

Each worker leaves its share of every run's samples in its part folder (fid_progress.FidProgress); the merge
builds one archive per run from them, in part order. Building every run's archive beside all the parts held
the samples twice at the end (50,000 samples at 256 px are 9.8 GB a run; three runs, 59 GB at the peak). Here
each part's archive goes as soon as its images are in the merged one, so the merge holds the samples once, plus
the archive being appended from.

A merge that is interrupted (a kill, a full disk) loses nothing: OUTPUT/fid-progress/merged/ holds the
archives being built and `merge.json`, written (fsynced, renamed into place) after each part's images are in
and synced, before that part's archive is deleted: the runs and parts merged so far, and the settings of the
run they belong to. The next merge (the same command, run again) goes on from there: an archive whose run is
not complete keeps its first images where they are (NpzImageWriter's `resume_at`: no copy, no more disk) and
takes the remaining parts. With other settings (a run with --overwrite) the folder is an earlier run's, and goes.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

from radar_train.inference.npz import NpzImageWriter, unfinished_exists
from radar_train.outputs import OutputError, atomic_file

__all__ = ["MERGE_DIR", "MERGE_STATE", "merge_samples", "link_samples", "parts_merged"]

MERGE_DIR = "merged"
MERGE_STATE = "merge.json"


def _read_state(folder: Path, fingerprint: Mapping) -> dict:
    """{npz name: parts merged} of an earlier merge of this run's settings in `folder`; {} (the folder emptied)
    when there is none or it belongs to other settings. OutputError when it cannot be read (it is replaced whole,
    so only something else damages it)."""
    path = folder / MERGE_STATE
    try:
        state = json.loads(path.read_text())
        same = state["fingerprint"] == dict(fingerprint)
        merged = {str(k): int(v) for k, v in state["parts_merged"].items()}
    except FileNotFoundError:
        same, merged = False, {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise OutputError(f"--output {folder.parent.parent}: {path} cannot be read as radar-fid's merge progress "
                          f"({type(e).__name__}): remove {folder.parent} to start over") from None
    if same:
        return merged
    from radar_train.inference.fid_progress import remove_ours

    remove_ours(folder, folder.parent)  # (none, or an earlier run's of other settings: radar-fid's files only)
    folder.mkdir(parents=True, exist_ok=True)
    return {}


def parts_merged(root: Path) -> dict[str, int]:
    """{npz name: parts merged} as an earlier merge in `root` recorded it ({} when there is none or it cannot be
    read): whose archives the merge has taken from the parts' folders."""
    try:
        state = json.loads((Path(root) / MERGE_DIR / MERGE_STATE).read_text())
        return {str(k): int(v) for k, v in state["parts_merged"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_state(folder: Path, fingerprint: Mapping, merged: Mapping[str, int]) -> None:
    with atomic_file(folder / MERGE_STATE) as tmp:
        with open(tmp, "w") as f:
            json.dump({"fingerprint": dict(fingerprint), "parts_merged": dict(merged)}, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())


def merge_samples(root: Path, parts: Sequence, npz_names: Mapping[str, str], num_samples: int, image_size: int,
                  fingerprint: Mapping) -> dict[str, Path]:
    """Every run's archive of `num_samples` images, from the `parts` (FidProgress of each worker, finished; their
    `fingerprint`, JSON's plain types) in order, in `root`/merged/ under its final name: {run: path}. Each part's
    archive of a run is deleted once its images are in the merged one (module docstring). OutputError (one line)
    when a part's archive that is still needed is missing."""
    folder = Path(root) / MERGE_DIR
    merged = _read_state(folder, fingerprint)
    out = {}
    for run, name in npz_names.items():
        path, partial = folder / name, folder / f"{name}.partial"
        out[run] = path
        done = merged.get(name, 0)
        if done == len(parts) and path.is_file():
            continue
        missing = [str(p.partial_path(run)) for p in parts[done:]
                   if p.num_samples and not unfinished_exists(p.partial_path(run))]
        if missing:
            raise OutputError(f"--output {Path(root).parent}: {missing[0]} is missing (its samples are neither in it "
                              f"nor in {folder}): remove {root} to start over")
        if done and not unfinished_exists(partial):
            raise OutputError(f"--output {Path(root).parent}: {partial}, which holds the samples of "
                              f"{done} parts, is missing: remove {root} to start over")
        resume_at = sum(p.num_samples for p in parts[:done])
        try:
            writer = NpzImageWriter(path, num_samples, image_size, partial=partial, resume_at=resume_at)
        except ValueError as e:  # (its first parts' samples are only in it: those parts are sampled again)
            taken = parts[:max(merged.values())]  # (whose archives of some run are only in merged/)
            raise OutputError(f"--output {Path(root).parent}: {e}: remove {folder} and "
                              f"{', '.join(str(p.dir) for p in taken)} and run their workers again (they "
                              f"sample their shares again; the merge then starts over)") from None
        try:
            for j in range(done, len(parts)):
                p = parts[j]
                if p.num_samples:
                    try:
                        writer.append_from(p.partial_path(run), p.num_samples)
                    except ValueError as e:  # (its samples are not what its progress records: sampled again)
                        raise OutputError(f"--output {Path(root).parent}: {e}: remove {p.dir} and run worker "
                                          f"{p.part[0]} again (it samples its share again; the merge then goes on)"
                                          ) from None
                    writer.sync()
                merged[name] = j + 1
                _write_state(folder, fingerprint, merged)
                p.partial_path(run).unlink(missing_ok=True)
            writer.close()
        except BaseException:
            writer.release()  # (kept for the next merge, which goes on from the state)
            raise
    return out


def link_samples(archives: Mapping[str, Path], npz_names: Mapping[str, str], folder: Path) -> None:
    """The merged archives in `folder` (a staging folder beside them) under their names, as hard links: they stay
    in the progress folder until the outputs are in place (a copy where the file system has no hard links)."""
    for run, path in archives.items():
        dest = Path(folder) / npz_names[run]
        try:
            os.link(path, dest)
        except OSError:
            shutil.copyfile(path, dest)
