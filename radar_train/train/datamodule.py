"""PairDataModule: HQ/LQ latent pairs from one or more caches, split into train / validation by shard.

Each cache is a Zarr cache folder (`radar-cache run`) or a WebDataset export (`radar-cache export-wds`),
and names its own train and validation shards (`"0-7"`, `"0-5,7"`, `[8, 9]`; train default: every
complete shard not in val). Zarr caches are read with `PairDataset` and `BlockShuffleSampler` (block-
aligned reads, deterministic per-epoch order, split across ranks by the sampler itself: run the Trainer
with `use_distributed_sampler=False`). WebDataset exports are streamed with `WdsPairs` (training: split by tar
across ranks and workers, every rank's epoch stopped at the smallest rank's batch count, so that DDP ranks take
the same number of steps; validation: every rank reads every tar).

Resume: the training loader of a Zarr cache is a `ResumableLoader`, whose position in the epoch goes into
every checkpoint, so `radar-train fit --ckpt_path last` sees exactly the batches an uninterrupted run would
have seen. A WebDataset stream cannot resume mid-stream (`StreamLoader` says so at resume).
"""
from __future__ import annotations

import bisect
import functools
import itertools
import logging
import math
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from radar_train.config import format_int_list, parse_int_list

__all__ = ["CacheSource", "PairDataModule", "parse_shards", "ConcatPairs", "ResumableLoader", "StreamLoader"]

log = logging.getLogger(__name__)

Shards = Union[str, int, list[int], None]


@dataclass
class CacheSource:
    """One cache and its train / validation shards."""

    path: str
    """Cache folder written by `radar-cache run` (format zarr), or a WebDataset export folder (format wds)."""
    train_shards: Shards = None
    """Training shards: "0-7", "0-5,7", a list, or null for every complete shard not in val_shards."""
    val_shards: Shards = None
    """Held-out validation shards (same forms, or one shard number); null: none from this cache."""
    format: Literal["zarr", "wds"] = "zarr"
    """zarr: the cache folder itself; wds: tars exported by `radar-cache export-wds` (streamed)."""


def parse_shards(spec: Shards, what: str) -> Optional[list[int]]:
    """"0-3,7" / 4 / [0, 1] / None -> sorted shard ids (None stays None). ValueError names `what`."""
    if spec is None:
        return None
    if isinstance(spec, (list, tuple)) and not spec:
        return []  # a cache for validation only (train_shards: [])
    if isinstance(spec, bool):
        raise ValueError(f"{what}: {spec} is not a shard, a range or a list of shards")
    ids = parse_int_list(spec, what)
    if len(set(ids)) != len(ids):
        raise ValueError(f"{what}: lists a shard twice ({spec})")
    if any(s < 0 for s in ids):
        raise ValueError(f"{what}: negative shard id in {spec}")
    return sorted(ids)


class ConcatPairs(ConcatDataset):
    """Several PairDatasets as one, with `blocks()` (offset per dataset) so that BlockShuffleSampler
    mixes the blocks of all caches."""

    def blocks(self) -> list[tuple[int, int]]:
        out = []
        for off, ds in zip([0] + self.cumulative_sizes[:-1], self.datasets):
            out += [(a + off, b + off) for a, b in ds.blocks()]
        return out

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        out = []
        for i in indices:
            k = bisect.bisect_right(self.cumulative_sizes, i)
            off = self.cumulative_sizes[k - 1] if k > 0 else 0
            out.append(self.datasets[k][i - off])
        return out


class ResumableLoader(DataLoader):
    """The training DataLoader of a Zarr cache (a `BlockShuffleSampler`), resumable mid-epoch.

    Lightning's mechanism for this is the `_Stateful` protocol on the training loader itself: the fit loop
    stores `state_dict()` of every training DataLoader that has one in each checkpoint (loop state
    `fit_loop.state_dict.combined_loader`) and, when it restarts from a checkpoint, calls `load_state_dict`
    before it first iterates the loader, while its own counters (`batch_progress`, `epoch_progress`) resume
    at the saved step and expect the loader to yield only the rest of the epoch. (The DataModule's
    state_dict hooks would be restored before the loader exists and also on `validate`, so they are not used.)

    The state is {"epoch", "position" (samples of this rank's share of the epoch consumed), and the settings it
    depends on}. The position counts the batches this loader *yielded*, times batch_size: Lightning's fetcher
    does not prefetch from a loader with a length, so at every checkpoint (on_train_batch_end) that is what the
    training steps consumed, whatever worker processes have read ahead (the sampler's own count runs ahead by
    up to prefetch_factor x num_workers batches). A fully consumed epoch resumes at the start of the next one.

    Iteration starts lazily, at the first batch: Lightning creates the iterator before it calls `set_epoch`
    on the sampler, and a DataLoader with workers would otherwise draw the order of the wrong epoch.
    """

    _SETTINGS = ("batch_size", "drop_last", "world_size", "num_samples", "seed", "shuffle")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._yielded = 0  # batches yielded by the current (or last) iteration

    def _settings(self) -> dict:
        s = self.sampler
        return {"batch_size": self.batch_size, "drop_last": self.drop_last, "world_size": s.world_size,
                "num_samples": s.n, "seed": s.seed, "shuffle": s.shuffle}

    def __iter__(self):
        self._yielded = 0
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict:
        return {**self.sampler.state_dict(consumed=self._yielded * self.batch_size), **self._settings()}

    def load_state_dict(self, state: dict) -> None:
        if "position" not in state:  # a WebDataset stream's (StreamLoader.state_dict): the epoch, no position
            epoch = int(state.get("epoch", 0))
            if state.get("at_epoch_start", False):
                _warn_rank_zero(f"resume: the checkpoint was trained on a WebDataset stream: the cache's data order "
                                f"starts at the beginning of epoch {epoch} and differs from an uninterrupted run's")
            else:  # (Lightning goes on with the epoch's batches its steps had not reached, as many as are left)
                _warn_rank_zero(f"resume: the checkpoint was trained on a WebDataset stream, which saves no position "
                                f"in its epoch: the rest of epoch {epoch} (the batches its steps had not reached) "
                                f"comes from the beginning of the cache's order for that epoch, so this epoch trains "
                                f"some pairs twice and leaves others out; from epoch {epoch + 1} on, each epoch "
                                f"trains every pair once")
            self.sampler.load_state_dict({"epoch": epoch, "position": 0})
            self._yielded = 0
            return
        own = self._settings()
        changed = [f"{k} {state[k]} -> {own[k]}" for k in self._SETTINGS if k in state and state[k] != own[k]]
        if changed:
            _warn_rank_zero(f"resume: the training data changed since the checkpoint ({', '.join(changed)}); "
                            f"the data order continues at epoch {state['epoch']}, position {state['position']} "
                            f"but is not the one an uninterrupted run would have seen")
        epoch, pos = int(state["epoch"]), int(state["position"])
        if pos // self.batch_size >= len(self):  # every batch of the epoch consumed
            epoch, pos = epoch + 1, 0
        self.sampler.load_state_dict({"epoch": epoch, "position": pos})
        self._yielded = 0


class StreamLoader(DataLoader):
    """The training DataLoader of a WebDataset export (`WdsPairs`): a stream whose position in an epoch
    (shuffle buffer, tar offsets in each worker) is not saved. It counts the epochs it was iterated and
    hands the count to the stream (its workers start anew each epoch from that stream), so each epoch has its own
    order. A checkpoint holds the epoch in progress, and a resumed run starts that epoch's order again
    from its beginning, saying so in one line; a checkpoint taken once an epoch's batches were all read (the
    last step of an epoch: Lightning has already fetched past it) holds the next epoch, at its beginning
    (`at_epoch_start`), which a resumed run reads exactly as an uninterrupted one would."""

    _epoch = 0  # iterations so far: the next one reads this epoch
    _reading: Optional[int] = None  # the epoch the current (or last) iteration reads
    _yielded = 0  # batches the current (or last) iteration has handed out
    _finished = False  # the last iteration's batches were all read
    max_batches: Optional[int] = None  # every rank's epoch stops here (the smallest rank's batch count)

    def __iter__(self):
        self.dataset.epoch = self._reading = self._epoch  # (read by the workers when they start; they count on)
        self._epoch += 1
        self._finished, self._yielded = False, 0
        return self._to_the_end(super().__iter__())

    def set_epoch(self, epoch: int) -> None:
        """The next iteration reads epoch `epoch`: the training loop's count (RadarLoraModule.on_train_epoch_start
        passes Lightning's, as Lightning passes it to a map-style loader's sampler), so a resumed run reads the
        epochs its loop trains, whatever iterations Lightning starts and drops around a restart."""
        self._epoch = int(epoch)

    def _to_the_end(self, batches):
        for batch in batches if self.max_batches is None else itertools.islice(batches, self.max_batches):
            self._yielded += 1
            yield batch
        if self.max_batches is not None:
            # the rest of the epoch's stream (the drop_last remainder, a larger rank's extra batches), unused, read to
            # its end, where the stream checks each tar's pair count: a last tar cut short or emptied since the export
            # was never reached, and every epoch trained without its pairs, without a word
            for _ in batches:
                pass
        self._finished = True

    def state_dict(self) -> dict:
        """The epoch the run is in, from the iteration itself: Lightning starts the first epoch's iteration of a
        process before it passes that epoch (set_epoch), so a count of iterations said a checkpoint in the middle of
        that epoch was taken at its start (a resume then said nothing of the restarted order, and one on the Zarr
        cache said the epoch started anew where its loop went on with the batches its steps had not reached)."""
        if self._reading is None or not (self._yielded or self._finished):  # (no batch of the epoch handed out)
            epoch, at_start = (self._epoch if self._reading is None else self._reading), True
        elif self._finished:
            epoch, at_start = self._reading + 1, True
        else:
            epoch, at_start = self._reading, False
        return {"stream": "wds", "position_saved": False, "at_epoch_start": at_start, "epoch": epoch}

    def load_state_dict(self, state: dict) -> None:
        self._epoch = int(state.get("epoch", 0))
        if not state.get("at_epoch_start", False):
            _warn_rank_zero(f"resume: WebDataset streams cannot resume mid-stream: epoch {self._epoch}'s data order "
                            "restarts from its beginning and differs from an uninterrupted run (use a Zarr cache "
                            "for exact resume)")


class EvalStreamLoader(DataLoader):
    """The validation DataLoader of a WebDataset export, with its batch count (every rank reads every validation tar,
    each DataLoader worker its share) where the export's index gives the tars' pairs. Lightning fetches the first
    batch of a loader of unknown length while it sets the validation up, before the validation starts: a tar that
    failed there failed outside the validation, and the step it followed was not saved (run_checkpoint.py saves it,
    the validation owed, when the validation itself fails). With a length the first batch is read in the
    validation, and progress shows the count."""

    batches: Optional[int] = None

    @classmethod
    def of(cls, ds, **kw) -> "EvalStreamLoader":
        from radar_train.cache.wds import rank_batches

        loader = cls(ds, **kw)
        if getattr(ds, "nsamples", None) is not None and not ds.split_by_node:
            loader.batches = rank_batches(ds.nsamples, 1, loader.num_workers, loader.batch_size, drop_last=False)[0]
        return loader

    def __len__(self) -> int:
        return super().__len__() if self.batches is None else self.batches


def leave_stop_signals_to_the_run(worker_id: int, main_pid: Optional[int] = None) -> None:
    """DataLoader worker start: leave the stop signals to the run (`main_pid`, the process that reads the batches),
    which saves the step it stops at (train/stop_signal.py) and then ends its workers itself. A terminal's Ctrl-C
    and a `scancel` or time limit's SIGTERM reach every process of the run: a worker they killed broke the run's
    next batch or validation ("DataLoader worker ... is killed by signal") before it could save, and the run
    ended in a traceback, with every step since its last checkpoint lost. Ctrl-C is ignored; SIGTERM is taken by
    a thread that ends the worker when the run sends it (torch ends a worker that does not stop in time with it,
    and Python ends a process's live workers with it at exit: a worker that ignored it kept such a process from
    ever exiting) and ignores it from anyone else. Such a worker still ends with its run: SIGKILL, or torch's check
    that its parent is alive."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if main_pid is None or not hasattr(signal, "sigwaitinfo"):  # (not on macOS: SIGTERM is left as it is)
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # (threads started from now on inherit the mask)
    threading.Thread(target=_end_on_sigterm_from, args=(main_pid,), name="radar-sigterm", daemon=True).start()


def _end_on_sigterm_from(main_pid: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == main_pid:
            os._exit(0)  # (as torch's own worker handler does for its parent's SIGTERM)


def _warn_rank_zero(msg: str) -> None:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        log.warning(msg)


def _wds_tars(path: str, shards: list[int]) -> list[str]:
    from radar_train.cache.wds import local_url, tar_name

    missing = [s for s in shards if not (Path(path) / tar_name(s)).is_file()]
    if missing:
        raise FileNotFoundError(f"WebDataset export {path}: no tar for shard(s) {format_int_list(missing)} "
                                f"(export with `radar-cache export-wds CACHE --output {path}`)")
    return [local_url(Path(path) / tar_name(s)) for s in shards]


def shared_pairs(caches: Sequence["CacheSource"], manifests: Sequence, splits: Sequence[tuple[list, list]]) -> list[str]:
    """Where two caches hold the same pairs (made alike: a copy, a larger plan or another shard size of one cache;
    the pairs are matched by label and seed), the pairs one trains on that the other validates on or trains on
    too: a validation that scores trained pairs (and picks the best step on them), or pairs counted twice.
    (Only the same folder named twice was refused.)"""
    from radar_train.inference.evaluate import _pairs_identity, _samples

    ids = [_pairs_identity(m.to_dict()) for m in manifests]

    def common(a: tuple, b: tuple) -> int:  # pairs in both (seeds, labels); a plan's seeds are distinct
        _, ia, ib = np.intersect1d(a[0], b[0], assume_unique=True, return_indices=True)
        return int((a[1][ia] == b[1][ib]).sum())

    trained = {j: _samples(manifests[j].plan, splits[j][0]) for j in range(len(caches))
               if ids[j] is not None and ids.count(ids[j]) > 1}  # (once each, only where another cache shares it)
    out = []
    for i, j in itertools.permutations(range(len(caches)), 2):
        if ids[i] is None or ids[i] != ids[j]:
            continue
        for what, shards in (("validation", splits[i][1]), ("training", splits[i][0] if i < j else [])):
            n = common(_samples(manifests[i].plan, shards), trained[j])
            if n:
                out.append(f"{n} {what} pairs of data.caches[{i}] ({caches[i].path}) are training pairs of "
                           f"data.caches[{j}] ({caches[j].path}), which holds the same pairs (a copy, or a larger "
                           f"plan, of the same cache): list those shards once")
    return out


class PairDataModule(pl.LightningDataModule):
    """Training / validation pairs from `caches`.

    Args:
        caches: the caches and their shard split.
        batch_size: training pairs per step and process.
        val_batch_size: validation batch (default: batch_size).
        num_workers: DataLoader worker processes per rank.
        shuffle_seed: seed of the per-epoch block order (and of the WebDataset shuffle).
        wds_shuffle_buffer: sample shuffle buffer of WebDataset training streams.
        drop_last: drop the last incomplete training batch of an epoch.
    """

    def __init__(self, caches: list[CacheSource], batch_size: int = 16, val_batch_size: Optional[int] = None,
                 num_workers: int = 0, shuffle_seed: int = 0, wds_shuffle_buffer: int = 1000, drop_last: bool = True):
        super().__init__()
        self.save_hyperparameters({"caches": [vars(c).copy() for c in caches], "batch_size": batch_size,
                                   "val_batch_size": val_batch_size, "num_workers": num_workers,
                                   "shuffle_seed": shuffle_seed, "wds_shuffle_buffer": wds_shuffle_buffer,
                                   "drop_last": drop_last})
        self.caches = list(caches)
        self.batch_size = batch_size
        self.val_batch_size = batch_size if val_batch_size is None else val_batch_size  # (0: refused, below)
        self.num_workers, self.shuffle_seed = num_workers, shuffle_seed
        self.wds_shuffle_buffer, self.drop_last = wds_shuffle_buffer, drop_last
        self.manifests: dict[str, object] = {}  # path -> Manifest
        self.splits: list[tuple[list[int], list[int]]] = []  # per cache: (train shards, val shards)
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self._checked = (0, 0.0)  # Zarr shards checked against their checksums by setup, seconds it took
        self._validate_args()

    def _validate_args(self) -> None:
        p = []
        if not self.caches:
            p.append("data.caches is empty (name at least one cache)")
        if self.batch_size < 1 or self.val_batch_size < 1:
            p.append("data.batch_size and data.val_batch_size must be >= 1")
        if self.num_workers < 0:
            p.append("data.num_workers must be >= 0")
        if self.wds_shuffle_buffer < 0:  # (0: no sample shuffle)
            p.append(f"data.wds_shuffle_buffer must be >= 0, got {self.wds_shuffle_buffer}")
        for i, c in enumerate(self.caches):
            for key in ("train_shards", "val_shards"):
                try:
                    parse_shards(getattr(c, key), f"data.caches[{i}].{key}")
                except ValueError as e:
                    p.append(str(e))
        if p:
            raise ValueError("invalid data config: " + "; ".join(p))

    # ---------------------------------------------------------------- resolution
    def _resolve(self, stage: Optional[str] = None) -> None:
        """Read the manifests and resolve the shard split of every cache. Every problem of every cache (a missing
        cache folder, a bad manifest, missing or incomplete shards, missing WebDataset tars, overlapping splits)
        goes into one ValueError."""
        from radar_train.cache.layout import scan_cache
        from radar_train.cache.schema import read_manifest

        problems, manifests, splits = [], {}, []
        if len({c.format for c in self.caches}) > 1:
            problems.append("data.caches mixes zarr and wds formats; use one format per run")
        folders: dict[Path, int] = {}  # resolved folder -> first entry naming it
        for i, c in enumerate(self.caches):
            where = f"data.caches[{i}] ({c.path})"
            folder = Path(c.path).resolve()
            if folder in folders:  # its shards would be split twice: validation shards leak into training
                j = folders[folder]
                problems.append(f"{where} and data.caches[{j}] ({self.caches[j].path}) name the same folder "
                                f"{folder}: list each cache once, with all its train_shards and val_shards")
                continue
            folders[folder] = i
            try:
                manifest = read_manifest(c.path)
            except (FileNotFoundError, ValueError) as e:
                problems.append(f"data.caches[{i}]: {e}")
                continue
            from radar_train.cache.wds import is_export

            if is_export(c.path) != (c.format == "wds"):
                problems.append(f"{where} is " + ("a WebDataset export: give it format: wds" if c.format == "zarr"
                                                  else "a radar-cache (Zarr) cache: give it format: zarr"))
                continue
            if c.format == "wds":
                from radar_train.cache.wds import tar_name

                available = [s for s in range(manifest.num_shards) if (Path(c.path) / tar_name(s)).is_file()]
                kind = "have no tar in the export"
            else:
                available = sorted(scan_cache(c.path, manifest.num_shards).complete)
                kind = "are not complete in the cache"
            val = parse_shards(c.val_shards, f"{where}.val_shards") or []
            train = parse_shards(c.train_shards, f"{where}.train_shards")
            # (sets to look shards up in: lists made this quadratic, minutes before the first step on 160k shards)
            have, held = set(available), set(val)
            if train is None:
                train = [s for s in available if s not in held]
                left_out = [s for s in range(manifest.num_shards) if s not in have and s not in held]
                if left_out:
                    log.warning("%s: shards %s %s and are left out of training", where, format_int_list(left_out), kind)
            both = sorted(held.intersection(train))
            if both:
                problems.append(f"{where}: shards {format_int_list(both)} are in both train_shards and val_shards")
            past = sorted(s for s in train + val if s >= manifest.num_shards)
            absent = sorted(s for s in train + val if s < manifest.num_shards and s not in have)
            if past:
                problems.append(f"{where}: shards {format_int_list(past)} are past the cache's plan of "
                                f"{manifest.num_shards} shards (0-{manifest.num_shards - 1})")
            if absent:
                problems.append(f"{where}: shards {format_int_list(absent)} {kind} "
                                f"(complete: {format_int_list(available)}; {len(available)} of {manifest.num_shards} "
                                f"shards)")
            elif not past and c.format == "wds":
                from radar_train.cache.wds import cut_short, tar_name

                short = [str(Path(c.path) / tar_name(s)) for s in sorted(set(train + val))
                         if cut_short(Path(c.path) / tar_name(s))]
                if short:
                    problems.append(f"{where}: {', '.join(short)} cut short (not whole tar blocks: an interrupted "
                                    f"copy?); copy or export again")
            manifests[c.path] = manifest
            splits.append((train, val))
        if not problems and stage in (None, "fit"):  # (validate reads no training shards)
            problems += shared_pairs(self.caches, [manifests[c.path] for c in self.caches], splits)
        if not problems:
            if stage in (None, "fit") and not any(t for t, _ in splits):  # (validate needs none)
                problems.append("no training shards in data.caches")
            if not any(v for _, v in splits):
                problems.append("no validation shards: set val_shards of at least one cache (held-out shards)")
        if problems:
            raise ValueError("data: " + "; ".join(problems))
        self.manifests, self.splits = manifests, splits

    def describe(self) -> list[dict]:
        """Per cache: path, format, shards, and the manifest's model / accel / sampling / plan, latents and the
        transformer's compute precision (for adapter metadata and resume checks)."""
        out = []
        for c, (train, val) in zip(self.caches, self.splits):
            m = self.manifests[c.path]
            out.append({"path": str(c.path), "format": c.format, "train_shards": train, "val_shards": val,
                        "model": m.model, "accel": m.accel, "sampling": m.sampling, "plan": m.plan,
                        "latent_shape": m.latent_shape, "latent_dtype": m.latent_dtype, "precision": m.precision,
                        "format_version": m.format_version})
        return out

    # ---------------------------------------------------------------- datasets
    def setup(self, stage: Optional[str] = None) -> None:
        if self.manifests:
            return
        self._resolve(stage)
        problems: list[str] = []
        self.train_set = self._build([(c, t) for c, (t, _) in zip(self.caches, self.splits)], True, problems)
        self.val_set = self._build([(c, v) for c, (_, v) in zip(self.caches, self.splits)], False, problems)
        if problems:  # unreadable shards, every one of every cache
            self.manifests, self.splits, self.train_set, self.val_set = {}, [], None, None
            raise ValueError("data: " + "; ".join(problems))
        n = len(self.train_set) if hasattr(self.train_set, "__len__") else None
        if self.drop_last and n is not None and n < self.batch_size:  # Lightning would stop at once, "successfully"
            self.manifests, self.splits, self.train_set, self.val_set = {}, [], None, None
            raise ValueError(f"data: {n} training pairs make no batch of data.batch_size {self.batch_size} "
                             f"(data.drop_last drops the incomplete one): lower the batch size or add training shards")
        self._report()

    def _build(self, parts: list[tuple[CacheSource, list[int]]], train: bool, problems: list[str]) -> Optional[Dataset]:
        """The dataset of `parts` (cache, shards); what cannot be read goes into `problems`."""
        from radar_train.cache.reader import PairDataset
        from radar_train.cache.wds import WdsPairs

        parts = [(c, s) for c, s in parts if s]
        if not parts:
            return None
        if parts[0][0].format == "wds":  # _resolve checked that every cache has one format and every tar exists
            urls = [u for c, s in parts for u in _wds_tars(c.path, s)]
            counts = [b - a for c, s in parts for a, b in map(self.manifests[c.path].shard_range, s)]
            # validation: every rank reads every tar (the metrics are ratios of all-reduced sums: unchanged)
            return WdsPairs(urls, shuffle=self.wds_shuffle_buffer if train else 0, shardshuffle=train,
                            seed=self.shuffle_seed, split_by_node=train, nsamples=counts)
        sets = []
        for c, s in parts:
            try:  # every shard checked against its stored checksums (a half-copied cache reads zeros)
                sets.append(PairDataset(c.path, s))
            except (ValueError, FileNotFoundError, OSError) as e:
                problems.append(str(e))
        self._checked = (self._checked[0] + sum(len(d.shard_ids) for d in sets),
                         self._checked[1] + sum(d.verify_seconds or 0.0 for d in sets))
        return ConcatPairs(sets) if len(sets) == len(parts) else None

    def _report(self) -> None:
        for c, (train, val) in zip(self.caches, self.splits):
            m = self.manifests[c.path]
            log.info("cache %s (%s): %s, accel %s; train shards %s, val shards %s", c.path, c.format,
                     "x".join(map(str, m.latent_shape)), m.accel.get("method", m.accel), format_int_list(train),
                     format_int_list(val))
        n_train = len(self.train_set) if hasattr(self.train_set, "__len__") else "streamed"
        n_val = len(self.val_set) if hasattr(self.val_set, "__len__") else "streamed"
        log.info("pairs: %s train, %s val; batch %d, %d workers", n_train, n_val, self.batch_size, self.num_workers)
        if self._checked[0]:
            log.info("cache shards checked against their stored checksums: %d in %.1f s", *self._checked)

    # ---------------------------------------------------------------- loaders
    def _rank(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _loader(self, ds: Dataset, batch_size: int, train: bool) -> DataLoader:
        from radar_train.cache.reader import BlockShuffleSampler

        kw = dict(batch_size=batch_size, num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                  persistent_workers=self.num_workers > 0,
                  worker_init_fn=functools.partial(leave_stop_signals_to_the_run, main_pid=os.getpid()))
        if isinstance(ds, torch.utils.data.IterableDataset):
            if not train:
                return EvalStreamLoader.of(ds, **kw)
            # workers started anew each epoch from the stream whose epoch StreamLoader set: persistent ones counted
            # the epochs of their own copies, the iteration Lightning starts and drops around a restart included, so
            # a run resumed at an epoch's end read the epoch after the one it trained
            loader = StreamLoader(ds, drop_last=self.drop_last, **{**kw, "persistent_workers": False})
            loader.max_batches = self._stream_batches(ds)
            return loader
        rank, world = self._rank()
        sampler = BlockShuffleSampler(ds, shuffle=train, seed=self.shuffle_seed, rank=rank, world_size=world,
                                      drop_last=False)
        return (ResumableLoader if train else DataLoader)(ds, sampler=sampler, drop_last=train and self.drop_last,
                                                          **kw)

    def stream_batches(self, world_size: int) -> Optional[list[int]]:
        """Per rank of `world_size`, the batches of an epoch of the WebDataset training stream (None for a Zarr
        training set, which is split by sample); refused when a rank would get none. After `setup`: the
        command line calls it with the trainer's device count before anything is written or launched."""
        from radar_train.cache.wds import rank_batches

        ds = self.train_set
        if not isinstance(ds, torch.utils.data.IterableDataset) or ds.nsamples is None:
            return None
        counts = rank_batches(ds.nsamples, world_size, self.num_workers, self.batch_size, self.drop_last)
        if min(counts) == 0:
            raise ValueError(f"data: the {len(ds.urls)} WebDataset training tars ({sum(ds.nsamples)} pairs), read "
                             f"whole by {world_size} rank(s) x {max(1, self.num_workers)} worker(s), give a rank "
                             f"no batch of data.batch_size {self.batch_size}: use at least as many training tars "
                             f"as ranks x workers, fewer devices or data.num_workers, or a smaller batch size")
        return counts

    def train_batches(self, world_size: int) -> Optional[int]:
        """The batches each of `world_size` ranks gets in an epoch of the training loader, after `setup` (None
        for a WebDataset stream of unknown length): what Lightning checks an integer val_check_interval
        against once the processes run."""
        ds = self.train_set
        if isinstance(ds, torch.utils.data.IterableDataset):
            counts = self.stream_batches(world_size)
            return None if counts is None else min(counts)
        per_rank = math.ceil(len(ds) / world_size)  # the sampler pads the last ranks' shares (drop_last=False)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def _stream_batches(self, ds) -> int:
        """The batches every rank reads per epoch of the WebDataset training stream `ds`: ranks read whole tars,
        so their shares differ unless the tars split evenly, and DDP needs the same batch count on every rank
        (a rank that ran out would stop while the others wait for it). Each rank stops at the smallest share."""
        if self.trainer is not None:
            ds.rank, ds.world_size = self._rank()
        rank, world = ds.node()
        counts = self.stream_batches(world)
        least = min(counts)
        if world > 1 and rank == 0:
            left = max(0, sum(ds.nsamples) - least * self.batch_size * world)
            (log.warning if least < max(counts) else log.info)(
                "WebDataset training over %d ranks: every rank's epoch is %d batches (per rank: %s), %d of %d "
                "pairs per epoch unused%s", world, least, counts, left, sum(ds.nsamples),
                "; equal tars in a count divisible by ranks x workers split evenly" if least < max(counts) else "")
        return least

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_batch_size, train=False)

    def image_batch(self, n: int) -> Optional[dict[str, torch.Tensor]]:
        """The first `n` validation pairs, stacked (fixed samples for image grids)."""
        if self.val_set is None or n <= 0:
            return None
        if isinstance(self.val_set, torch.utils.data.IterableDataset):
            items = []
            for item in self.val_set:
                items.append(item)
                if len(items) == n:
                    break
        else:
            items = [self.val_set[i] for i in range(min(n, len(self.val_set)))]
        return {k: torch.stack([it[k] for it in items]) for k in ("fhat_hq", "fhat_lq", "label", "seed", "index")}
