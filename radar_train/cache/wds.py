"""WebDataset export of a cache and iterable reading of the export.

`export_wds(cache, out)` writes one tar per complete cache shard (`pairs-NNNNN.tar`, written under a
temporary name and renamed), one sample per key (the global sample index, zero-padded) with the members
fhat_hq.npy, fhat_lq.npy, indices_hq.npy, indices_lq.npy (stored dtypes), label.cls, seed.cls, index.cls,
plus `index.json` (wids shard index: tar names and sample counts) and a copy of the cache's manifest.
Rerunning skips tars that exist, once their members' headers show them whole (a damaged one is refused,
naming it: delete it to export it again). Every shard to export is read and checked against the checksums its writer
stored before anything is written (a bad shard: InputError naming it, nothing written). `WdsPairs` yields the
same dicts as `PairDataset`.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
import zarr
from torch.utils.data import IterableDataset

from radar_train.cache import schema
from radar_train.cache.layout import scan_cache
from radar_train.cache.schema import MANIFEST_NAME, Manifest, manifest_differences, read_manifest
from radar_train.cache.status import read_checked_shard, shard_arrays
from radar_train.inputs import InputError, failure_reason, read_json, reading
from radar_train.outputs import atomic_file, write_text_atomic

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"


def tar_name(shard: int) -> str:
    return f"pairs-{shard:05d}.tar"


class _TarFailure(Exception):
    """A tar's members could not be read; the stage that opened the tar names it (`WdsPairs._read_failure`)."""


def cut_short(tar: str | os.PathLike) -> bool:
    """Whether a tar's size shows it cut short (an interrupted copy, an empty file): a tar is whole 512-byte
    blocks, two of them its end. (A cut at a block boundary passes: reading it is an InputError naming it.)"""
    size = os.path.getsize(tar)
    return size < 1024 or size % 512 != 0


def _shard_samples(arrays: dict[str, np.ndarray]) -> Iterator[dict]:
    for j in range(arrays[schema.LABEL].shape[0]):
        idx = int(arrays[schema.INDEX][j])
        yield {"__key__": f"{idx:010d}",
               **{f"{name}.npy": arrays[name][j] for name in schema.LATENT_ARRAYS + schema.INDEX_ARRAYS},
               "label.cls": int(arrays[schema.LABEL][j]), "seed.cls": int(arrays[schema.SEED][j]),
               "index.cls": idx}


def _check_output_manifest(out: Path, manifest: Manifest) -> None:
    if (out / MANIFEST_NAME).exists():
        diffs = manifest_differences(read_manifest(out), manifest)
        if diffs:
            raise ValueError(f"{out} holds an export of another cache; differing fields: {'; '.join(diffs)}")


def is_export(path: str | os.PathLike) -> bool:
    """Whether `path` holds a WebDataset export (its index or a tar) rather than a cache."""
    p = Path(path)
    return p.is_dir() and ((p / INDEX_NAME).is_file() or any(p.glob("pairs-*.tar")))


def check_not_inside_a_cache(output: str, option: str) -> None:
    """OutputError if `output` lies inside a cache or an export (a folder above it holds a manifest): that
    one's status, verify and disk figures would count it as its own."""
    from radar_train.outputs import OutputError

    holder = next((p for p in Path(output).resolve().parents if (p / MANIFEST_NAME).is_file()), None)
    if holder is not None:
        what = "the WebDataset export" if is_export(holder) else "the cache"
        raise OutputError(f"{option} {output} lies inside {what} {holder}: choose a folder outside it")


def check_export_output(cache_dir: str, output: str, option: str = "--output", cache_option: str = "cache") -> None:
    """OutputError unless `output` may receive the export of `cache_dir`: new, empty, or an export of this
    cache (resumed); never the cache, a folder inside it or holding it, another cache, a folder inside another
    cache or export, or a file."""
    from radar_train.outputs import OutputError, check_resume_dir

    out = check_resume_dir(output, MANIFEST_NAME, "a WebDataset export", option, {cache_option: cache_dir})
    if out.is_dir() and any(out.glob("shard-*.zarr*")):
        raise OutputError(f"{option} {out} is a radar-cache cache, not a WebDataset export: choose a new folder")
    check_not_inside_a_cache(output, option)


def tar_mtime(manifest: Manifest) -> int:
    """The members' modification time: the cache's creation (whole seconds; 0 if the manifest has none). A whole
    number keeps tarfile from writing a PAX header of the float time before every member (1.5 KiB each, more
    than a tiny pair's data), and a fixed one makes an export of the same cache the same bytes."""
    import datetime

    try:
        return max(0, int(datetime.datetime.strptime(manifest.created, "%Y-%m-%dT%H:%M:%S%z").timestamp()))
    except (TypeError, ValueError):
        return 0


def _written_members(first: int, stop: int) -> list[str]:
    """The member names export_wds writes into the tar of pairs first..stop-1 (sorted: webdataset's writer sorts
    each sample's)."""
    names = [f"{a}.npy" for a in schema.LATENT_ARRAYS + schema.INDEX_ARRAYS] + ["label.cls", "seed.cls", "index.cls"]
    return [f"{i:010d}.{n}" for i in range(first, stop) for n in sorted(names)]


def existing_tar_problem(tar: Path, first: int, stop: int) -> Optional[str]:
    """Why an exported tar of pairs first..stop-1 is not one export_wds wrote whole (None: it is): unreadable (cut
    inside a member: tarfile's "unexpected end of data" when it seeks past the end), or other members than the
    export's (a pair missing: cut at a block boundary). Reads the members' headers, not their data."""
    import tarfile

    try:
        with tarfile.open(tar, "r:") as t:
            members = t.getmembers()
    except (tarfile.TarError, OSError) as e:
        return f"cannot be read ({e.strerror if isinstance(e, OSError) and e.strerror else e})"
    if sorted(m.name for m in members) != _written_members(first, stop):
        return (f"holds {len({m.name.split('.')[0] for m in members})} pairs' members, not the "
                f"{stop - first} pairs {first}-{stop - 1} of the export")
    return None


def export_wds(cache_dir: str, output: str, progress: bool = True) -> dict:
    """Export the complete shards of a cache to WebDataset tars in `output`; returns the index dict.
    `output` is new, empty, or an export of the same cache (tars that exist are kept: the export resumes)."""
    import webdataset as wds

    from radar_train.progress import Progress

    if is_export(cache_dir):
        raise InputError(f"{cache_dir}: is a WebDataset export, not a radar-cache cache (export the cache it came from)")
    manifest = read_manifest(cache_dir)
    check_export_output(cache_dir, output)
    scan = scan_cache(cache_dir, manifest.num_shards)
    out = Path(output)
    _check_output_manifest(out, manifest)  # an existing export of another cache: refused, nothing written
    shards = sorted(scan.complete)
    todo = [s for s in shards if not (out / tar_name(s)).exists()]
    exported = set(shards) - set(todo)  # (a set: `not in todo` made a rerun quadratic in the shards)
    damaged = [f"{out / tar_name(s)} {why}" for s in shards if s in exported
               for why in [existing_tar_problem(out / tar_name(s), *manifest.shard_range(s))] if why]
    if damaged:  # (the rerun would skip them and call the export whole)
        raise InputError(f"{output}: {len(damaged)} exported tar(s) damaged since they were written, nothing was "
                         f"written: {'; '.join(damaged)}; delete them and rerun to export them again")
    bad = []  # every shard to export is read and checked before anything is written
    for s in Progress(len(todo), "radar-cache export-wds: checking", "shards", rate_unit="shard",
                      enabled=progress).iterate(todo):
        try:
            read_checked_shard(scan.complete[s], manifest, s)
        except InputError as e:
            bad.append(str(e))
    if bad:
        raise InputError(f"{cache_dir}: {len(bad)} shard(s) cannot be exported, nothing was written: "
                         + "; ".join(bad))
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MANIFEST_NAME).exists():
        write_text_atomic(out / MANIFEST_NAME, json.dumps(manifest.to_dict(), indent=2) + "\n")
    for s in Progress(len(todo), "radar-cache export-wds", "shards", rate_unit="shard",
                      enabled=progress).iterate(todo):
        with reading(scan.complete[s], "cache shard"):  # (checked above: read, not hashed again)
            g = zarr.open_group(schema.shard_store(scan.complete[s]), mode="r")
            samples = list(_shard_samples(shard_arrays(g)))
        with atomic_file(out / tar_name(s)) as tmp, open(tmp, "wb") as f, \
                wds.TarWriter(f, mtime=tar_mtime(manifest)) as sink:
            for sample in samples:
                sink.write(sample)
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": Path(cache_dir).name,
             "shardlist": [{"url": tar_name(s), "nsamples": manifest.shard_range(s)[1] - manifest.shard_range(s)[0]}
                           for s in shards],
             "num_samples": sum(manifest.shard_range(s)[1] - manifest.shard_range(s)[0] for s in shards),
             "complete": len(shards) == manifest.num_shards}
    write_text_atomic(out / INDEX_NAME, json.dumps(index, indent=2) + "\n")
    return index


def resolve_urls(path_or_urls: Union[str, os.PathLike, Sequence[str]]) -> list[str]:
    """Tar URLs from an export folder, its index.json, a brace pattern / single URL, or a list."""
    return _resolve(path_or_urls)[0]


def local_url(path) -> str:
    """A local tar as the URL webdataset reads: its absolute path. webdataset opens every string as a URL (gopen
    parses a scheme), so a relative path whose folder name starts with `file:` read another file and one starting
    with `pipe:` ran the rest as a shell command."""
    return os.path.abspath(path)


def _resolve(path_or_urls) -> tuple[list[str], Optional[list[int]]]:
    """(tar URLs, their sample counts from the export's index.json, or None where there is no index)."""
    if isinstance(path_or_urls, (list, tuple)):
        return [str(u) for u in path_or_urls], None
    p = Path(path_or_urls)
    if p.is_dir():
        p = p / INDEX_NAME
    if p.suffix == ".json":
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found (export a cache with `radar-cache export-wds CACHE --output DIR`)")
        shards = read_json(p, "WebDataset index").get("shardlist")
        if not isinstance(shards, list) or not all(isinstance(s, dict) and "url" in s for s in shards):
            raise InputError(f"{p}: WebDataset index has no shardlist of urls")
        counts = [s.get("nsamples") for s in shards]
        # absolute: webdataset opens a string as a URL, so a relative `file:w/...` or `pipe:...` was not this file
        return ([local_url(p.parent / s["url"]) for s in shards],
                counts if all(type(n) is int for n in counts) else None)
    from webdataset.shardlists import expand_urls  # (a brace pattern, or several joined by ::)

    return expand_urls(str(path_or_urls)), None


def rank_batches(nsamples: Sequence[int], world_size: int, num_workers: int, batch_size: int,
                 drop_last: bool) -> list[int]:
    """Batches each of `world_size` ranks reads per epoch from tars of `nsamples` samples: rank r reads tars
    r, r + world_size, ...; DataLoader worker w of it every num_workers-th of those (0 workers: one), and each
    worker batches its own samples (the last incomplete batch of each dropped with drop_last)."""
    per_batch = (lambda n: n // batch_size) if drop_last else (lambda n: -(-n // batch_size))
    k = max(1, num_workers)
    return [sum(per_batch(sum(nsamples[r::world_size][w::k])) for w in range(k)) for r in range(world_size)]


PAIR_MEMBERS = ("fhat_hq.npy", "fhat_lq.npy", "label.cls", "seed.cls", "index.cls")  # what `to_pair` reads


def to_pair(sample: dict) -> dict[str, torch.Tensor]:
    """A decoded WebDataset sample -> the PairDataset item dict."""
    return {"fhat_hq": torch.from_numpy(np.asarray(sample["fhat_hq.npy"], dtype=np.float32)),
            "fhat_lq": torch.from_numpy(np.asarray(sample["fhat_lq.npy"], dtype=np.float32)),
            "label": torch.tensor(int(sample["label.cls"]), dtype=torch.int64),
            "seed": torch.tensor(int(sample["seed.cls"]), dtype=torch.int64),
            "index": torch.tensor(int(sample["index.cls"]), dtype=torch.int64)}


def _check_count(url: Optional[str], n: int, counts: dict[str, int]) -> None:
    """InputError if the tar at `url` held fewer or more than the `counts` (the index's) pairs."""
    if url is not None and url in counts and n != counts[url]:
        raise InputError(f"{url}: WebDataset tar holds {n} pairs, its index {counts[url]} (cut short, or replaced?); "
                         f"copy or export it again (radar-cache export-wds)")


_TAR = re.compile(r"pairs-(\d{5,})\.tar$")


def _shard_ranges(urls: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """{url: (shard, first, stop)} of the tars of an export folder whose manifest is beside them (the sample
    indices its tar of that name must hold); {} for others (URLs, tars without the export's manifest)."""
    out, plans = {}, {}
    for url in urls:
        m, folder = _TAR.search(str(url)), Path(str(url)).parent
        if m is None or not (folder / MANIFEST_NAME).is_file():
            continue
        if folder not in plans:
            try:
                plans[folder] = read_manifest(folder)
            except (OSError, ValueError):
                plans[folder] = None
        if plans[folder] is not None and int(m.group(1)) < plans[folder].num_shards:
            out[str(url)] = (int(m.group(1)), *plans[folder].shard_range(int(m.group(1))))
    return out


def _check_index(url: str, sample: dict, shard: int, first: int, stop: int) -> None:
    """InputError unless the sample's pair index lies in its tar's shard (a tar copied or renamed under another
    shard's name was read as that shard: its pairs could be training pairs read as validation ones)."""
    try:
        index = int(bytes(sample["index.cls"]).decode())
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{url}: WebDataset sample {sample.get('__key__')} has no pair index in index.cls; copy or "
                         f"export it again (radar-cache export-wds)") from None
    if not first <= index < stop:
        raise InputError(f"{url}: WebDataset sample {sample.get('__key__')} is pair {index}, not one of shard "
                         f"{shard}'s ({first}-{stop - 1}): a tar copied or renamed under another shard's name? "
                         f"Copy or export it again (radar-cache export-wds)")


def _pairs(samples: Iterator[dict]) -> Iterator[dict[str, torch.Tensor]]:
    for sample in samples:
        yield to_pair(sample)


class WdsPairs(IterableDataset):
    """HQ/LQ pairs from a WebDataset export (same dicts as PairDataset), split across ranks and
    DataLoader workers by tar.

    Args:
        path_or_urls: export folder, its index.json, a URL / brace pattern, or a list of URLs.
        shuffle: sample shuffle buffer size (0 = file order).
        shardshuffle: shuffle the tar order each epoch (needs shuffle > 0 to mix within tars).
        seed: seed of both shuffles; epoch e shuffles with a seed drawn from (seed, e).
        split_by_node: give each distributed rank its own tars (rank r: tars r, r + world_size, ...);
            False: every rank reads every tar.
        nsamples: samples per tar (default: from the export's index.json); `rank_batches` uses them.
        rank, world_size: the distributed rank (default: torch.distributed's, else the RANK / WORLD_SIZE
            environment variables, as webdataset reads them).

    Ranks read tars, not samples, so their shares differ when the tars do not split evenly; a training
    loader has every rank stop at the same batch count (`rank_batches`, datamodule.StreamLoader).

    Each iteration reads the next epoch (`epoch`, counted by the object itself: in the main process, or in
    each persistent DataLoader worker's copy), so the shuffled orders differ from epoch to epoch and are
    the same in every run of the same seed. Set `epoch` before iterating to start at another epoch. A
    DataLoader whose workers are not persistent starts each epoch from fresh copies of the main process's
    object, which never iterates itself: call `set_epoch(e)` before each epoch there (as with torch's
    DistributedSampler), or every epoch repeats the first one's order.
    """

    def __init__(self, path_or_urls, shuffle: int = 0, shardshuffle: bool = False, seed: int = 0,
                 split_by_node: bool = True, nsamples: Optional[Sequence[int]] = None, rank: Optional[int] = None,
                 world_size: Optional[int] = None):
        self.urls, counts = _resolve(path_or_urls)
        self.nsamples = list(nsamples) if nsamples is not None else counts
        if self.nsamples is not None and len(self.nsamples) != len(self.urls):
            raise ValueError(f"nsamples: {len(self.nsamples)} counts for {len(self.urls)} tars")
        self.shuffle, self.shardshuffle, self.seed, self.split_by_node = shuffle, shardshuffle, seed, split_by_node
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.ranges = _shard_ranges(self.urls)


    def node(self) -> tuple[int, int]:
        """(rank, world size) whose share of the tars this process reads."""
        if not self.split_by_node:
            return 0, 1
        if self.rank is not None and self.world_size is not None:
            return self.rank, self.world_size
        from webdataset.utils import pytorch_worker_info

        return pytorch_worker_info()[:2]

    def _split_by_node(self, urls: Iterator) -> Iterator:
        rank, world = self.node()
        return itertools.islice(urls, rank, None, world)

    def pipeline(self, epoch: int = 0):
        import webdataset as wds

        seed = epoch_seed(self.seed, epoch)
        assigned: list[str] = []  # (the tars this process reads, as the splitters hand them out)

        def split_by_worker(urls):
            for u in wds.split_by_worker(urls):
                assigned.append(u["url"] if isinstance(u, dict) else str(u))
                yield u

        ds = wds.WebDataset(self.urls, shardshuffle=len(self.urls) if self.shardshuffle else False,
                            nodesplitter=self._split_by_node, workersplitter=split_by_worker,
                            empty_check=False, seed=seed, handler=self._read_failure)
        ds = ds.compose(lambda samples: self._whole(samples, assigned))
        if self.shuffle:  # (the tar order's seed is every process's, so that they split one order; the samples'
            ds = ds.shuffle(self.shuffle, seed=self._sample_seed(epoch))  # is each worker's own)
        return ds.decode(handler=self._decode_failure).compose(_pairs)  # (.map would put __key__ back in each dict)

    def _sample_seed(self, epoch: int) -> int:
        """The sample shuffle's seed of `epoch` in this rank's DataLoader worker: each reads other tars, and with one
        seed for all every worker would put its tars' pairs into the same order (worker 1's batches the positions of
        worker 0's, one tar on). Rank 0's worker 0 (or main process) keeps the stream's epoch seed."""
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        rank, worker = self.node()[0], (info.id if info is not None else 0)
        return epoch_seed(self.seed, epoch, rank, worker)

    def _whole(self, samples: Iterator[dict], assigned: list[str]) -> Iterator[dict]:
        """The samples of each tar as read (before the shuffle: one tar after another), checked: every member of
        a pair there, and as many pairs as the index counts. A tar cut at a block boundary reads as a shorter
        tar, without an error; then a pair lacks members, or the tar ends early, or (zeros, or an empty tar)
        holds none: at the end, every tar of `assigned` (this process's) must have been seen."""
        counts = dict(zip(self.urls, self.nsamples)) if self.nsamples is not None else {}
        url, n, seen = None, 0, set()
        for sample in samples:
            if sample.get("__url__") != url:
                _check_count(url, n, counts)
                url, n = sample.get("__url__"), 0
                seen.add(url)
            missing = [m for m in PAIR_MEMBERS if m not in sample]
            if missing:
                raise InputError(f"{url}: WebDataset sample {sample.get('__key__')} has no {', '.join(missing)} "
                                 f"(the tar cut short?); copy or export it again (radar-cache export-wds)")
            if url in self.ranges:
                _check_index(url, sample, *self.ranges[url])
            n += 1
            yield sample
        _check_count(url, n, counts)
        for u in assigned:  # (reached only when the stream ends: not when a loader stops reading it early)
            if u not in seen:
                _check_count(u, 0, counts)

    def _read_failure(self, exn: Exception) -> bool:
        """webdataset's error handler of the tar stages: a tar that cannot be read (gone, cut short by a copy,
        empty, members twice) is an InputError naming it, instead of webdataset's traceback. The stage that reads
        a tar's members does not know its url (its errors say " @ <file>"): its failure goes on to the stage that
        opened the tar, which appends the url to the error's args and calls this again."""
        args = [a for a in getattr(exn, "args", ()) if isinstance(a, str)]
        url = next((a for a in reversed(args) if a in self.urls), None)
        if url is None and str(getattr(exn, "filename", None)) in self.urls:  # (the opener's OSError)
            url = str(exn.filename)
        reason = (args[0].split(" @ ")[0] if args and args[0] != url else "") or type(exn).__name__
        if isinstance(exn, OSError) and exn.strerror:
            reason = exn.strerror
        if url is None and not isinstance(exn, _TarFailure) and args and " @ " in args[0]:
            raise _TarFailure(reason) from None
        where = url if url is not None else f"a tar of {self._folder()}"
        raise InputError(f"{where}: WebDataset tar cannot be read ({reason}); copy or export it again "
                         f"(radar-cache export-wds)") from None

    def _decode_failure(self, exn: Exception) -> bool:
        """webdataset's error handler of the decoding: a member that does not decode is an InputError naming the
        tar, the sample and the member (webdataset's DecodingError holds them, the cause as __cause__)."""
        url, key, member = (getattr(exn, k, None) for k in ("url", "key", "k"))
        where = url if url is not None else f"a tar of {self._folder()}"
        cause = exn.__cause__ or exn
        raise InputError(f"{where}: WebDataset sample {key} member {member} does not decode "
                         f"({failure_reason(cause)}); copy or export it again (radar-cache export-wds)") from None

    def _folder(self) -> str:
        """The export's folder (its tars' common one), for a failure that names no tar."""
        folders = {str(Path(u).parent) for u in self.urls}
        return folders.pop() if len(folders) == 1 else "the export"

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration reads (its shuffles' seed)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return iter(self.pipeline(epoch))


def epoch_seed(seed: int, epoch: int, rank: int = 0, worker: int = 0) -> int:
    """The shuffles' seed of `epoch` in a stream of `seed` (a hash: nearby seeds and epochs do not overlap); for the
    sample shuffle of another rank or DataLoader worker than the first, one of its own."""
    own = f"/{rank}/{worker}" if (rank, worker) != (0, 0) else ""
    digest = hashlib.blake2b(f"radar-wds/{seed}/{epoch}{own}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")

