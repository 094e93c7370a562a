"""Which shards of a cache folder are complete, temporary (being written, or left by a killed writer),
or unexpected. A shard is complete exactly when its final name exists: it is renamed into place only
after every array and its attributes are written."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from radar_train.outputs import another_live_process

log = logging.getLogger(__name__)

_FINAL = re.compile(r"^shard-(\d{5,})\.zarr$")
_TEMP = re.compile(r"^shard-(\d{5,})\.zarr\.tmp-[0-9a-f]+$")


@dataclass
class CacheScan:
    complete: dict[int, Path] = field(default_factory=dict)
    temporary: dict[int, list[Path]] = field(default_factory=dict)
    unexpected: list[Path] = field(default_factory=list)  # shard-like names outside the plan

    def pending(self, shards: Iterable[int]) -> list[int]:
        return [s for s in shards if s not in self.complete]


def scan_cache(cache_dir: str | os.PathLike, num_shards: int | None = None) -> CacheScan:
    """Classify the shard folders of a cache (shard ids >= num_shards are `unexpected`)."""
    scan = CacheScan()
    for entry in sorted(Path(cache_dir).iterdir()):
        m = _FINAL.match(entry.name)
        t = _TEMP.match(entry.name)
        if not (m or t):
            continue
        shard = int((m or t).group(1))
        if num_shards is not None and shard >= num_shards:
            scan.unexpected.append(entry)
        elif m:
            scan.complete[shard] = entry
        else:
            scan.temporary.setdefault(shard, []).append(entry)
    return scan


def live_writer(path: str | os.PathLike) -> str | None:
    """"host:pid" of the process writing the temporary shard `path` when it is another process of this host
    that still runs (its group's `writer` attributes); None otherwise (a killed writer's, this process's,
    another host's: that cannot be told from here)."""
    try:
        writer = json.loads((Path(path) / "zarr.json").read_text())["attributes"]["writer"]
        host, pid = writer["host"], int(writer["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return f"{host}:{pid}" if another_live_process(host, pid) else None


def clear_temporary(scan: CacheScan, shards: Iterable[int]) -> list[Path]:
    """Remove the temporary folders of `shards` left by a killed writer; returns what was removed. A folder
    that a running process of this host is writing (the same worker started twice) is left alone: this
    writer writes the shard under a name of its own, and whichever finishes first completes it."""
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
