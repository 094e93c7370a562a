"""The shard writer process killed mid-run (the out-of-memory killer, a kill): radar-cache says so in one line,
exit 1, keeps the shards written before, and the same command resumes to the cache of an uninterrupted run.
(It was a BrokenProcessPool traceback.)"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import zarr

from cli_checks import assert_one_line_error, call_cli
from radar_train.cache import schema
from radar_train.cache import writer as writer_module
from radar_train.cache.layout import scan_cache
from radar_train.cache.status import verify_cache

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, out: str) -> tuple[int, str]:
    return call_cli("cache", ["run", "--config", str(ROOT / "configs/cache/tiny.yaml"), "--output", out,
                              "--plan.images_per_class", "8", "--plan.shard_size", "16", "--progress", "false"],
                    tmp_path)


_REAL_WRITE = writer_module._write_shard


def _dies_at_shard_2(tmp, shard, *args):
    """The writer's job, which kills its process at shard 2 (the forked writer runs it: it is sent by name)."""
    if shard == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return _REAL_WRITE(tmp, shard, *args)


def test_a_killed_writer_process_is_one_line_and_the_rerun_completes_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "_write_shard", _dies_at_shard_2)
    code, err = _run(tmp_path, "c")
    assert code == 1, err
    assert_one_line_error(err, "the shard writer process ended abruptly while writing shard 2",
                          "run the same command again to resume")
    scan = scan_cache(tmp_path / "c", 5)
    assert {0, 1} <= set(scan.complete) and 2 not in scan.complete

    monkeypatch.undo()
    assert _run(tmp_path, "c")[0] == 0
    assert _run(tmp_path, "whole")[0] == 0
    assert verify_cache(str(tmp_path / "c"))[0] == [] and scan_cache(tmp_path / "c").temporary == {}
    got, want = (scan_cache(tmp_path / name, 5).complete for name in ("c", "whole"))
    assert sorted(got) == sorted(want) == list(range(5))
    for shard in want:
        a, b = (zarr.open_group(str(d[shard]), mode="r") for d in (got, want))
        for name in schema.ARRAY_NAMES:
            assert a[name][...].tobytes() == b[name][...].tobytes(), (shard, name)
