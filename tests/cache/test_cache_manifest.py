"""Manifest: creation (atomic, one winner among racing workers), comparison naming the differing fields,
clear errors; worker split from the command line and the SLURM array environment."""
import dataclasses
import json
import re
import threading

import pytest

from radar_train.cache import schema
from radar_train.cache.schema import create_or_check_manifest, manifest_differences, read_manifest
from radar_train.cache.synthetic import synthetic_manifest
from radar_train.cache.workers import resolve_workers


def test_manifest_differences_name_each_differing_field_and_skip_informational_ones():
    a = synthetic_manifest(100, 10)
    b = dataclasses.replace(a, latent_dtype="float32", created="another day", radar_train_version="9.9",
                            accel={"method": "fastvar", "prune": {6: 0.5}},
                            plan={**a.plan, "shard_size": 20})
    diffs = manifest_differences(a, b)
    fields = sorted(d.split(" ")[0] for d in diffs)
    # another method: its line stands for the method's settings (prune.6 is absent from the synthetic method's)
    assert fields == ["accel.method", "latent_dtype", "plan.shard_size"]
    assert "plan.shard_size (cache: 10, now: 20)" in diffs
    # the same method with other settings: each differing setting
    c = dataclasses.replace(b, accel={"method": "fastvar", "prune": {6: 0.4}, "cache_scale": 4})
    assert manifest_differences(b, c) == ["accel.cache_scale (cache: \"<absent>\", now: 4)",
                                          "accel.prune.6 (cache: 0.5, now: 0.4)"]


def test_int_keys_compare_equal_after_the_json_round_trip(tmp_path):
    m = dataclasses.replace(synthetic_manifest(10, 5), accel={"method": "fastvar", "prune": {6: 0.5, 8: 0.75}})
    create_or_check_manifest(tmp_path / "c", m)
    stored, created = create_or_check_manifest(tmp_path / "c", m)
    assert not created and stored.accel["prune"] == {"6": 0.5, "8": 0.75}


def test_a_manifest_write_that_fails_leaves_no_temporary_and_no_folder_it_made(tmp_path, monkeypatch):
    """A full disk while the manifest is written: the error, and nothing of this call left (a new cache folder
    goes, and the parents it made for it; a folder that was there stays, empty)."""
    import errno
    from pathlib import Path

    def full_disk(self, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full_disk)
    (tmp_path / "mine").mkdir()
    for c in (tmp_path / "new" / "c", tmp_path / "mine"):
        with pytest.raises(OSError, match="No space left"):
            create_or_check_manifest(c, synthetic_manifest(10, 5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"] and not any((tmp_path / "mine").iterdir())


def test_a_manifest_write_failing_without_a_file_name_names_the_manifest(tmp_path, monkeypatch):
    """A failed write names no file (ENOSPC from the write, not the open): the command's line said only `No space
    left on device (errno 28)`."""
    import errno
    from pathlib import Path

    from radar_train.cli.common import describe_os_error

    def full_disk(self, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError) as e:
        create_or_check_manifest(tmp_path / "c", synthetic_manifest(10, 5))
    assert describe_os_error(e.value) == (f"{tmp_path / 'c' / 'manifest.json'}: No space left on device while writing "
                                          f"the cache manifest (errno 28)")


def test_a_different_config_is_refused_and_the_manifest_kept(tmp_path):
    m = synthetic_manifest(10, 5)
    create_or_check_manifest(tmp_path / "c", m)
    before = (tmp_path / "c" / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match=r"differing fields: plan\.num_samples .*plan\.num_shards"):
        create_or_check_manifest(tmp_path / "c", synthetic_manifest(20, 5))
    assert (tmp_path / "c" / "manifest.json").read_bytes() == before


def test_racing_creators_end_with_one_manifest_and_no_temporary_files(tmp_path):
    m = synthetic_manifest(10, 5)
    results, barrier = [], threading.Barrier(8)

    def create(i):
        barrier.wait()
        results.append(create_or_check_manifest(tmp_path / "c", dataclasses.replace(m, created=f"t{i}"))[1])

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(results) == [False] * 7 + [True]
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["manifest.json"]


def test_read_manifest_errors_are_one_line_and_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"manifest.json not found: .* is not a radar-cache cache"):
        read_manifest(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json is not valid JSON"):
        read_manifest(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ValueError, match="missing radar_train_version, plan"):
        read_manifest(tmp_path / "empty")
    d = synthetic_manifest(10, 5).to_dict()
    d["format_version"] = schema.FORMAT_VERSION + 1
    (tmp_path / "empty" / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="upgrade radar_train"):
        read_manifest(tmp_path / "empty")
    good = synthetic_manifest(10, 5).to_dict()
    read_manifest_of = lambda d: ((tmp_path / "empty" / "manifest.json").write_text(json.dumps(d)),  # noqa: E731
                                  read_manifest(tmp_path / "empty"))[1]
    assert read_manifest_of(good).num_shards == 2
    for broken, message in ((dict(good, plan={}), "plan.num_samples is None, not a count"),
                            (dict(good, plan={**good["plan"], "num_shards": 3}), "plan.num_shards 3 does not fit"),
                            (dict(good, storage={"chunk_size": "8"}), "storage.chunk_size is not a count"),
                            ({k: v for k, v in good.items() if k != "storage"}, "storage.chunk_size is missing"),
                            (dict(good, storage={"compressor": "blosc"}), "storage.chunk_size is missing"),
                            (dict(good, latent_shape=[32, 16]), "latent_shape or patch_nums"),
                            (dict(good, accel="fastvar"), "accel is not a mapping")):
        with pytest.raises(ValueError, match="manifest.json is not a readable radar-cache manifest: " + message):
            read_manifest_of(broken)


# ---------------------------------------------------------------------------- workers
def test_single_worker_without_environment():
    s = resolve_workers(env={})
    assert (s.num_workers, s.worker_index) == (1, 0) and s.shards(3) == [0, 1, 2]


def test_slurm_array_with_offset_minimum_and_step():
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_STEP": "2",
           "SLURM_ARRAY_TASK_COUNT": "4"}  # --array=3-9:2 -> tasks 3, 5, 7, 9
    s = resolve_workers(env=env)
    assert (s.num_workers, s.worker_index) == (4, 2)
    assert s.shards(11) == [2, 6, 10]


def test_every_shard_belongs_to_exactly_one_slurm_task():
    owners = {}
    for task in range(5, 10):  # --array=5-9
        env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "5"}
        for s in resolve_workers(env=env).shards(23):
            owners.setdefault(s, []).append(task)
    assert sorted(owners) == list(range(23)) and all(len(v) == 1 for v in owners.values())


def test_command_line_wins_over_the_environment():
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"}
    s = resolve_workers(num_workers=3, worker_index=2, env=env)
    assert (s.num_workers, s.worker_index) == (3, 2)
    assert resolve_workers(num_workers=4, env=env).worker_index == 1


def test_both_explicit_values_are_split_among_a_launchers_processes(monkeypatch):
    """`torchrun --nproc_per_node 2 radar-cache run --num_workers 2 --worker_index 0`: the machine's share is
    split between its two processes (workers 0 and 1 of 4), not written twice (both were worker 0 of 2)."""
    import radar_train.cache.workers as workers

    owners: dict[int, list] = {}
    for machine in (0, 1):
        for rank in (0, 1):
            monkeypatch.setattr(workers, "_launched_processes", lambda env, rank=rank: (2, rank))
            s = resolve_workers(num_workers=2, worker_index=machine, env={})
            assert s.num_workers == 4 and s.source == "command line × torchrun/accelerate processes"
            for shard in s.shards(21):
                owners.setdefault(shard, []).append((machine, rank))
    assert sorted(owners) == list(range(21)) and all(len(v) == 1 for v in owners.values())


@pytest.mark.parametrize("array", [None, 2])
def test_a_worker_index_alone_is_split_among_a_launchers_processes(monkeypatch, array):
    """`torchrun --nproc_per_node 2 radar-cache run --worker_index I` (a reviewer: every process was worker I, so
    each shard was generated twice): I is the machine's place among the SLURM array's tasks (one machine without
    an array), which its processes split; every shard is written once."""
    import radar_train.cache.workers as workers

    owners: dict[int, list] = {}
    for machine in range(array or 1):
        for rank in (0, 1):
            monkeypatch.setattr(workers, "_launched_processes", lambda env, rank=rank: (2, rank))
            env = {} if array is None else {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": str(array)}
            s = resolve_workers(worker_index=machine, env=env)
            assert s.num_workers == 2 * (array or 1)
            for shard in s.shards(21):
                owners.setdefault(shard, []).append((machine, rank))
    assert sorted(owners) == list(range(21)) and all(len(v) == 1 for v in owners.values())
    monkeypatch.setattr(workers, "_launched_processes", lambda env: (2, 0))
    with pytest.raises(ValueError, match=r"--worker_index 1 is outside \[0, 1\).*give --num_workers too"):
        resolve_workers(worker_index=1, env={})


def test_slurm_variables_naming_no_task_of_the_array_are_named():
    with pytest.raises(ValueError, match=r"the SLURM array variables make this worker 3 of 2 "
                                         r"\(SLURM_ARRAY_TASK_ID=3, SLURM_ARRAY_TASK_COUNT=2\)"):
        resolve_workers(env={"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "2"})


def test_bad_worker_split_is_refused():
    with pytest.raises(ValueError, match="outside"):
        resolve_workers(num_workers=2, worker_index=2, env={})
    with pytest.raises(ValueError, match="give both --num_workers and --worker_index"):
        resolve_workers(num_workers=2, env={})


@pytest.mark.parametrize("env,name", [
    ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, "SLURM_ARRAY_TASK_ID"),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "two"}, "SLURM_ARRAY_TASK_COUNT"),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1.5", "SLURM_ARRAY_TASK_MAX": "3"}, "SLURM_ARRAY_TASK_MIN"),
    ({"WORLD_SIZE": "four"}, "WORLD_SIZE"),
    ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK"),  # (accelerate's own int() named no variable)
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": ""}, "LOCAL_RANK"),
])
def test_an_environment_variable_that_is_no_integer_is_named(env, name):
    with pytest.raises(ValueError, match=f"environment variable {name}=.* is not an integer"):
        resolve_workers(env=env)


def test_an_empty_array_step_is_a_step_of_one():
    env = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_STEP": "",
           "SLURM_ARRAY_TASK_MAX": "5"}
    s = resolve_workers(env=env)
    assert (s.num_workers, s.worker_index) == (3, 1)


def test_a_launchers_rank_and_world_size_are_read_without_joining_a_process_group(monkeypatch):
    """accelerate's PartialState joined a process group, which waits for every rank: `radar-cache run --check` in
    a launcher's environment with one process alive hung (for torch's half-hour timeout)."""
    import accelerate

    def no_group(*a, **k):
        raise AssertionError("a process group was joined")

    monkeypatch.setattr(accelerate, "PartialState", no_group)
    s = resolve_workers(env={"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert (s.num_workers, s.worker_index, s.process_count, s.process_index) == (2, 1, 2, 1)
    for given in ({}, {"num_workers": 2, "worker_index": 0}):  # (the values do not stand in for RANK: none advised)
        with pytest.raises(ValueError, match=r"WORLD_SIZE=2 without RANK: .*\(a launcher sets both\); unset "
                                             r"WORLD_SIZE$"):
            resolve_workers(env={"WORLD_SIZE": "2"}, **given)
    with pytest.raises(ValueError, match=r"RANK=2 and WORLD_SIZE=2: the rank is outside \[0, 2\)"):
        resolve_workers(env={"WORLD_SIZE": "2", "RANK": "2"})


def test_num_workers_fewer_than_the_launched_processes_is_refused_by_every_rank():
    """`torchrun --nproc_per_node 2 radar-cache run --num_workers 1`: rank 1 was refused naming --worker_index (not
    given) while rank 0 went on writing every shard until torchrun killed it."""
    for rank in ("0", "1"):
        with pytest.raises(ValueError, match=r"^--num_workers 1 is fewer than the 2 workers the torchrun/accelerate "
                                             r"processes make: give at least 2"):
            resolve_workers(num_workers=1, env={"WORLD_SIZE": "2", "RANK": rank})
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "WORLD_SIZE": "2", "RANK": "0"}
    with pytest.raises(ValueError, match="--num_workers 3 is fewer than the 4 workers the SLURM array × torchrun"):
        resolve_workers(num_workers=3, env=env)
    assert resolve_workers(num_workers=5, env=env).worker_index == 2


@pytest.mark.parametrize("env,why", [
    # tasks 2 and 3 of --array=0-6:2 were both worker 1 (task 3 is not one of the array's)
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "6",
      "SLURM_ARRAY_TASK_STEP": "2"}, "task 3 is not MIN + a multiple of STEP"),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "0",
      "SLURM_ARRAY_TASK_MAX": "9"}, "COUNT is not the 10 tasks MIN..MAX by STEP"),
])
def test_slurm_variables_that_describe_no_array_of_evenly_spaced_tasks_are_refused(env, why):
    with pytest.raises(ValueError, match=rf"the SLURM array variables \(.*\) name no worker split: {re.escape(why)}"):
        resolve_workers(env=env)
    stepped = "SLURM_ARRAY_TASK_STEP" in env
    ok = {**env, "SLURM_ARRAY_TASK_ID": "2"} if stepped else {**env, "SLURM_ARRAY_TASK_COUNT": "10"}
    assert resolve_workers(env=ok).num_workers == (4 if stepped else 10)
