"""Shards on disk: layout and attributes, complete vs temporary, no-clobber commit, verify naming damaged
files, status counts."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from radar_train.cache import schema
from radar_train.cache.layout import scan_cache
from radar_train.cache.schema import read_manifest
from radar_train.cache.status import cache_status, describe_leftover, format_status, verify_cache
from radar_train.cache.synthetic import synthetic_shard_arrays
from radar_train.cache.writer import ShardWriter, begin_shard, commit_shard, write_arrays, writer_info


def test_shard_group_holds_the_arrays_sharded_compressed_and_checksummed(make_synthetic):
    cache = make_synthetic(num_samples=20, shard_size=8, chunk_size=4)
    assert sorted(p.name for p in cache.iterdir()) == ["manifest.json", "shard-00000.zarr", "shard-00001.zarr",
                                                      "shard-00002.zarr"]
    g = zarr.open_group(str(cache / "shard-00002.zarr"), mode="r")
    assert sorted(g.array_keys()) == sorted(schema.ARRAY_NAMES)
    assert dict(g.attrs)["count"] == 4 and dict(g.attrs)["complete"] is True
    assert set(dict(g.attrs)["checksums"]) == set(schema.ARRAY_NAMES)
    meta = json.loads((cache / "shard-00000.zarr" / "fhat_hq" / "zarr.json").read_text())
    sharding = meta["codecs"][0]
    assert sharding["name"] == "sharding_indexed" and sharding["configuration"]["chunk_shape"][0] == 4
    inner = [c["name"] for c in sharding["configuration"]["codecs"]]
    assert inner == ["bytes", "blosc", "crc32c"]
    # one data file per array (the Zarr shard), whatever the number of chunks
    assert len([p for p in (cache / "shard-00000.zarr" / "fhat_hq" / "c").rglob("*") if p.is_file()]) == 1
    m = read_manifest(cache)
    want = synthetic_shard_arrays(m, 2)
    for name in schema.ARRAY_NAMES:
        assert np.array_equal(g[name][:], want[name]) and g[name].dtype == want[name].dtype


def test_arrays_that_do_not_match_the_manifest_are_refused(make_synthetic, tmp_path):
    cache = make_synthetic(num_samples=8, shard_size=8, shards=[])
    m = read_manifest(cache)
    arrays = synthetic_shard_arrays(m, 0)
    arrays[schema.FHAT_LQ] = arrays[schema.FHAT_LQ].astype(np.float32)
    tmp = begin_shard(cache, 0, writer_info(0, 1, "cpu"))
    with pytest.raises(ValueError, match="fhat_lq: .* float32 .*expected .* float16"):
        write_arrays(tmp, 0, 0, arrays, m)


def test_a_temporary_shard_is_not_complete_until_renamed(make_synthetic):
    cache = make_synthetic(num_samples=16, shard_size=8, shards=[0])
    m = read_manifest(cache)
    tmp = begin_shard(cache, 1, writer_info(0, 1, "cpu"))
    scan = scan_cache(cache, m.num_shards)
    assert list(scan.complete) == [0] and list(scan.temporary) == [1]
    write_arrays(tmp, 1, 8, synthetic_shard_arrays(m, 1), m)
    assert 1 not in scan_cache(cache, m.num_shards).complete
    assert commit_shard(tmp, 1) == cache / "shard-00001.zarr"
    assert sorted(scan_cache(cache, m.num_shards).complete) == [0, 1]


def test_commit_keeps_a_shard_another_writer_finished(make_synthetic):
    cache = make_synthetic(num_samples=8, shard_size=8)
    m = read_manifest(cache)
    before = (cache / "shard-00000.zarr" / "zarr.json").read_bytes()
    tmp = begin_shard(cache, 0, writer_info(1, 2, "cpu"))
    write_arrays(tmp, 0, 0, synthetic_shard_arrays(m, 0, seed=5), m)
    assert commit_shard(tmp, 0) is None
    assert not tmp.exists() and (cache / "shard-00000.zarr" / "zarr.json").read_bytes() == before


def test_a_shard_whose_folder_was_removed_while_being_written_is_not_committed(make_synthetic):
    """Another process removed the folder mid-write and the last writes made part of it again: the shard is
    not renamed into place as complete (it stays to be written)."""
    cache = make_synthetic(num_samples=8, shard_size=8, shards=[])
    m = read_manifest(cache)
    tmp = begin_shard(cache, 0, writer_info(0, 1, "cpu"))
    write_arrays(tmp, 0, 0, synthetic_shard_arrays(m, 0), m)
    shutil.rmtree(tmp / schema.FHAT_LQ)
    assert commit_shard(tmp, 0) is None
    assert scan_cache(cache, m.num_shards).complete == {}


def test_clearing_leaves_alone_a_temporary_shard_a_running_process_writes(make_synthetic):
    """The same worker started twice: the second one does not remove the first one's shard in progress; a
    killed writer's is removed."""
    from radar_train.cache.layout import clear_temporary, live_writer

    cache = make_synthetic(num_samples=16, shard_size=8, shards=[])
    m = read_manifest(cache)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        busy = begin_shard(cache, 0, {**writer_info(0, 1, "cpu"), "pid": running.pid})
        left = begin_shard(cache, 1, {**writer_info(0, 1, "cpu"), "pid": dead.pid})
        assert live_writer(busy) is not None and live_writer(left) is None
        removed = clear_temporary(scan_cache(cache, m.num_shards), [0, 1])
        assert removed == [left] and busy.is_dir() and not left.exists()
    finally:
        running.kill()
        running.wait()
    assert live_writer(busy) is None  # and once that writer is gone, its folder is cleared as well
    assert clear_temporary(scan_cache(cache, m.num_shards), [0]) == [busy] and not busy.exists()


def test_a_temporary_shard_whose_group_is_being_created_is_left_alone_until_it_is_old(make_synthetic):
    """A folder without zarr.json yet (a writer between making the folder and writing the group's attributes)
    read as a killed writer's, so a second worker's clearing could remove a shard just begun."""
    import os
    import time

    from radar_train.cache import layout
    from radar_train.cache.layout import clear_temporary, live_writer
    from radar_train.cache.schema import temp_shard_name

    cache = make_synthetic(num_samples=16, shard_size=8, shards=[])
    m = read_manifest(cache)
    fresh, old = cache / temp_shard_name(0), cache / temp_shard_name(1)
    fresh.mkdir()
    old.mkdir()
    t = time.time() - layout.HEARTBEAT_S - 5
    os.utime(old, (t, t))
    assert live_writer(fresh).startswith("a writer creating it") and live_writer(old) is None
    assert clear_temporary(scan_cache(cache, m.num_shards), [0, 1]) == [old]
    assert fresh.is_dir() and not old.exists()


def test_another_hosts_temporary_shard_is_left_alone_while_its_writer_shows_signs_of_life(make_synthetic):
    """A rerun while an earlier job's task still writes the same shard on another node (a pipeline resubmitted
    after one array task failed): its shard in progress is not removed while it touches it; once it has been
    silent for WRITER_STALE_S (a killed task's), a later run clears it."""
    import os
    import time

    from radar_train.cache import layout
    from radar_train.cache.layout import clear_temporary, live_writer, touch_temporary

    cache = make_synthetic(num_samples=16, shard_size=8, shards=[])
    m = read_manifest(cache)
    elsewhere = {**writer_info(0, 1, "cuda"), "host": "node-elsewhere", "pid": 4242}
    busy, silent = begin_shard(cache, 0, elsewhere), begin_shard(cache, 1, elsewhere)
    old = time.time() - layout.WRITER_STALE_S - 60
    os.utime(busy / "zarr.json", (old, old))
    os.utime(silent / "zarr.json", (old, old))
    touch_temporary(busy)  # the writer's heartbeat
    assert "node-elsewhere:4242 (another host" in live_writer(busy) and live_writer(silent) is None
    assert clear_temporary(scan_cache(cache, m.num_shards), [0, 1]) == [silent]
    assert busy.is_dir() and not silent.exists()
    later = time.time() + layout.WRITER_STALE_S + 1
    assert live_writer(busy, now=later) is None


def test_a_cache_run_touches_the_shard_it_generates(tmp_path, build_cache, monkeypatch):
    """The heartbeat behind the test above: radar-cache run touches the temporary shard it generates (here
    after every batch: HEARTBEAT_S 0)."""
    from radar_train.cache import generate
    from radar_train.cache.config import CacheArgs, PlanArgs

    touched = []
    monkeypatch.setattr(generate, "HEARTBEAT_S", 0.0)
    monkeypatch.setattr(generate, "touch_temporary", lambda path: touched.append(Path(path).name))
    build_cache(CacheArgs(plan=PlanArgs(images_per_class=None, num_samples=8, shard_size=8), batch_size=4,
                          output=str(tmp_path / "c"), progress=False, device="cpu", num_threads=1))
    assert len(touched) == 2 and touched[0] == touched[1] and touched[0].startswith("shard-00000.zarr.tmp-")


def test_process_and_thread_writers_write_the_same_shards(make_synthetic):
    caches = {}
    for mode in ("process", "thread"):
        cache = make_synthetic(num_samples=24, shard_size=8, shards=[], name=mode)
        m = read_manifest(cache)
        with ShardWriter(cache, m, mode) as w:
            for s in range(3):
                w.submit(begin_shard(cache, s, writer_info(0, 1, "cpu")), s, 8 * s, synthetic_shard_arrays(m, s))
        assert sorted(w.written) == [0, 1, 2]
        caches[mode] = cache
    for s in range(3):
        a, b = (zarr.open_group(str(caches[m] / schema.shard_name(s)), mode="r") for m in ("process", "thread"))
        assert a.attrs["checksums"] == b.attrs["checksums"]
        assert all(a[n][...].tobytes() == b[n][...].tobytes() for n in schema.ARRAY_NAMES)


def test_a_failed_background_write_is_raised_to_the_caller(make_synthetic):
    cache = make_synthetic(num_samples=8, shard_size=8, shards=[])
    m = read_manifest(cache)
    bad = synthetic_shard_arrays(m, 0)
    del bad[schema.SEED]
    with pytest.raises(ValueError, match="shard 0: arrays do not match the manifest: seed: missing"):
        with ShardWriter(cache, m) as w:
            w.submit(begin_shard(cache, 0, writer_info(0, 1, "cpu")), 0, 0, bad)
    assert not (cache / schema.shard_name(0)).exists()


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_a_failure_after_a_shard_was_handed_over_still_writes_that_shard(make_synthetic, mode):
    """Ctrl-C while the next shard is generated: the shard handed to the writer just before is written. (It was
    cancelled when the writer had not picked it up yet, as a just-started writer process had not: a generated
    shard lost, and radar-cache run's Ctrl-C test failed on a busy machine.)"""
    cache = make_synthetic(num_samples=8, shard_size=8, shards=[], name=mode)
    m = read_manifest(cache)
    with pytest.raises(KeyboardInterrupt):
        with ShardWriter(cache, m, mode) as w:
            w.submit(begin_shard(cache, 0, writer_info(0, 1, "cpu")), 0, 0, synthetic_shard_arrays(m, 0))
            raise KeyboardInterrupt
    assert w.written == [0] and (cache / schema.shard_name(0)).is_dir()
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_an_interrupt_while_waiting_for_the_writer_still_writes_the_shard(make_synthetic, mode, monkeypatch):
    """Ctrl-C (or the CLI's SIGTERM) landing while `wait` waits for the last shard: wait took the write off before
    it waited, so the exit did not wait again and cancelled it where the writer had not picked it up yet."""
    import concurrent.futures

    cache = make_synthetic(num_samples=8, shard_size=8, shards=[], name=mode)
    m = read_manifest(cache)
    real, interrupted = concurrent.futures.Future.result, []

    def result(self, timeout=None):  # (the first wait is interrupted before the write is done, as a signal does)
        if not interrupted:
            interrupted.append(self.done())
            raise KeyboardInterrupt
        return real(self, timeout)

    with pytest.raises(KeyboardInterrupt):
        with ShardWriter(cache, m, mode) as w:
            w.submit(begin_shard(cache, 0, writer_info(0, 1, "cpu")), 0, 0, synthetic_shard_arrays(m, 0))
            monkeypatch.setattr(concurrent.futures.Future, "result", result)
            w.wait()
    assert interrupted and w.written == [0] and (cache / schema.shard_name(0)).is_dir()
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]


def test_verify_passes_a_whole_cache(make_synthetic):
    problems, counts = verify_cache(str(make_synthetic()))
    assert problems == [] and counts == {"shards_ok": 4, "shards_total": 4, "leftovers": []}


def _data_file(cache, shard, name):
    files = [p for p in (cache / schema.shard_name(shard) / name / "c").rglob("*") if p.is_file()]
    assert len(files) == 1
    return files[0]


def test_verify_names_a_file_with_a_flipped_byte(make_synthetic):
    cache = make_synthetic()
    f = _data_file(cache, 1, schema.FHAT_LQ)
    data = bytearray(f.read_bytes())
    data[len(data) // 3] ^= 0xFF
    f.write_bytes(bytes(data))
    problems, counts = verify_cache(str(cache))
    assert len(problems) == 1 and str(f) in problems[0] and "shard-00001.zarr/fhat_lq" in problems[0]
    assert counts["shards_ok"] == 3


def test_verify_names_a_truncated_file(make_synthetic):
    cache = make_synthetic()
    f = _data_file(cache, 2, schema.FHAT_HQ)
    f.write_bytes(f.read_bytes()[:-20])
    problems, _ = verify_cache(str(cache))
    assert len(problems) == 1 and str(f) in problems[0]


def test_verify_reports_a_checksum_that_does_not_match_the_data(make_synthetic):
    cache = make_synthetic()
    g = zarr.open_group(str(cache / "shard-00000.zarr"), mode="r+")
    g[schema.SEED][0] = 12345  # rewritten through Zarr: chunk CRCs are fine, our checksum is not
    problems, _ = verify_cache(str(cache))
    assert any("shard-00000.zarr/seed: checksum mismatch" in p for p in problems)
    assert any("shard-00000.zarr/seed: records differ from the plan" in p for p in problems)


@pytest.mark.parametrize("edit,problem", [
    (lambda a: a.update(count=str(a["count"])), 'count "8" in the attributes, the plan has 8'),
    (lambda a: a.update(shard=3), "attributes name shard 3, not 0"),
    (lambda a: a.update(complete="yes"), 'attributes do not mark shard 0 complete (complete: "yes"'),
    (lambda a: a["checksums"].pop(schema.SEED), "shard-00000.zarr/seed: no checksum stored in the attributes"),
    (lambda a: a.update(checksums=[1]), "attributes hold no checksums object"),
])
def test_verify_names_what_is_wrong_with_hand_edited_shard_attributes(make_synthetic, edit, problem):
    """Each fault its own words: a count of "8" (a string) read "count 8 in the attributes, the plan has 8", a
    shard number edited "do not mark shard 0 complete", a checksum deleted "checksum mismatch (stored None)"."""
    import json

    cache = make_synthetic(num_samples=16, shard_size=8)
    meta = cache / "shard-00000.zarr" / "zarr.json"
    d = json.loads(meta.read_text())
    edit(d["attributes"])
    meta.write_text(json.dumps(d))
    problems, _ = verify_cache(str(cache))
    assert any(problem in p for p in problems), problems
    assert not any("checksum mismatch" in p for p in problems), problems


def test_verify_lists_missing_and_temporary_shards_and_the_cli_exits_1(make_synthetic):
    cache = make_synthetic(num_samples=30, shard_size=8, shards=[0, 2])
    begin_shard(cache, 3, writer_info(0, 1, "cpu"))
    problems, _ = verify_cache(str(cache))
    assert [p.split(":")[0].rsplit("/", 1)[-1] for p in problems] == ["shard-00001.zarr", "shard-00003.zarr"]
    assert "missing (samples 8..15)" in problems[0] and "temporary: shard-00003.zarr.tmp-" in problems[1]
    res = subprocess.run([sys.executable, "-m", "radar_train.cli.cache", "verify", str(cache)], capture_output=True,
                         text=True)
    assert res.returncode == 1
    assert res.stdout.count("problem: ") == 2 and "2/4 shards ok, 2 problems" in res.stdout


def test_verify_notes_a_temporary_copy_of_a_complete_shard_without_failing(make_synthetic):
    cache = make_synthetic(num_samples=16, shard_size=8)
    tmp = begin_shard(cache, 1, writer_info(0, 1, "cpu"))  # a writer that lost the race for shard 1 (this process)
    res = subprocess.run([sys.executable, "-m", "radar_train.cli.cache", "verify", str(cache)], capture_output=True,
                         text=True)
    assert res.returncode == 0 and "all 2 shards ok" in res.stdout and "problem" not in res.stdout
    notes = [line for line in res.stdout.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and f"{tmp}: a temporary copy of a complete shard, still written by " in notes[0]
    assert verify_cache(str(cache))[1]["leftovers"] == [describe_leftover(tmp)]


def test_verify_flags_a_shard_outside_the_plan(make_synthetic):
    cache = make_synthetic(num_samples=16, shard_size=8)
    shutil.copytree(cache / "shard-00001.zarr", cache / "shard-00007.zarr")
    problems, _ = verify_cache(str(cache))
    assert len(problems) == 1 and "shard-00007.zarr: not in the plan" in problems[0]


def test_a_shard_under_another_spelling_of_its_number_is_unexpected(make_synthetic):
    """`shard-000001.zarr` beside `shard-00001.zarr` read as shard 1 too: the one sorted last took its place in the
    scan, and verify said "all shards ok" without a word of the other."""
    from radar_train.cache.layout import scan_cache
    from radar_train.cache.status import cache_status, format_status

    cache = make_synthetic(num_samples=16, shard_size=8)
    shutil.copytree(cache / "shard-00001.zarr", cache / "shard-000001.zarr")
    scan = scan_cache(cache, 2)
    assert scan.complete == {0: cache / "shard-00000.zarr", 1: cache / "shard-00001.zarr"}
    assert scan.unexpected == [cache / "shard-000001.zarr"]
    problems, _ = verify_cache(str(cache))
    assert problems == [f"{cache / 'shard-000001.zarr'}: not shard 1's own name, shard-00001.zarr (a copy made by "
                        f"hand?)"]
    assert "unexpected: " + f"{cache / 'shard-000001.zarr'} (not shard 1's own name" in format_status(
        cache_status(str(cache), stat_shards=0))


def test_status_counts_done_pending_and_temporary_shards(make_synthetic):
    cache = make_synthetic(num_samples=30, shard_size=8, shards=[0, 3])
    begin_shard(cache, 1, writer_info(0, 1, "cpu"))
    st = cache_status(str(cache))
    assert (st["shards_done"], st["shards_pending"], st["shards_temporary"]) == (2, 2, 1)
    assert (st["samples_done"], st["samples_total"]) == (8 + 6, 30)
    assert st["stats"]["pairs"] == 14 and st["stats"]["token_agreement"] is not None
    text = format_status(st)
    assert "2 done, 2 pending, 1 temporary (shards [1])" in text and "14 / 30" in text


def test_status_leaves_a_shard_whose_data_is_not_what_was_written_out_of_its_statistics(make_synthetic):
    """A chunk file gone (Zarr reads it as zeros) would make absurd latent statistics: status checks each
    statistics shard against its stored checksums and leaves a damaged one out, saying which and why."""
    cache = make_synthetic(num_samples=24, shard_size=8)
    whole = cache_status(str(cache))["stats"]
    chunk = sorted(p for p in (cache / "shard-00001.zarr" / "fhat_lq" / "c").rglob("*") if p.is_file())[0]
    chunk.unlink()
    st = cache_status(str(cache))
    s = st["stats"]
    assert list(s["left_out"]) == [1] and "shard-00001.zarr" in s["left_out"][1] and "verify" in s["left_out"][1]
    assert s["pairs"] == 16 and s["rel_diff_max"] <= whole["rel_diff_max"]
    text = format_status(st)
    assert "left out of the latent statistics: shard 1: " in text and "latents over 2 shards (16 pairs)" in text
