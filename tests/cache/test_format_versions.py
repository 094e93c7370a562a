"""Format versions of a cache: the manifest's and every shard's format_version must be one this radar_train
reads (1 to FORMAT_VERSION, an integer); anything else is refused in one line naming the file, the version found
and the versions this radar_train reads, by `radar-cache verify` (a problem of that shard) and by the readers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from radar_train.cache import schema
from radar_train.cache.reader import PairDataset
from radar_train.cache.schema import read_manifest
from radar_train.cache.status import read_checked_shard, verify_cache
from radar_train.inputs import InputError

NEWER = schema.FORMAT_VERSION + 98
NOT_WRITTEN = [0, -1, True, "1", 1.0, None]  # never written by radar_train (hand-edited or foreign files)
NEWER_LINE = f"format_version {NEWER} is newer than this radar_train reads (1): upgrade radar_train"


def _not_written_line(version) -> str:
    return f"format_version {version!r} is not a format version radar_train wrote (this radar_train reads 1)"


def _edit_json(path: Path, edit) -> None:
    """Rewrite the JSON file at `path` with `edit` applied to its document (a hand edit)."""
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


def _set_manifest_version(cache: Path, version) -> None:
    _edit_json(cache / schema.MANIFEST_NAME, lambda d: d.update(format_version=version))


def _set_shard_version(cache: Path, shard: int, version=..., drop: bool = False) -> Path:
    """Set (or with drop, remove) the format_version attribute of shard `shard`; its folder."""
    path = cache / schema.shard_name(shard)
    attrs = lambda d: d["attributes"]  # noqa: E731
    _edit_json(path / "zarr.json", (lambda d: attrs(d).pop("format_version")) if drop
               else (lambda d: attrs(d).update(format_version=version)))
    return path


def _verify_cli(cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "radar_train.cli.cache", "verify", str(cache)], capture_output=True,
                          text=True)


# ------------------------------------------------------------------------------------------ manifest
def test_a_cache_the_current_code_writes_reads_and_verifies(make_synthetic):
    cache = make_synthetic(num_samples=20, shard_size=8)
    assert read_manifest(cache).format_version == schema.FORMAT_VERSION
    assert verify_cache(str(cache))[0] == []
    assert len(PairDataset(cache)) == 20


@pytest.mark.parametrize("version", [NEWER, *NOT_WRITTEN], ids=repr)
def test_a_manifest_of_a_version_this_code_does_not_know_is_refused_naming_it(make_synthetic, version):
    cache = make_synthetic(num_samples=20, shard_size=8)
    _set_manifest_version(cache, version)
    with pytest.raises(ValueError) as e:
        read_manifest(cache)
    line = NEWER_LINE if version == NEWER else _not_written_line(version)
    assert str(e.value) == f"{cache / 'manifest.json'}: {line}"


def test_radar_cache_verify_refuses_a_manifest_of_version_0_in_one_error_line(make_synthetic):
    cache = make_synthetic(num_samples=20, shard_size=8)
    _set_manifest_version(cache, 0)
    res = _verify_cli(cache)
    assert res.returncode == 2, res.stdout + res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: {cache / 'manifest.json'}: {_not_written_line(0)}"], res.stderr
    assert "Traceback" not in res.stderr


# ------------------------------------------------------------------------------------------ shards
@pytest.mark.parametrize("version", [NEWER, *NOT_WRITTEN], ids=repr)
def test_verify_reports_a_shard_of_an_unknown_version_as_that_shards_problem(make_synthetic, version):
    cache = make_synthetic(num_samples=20, shard_size=8)
    path = _set_shard_version(cache, 1, version)
    problems, counts = verify_cache(str(cache))
    line = NEWER_LINE if version == NEWER else _not_written_line(version)
    assert problems == [f"{path}: {line} ({path / 'zarr.json'})"]
    assert counts["shards_ok"] == 2 and counts["shards_total"] == 3


def test_verify_reports_a_complete_shard_without_a_format_version(make_synthetic):
    cache = make_synthetic(num_samples=20, shard_size=8)
    path = _set_shard_version(cache, 0, drop=True)
    problems, _ = verify_cache(str(cache))
    assert problems == [f"{path}: has no format_version in its attributes (radar_train writes one; this "
                        f"radar_train reads 1) ({path / 'zarr.json'})"]


def test_radar_cache_verify_exits_1_on_a_shard_of_a_newer_version(make_synthetic):
    cache = make_synthetic(num_samples=20, shard_size=8)
    path = _set_shard_version(cache, 1, NEWER)
    res = _verify_cli(cache)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"problem: {path}: {NEWER_LINE}" in res.stdout
    assert "2/3 shards ok, 1 problems" in res.stdout


@pytest.mark.parametrize("version", [NEWER, 0], ids=repr)
def test_reading_a_checked_shard_of_an_unknown_version_is_refused(make_synthetic, version):
    cache = make_synthetic(num_samples=20, shard_size=8)
    path = _set_shard_version(cache, 1, version)
    line = NEWER_LINE if version == NEWER else _not_written_line(version)
    with pytest.raises(InputError) as e:
        read_checked_shard(path, read_manifest(cache), 1)
    assert str(e.value) == f"{path}: cache shard {line}"
    read_checked_shard(cache / schema.shard_name(0), read_manifest(cache), 0)  # the others still read


def test_pair_dataset_refuses_a_shard_of_an_unknown_version_naming_it(make_synthetic):
    cache = make_synthetic(num_samples=20, shard_size=8)
    path = _set_shard_version(cache, 2, NEWER)
    with pytest.raises(ValueError) as e:
        PairDataset(cache)
    assert str(e.value) == f"cache {cache}: 1 unreadable shard(s): {path}: cache shard {NEWER_LINE}"
    assert len(PairDataset(cache, shards=[0, 1])) == 16  # a reader of the other shards is not refused
