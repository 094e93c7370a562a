"""A full disk or a quota while a command writes: one `error:` line naming the file, status 1, no traceback; what
was written before stays, and the command goes on once there is room again."""
from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from radar_train.cli.common import run_main

REPO = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent


def _file_size_limit(kib: int):
    """preexec_fn: writes past `kib` KiB fail with EFBIG (SIGXFSZ ignored), as a quota would fail them."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024, resource.RLIM_INFINITY))
    return limit


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device", "/x/final/a.safetensors"),
                                   OSError(errno.EDQUOT, "Disk quota exceeded")])
def test_an_os_error_is_one_line_naming_the_file_with_status_1(error, capsys):
    def body(_args):
        raise error

    with pytest.raises(SystemExit) as e:
        run_main("radar-x", body, [], check_configs=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and len(err) == 1
    assert err[0] == (f"error: radar-x: {error.filename + ': ' if error.filename else ''}{error.strerror} "
                      f"(errno {error.errno})")


def test_a_failed_safetensors_write_is_one_line(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    def body(_args):  # safetensors raises its own error type for a file it cannot write
        save_file({"w": torch.zeros(1)}, str(tmp_path / "no such folder" / "a.safetensors"))

    with pytest.raises(SystemExit) as e:
        run_main("radar-x", body, [], check_configs=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and len(err) == 1 and err[0].startswith("error: radar-x: ")


def test_radar_cache_on_a_full_quota_names_the_shard_and_resumes_once_there_is_room(tmp_path):
    out = tmp_path / "cache"
    cmd = [str(EXE / "radar-cache"), "run", "--config", str(REPO / "configs" / "cache" / "tiny.yaml"),
           "--output", str(out), "--progress", "false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(8))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    assert f"{out}/shard-00000.zarr.tmp-" in errors[0] and "File too large while writing shard 0" in errors[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    verify = subprocess.run([str(EXE / "radar-cache"), "verify", str(out)], capture_output=True, text=True,
                            timeout=300)
    assert verify.returncode == 0 and "note:" not in verify.stdout, verify.stdout  # no temporary left either


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_radar_cache_with_stderr_on_a_full_disk_writes_its_cache(tmp_path):
    """Its first progress line failed (ENOSPC on stderr) and ended the run: status 1, manifest.json and no shard,
    the error line lost too."""
    env = {**os.environ, "RADAR_PROGRESS": "log", "RADAR_PROGRESS_INTERVAL": "0", "OMP_NUM_THREADS": "1"}
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "radar_train.cli.cache", "run", "--config",
                            str(Path(__file__).resolve().parents[1] / "configs" / "cache" / "tiny.yaml"), "--output",
                            str(tmp_path / "c"), "--plan.images_per_class", "2", "--plan.shard_size", "10"],
                           stdout=subprocess.PIPE, stderr=full, env=env, text=True, timeout=300)
    assert r.returncode == 0, r.stdout
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["manifest.json", "shard-00000.zarr",
                                                                 "shard-00001.zarr"]
