"""radar-fid goes on from where an interrupted run stopped: after an error, Ctrl-C, SIGTERM and SIGKILL the same
command ends with the numbers and samples files of an uninterrupted run; a run of other settings is refused
(or starts over with --overwrite), a folder that is not radar-fid progress is refused, a live run holds the
output folder; the samples archive is resumed from its unfinished file."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_checks import signal_self
from fid_helpers import ctrl_c_at_write, save_extractors
from radar_train.inference.fid_progress import PROGRESS_DIR, STATE_NAME, FidProgress

ROOT = Path(__file__).resolve().parents[2]
NOT_THE_RESULT = ("seconds",)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def extractors(tmp_path_factory) -> dict:
    return save_extractors(tmp_path_factory.mktemp("inception"))


def _args(extractors, out: Path, num_samples: int, batch_size: int, *more: str) -> list[str]:
    return ["--config", str(ROOT / "configs/generate/tiny.yaml"), "--device", "cpu", "--num_samples", str(num_samples),
            "--batch_size", str(batch_size), "--inception", str(extractors["features"]), "--inception_logits",
            str(extractors["logits"]), "--is_splits", "3", "--save_npz", "true", "--output", str(out), *more]


def _main(argv) -> int:
    from radar_train.cli.fid import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def _outputs(out: Path) -> dict:
    """fid.json less its timing and resume record, and the bytes of every samples file."""
    report = json.loads((out / "fid.json").read_text())
    report.pop("seconds")
    report["protocol"].pop("resumed_at")
    return {"report": report, **{p.name: p.read_bytes() for p in sorted(out.glob("samples_*.npz"))}}


@pytest.fixture(scope="module")
def uninterrupted(extractors, tmp_path_factory) -> dict:
    """The outputs of uninterrupted runs: 9 samples in batches of 3 and 40 in batches of 2."""
    got = {}
    for n, b in ((9, 3), (40, 2)):
        out = tmp_path_factory.mktemp("whole") / "fid"
        assert _main(_args(extractors, out, n, b)) == 0
        got[n] = _outputs(out)
    return got


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_after_an_error_the_same_command_ends_as_an_uninterrupted_run(extractors, uninterrupted, tmp_path,
                                                                    monkeypatch, capsys):
    """An error in the third batch, after its vanilla samples went into the archive: the first 6 samples are saved
    (the archive's seventh to ninth image, written but not counted, are dropped when the run goes on)."""
    out = tmp_path / "fid"
    real = FidProgress.write_images
    calls = []

    def fails(self, run, images):
        calls.append(run)
        if len(calls) == 6:  # batch 3: vanilla written, accelerated fails
            raise RuntimeError("the disk went away")
        real(self, run, images)

    monkeypatch.setattr(FidProgress, "write_images", fails)
    with pytest.raises(RuntimeError) as e:
        _main(_args(extractors, out, 9, 3))
    assert e.value.__notes__ == [f"radar-fid: 6 of 9 samples are saved in {out / PROGRESS_DIR}: run the same command "
                                 f"to go on from there"]
    progress = out / PROGRESS_DIR
    assert sorted(p.name for p in out.iterdir()) == [PROGRESS_DIR]  # no report, no lock
    assert sorted(p.name for p in progress.iterdir()) == [
        "logits_accelerated.f32", "logits_vanilla.f32", "samples_accelerated.npz.partial",
        "samples_vanilla.npz.partial", STATE_NAME]
    assert (progress / "logits_vanilla.f32").stat().st_size == 6 * 10 * 4  # 6 samples x 10 logits, float32
    monkeypatch.setattr(FidProgress, "write_images", real)
    capsys.readouterr()
    assert _main(_args(extractors, out, 9, 3)) == 0
    assert f"going on from sample 6 of 9, saved in {progress}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["fid.json", "fid.md", "samples_accelerated.npz",
                                                     "samples_vanilla.npz"]
    assert _outputs(out) == uninterrupted[9]
    assert json.loads((out / "fid.json").read_text())["protocol"]["resumed_at"] == [6]


def _signal_when(proc: subprocess.Popen, done: int, signum: int) -> tuple[str, str]:
    """Read the run's progress lines (stderr) until `done` samples are counted, then send `signum`; its stdout
    and stderr."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "samples" in line and line.split("samples")[1].strip().split("/")[0].strip().isdigit():
            if int(line.split("samples")[1].strip().split("/")[0]) >= done:
                proc.send_signal(signum)
                break
    stdout, stderr = proc.communicate(timeout=300)
    return stdout, "".join(seen) + stderr


def test_sigkill_and_sigterm_lose_at_most_the_unsaved_batches(extractors, uninterrupted, tmp_path):
    """SIGKILL (no handler runs) after a periodic save: the next run goes on from that save, taking the dead run's
    lock over. SIGTERM: the run saves its last complete batch, says so and exits 143. The third run finishes:
    the outputs of an uninterrupted run."""
    out = tmp_path / "fid"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RADAR_PROGRESS": "log", "RADAR_PROGRESS_INTERVAL": "0"}
    cmd = [sys.executable, "-m", "radar_train.cli.fid", *_args(extractors, out, 40, 2, "--save_every_s", "0.000001")]

    def start():
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)

    killed = start()
    _signal_when(killed, 6, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert (out / ".fid.lock").is_file()  # the dead run's
    stopped = start()
    stdout, err = _signal_when(stopped, 20, signal.SIGTERM)
    assert stopped.returncode == 143, err[-2000:]
    said = [line for line in stdout.splitlines() if "going on" in line] + [  # (the stop, as errors, on stderr)
        line for line in err.splitlines() if "SIGTERM" in line]
    assert said[0].startswith("radar-fid: going on from sample ") and int(said[0].split()[5]) >= 6
    assert said[1].startswith("radar-fid: stopped by SIGTERM; ") and said[1].endswith(
        f" of 40 samples are saved in {out / PROGRESS_DIR}: run the same command to go on from there")
    assert not (out / ".fid.lock").exists() and not (out / "fid.json").exists()
    finished = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    resumed = json.loads((out / "fid.json").read_text())["protocol"]["resumed_at"]
    assert len(resumed) == 2 and 6 <= resumed[0] < resumed[1] <= 40
    assert _outputs(out) == uninterrupted[40]
    assert sorted(p.name for p in out.iterdir()) == ["fid.json", "fid.md", "samples_accelerated.npz",
                                                     "samples_vanilla.npz"]


def _interrupted(extractors, out: Path, monkeypatch, *more: str) -> None:
    """A 9-sample run stopped by Ctrl-C in its second batch (3 samples saved)."""
    with monkeypatch.context() as m:
        ctrl_c_at_write(m, 3)
        assert _main(_args(extractors, out, 9, 3, *more)) == 130


def test_other_settings_are_refused_and_overwrite_starts_over(extractors, tmp_path, monkeypatch, capsys):
    out = tmp_path / "fid"
    _interrupted(extractors, out, monkeypatch)
    before = _files(out)
    capsys.readouterr()
    assert _main(_args(extractors, out, 9, 3, "--base_seed", "5")) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --output {out} holds the progress of a radar-fid run with other settings "
                   f"(base_seed: 10000000 vs 5, saved vs now): give its settings to go on with it, or pass --overwrite "
                   f"to start over (its progress goes)")
    assert _files(out) == before
    assert _main(_args(extractors, out, 9, 3, "--base_seed", "5", "--overwrite", "true")) == 0
    assert "going on" not in capsys.readouterr().out
    assert json.loads((out / "fid.json").read_text())["protocol"]["resumed_at"] == []
    assert not (out / PROGRESS_DIR).exists()


def test_progress_saved_by_another_radar_train_code_is_refused_and_overwrite_starts_over(extractors, tmp_path,
                                                                                         monkeypatch, capsys):
    import radar_train.code_identity

    out = tmp_path / "fid"
    _interrupted(extractors, out, monkeypatch)
    saved = radar_train.code_identity.code_digest()  # (the interrupted run's)
    before = _files(out)
    monkeypatch.setattr(radar_train.code_identity, "code_digest", lambda: "0123456789abcdef")
    capsys.readouterr()
    assert _main(_args(extractors, out, 9, 3)) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --output {out} holds the progress of a radar-fid run with other settings "
                   f"(radar_train_code: \"{saved}\" vs \"0123456789abcdef\", saved vs now): it was saved by another "
                   f"radar_train or torch, whose outputs can differ: go on with that installation, or pass --overwrite "
                   f"to start over (its progress goes)")
    assert _files(out) == before
    assert _main(_args(extractors, out, 9, 3, "--overwrite", "true")) == 0
    assert json.loads((out / "fid.json").read_text())["protocol"]["resumed_at"] == []


def test_a_folder_that_is_not_radar_fid_progress_and_a_damaged_state_are_refused(extractors, tmp_path, monkeypatch,
                                                                                capsys):
    out = tmp_path / "fid"
    (out / PROGRESS_DIR).mkdir(parents=True)
    (out / PROGRESS_DIR / "notes.txt").write_text("mine")
    assert _main(_args(extractors, out, 9, 3)) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --output {out}: {out / PROGRESS_DIR} holds notes.txt, so it is not radar-fid progress: move it "
        f"away, or choose another folder")
    assert _files(out) == {f"{PROGRESS_DIR}/notes.txt": b"mine"}
    out2 = tmp_path / "fid2"
    _interrupted(extractors, out2, monkeypatch)
    (out2 / PROGRESS_DIR / STATE_NAME).write_bytes(b"not safetensors")
    before = _files(out2)
    capsys.readouterr()
    assert _main(_args(extractors, out2, 9, 3)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --output {out2}: {out2 / PROGRESS_DIR / STATE_NAME} cannot be read as radar-fid "
                          f"progress (") and err.endswith(f"remove {out2 / PROGRESS_DIR} to start over")
    assert _files(out2) == before
    out3 = tmp_path / "fid3"  # a samples archive its state records is gone
    _interrupted(extractors, out3, monkeypatch)
    (out3 / PROGRESS_DIR / "samples_vanilla.npz.partial").unlink()
    before = _files(out3)
    capsys.readouterr()
    assert _main(_args(extractors, out3, 9, 3)) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --output {out3}: {out3 / PROGRESS_DIR} lacks samples_vanilla.npz.partial, which its progress "
        f"records: remove {out3 / PROGRESS_DIR} to start over")
    assert _files(out3) == before


@pytest.mark.parametrize("version,message", [
    ("2", "is radar-fid progress of format 2, newer than this radar_train reads (1): upgrade radar_train, or remove "),
    (None, "records no format version (None): not progress radar-fid wrote; remove "),
])
def test_progress_of_a_newer_or_no_format_version_is_refused(extractors, tmp_path, monkeypatch, capsys, version,
                                                             message):
    """The state's format_version was written but never read: progress of a newer radar_train went on."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = tmp_path / "fid"
    _interrupted(extractors, out, monkeypatch)
    state = out / PROGRESS_DIR / STATE_NAME
    with safe_open(str(state), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    if version is None:
        del meta["format_version"]
    else:
        meta["format_version"] = version
    save_file(tensors, str(state), metadata=meta)
    before = _files(out)
    capsys.readouterr()
    assert _main(_args(extractors, out, 9, 3)) == 2
    assert capsys.readouterr().err.strip() == (f"error: --output {out}: {state} {message}{out / PROGRESS_DIR} to start "
                                               f"over")
    assert _files(out) == before


def test_a_live_run_holds_the_output_folder(extractors, tmp_path, capsys):
    out = tmp_path / "fid"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".fid.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": live.pid,
                                                   "started": "2026-12-04T10:00:00+00:00"}))
        assert _main(_args(extractors, out, 9, 3)) == 2
    finally:
        live.kill()
        live.wait()
    said = capsys.readouterr()
    assert said.err.strip() == (
        f"error: --output {out} is in use by radar-fid {socket.gethostname()}:{live.pid} since "
        f"2026-12-04T10:00:00+00:00: wait for it to end, or choose another folder")
    assert said.out == ""  # (its start line came first, after the models had loaded)
    assert sorted(p.name for p in out.iterdir()) == [".fid.lock"]


def test_ctrl_c_inside_a_periodic_save_is_saved_again_whole(extractors, uninterrupted, tmp_path, monkeypatch,
                                                            capsys):
    """Ctrl-C while a periodic save writes the second run's logits (after the first run's are in): the save the
    interruption then makes writes them again, not twice, and the run goes on to an uninterrupted run's outputs."""
    from radar_train.inference import fid_progress

    out = tmp_path / "fid"
    real, calls = fid_progress.os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 7:  # the second save: logits of vanilla (6), logits of accelerated (7)
            raise KeyboardInterrupt
        real(fd)

    monkeypatch.setattr(fid_progress.os, "fsync", fsync)
    assert _main(_args(extractors, out, 9, 3, "--save_every_s", "0.000001")) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("radar-fid: interrupted; 6 of 9 samples")
    monkeypatch.undo()
    assert (out / PROGRESS_DIR / "logits_accelerated.f32").stat().st_size == 6 * 10 * 4
    assert _main(_args(extractors, out, 9, 3)) == 0
    assert _outputs(out) == uninterrupted[9]


def test_a_run_that_goes_on_reuses_the_statistics_of_an_unchanged_reference_folder(extractors, tmp_path, monkeypatch,
                                                                                   capsys):
    """A folder of reference images is read once per output: the run that goes on takes its statistics from the
    progress folder (its numbers are the uninterrupted run's), and reads the folder again once an image changed."""
    from PIL import Image

    from radar_train.inference import fid as fid_module

    real_images = tmp_path / "real"
    real_images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(real_images / f"{i}.png")
    whole, out = tmp_path / "whole", tmp_path / "fid"
    assert _main(_args(extractors, whole, 9, 3, "--reference", str(real_images))) == 0
    _interrupted(extractors, out, monkeypatch, "--reference", str(real_images))
    reads = []
    real_stats = fid_module.reference_stats
    monkeypatch.setattr(fid_module, "reference_stats", lambda *a, **k: reads.append(a) or real_stats(*a, **k))
    capsys.readouterr()
    assert _main(_args(extractors, out, 9, 3, "--reference", str(real_images))) == 0
    assert f"radar-fid: reference statistics of 6 images from {out / PROGRESS_DIR}" in capsys.readouterr().out
    assert reads == []
    assert _outputs(out) == _outputs(whole)
    assert (out / "reference_stats.npz").read_bytes() == (whole / "reference_stats.npz").read_bytes()
    # an image changed: read again
    _interrupted(extractors, out, monkeypatch, "--reference", str(real_images), "--overwrite", "true")
    assert len(reads) == 1  # (a new progress folder: the interrupted run read the folder)
    reads.clear()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(real_images / "0.png")
    assert _main(_args(extractors, out, 9, 3, "--reference", str(real_images), "--overwrite", "true")) == 0
    assert len(reads) == 1


def test_a_save_that_fails_says_where_the_last_one_is(extractors, uninterrupted, tmp_path, monkeypatch, capsys):
    """The disk fills during the second periodic save (and the save the failure then tries): the run ends with one
    line naming the error and a note naming the last save, which the same command goes on from."""
    import safetensors.torch

    out = tmp_path / "fid"
    real, calls = safetensors.torch.save_file, []

    def save_file(*a, **k):
        calls.append(a)
        if len(calls) >= 2:
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    assert _main(_args(extractors, out, 9, 3, "--save_every_s", "0.000001")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "No space left on device" in err[-2] and err[-2].startswith("error: radar-fid: ")
    assert err[-1].startswith("radar-fid: its progress could not be saved (OSError: ") and err[-1].endswith(
        f"; the last save, of 3 of 9 samples, is in {out / PROGRESS_DIR}: run the same command to go on from there")
    monkeypatch.undo()
    assert _main(_args(extractors, out, 9, 3)) == 0
    assert "going on from sample 3 of 9" in capsys.readouterr().out
    assert _outputs(out) == uninterrupted[9]


def test_a_sigterm_while_the_report_is_made_keeps_every_sample_and_one_after_the_outputs_is_ignored(
        extractors, uninterrupted, tmp_path, monkeypatch, capsys):
    """After the last batch the statistics ran under the default SIGTERM: a time limit's SIGTERM there killed the
    run (status 143, no line) with none of its samples saved (--save_every_s apart), and one after the outputs were
    in place exited 143 too, which slurm/fid.sbatch requeued, and the requeued run was refused by those outputs."""
    import radar_train.cli.fid as cli_fid
    import radar_train.inference.fid as fid_module

    def stopped_summary(*a, **k):
        signal_self()
        pytest.fail("SIGTERM did not stop the report")

    out = tmp_path / "fid"
    with monkeypatch.context() as m:
        m.setattr(fid_module, "summarize", stopped_summary)
        assert _main(_args(extractors, out, 9, 3)) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"radar-fid: stopped by SIGTERM; all 9 samples are saved in {out / PROGRESS_DIR}: run the same command to "
        f"make the report from them")
    assert sorted(p.name for p in out.iterdir()) == [PROGRESS_DIR]

    real_write, noted = cli_fid.write_fid_outputs, []

    def write_then_sigterm(*a, **k):
        real_write(*a, **k)
        signal_self()

    def note(signum, frame):
        noted.append(signum)

    previous = signal.signal(signal.SIGTERM, note)
    try:
        with monkeypatch.context() as m:
            m.setattr(cli_fid, "write_fid_outputs", write_then_sigterm)
            assert _main(_args(extractors, out, 9, 3)) == 0
        assert "radar-fid: going on from sample 9 of 9" in capsys.readouterr().out
        assert noted == [] and signal.getsignal(signal.SIGTERM) is note  # (put back after the call)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert _outputs(out) == uninterrupted[9]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_in_the_save_after_the_last_batch_keeps_every_sample(sig, extractors, uninterrupted, tmp_path,
                                                                      monkeypatch, capsys):
    """That save ran outside the handler: SIGTERM killed the run without a line, the samples since the last periodic
    save lost (here all: --save_every_s 300); Ctrl-C said only `interrupted`, and the part went."""
    out = tmp_path / "fid"
    real, calls = FidProgress.save, []

    def save(self, tally, seconds):
        calls.append(tally.done)
        if len(calls) == 1:  # (the first save: the one after the last batch)
            signal_self(sig)
        return real(self, tally, seconds)

    with monkeypatch.context() as m:
        m.setattr(FidProgress, "save", save)
        assert _main(_args(extractors, out, 9, 3)) == {signal.SIGTERM: 143, signal.SIGINT: 130}[sig]
    said = {signal.SIGTERM: "radar-fid: stopped by SIGTERM; ", signal.SIGINT: "radar-fid: interrupted; "}[sig]
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"{said}9 of 9 samples are saved in {out / PROGRESS_DIR}: run the same command to go on from there")
    assert calls[0] == 9
    assert _main(_args(extractors, out, 9, 3)) == 0
    assert "radar-fid: going on from sample 9 of 9" in capsys.readouterr().out
    assert _outputs(out) == uninterrupted[9]


@pytest.mark.parametrize("fails_at", ["fid.md", "second-archive"])
def test_a_full_disk_while_the_outputs_are_written_keeps_every_sample(extractors, uninterrupted, tmp_path,
                                                                     monkeypatch, capsys, fails_at):
    """The report's write failing (a full disk) removed the staging folder with the samples files in it, the run's
    state already dropped: the same command sampled again from 0 (hours at the papers' scale), and the error named
    no file. Now the report is written before the samples files move, and a samples file whose close fails puts
    those closed before it back: the same command goes on from every sample."""
    import errno

    from radar_train.inference.npz import NpzImageWriter

    out = tmp_path / "fid"
    full = OSError(errno.ENOSPC, "No space left on device")
    if fails_at == "fid.md":
        real_write = Path.write_text

        def write_text(self, *args, **kwargs):
            if self.name == "fid.md":
                raise full
            return real_write(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)
    else:
        real_close, closes = NpzImageWriter.close, []

        def close(self):
            closes.append(self.path.name)
            if len(closes) == 2:
                raise full
            return real_close(self)

        monkeypatch.setattr(NpzImageWriter, "close", close)
    capsys.readouterr()
    assert _main(_args(extractors, out, 9, 3)) == 1
    err = capsys.readouterr().err
    if fails_at == "fid.md":
        assert f"error: radar-fid: {out / 'fid.md'}: No space left on device (errno 28)" in err, err
    assert sorted(p.name for p in out.iterdir()) == [PROGRESS_DIR]
    monkeypatch.undo()
    assert _main(_args(extractors, out, 9, 3)) == 0
    assert f"going on from sample 9 of 9, saved in {out / PROGRESS_DIR}" in capsys.readouterr().out
    assert _outputs(out) == uninterrupted[9]
