"""Reading a cache: a map-style Dataset over its complete shards and a block-wise shuffling sampler.

Every Zarr read call costs ~1 ms, so labels, seeds and indices are kept in RAM and latents are read in
chunk-aligned blocks (a few chunks of storage.chunk_size samples; fhat_hq and fhat_lq in one call) held in
a small per-process block cache. `BlockShuffleSampler` visits the blocks in a random order and the samples
of a block in a random order, so a block is decoded once per epoch per DataLoader worker; its position
(epoch, samples handed out) is a state_dict, so an interrupted epoch can resume where it stopped. Zarr is
opened lazily in each process (DataLoader workers under fork or spawn).

A dataset checks every shard it reads against the checksums its writer stored, once, when it is made (a few
threads; ~0.07 s per 1,024 VAR-d16 pairs on one slow core): a chunk file missing from a half-copied cache
reads as zeros in Zarr, and training on it would learn to restore zeros without a word.
"""
from __future__ import annotations

import asyncio
import bisect
import functools
import math
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import zarr
from torch.utils.data import Dataset, Sampler

from radar_train.cache import schema
from radar_train.cache.layout import scan_cache
from radar_train.cache.schema import read_manifest
from radar_train.config import format_int_list
from radar_train.inputs import reading


class PairDataset(Dataset):
    """HQ/LQ latent pairs of the complete shards of a cache (all of them, or `shards`).

    Item i -> {"fhat_hq": float32 (C, h, w), "fhat_lq": float32 (C, h, w), "label": int64 (), "seed": int64 (),
    "index": int64 () global sample index}. Items are ordered by shard, then by position in the shard."""

    def __init__(self, cache_dir: str | os.PathLike, shards: Optional[Sequence[int] | str | int] = None,
                 block_size: int = 256, block_cache: int = 2, verify: bool = True, keep_tokens: bool = False):
        """
        Args:
            cache_dir: the cache folder (manifest.json + shard-NNNNN.zarr).
            shards: shard ids to read, a list, one id, or "0-3,7" as the configs write them (default: every
                complete shard); a missing one is an error.
            block_size: samples per read, rounded up to whole chunks (the sampler's shuffling unit).
            block_cache: blocks kept in memory per process.
            verify: read every shard whole once and check it against its stored checksums, record count and
                the plan's records (`radar-cache verify`'s checks of a complete shard); False reads only the
                records (a benchmark of the reader, a cache checked just before).
            keep_tokens: also keep both runs' token indices, `tokens_hq` and `tokens_lq` ((N, Σ pn²) int16 arrays,
                in item order), from the same read (radar-eval's token agreement); otherwise they are None.
        """
        self.cache_dir = Path(cache_dir)
        self.manifest = read_manifest(cache_dir)
        scan = scan_cache(cache_dir, self.manifest.num_shards)
        if shards is None:
            ids = sorted(scan.complete)
        else:
            from radar_train.config import parse_int_list

            ids = parse_int_list(shards, "shards")  # ("12" is shard 12, not shards 1 and 2)
            missing = [s for s in ids if s not in scan.complete]
            if missing:
                complete = format_int_list(list(scan.complete))
                raise ValueError(f"cache {cache_dir}: shards {format_int_list(missing)} are missing or incomplete "
                                 f"(complete: {complete} of 0-{self.manifest.num_shards - 1})")
            if len(set(ids)) != len(ids):
                raise ValueError(f"shards {ids} lists a shard twice")
        self.shard_ids = ids
        self._paths = [str(scan.complete[s]) for s in ids]
        started = time.perf_counter()
        read = functools.partial(self._read_checked, self.manifest, keep_tokens=keep_tokens) if verify else \
            functools.partial(self._read_records, keep_tokens=keep_tokens)
        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1, len(ids)))) as pool:
            done = list(pool.map(_outcome, [read] * len(ids), ids, self._paths))
        bad = [r for r in done if isinstance(r, str)]  # every unreadable shard at once
        if bad:
            raise ValueError(f"cache {cache_dir}: {len(bad)} unreadable shard(s): " + "; ".join(bad))
        records = done
        self.verify_seconds = time.perf_counter() - started if verify else None
        counts = [len(r[0]) for r in records]
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        cat = (lambda k: np.concatenate([r[k] for r in records]) if records else np.zeros(0, np.int64))
        self.labels = torch.from_numpy(cat(0).astype(np.int64))
        self.seeds = torch.from_numpy(cat(1).astype(np.int64))
        self.indices = torch.from_numpy(cat(2).astype(np.int64))
        self.tokens_hq = self.tokens_lq = None
        if keep_tokens:
            L = sum(pn * pn for pn in self.manifest.patch_nums)
            tokens = (lambda k: np.concatenate([r[k] for r in records]) if records else np.zeros((0, L), np.int16))
            self.tokens_hq, self.tokens_lq = tokens(3), tokens(4)
        chunk = self.manifest.chunk_size
        self.block_size = max(1, -(-block_size // chunk)) * chunk
        self.block_cache = max(1, block_cache)
        self._arrays: Optional[list] = None
        self._pid: Optional[int] = None
        self._blocks: OrderedDict = OrderedDict()

    @staticmethod
    def _read_checked(manifest, shard: int, path: str, keep_tokens: bool = False) -> tuple:
        from radar_train.cache.status import read_checked_shard

        arrays = read_checked_shard(Path(path), manifest, shard)
        tokens = (arrays[schema.INDICES_HQ], arrays[schema.INDICES_LQ]) if keep_tokens else ()
        return (arrays[schema.LABEL], arrays[schema.SEED], arrays[schema.INDEX]) + tokens

    @staticmethod
    def _read_records(shard: int, path: str, keep_tokens: bool = False) -> tuple:
        g = zarr.open_group(schema.shard_store(path), mode="r")
        if g.attrs.get("complete") is not True:
            raise ValueError(f"{path} is not marked complete (run `radar-cache verify`)")
        version = schema.shard_version_problem(dict(g.attrs))
        if version:  # its arrays may mean something else than this code reads into them
            raise ValueError(f"{path}: cache shard {version}")
        missing = [k for k in (schema.LABEL, schema.SEED, schema.INDEX, schema.FHAT_HQ, schema.FHAT_LQ) if k not in g]
        if missing:
            raise ValueError(f"{path} has no array {', '.join(missing)} (run `radar-cache verify`)")
        tokens = (g[schema.INDICES_HQ][:], g[schema.INDICES_LQ][:]) if keep_tokens else ()
        return (g[schema.LABEL][:], g[schema.SEED][:], g[schema.INDEX][:]) + tokens

    @property
    def shard_paths(self) -> list[Path]:
        """The folders of `shard_ids`, in that order."""
        return [Path(p) for p in self._paths]

    def __len__(self) -> int:
        return int(self._offsets[-1])

    # -------------------------------------------------------------- blocks
    def blocks(self) -> list[tuple[int, int]]:
        """[start, stop) dataset positions of every block (chunk-aligned within its shard)."""
        out = []
        for k in range(len(self.shard_ids)):
            a, b = int(self._offsets[k]), int(self._offsets[k + 1])
            out += [(s, min(s + self.block_size, b)) for s in range(a, b, self.block_size)]
        return out

    def locate(self, i: int) -> tuple[int, int]:
        """(shard slot k, position in the shard) of dataset position i."""
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} pairs")
        k = bisect.bisect_right(self._offsets, i) - 1
        return k, i - int(self._offsets[k])

    def _open(self) -> list:
        if self._arrays is None or self._pid != os.getpid():
            groups = [zarr.open_group(schema.shard_store(p), mode="r") for p in self._paths]
            self._arrays = [(g[schema.FHAT_HQ], g[schema.FHAT_LQ]) for g in groups]
            self._pid, self._blocks = os.getpid(), OrderedDict()
        return self._arrays

    def _block(self, k: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """fhat_hq, fhat_lq of block b of shard slot k (storage dtype)."""
        key = (k, b)
        if key in self._blocks:
            self._blocks.move_to_end(key)
            return self._blocks[key]
        hq, lq = self._open()[k]
        with reading(self._paths[k], "cache shard"):  # damaged after the dataset was made: one line naming it
            blk = _read_pair(hq, lq, slice(b * self.block_size, (b + 1) * self.block_size))
        self._blocks[key] = blk
        while len(self._blocks) > self.block_cache:
            self._blocks.popitem(last=False)
        return blk

    # -------------------------------------------------------------- items
    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = int(i)
        return self.__getitems__([i + len(self) if i < 0 else i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """Items of several positions (DataLoader calls this with a batch): runs of positions in one block
        are gathered and converted to float32 at once."""
        out: list[dict[str, torch.Tensor]] = []
        run: list[int] = []
        run_key = None
        for i in indices:
            k, p = self.locate(int(i))
            key = (k, p // self.block_size)
            if run and key != run_key:
                out += self._items(run_key, run)
                run = []
            run_key = key
            run.append(int(i))
        if run:
            out += self._items(run_key, run)
        return out

    def _items(self, key: tuple[int, int], positions: list[int]) -> list[dict[str, torch.Tensor]]:
        k, b = key
        hq, lq = (torch.from_numpy(a) for a in self._block(k, b))
        first = int(self._offsets[k]) + b * self.block_size
        # one sample at a time: small conversions stay on torch's single-threaded vectorised path, which
        # is much faster than a threaded whole-batch conversion on a busy machine
        conv = (lambda t: t.float()) if hq.dtype == torch.float16 else (lambda t: t.clone())
        return [{"fhat_hq": conv(hq[i - first]), "fhat_lq": conv(lq[i - first]), "label": self.labels[i].clone(),
                 "seed": self.seeds[i].clone(), "index": self.indices[i].clone()} for i in positions]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"], state["_pid"], state["_blocks"] = None, None, OrderedDict()
        return state


def _outcome(read, shard: int, path: str):
    """read(shard, path), or the one-line reason it failed (naming the shard)."""
    try:
        return read(shard, path)
    except (ValueError, KeyError, FileNotFoundError, OSError) as e:
        return f"{Path(path).name}: {e}" if isinstance(e, KeyError) else str(e)


def _read_pair(hq: zarr.Array, lq: zarr.Array, sl: slice) -> tuple[np.ndarray, np.ndarray]:
    """hq[sl], lq[sl] in one round trip through Zarr's event loop."""
    try:
        from zarr.core.sync import sync
    except ImportError:  # pragma: no cover - Zarr moved its sync helper: two calls instead of one
        return hq[sl], lq[sl]

    async def both():
        return await asyncio.gather(hq.async_array.getitem(sl), lq.async_array.getitem(sl))

    a, b = sync(both())
    return np.asarray(a), np.asarray(b)


def epoch_order_seed(seed: int, epoch: int) -> int:
    """The generator seed of epoch `epoch`'s block order under sampler seed `seed`, for any int seed.

    seed * 1_000_003 + epoch where torch's generator takes it ([-2**63, 2**64): every seed up to ~9.2e12, the
    orders of runs made before this function, which exact resume depends on); a hash of (seed, epoch) beyond."""
    plain = int(seed) * 1_000_003 + int(epoch)
    if -(2 ** 63) <= plain < 2 ** 64:
        return plain
    from radar_train.seeding import derive_seed

    return derive_seed("block-shuffle", str(int(seed)), str(int(epoch)))


class BlockShuffleSampler(Sampler[int]):
    """Dataset positions of a PairDataset, block by block: per epoch the blocks of all shards in a random
    order, the positions inside each block shuffled. Split across distributed ranks in contiguous runs of
    that order, so each rank reads whole blocks. Every position is visited once per epoch across ranks
    when len(dataset) is divisible by world_size; otherwise drop_last=False repeats the first
    (world_size − len mod world_size) positions of the epoch's order (equal lengths on all ranks, as
    DistributedSampler), and drop_last=True leaves the last len mod world_size out.

    Resumable: `state_dict()` is {"epoch", "position"}, the epoch and how many of this rank's positions of
    it were handed out; after `load_state_dict` the next iteration starts at that position of that epoch
    (a finished epoch resumes at the start of the next one). The state means the same on every rank, so
    rank zero's copy restores all of them. `set_epoch` to another epoch drops a pending resume point.
    By default the position counts what this sampler handed out; a DataLoader with worker processes draws
    ahead of what training consumed, so it passes its own count (`state_dict(consumed=...)`, see
    datamodule.ResumableLoader)."""

    def __init__(self, dataset: PairDataset, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        self.blocks = dataset.blocks()
        self.n = len(dataset)
        self.shuffle, self.seed, self.rank, self.world_size, self.drop_last = shuffle, seed, rank, world_size, drop_last
        self.epoch = 0
        self._resume = 0  # where the next iteration of self.epoch starts
        self._started = False  # an iteration of self.epoch began since the last set_epoch / load_state_dict
        self.iteration_start = 0  # position the current (or last) iteration started at
        self._handed_out = 0  # positions the current (or last) iteration handed out

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.epoch, self._resume, self._started = int(epoch), 0, False

    def __len__(self) -> int:
        return self.n // self.world_size if self.drop_last else math.ceil(self.n / self.world_size)

    def unique_count(self) -> int:
        """How many of this rank's positions of an epoch (the first ones) are not padding: drop_last=False
        repeats positions at the end of the last ranks' runs so that every rank has len(self)."""
        per_rank = len(self)
        return per_rank if self.drop_last else max(0, min(per_rank, self.n - self.rank * per_rank))

    def order(self) -> torch.Tensor:
        """All positions of this epoch, in visiting order (before the split across ranks)."""
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator()
        g.manual_seed(epoch_order_seed(self.seed, self.epoch))
        parts = []
        for b in torch.randperm(len(self.blocks), generator=g).tolist():
            a, z = self.blocks[b]
            parts.append(a + torch.randperm(z - a, generator=g))
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def rank_order(self) -> torch.Tensor:
        """This rank's positions of this epoch, in visiting order."""
        order = self.order()
        per_rank = len(self)
        total = per_rank * self.world_size
        if total > len(order):  # pad with the start of the order (at most world_size − 1 repeats)
            reps = -(-total // max(1, len(order)))
            order = order.repeat(reps)[:total]
        return order[self.rank * per_rank: (self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[int]:
        start, self._resume = self._resume, 0
        self.iteration_start, self._handed_out, self._started = start, 0, True
        for i in self.rank_order()[start:].tolist():
            self._handed_out += 1
            yield i

    def state_dict(self, consumed: Optional[int] = None) -> dict[str, int]:
        """{"epoch", "position"}: where this rank is in the epoch. Once an iteration of the epoch began, its start
        plus `consumed` of its positions (default: all it handed out); before that, the pending resume point."""
        if not self._started:
            return {"epoch": self.epoch, "position": self._resume}
        used = self._handed_out if consumed is None else min(int(consumed), self._handed_out)
        return {"epoch": self.epoch, "position": self.iteration_start + used}

    def load_state_dict(self, state: dict) -> None:
        """Resume the next iteration at state["position"] of epoch state["epoch"] (past the end: the next epoch
        from its start)."""
        epoch, pos = int(state["epoch"]), int(state["position"])
        if pos < 0:
            raise ValueError(f"sampler state: negative position {pos}")
        if pos >= len(self):
            epoch, pos = epoch + 1, 0
        self.epoch, self._resume, self._started = epoch, pos, False
