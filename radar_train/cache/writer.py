"""Writing one shard: a Zarr v3 group under a temporary name, arrays written whole (sharding codec inside,
Blosc + crc32c per chunk), per-array sha256 and the record count in the attributes, then a rename.

A writer owns whole shards; a shard on disk is either complete (final name) or temporary (removed by the
next run of its owner). `ShardWriter` does the write and rename in a background process (or thread), so
that the next shard is generated meanwhile.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
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
    zarr.open_group(schema.shard_store(path, read_only=False), mode="w-", zarr_format=3, attributes={
        "shard": shard, "complete": False, "writer": info, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return path


def write_arrays(path: Path, shard: int, first_index: int, arrays: dict[str, np.ndarray],
                 manifest: Manifest) -> dict:
    """Write every array of a shard into the group at `path` (one Zarr shard file per array, chunks of
    storage.chunk_size samples) and its completion attributes; returns the attributes."""
    n = int(arrays[schema.LABEL].shape[0]) if schema.LABEL in arrays else -1
    want = expected_shapes(manifest, n)
    bad = [f"{k}: missing" if k not in arrays else f"{k}: {arrays[k].shape} {arrays[k].dtype} (expected {s} {d})"
           for k, (s, d) in want.items()
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
        g = await zarr.api.asynchronous.open_group(schema.shard_store(path, read_only=False), mode="r+",
                                                   zarr_format=3)
        await asyncio.gather(*(g.create_array(name, data=arrays[name], chunks=(chunk, *arrays[name].shape[1:]),
                                              shards=(padded, *arrays[name].shape[1:]), compressors=codecs,
                                              fill_value=0) for name in schema.ARRAY_NAMES))
        await g.update_attributes(attrs)  # last: the group's zarr.json says complete

    sync(write())
    return attrs


def commit_shard(tmp: Path, shard: int) -> Optional[Path]:
    """Rename a written temporary shard to its final name. If the final name exists already (another
    writer finished this shard), keep that one and discard ours; returns None then, and when an array of
    ours is missing (the folder was removed while being written): the shard stays to be written."""
    final = tmp.parent / schema.shard_name(shard)
    missing = [name for name in schema.ARRAY_NAMES if not (tmp / name / "zarr.json").is_file()]
    if missing:  # the folder was removed while being written (and partly made again by the last writes)
        log.warning("%s lost %s while being written (removed by another process?): not committed; rerun to "
                    "write shard %d", tmp.name, ", ".join(missing), shard)
        return None
    try:
        os.rename(tmp, final)  # a directory rename onto an existing, non-empty directory fails
    except OSError:
        if final.exists():
            log.warning("%s was completed by another writer; discarding %s", final, tmp.name)
            shutil.rmtree(tmp, ignore_errors=True)
            return None
        raise
    return final


def _write_shard(tmp: Path, shard: int, first_index: int, arrays: dict[str, np.ndarray],
                 manifest: Manifest) -> tuple[Optional[int], float]:
    """Write and commit one shard; (shard, or None if another writer had finished it; seconds)."""
    t = time.perf_counter()
    try:
        write_arrays(tmp, shard, first_index, arrays, manifest)
    except OSError as e:  # (Zarr's store names no file: a full disk or a quota would say nothing of where)
        if e.filename is not None or not e.strerror:
            raise
        raise OSError(e.errno, f"{e.strerror} while writing shard {shard}", str(tmp)) from e
    done = commit_shard(tmp, shard)
    return (shard if done is not None else None), time.perf_counter() - t


def _die_with_parent(parent: int) -> None:
    """Writer-process initializer: be killed when the generating process dies (even by SIGKILL), so that
    nothing writes into the cache after its owner is gone; ignore Ctrl-C and SIGTERM, which a terminal and
    scancel send to the whole process group: the generating process takes them, waits for the shard handed over
    to be written, and ends (a writer they killed lost that whole shard, with a traceback of its own)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(0)


def _writer_died(shard: int) -> OSError:
    """The error of a writer process that ended abruptly (a signal: the out-of-memory killer, a kill): one line,
    and the run resumes (the shard it was writing stays a temporary folder, which the next run clears)."""
    return OSError(f"the shard writer process ended abruptly while writing shard {shard} (killed, e.g. by the "
                   f"out-of-memory killer); the shards written before are kept: run the same command again to resume")


class ShardWriter:
    """Writes and commits shards in the background, at most one shard behind the caller.

    mode="process" (default) compresses and writes in a separate process, so that the generating
    thread never competes with Zarr for the GIL (a writer thread slowed a CPU-bound sampling loop by
    several percent); the process dies with its parent. mode="thread" writes in a thread."""

    def __init__(self, cache_dir: Path, manifest: Manifest, mode: str = "process"):
        if mode not in ("process", "thread"):
            raise ValueError(f"writer mode must be process or thread, got {mode!r}")
        self.cache_dir, self.manifest = Path(cache_dir), manifest
        if mode == "process":
            # fork: starts at once, imports nothing (the child never touches CUDA or torch; Zarr resets its
            # event loop after a fork); spawn where there is no fork
            ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=ctx, initializer=_die_with_parent, initargs=(os.getpid(),))
        else:
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._pending: Optional[concurrent.futures.Future] = None
        self._pending_shard = -1
        self.written: list[int] = []
        self.write_seconds = 0.0

    def submit(self, tmp: Path, shard: int, first_index: int, arrays: dict) -> None:
        """Write `arrays` (numpy arrays, or torch tensors on any device: copied to the host here) into the
        temporary shard `tmp` and rename it, in the background; waits for the previous shard first."""
        arrays = {k: v if isinstance(v, np.ndarray) else v.cpu().numpy() for k, v in arrays.items()}
        self.wait()
        try:
            self._pending = self._pool.submit(_write_shard, tmp, shard, first_index, arrays, self.manifest)
        except concurrent.futures.BrokenExecutor:
            raise _writer_died(shard) from None
        self._pending_shard = shard

    def wait(self) -> None:
        """Block until the pending write is done (re-raising its error; OSError if the writer process died)."""
        if self._pending is not None:
            fut = self._pending
            try:
                shard, seconds = fut.result()
            except concurrent.futures.BrokenExecutor:
                self._pending = None
                raise _writer_died(self._pending_shard) from None
            except Exception:
                self._pending = None
                raise
            # (Ctrl-C or the CLI's SIGTERM while waiting leaves the write pending: the exit waits for it again. Taken
            # off first, the write was cancelled where the writer had not picked it up yet, and its shard was lost.)
            self._pending = None
            self.write_seconds += seconds
            if shard is not None:
                self.written.append(shard)

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
            return
        # The caller failed (Ctrl-C, an error while generating the next shard). The shard handed over before is
        # whole in memory: its write finishes. (Cancelled, as it was when the writer had not picked it up yet, a
        # generated shard was lost to a Ctrl-C.) A write's own error does not mask the caller's.
        try:
            self.wait()
        except Exception as e:  # noqa: BLE001
            log.warning("the shard handed to the writer before the run failed could not be written: %s", e)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
