"""Which shards of a cache folder are complete, temporary (being written, or left by a killed writer),
or unexpected. A shard is complete exactly when its final name exists: it is renamed into place only
after every array and its attributes are written."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from radar_train.cache.schema import shard_name
from radar_train.outputs import another_live_process

log = logging.getLogger(__name__)

_FINAL = re.compile(r"^shard-(\d{5,})\.zarr$")
_TEMP = re.compile(r"^shard-(\d{5,})\.zarr\.tmp-[0-9a-f]+$")


@dataclass
class CacheScan:
    complete: dict[int, Path] = field(default_factory=dict)
    temporary: dict[int, list[Path]] = field(default_factory=dict)
    unexpected: list[Path] = field(default_factory=list)  # shard-like names outside the plan, or not a shard's own

    def pending(self, shards: Iterable[int]) -> list[int]:
        return [s for s in shards if s not in self.complete]


def scan_cache(cache_dir: str | os.PathLike, num_shards: int | None = None) -> CacheScan:
    """Classify the shard folders of a cache (shard ids >= num_shards are `unexpected`, and so is a name of a shard
    number that is not its own spelling, `shard-000003.zarr` beside `shard-00003.zarr`: a copy made by hand,
    which otherwise took the shard's place or hid behind it)."""
    scan = CacheScan()
    for entry in sorted(Path(cache_dir).iterdir()):
        m = _FINAL.match(entry.name)
        t = _TEMP.match(entry.name)
        if not (m or t):
            continue
        shard = int((m or t).group(1))
        own = entry.name == shard_name(shard) if m else entry.name.startswith(shard_name(shard) + ".tmp-")
        if not own or num_shards is not None and shard >= num_shards:
            scan.unexpected.append(entry)
        elif m:
            scan.complete[shard] = entry
        else:
            scan.temporary.setdefault(shard, []).append(entry)
    return scan


def why_unexpected(path: str | os.PathLike, num_shards: int) -> str:
    """Why scan_cache counted the shard-like `path` as unexpected, in a few words."""
    name = Path(path).name
    shard = int(re.match(r"^shard-(\d+)", name).group(1))
    if shard < num_shards:
        return f"not shard {shard}'s own name, {shard_name(shard)} (a copy made by hand?)"
    return f"not in the plan ({num_shards} shards)"


# A writer marks its temporary shard as in use by touching the group's zarr.json at least this often while it
# generates the shard; another host's temporary shard touched within WRITER_STALE_S counts as being written.
HEARTBEAT_S = 60.0
WRITER_STALE_S = 900.0


def touch_temporary(path: str | os.PathLike) -> None:
    """Mark the temporary shard `path` as being written (its zarr.json's modification time)."""
    try:
        os.utime(Path(path) / "zarr.json")
    except OSError:  # (gone: another writer completed the shard, or a cleaner removed the folder)
        pass


def live_writer(path: str | os.PathLike, now: float | None = None) -> str | None:
    """Who still writes the temporary shard `path`, from its group's `writer` attributes: "host:pid" for
    another process of this host that still runs, "host:pid (another host, ...)" for another host's writer
    whose last sign of life (`touch_temporary`) is less than WRITER_STALE_S old; None otherwise (a killed
    writer's, this process's, another host's that has been silent longer)."""
    zjson = Path(path) / "zarr.json"
    if not zjson.exists():  # a writer creating the group (its folder made, zarr.json not yet): alive if just made
        try:
            age = (time.time() if now is None else now) - Path(path).stat().st_mtime
        except OSError:
            return None
        return f"a writer creating it ({max(age, 0):.0f} s ago)" if age < HEARTBEAT_S else None
    try:
        writer = json.loads(zjson.read_text(encoding="utf-8"))["attributes"]["writer"]
        host, pid = writer["host"], int(writer["pid"])
        age = (time.time() if now is None else now) - zjson.stat().st_mtime
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname():
        return f"{host}:{pid} (another host, last sign of life {max(age, 0):.0f} s ago)" \
            if age < WRITER_STALE_S else None
    return f"{host}:{pid}" if another_live_process(host, pid) else None


def clear_temporary(scan: CacheScan, shards: Iterable[int]) -> list[Path]:
    """Remove the temporary folders of `shards` left by a killed writer; returns what was removed. A folder
    that another process is writing is left alone: one of this host that still runs (the same worker started
    twice), or another host's that touched it in the last WRITER_STALE_S (a rerun while an earlier job's task
    still runs elsewhere). This writer writes the shard under a name of its own, and whichever finishes first
    completes it; a folder left alone is removed by a later run once its writer has been silent that long."""
    removed = []
    for s in shards:
        for path in scan.temporary.pop(s, []):
            if (writer := live_writer(path)) is not None:
                log.warning("%s is being written by process %s: left alone", path, writer)
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def dir_bytes(path: str | os.PathLike) -> int:
    """Bytes of all files under `path`."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except FileNotFoundError:  # a concurrent writer renamed or removed it
                pass
    return total
