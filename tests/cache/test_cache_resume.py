"""radar-cache run as separate processes on the tiny model (CPU, float32): a writer killed with SIGKILL at
several points and rerun gives the uninterrupted cache bitwise, none missing or duplicated; two concurrent
workers (one from the command line, one from a SLURM array environment) give the same cache as one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from radar_train.cache import schema
from radar_train.cache.layout import scan_cache
from radar_train.cache.reader import PairDataset
from radar_train.cache.schema import read_manifest
from radar_train.cache.status import verify_cache

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "cache" / "tiny.yaml"

# 10 classes × 4 = 40 pairs in 10 shards of 4, stored as float32 (bitwise comparisons)
SMALL = ["--plan.images_per_class", "4", "--plan.shard_size", "4", "--batch-size", "4", "--storage.dtype", "float32",
         "--progress", "false", "--device", "cpu"]

# A `radar-cache` entry whose writer can be made to hang (so that it is killed at a known point):
# RADAR_TEST_STALL=write:S  hangs after writing half of fhat_hq of shard S into its temporary group;
# RADAR_TEST_STALL=commit:S hangs after writing every array of shard S, before the rename;
# RADAR_TEST_STALL=slow:S waits 2 s (the marker written) before writing shard S, then writes it.
# The writer process (spawn) imports this file as __mp_main__, so the patches apply there too.
ENTRY = r'''
import os, sys, time
from pathlib import Path
stall = os.environ.get("RADAR_TEST_STALL")
if stall:
    import zarr
    import radar_train.cache.writer as w
    where, shard = stall.split(":")
    shard = int(shard)
    marker = Path(os.environ["RADAR_TEST_MARKER"])
    orig_write, orig_commit = w.write_arrays, w.commit_shard

    def hang():
        part = marker.with_name(marker.name + ".part")  # whole or absent: the test reads it once it exists
        part.write_text(str(os.getpid()))
        os.replace(part, marker)
        time.sleep(600)

    def write_arrays(path, s, first, arrays, manifest):
        if where == "slow" and s == shard:
            marker.write_text(str(os.getpid()))
            time.sleep(2)
        if where == "write" and s == shard:
            g = zarr.open_group(str(path), mode="r+")
            g.create_array("fhat_hq", data=arrays["fhat_hq"][: len(arrays["fhat_hq"]) // 2])
            hang()
        return orig_write(path, s, first, arrays, manifest)

    def commit_shard(tmp, s):
        if where == "commit" and s == shard:
            hang()
        return orig_commit(tmp, s)

    w.write_arrays, w.commit_shard = write_arrays, commit_shard
if __name__ == "__main__":
    from radar_train.cli.cache import main
    main(sys.argv[1:])
'''


@pytest.fixture(scope="module")
def entry(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("entry") / "radar_cache_entry.py"
    p.write_text(ENTRY)
    return p


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _start(entry, output, *args, group: bool = False, **env) -> subprocess.Popen:
    """radar-cache run in a subprocess (with `group`, in a session of its own: a signal to its process group
    reaches its writer process too, as a terminal's Ctrl-C and scancel do)."""
    cmd = [sys.executable, str(entry), "run", "--config", str(TINY_CONFIG), "--output", str(output), *SMALL, *args]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=group)


def _finish(proc) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def _kill_when(proc, condition, what: str, timeout=180.0) -> None:
    t = time.monotonic()
    while not condition():
        assert proc.poll() is None, f"writer ended before {what}: {proc.communicate()[0]}"
        assert time.monotonic() - t < timeout, f"timed out waiting for {what}"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _assert_writer_died(marker: Path) -> None:
    """The hanging writer process (its pid is in the marker) died with its parent."""
    pid = int(marker.read_text())
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    raise AssertionError(f"writer process {pid} outlived its killed parent")


def _arrays(cache: Path) -> dict[int, dict[str, np.ndarray]]:
    scan = scan_cache(cache)
    return {s: {n: zarr.open_group(str(p), mode="r")[n][...] for n in schema.ARRAY_NAMES}
            for s, p in scan.complete.items()}


def _assert_same_cache(got: Path, ref: Path) -> None:
    a, b = _arrays(got), _arrays(ref)
    assert sorted(a) == sorted(b) == list(range(10))
    for s in b:
        for n in schema.ARRAY_NAMES:
            assert a[s][n].dtype == b[s][n].dtype and a[s][n].tobytes() == b[s][n].tobytes(), (s, n)
    assert scan_cache(got).temporary == {}
    assert verify_cache(str(got))[0] == []
    assert sorted(PairDataset(got).indices.tolist()) == list(range(40))  # none missing, none duplicated


@pytest.fixture(scope="module")
def reference(entry, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "cache"
    _finish(_start(entry, out))
    return out


@pytest.mark.slow
def test_killed_writer_rerun_gives_the_uninterrupted_cache(entry, reference, tmp_path):
    out, marker = tmp_path / "cache", tmp_path / "stalled"
    # 1. mid-shard: shard 3's temporary group holds half an array
    p = _start(entry, out, RADAR_TEST_STALL="write:3", RADAR_TEST_MARKER=str(marker))
    _kill_when(p, marker.exists, "the stall in shard 3")
    _assert_writer_died(marker)
    scan = scan_cache(out)
    assert sorted(scan.complete) == [0, 1, 2] and 3 in scan.temporary
    # 2. shard 6 fully written under its temporary name, not yet renamed
    marker.unlink()
    p = _start(entry, out, RADAR_TEST_STALL="commit:6", RADAR_TEST_MARKER=str(marker))
    _kill_when(p, marker.exists, "the stall before renaming shard 6")
    _assert_writer_died(marker)
    scan = scan_cache(out)
    # (the generator has moved on to shard 7 meanwhile: its temporary group may exist too)
    assert sorted(scan.complete) == [0, 1, 2, 3, 4, 5] and sorted(scan.temporary)[0] == 6
    assert dict(zarr.open_group(str(scan.temporary[6][0]), mode="r").attrs)["complete"] is True
    problems, _ = verify_cache(str(out))
    assert [p.split(":")[0].rsplit("/", 1)[-1] for p in problems] == [schema.shard_name(s) for s in range(6, 10)]
    # 3. wherever it happens to be once shard 7 is complete
    p = _start(entry, out)
    _kill_when(p, lambda: (out / schema.shard_name(7)).exists(), "shard 7")
    # 4. to the end
    log = _finish(_start(entry, out))
    assert "skipped 8 complete" in log or "skipped 9 complete" in log or "skipped 10 complete" in log, log
    _assert_same_cache(out, reference)


@pytest.mark.slow
def test_two_concurrent_workers_give_the_same_cache_as_one(entry, reference, tmp_path):
    out = tmp_path / "cache"
    w0 = _start(entry, out, "--num-workers", "2", "--worker-index", "0")
    # worker 1 of a SLURM array --array=5-6 (task ids start at 5)
    w1 = _start(entry, out, SLURM_ARRAY_TASK_ID="6", SLURM_ARRAY_TASK_MIN="5", SLURM_ARRAY_TASK_COUNT="2")
    log0, log1 = _finish(w0), _finish(w1)
    assert "this is worker 0: 5 shards" in log0 and "this is worker 1: 5 shards" in log1, (log0, log1)
    assert "2 (SLURM array)" in log1
    _assert_same_cache(out, reference)
    m, r = read_manifest(out).to_dict(), read_manifest(reference).to_dict()
    assert {k: v for k, v in m.items() if k != "created"} == {k: v for k, v in r.items() if k != "created"}


@pytest.mark.slow
def test_ctrl_c_or_scancel_to_the_process_group_keeps_the_shard_handed_to_the_writer(entry, reference, tmp_path):
    """Ctrl-C in a terminal and scancel signal every process of the group, the shard writer's too: it died with a
    traceback of its own, losing the shard handed to it; radar-cache had no SIGTERM handler at all (exit 143, no
    line, that shard lost). The writer now ignores both and finishes; the run says what it kept; the rerun gives
    the uninterrupted cache."""
    out, marker = tmp_path / "cache", tmp_path / "writing"
    for shard, signum, status, said in ((2, signal.SIGINT, 130, "radar-cache: interrupted; "),
                                        (5, signal.SIGTERM, 143, "radar-cache: stopped by SIGTERM; ")):
        marker.unlink(missing_ok=True)
        p = _start(entry, out, group=True, RADAR_TEST_STALL=f"slow:{shard}", RADAR_TEST_MARKER=str(marker))
        t = time.monotonic()
        while not marker.exists():
            assert p.poll() is None and time.monotonic() - t < 180, p.communicate()[0]
            time.sleep(0.005)
        os.killpg(p.pid, signum)  # (while the writer waits before writing the shard handed to it)
        log, _ = p.communicate(timeout=300)
        assert p.returncode == status, log
        assert "Traceback" not in log and log.strip().splitlines()[-1] == (
            f"{said}the complete shards are kept in {out}: run the same command to go on from there"), log
        assert shard in scan_cache(out).complete, log
    _finish(_start(entry, out))
    _assert_same_cache(out, reference)


@pytest.mark.parametrize("manifest", [False, True])
def test_a_stop_says_what_it_kept_only_where_the_cache_exists(tmp_path, monkeypatch, manifest):
    """Stopped while the models loaded (no cache folder yet), the line said the complete shards were kept in a
    folder that did not exist."""
    from cli_checks import call_cli

    import radar_train.cache.generate as generate

    out = tmp_path / "cache"
    if manifest:
        out.mkdir()
        (out / schema.MANIFEST_NAME).write_text("{}")

    def interrupted(args, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "run_cache", interrupted)
    code, err = call_cli("cache", ["run", "--config", str(TINY_CONFIG), "--output", str(out), *SMALL], tmp_path)
    said = (f"the complete shards are kept in {out}: run the same command to go on from there" if manifest
            else "nothing was written")
    assert code == 130 and err.strip().splitlines()[-1] == f"radar-cache: interrupted; {said}", err
    assert out.exists() == manifest
