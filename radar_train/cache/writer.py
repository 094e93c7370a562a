"""Writing one shard: a Zarr v3 group under a temporary name, arrays written whole (sharding codec inside,
Blosc + crc32c per chunk), per-array sha256 and the record count in the attributes, then a rename.

A writer owns whole shards; a shard on disk is either complete (final name) or temporary (removed by the
next run of its owner). `ShardWriter` does the write and rename in a background thread, so that the next
shard is generated meanwhile.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Optional

import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.sync import sync

from radar_train.cache import schema
from radar_train.cache.schema import Manifest

log = logging.getLogger(__name__)


def array_checksum(a: np.ndarray) -> str:
    """sha256 of the array's little-endian C-order bytes ("sha256:<hex>")."""
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return "sha256:" + hashlib.sha256(a.view(np.uint8).reshape(-1).data).hexdigest()


def chunk_codecs(storage: dict) -> list:
    comp = [] if storage["compressor"] == "none" else [
        BloscCodec(cname=storage["compressor"], clevel=storage["compression_level"], shuffle="shuffle")]
    return comp + [Crc32cCodec()]


def expected_shapes(manifest: Manifest, n: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Array name -> (shape, dtype) of a shard with n records."""
    lat = (n, *manifest.latent_shape)
    L = manifest.index_length
    out = {name: (lat, manifest.latent_dtype) for name in schema.LATENT_ARRAYS}
    out.update({name: ((n, L), schema.FIXED_DTYPES[name]) for name in schema.INDEX_ARRAYS})
    out.update({name: ((n,), schema.FIXED_DTYPES[name]) for name in schema.RECORD_ARRAYS})
    return out


def writer_info(worker_index: int, num_workers: int, device: str) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "worker_index": worker_index,
            "num_workers": num_workers, "device": device}


def begin_shard(cache_dir: Path, shard: int, info: dict) -> Path:
    """Create the shard's temporary group (attrs say `complete: false`) and return its path."""
    path = Path(cache_dir) / schema.temp_shard_name(shard)
    zarr.open_group(str(path), mode="w-", zarr_format=3, attributes={
        "shard": shard, "complete": False, "writer": info, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return path


def write_arrays(path: Path, shard: int, first_index: int, arrays: dict[str, np.ndarray],
                 manifest: Manifest) -> dict:
    """Write every array of a shard into the group at `path` (one Zarr shard file per array, chunks of
    storage.chunk_size samples) and its completion attributes; returns the attributes."""
    n = int(arrays[schema.LABEL].shape[0])
    want = expected_shapes(manifest, n)
    bad = [f"{k}: {arrays[k].shape} {arrays[k].dtype} (expected {s} {d})" for k, (s, d) in want.items()
           if k not in arrays or arrays[k].shape != s or arrays[k].dtype != np.dtype(d)]
    if bad:
        raise ValueError(f"shard {shard}: arrays do not match the manifest: " + "; ".join(bad))
    chunk = min(manifest.chunk_size, n)
    padded = -(-n // chunk) * chunk
    codecs = chunk_codecs(manifest.storage)
    attrs = {"shard": shard, "first_index": first_index, "count": n, "complete": True,
             "format_version": schema.FORMAT_VERSION,
             "checksums": {name: array_checksum(arrays[name]) for name in schema.ARRAY_NAMES},
             "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    async def write() -> None:  # every array at once: one round trip through Zarr's event loop
        g = await zarr.api.asynchronous.open_group(str(path), mode="r+", zarr_format=3)
        await asyncio.gather(*(g.create_array(name, data=arrays[name], chunks=(chunk, *arrays[name].shape[1:]),
                                              shards=(padded, *arrays[name].shape[1:]), compressors=codecs,
                                              fill_value=0) for name in schema.ARRAY_NAMES))
        await g.update_attributes(attrs)  # last: the group's zarr.json says complete

    sync(write())
    return attrs


def commit_shard(tmp: Path, shard: int) -> Optional[Path]:
    """Rename a written temporary shard to its final name. If the final name exists already (another
    writer finished this shard), keep that one and discard ours; returns None then."""
    final = tmp.parent / schema.shard_name(shard)
    try:
        os.rename(tmp, final)  # a directory rename onto an existing, non-empty directory fails
    except OSError:
        if final.exists():
            log.warning("%s was completed by another writer; discarding %s", final, tmp.name)
            shutil.rmtree(tmp, ignore_errors=True)
            return None
        raise
    return final


class ShardWriter:
    """Writes and commits shards in one background thread, at most one shard behind the caller."""

    def __init__(self, cache_dir: Path, manifest: Manifest):
        self.cache_dir, self.manifest = Path(cache_dir), manifest
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._pending: Optional[concurrent.futures.Future] = None
        self.written: list[int] = []
        self.write_seconds = 0.0

    def submit(self, tmp: Path, shard: int, first_index: int, arrays: dict[str, np.ndarray]) -> None:
        self.wait()
        self._pending = self._pool.submit(self._write, tmp, shard, first_index, arrays)

    def _write(self, tmp, shard, first_index, arrays):
        t = time.perf_counter()
        write_arrays(tmp, shard, first_index, arrays, self.manifest)
        if commit_shard(tmp, shard) is not None:
            self.written.append(shard)
        self.write_seconds += time.perf_counter() - t

    def wait(self) -> None:
        """Block until the pending write is done (re-raising its error)."""
        if self._pending is not None:
            fut, self._pending = self._pending, None
            fut.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # don't mask the caller's error; a half-written shard stays temporary
            self._pool.shutdown(wait=True, cancel_futures=True)
