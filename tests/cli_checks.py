"""What the bad-input tests share: call a console command in-process, snapshot a folder tree, and the two
checks (one `error:` line naming what is at fault; every file as it was)."""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
from pathlib import Path
from typing import Sequence
from unittest import mock

import pytest


def call_cli(cli: str, argv: list[str], cwd: Path) -> tuple[int, str]:
    """radar-<cli> main(argv) in-process in `cwd`: (exit status, stderr)."""
    module = importlib.import_module(f"radar_train.cli.{cli}")
    err = io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), mock.patch.object(sys, "argv", [f"radar-{cli}", *argv]):
            with pytest.raises(SystemExit) as e:
                module.main(argv)
    finally:
        os.chdir(old)
    code = e.value.code
    return (0 if code is None else code), err.getvalue()


def snapshot(*roots: Path) -> dict[str, bytes | None]:
    """Every path under `roots`: a file's bytes, None for a folder."""
    return {str(p): (None if p.is_dir() else p.read_bytes()) for r in roots for p in sorted(r.rglob("*"))}


def assert_one_line_error(err: str, *needles: str) -> str:
    """`err` ends in its only `error:` line, which holds every needle; no traceback. Returns that line."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def assert_unchanged(before: dict, after: dict) -> None:
    assert sorted(set(after) - set(before)) == [], "new files or folders"
    assert sorted(set(before) - set(after)) == [], "files or folders gone"
    assert [k for k in before if before[k] != after[k]] == [], "files changed"


def assert_refused(cli: str, argv: list[str], cwd: Path, roots: tuple[Path, ...], needles: Sequence[str]) -> str:
    """radar-<cli> argv in `cwd` fails with one `error:` line holding every needle, and every file under `roots`
    stays as it was, with nothing new. Returns that line."""
    before = snapshot(*roots)
    code, err = call_cli(cli, argv, cwd)
    assert code not in (0, None), err
    line = assert_one_line_error(err, *needles)
    assert_unchanged(before, snapshot(*roots))
    return line


def build_small_cache(build_cache, output: Path) -> Path:
    """A tiny-model FastVAR cache of 32 pairs in 2 shards of 16 (`build_cache`: the conftest fixture), for
    commands that must get as far as reading a real cache before refusing an input."""
    from radar_train.cache.config import CacheArgs, PlanArgs, StorageArgs
    from radar_train.config import AccelArgs, SamplingConfig

    build_cache(CacheArgs(sampling=SamplingConfig(cfg=1.5, top_k=64, top_p=0.96), accel=AccelArgs(method="fastvar"),
                          plan=PlanArgs(images_per_class=None, num_samples=32, shard_size=16),
                          storage=StorageArgs(chunk_size=8), output=str(output), batch_size=16, progress=False,
                          device="cpu", num_threads=1))
    return output


def zip_data_offset(data: bytes, entry) -> int:
    """Where the data of a stored zip entry (a zipfile.ZipInfo of the archive `data`) starts: after its local
    header (30 bytes, its name, its own extra field, which torch.save pads to align the data)."""
    at = entry.header_offset
    return at + 30 + int.from_bytes(data[at + 26:at + 28], "little") + int.from_bytes(data[at + 28:at + 30], "little")


def signal_self(*sigs: int) -> None:
    """Send this process each of `sigs` (SIGTERM when none), as a `kill` or a terminal would, and give its handler
    the chance to run (Python runs it between bytecodes, in the main thread)."""
    import os
    import signal

    for sig in sigs or (signal.SIGTERM,):
        os.kill(os.getpid(), sig)
        for _ in range(100):
            pass
