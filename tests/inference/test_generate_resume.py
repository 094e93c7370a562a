"""radar-generate writes its PNGs batch by batch under OUTPUT/generate-progress/ and goes on from there: after
Ctrl-C, SIGTERM or an error the same command generates only the batches not yet written and ends with the
files of an uninterrupted run; a run of other settings is refused (or starts over with --overwrite); the grid
shows the first --grid_rows samples."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_checks import signal_self
from radar_train.cli.common import Stopped
from radar_train.inference import RadarPipeline
from radar_train.inference.generate_progress import PROGRESS_DIR, GenerateProgress

ROOT = Path(__file__).resolve().parents[2]
ENTRIES = ["accelerated", "generate.json", "grid.png", "vanilla"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _args(out: Path, *more: str) -> list[str]:
    return ["--config", str(ROOT / "configs/generate/tiny.yaml"), "--device", "cpu", "--classes", "0-3", "--seeds",
            "0-1", "--batch_size", "3", "--output", str(out), *more]


def _main(argv) -> int:
    from radar_train.cli.generate import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _outputs(out: Path) -> dict:
    """Every file's bytes; generate.json less the grid's path (which names the folder)."""
    files = _files(out)
    info = json.loads(files.pop("generate.json"))
    assert info.pop("grid") == str(out / "grid.png")
    return {**files, "generate.json": info}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("whole") / "gen"
    assert _main(_args(out)) == 0
    return _outputs(out)


def _stop_at(monkeypatch, call: int, error: BaseException) -> None:
    """GenerateProgress.save_png raises `error` at its `call`-th call (2 PNGs per sample: call 7 is one of the second
    batch of 3, whose files are written on threads while the third batch is generated: the other ones of that
    batch may be written)."""
    import threading

    real, calls, lock = GenerateProgress.save_png, [], threading.Lock()

    def save_png(self, *a):
        with lock:  # (the threads of a batch call it at once)
            calls.append(a)
            due = len(calls) == call
        if due:
            raise error
        real(self, *a)

    monkeypatch.setattr(GenerateProgress, "save_png", save_png)


def _interrupt_at(monkeypatch, call: int, error: BaseException) -> None:
    """RadarPipeline.compare raises `error` at its `call`-th call, where a signal lands (the main thread; call 2:
    while the first batch's files are written on threads)."""
    real, calls = RadarPipeline.compare, []

    def compare(self, labels, seeds):
        calls.append(labels)
        if len(calls) == call:
            raise error
        return real(self, labels, seeds)

    monkeypatch.setattr(RadarPipeline, "compare", compare)


def _count_compare_calls(monkeypatch) -> list:
    real, calls = RadarPipeline.compare, []

    def compare(self, labels, seeds):
        calls.append(list(labels))
        return real(self, labels, seeds)

    monkeypatch.setattr(RadarPipeline, "compare", compare)
    return calls


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "error"])
def test_an_interrupted_run_goes_on_with_the_batches_not_yet_written(how, uninterrupted, tmp_path, monkeypatch,
                                                                    capsys):
    out = tmp_path / "gen"
    error = {"ctrl-c": KeyboardInterrupt(), "sigterm": Stopped(), "error": RuntimeError("disk gone")}[how]
    if how == "error":  # a PNG of the second batch cannot be written
        _stop_at(monkeypatch, 7, error)
    else:  # the signal comes while the second batch is generated: the first batch's files are finished first
        _interrupt_at(monkeypatch, 2, error)
    said = f"3 of 8 samples are in {out / PROGRESS_DIR}: run the same command to go on from there"
    if how == "error":
        with pytest.raises(RuntimeError) as e:
            _main(_args(out))
        assert e.value.__notes__ == [f"radar-generate: {said}"]
    else:
        assert _main(_args(out)) == {"ctrl-c": 130, "sigterm": 143}[how]
        stream = capsys.readouterr()
        # the progress's last line counts the batch whose files were written while the run stopped ("0 samples in
        # 7 s, stopped at 0/20" before the line saying that 2 of 20 are in)
        assert "radar-generate: 3 samples in " in stream.err and ", stopped at 3/8" in stream.err, stream.err
        last = stream.err.strip().splitlines()[-1]  # (both on stderr, as errors)
        assert last == {"ctrl-c": f"radar-generate: interrupted; {said}",
                        "sigterm": f"radar-generate: stopped by SIGTERM; {said}"}[how]
    assert sorted(p.name for p in out.iterdir()) == [PROGRESS_DIR]  # no output entries yet, no lock
    kept = _files(out / PROGRESS_DIR)
    pngs = {k for k in kept if k.endswith(".png")}
    first = {f"{f}/class000{c}_seed{s}.png" for f in ("vanilla", "accelerated") for c, s in ((0, 0), (0, 1), (1, 0))}
    if how == "error":  # the first batch, and the second one's files but the failed one
        second = {f"{f}/class000{c}_seed{s}.png" for f in ("vanilla", "accelerated")
                  for c, s in ((1, 1), (2, 0), (2, 1))}
        assert first <= pngs < first | second and len(pngs) <= 11, sorted(pngs)
    else:
        assert pngs == first
    monkeypatch.undo()
    (out / PROGRESS_DIR / "vanilla" / ".class0001_seed1.png.tmp-0a1b2c3d-99999-host").write_bytes(b"half a PNG")
    calls = _count_compare_calls(monkeypatch)
    capsys.readouterr()
    assert _main(_args(out)) == 0
    assert f"radar-generate: going on: 3 of 8 samples are in {out / PROGRESS_DIR}" in capsys.readouterr().out
    assert calls == [[1, 2, 2], [3, 3]]  # the second and third batch only
    assert sorted(p.name for p in out.iterdir()) == ENTRIES
    assert _outputs(out) == uninterrupted


@pytest.mark.parametrize("damage", ["empty", "cut-short", "a-flipped-byte"])
def test_a_damaged_png_in_the_progress_folder_is_generated_again_with_its_batch(damage, uninterrupted, tmp_path,
                                                                                monkeypatch, capsys):
    """A lost node or a power cut can leave a renamed PNG empty or cut short (its data never reached the disk): the
    run that goes on generates its batch again. It stopped that run at its end (the grid reads it: 'image file is
    truncated', no file named), or handed the empty file out as an output with exit 0."""
    out = tmp_path / "gen"
    _interrupt_at(monkeypatch, 3, Stopped())  # the first two batches are written
    assert _main(_args(out)) == 143
    monkeypatch.undo()
    png = out / PROGRESS_DIR / "accelerated" / "class0002_seed0.png"  # of the second batch
    data = png.read_bytes()
    png.write_bytes({"empty": b"", "cut-short": data[:50],
                     "a-flipped-byte": data[:-20] + bytes([data[-20] ^ 1]) + data[-19:]}[damage])
    calls = _count_compare_calls(monkeypatch)
    capsys.readouterr()
    assert _main(_args(out)) == 0
    said = capsys.readouterr().out
    assert f"going on: 3 of 8 samples are in {out / PROGRESS_DIR}" in said
    assert f"1 damaged PNG(s) in {out / PROGRESS_DIR} (e.g. class0002_seed0.png, empty or cut short)" in said
    assert calls == [[1, 2, 2], [3, 3]]  # the damaged file's batch and the third
    assert _outputs(out) == uninterrupted


def test_other_settings_are_refused_and_overwrite_starts_over(uninterrupted, tmp_path, monkeypatch, capsys):
    out = tmp_path / "gen"
    _interrupt_at(monkeypatch, 2, KeyboardInterrupt())
    assert _main(_args(out, "--seeds", "0-2")) == 130
    monkeypatch.undo()
    before = _files(out)
    capsys.readouterr()
    assert _main(_args(out)) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --output {out} holds the progress of a radar-generate run with other settings (seeds: "
                   f"[0, 1, 2] vs [0, 1], saved vs now): give its settings to go on with it, or pass --overwrite to "
                   f"start over (its progress goes)")
    assert _files(out) == before
    assert _main(_args(out, "--overwrite", "true")) == 0
    assert "going on" not in capsys.readouterr().out
    assert _outputs(out) == uninterrupted


@pytest.mark.parametrize("key", ["radar_train_code", "torch"])
def test_progress_saved_by_another_radar_train_or_torch_is_refused_naming_the_installation(key, tmp_path,
                                                                                            monkeypatch, capsys):
    """radar_train's version string is the same at every commit between releases: the samples another code (or
    torch) saved may differ by round-off, and going on would mix them into one run's outputs."""
    import torch

    import radar_train.code_identity

    out = tmp_path / "gen"
    _interrupt_at(monkeypatch, 2, KeyboardInterrupt())
    assert _main(_args(out)) == 130
    monkeypatch.undo()
    before = _files(out)
    if key == "torch":
        monkeypatch.setattr(torch, "__version__", "9.9.9")
    else:
        monkeypatch.setattr(radar_train.code_identity, "code_digest", lambda: "0123456789abcdef")
    capsys.readouterr()
    assert _main(_args(out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --output {out} holds the progress of a radar-generate run with other settings "
                          f"({key}: ")
    assert err.endswith(", saved vs now): it was saved by another radar_train or torch, whose outputs can differ: "
                        "go on with that installation, or pass --overwrite to start over (its progress goes)")
    assert _files(out) == before


def test_a_folder_that_is_not_radar_generate_progress_is_refused(tmp_path, capsys):
    out = tmp_path / "gen"
    (out / PROGRESS_DIR).mkdir(parents=True)
    (out / PROGRESS_DIR / "notes.txt").write_text("mine")
    assert _main(_args(out)) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --output {out}: {out / PROGRESS_DIR} holds notes.txt, so it is not radar-generate progress: move it "
        f"away, or choose another folder")
    assert _files(out) == {f"{PROGRESS_DIR}/notes.txt": b"mine"}


def test_the_grid_shows_the_first_grid_rows_samples(uninterrupted, tmp_path, capsys):
    out = tmp_path / "gen"
    assert _main(_args(out, "--grid_rows", "2")) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith(
        "grid.png (its first 2 of 8 samples: --grid_rows)")
    files = _outputs(out)
    assert files["generate.json"]["grid_rows"] == 2
    assert {k: v for k, v in files.items() if k.endswith(".png") and k != "grid.png"} == {
        k: v for k, v in uninterrupted.items() if k.endswith(".png") and k != "grid.png"}
    (tmp_path / "all.png").write_bytes(uninterrupted["grid.png"])
    with Image.open(out / "grid.png") as two, Image.open(tmp_path / "all.png") as full:
        assert two.width == full.width and two.height < full.height
        assert np.array_equal(np.asarray(two), np.asarray(full.crop((0, 0, full.width, two.height))))  # its top rows


def test_a_batch_is_generated_while_the_previous_ones_pngs_are_written(uninterrupted, tmp_path, monkeypatch):
    """PNG compression (about 9 ms a file at 256 px) took as long as the GPU's batch, which waited for it: a
    batch's files are written on threads while the next batch is generated. Here the first batch's saves wait
    until the second batch's generation has begun (at most 10 s each: written before it, they would wait in vain,
    and all be finished by then)."""
    import threading

    real_save, real_compare = GenerateProgress.save_png, RadarPipeline.compare
    lock, go = threading.Lock(), threading.Event()
    state = {"finished": 0, "seen": [], "threads": set()}

    def save_png(self, *a):
        go.wait(timeout=10)
        real_save(self, *a)
        with lock:
            state["finished"] += 1
            state["threads"].add(threading.current_thread().name)

    def compare(self, labels, seeds):
        with lock:
            state["seen"].append(state["finished"])  # the earlier batches' files finished as this batch begins
        if len(state["seen"]) == 2:
            go.set()
        return real_compare(self, labels, seeds)

    monkeypatch.setattr(GenerateProgress, "save_png", save_png)
    monkeypatch.setattr(RadarPipeline, "compare", compare)
    out = tmp_path / "gen"
    assert _main(_args(out)) == 0
    assert state["seen"][:2] == [0, 0], state["seen"]  # batch 2 began before any of batch 1's 6 files was written
    assert state["finished"] == 16 and "MainThread" not in state["threads"]
    assert _outputs(out) == uninterrupted


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_sigterm_while_the_grid_is_made_is_said_and_the_same_command_finishes(sig, uninterrupted, tmp_path,
                                                                                monkeypatch, capsys):
    """(After the last batch, the grid and the moves ran under the default SIGTERM: the run ended with status 143
    and no line.) The signal lands in the grid (the main thread, as a real one does); the rerun generates nothing
    and writes the outputs of an uninterrupted run."""
    import signal

    import radar_train.images

    def grid_stopped(*a, **k):
        signal_self(getattr(signal, sig))
        pytest.fail("SIGTERM did not stop the grid")

    out = tmp_path / "gen"
    monkeypatch.setattr(radar_train.images, "save_grid", grid_stopped)
    assert _main(_args(out)) == {"SIGTERM": 143, "SIGINT": 130}[sig]
    said = {"SIGTERM": "radar-generate: stopped by SIGTERM; ", "SIGINT": "radar-generate: interrupted; "}[sig]
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"{said}all 8 samples are in {out / PROGRESS_DIR}: run the same command to write the grid and put them in "
        f"place")
    assert sorted(p.name for p in out.iterdir()) == [PROGRESS_DIR]
    monkeypatch.undo()
    calls = _count_compare_calls(monkeypatch)
    assert _main(_args(out)) == 0 and calls == []
    assert _outputs(out) == uninterrupted


def test_a_live_run_in_the_folder_is_one_line_before_the_start_line(tmp_path, capsys):
    """(The refusal came after the start line, once the models had loaded.)"""
    import os
    import socket
    import subprocess
    import sys

    from radar_train.inference.generate_progress import LOCK_NAME

    out = tmp_path / "gen"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": live.pid,
                                                 "started": "2026-12-04T10:00:00+00:00"}))
        assert _main(_args(out)) == 2
    finally:
        live.kill()
        live.wait()
    said = capsys.readouterr()
    assert (said.out, said.err.strip()) == ("", f"error: --output {out} is in use by radar-generate "
                                                f"{socket.gethostname()}:{live.pid} since 2026-12-04T10:00:00+00:00: "
                                                f"wait for it to end, or choose another folder")
    assert sorted(os.listdir(out)) == [LOCK_NAME]


@pytest.mark.parametrize("fails", ["class0000_seed0.png", "grid.png", "generate.json"])
def test_a_full_disk_is_said_of_the_file_that_failed(tmp_path, monkeypatch, capsys, fails):
    """(`error: radar-generate: No space left on device (errno 28)`, naming no file.)"""
    import errno

    from PIL import Image

    real_save, real_text = Image.Image.save, Path.write_text

    def full():
        return OSError(errno.ENOSPC, "No space left on device")

    def save(self, fp, *args, **kwargs):
        if Path(fp).name == fails or Path(fp).name.startswith(f".{fails}."):  # (a PNG: its temporary)
            raise full()
        return real_save(self, fp, *args, **kwargs)

    def write_text(self, *args, **kwargs):
        if self.name == fails:
            raise full()
        return real_text(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    monkeypatch.setattr(Path, "write_text", write_text)
    out = tmp_path / "gen"
    assert _main(_args(out)) == 1
    (err,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    where = out / "generate-progress" / "vanilla" / fails if fails.startswith("class") else out / fails
    assert err == f"error: radar-generate: {where}: No space left on device (errno 28)", err
