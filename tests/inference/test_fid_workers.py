"""radar-fid split across workers (--num_workers / --worker_index, or a SLURM array): each worker samples a
contiguous share of the batches into OUTPUT/fid-progress/part-I-of-N/, the last one to finish merges the shares
into the outputs of one run (the same samples files byte for byte; FID equal to round-off, the sums being added
in another order), a stopped worker goes on, and a single run's progress and the workers' do not mix."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli_checks import signal_self
from fid_helpers import ctrl_c_at_write, save_extractors
from radar_train.inference.fid_progress import PROGRESS_DIR, part_range

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def extractors(tmp_path_factory) -> dict:
    return save_extractors(tmp_path_factory.mktemp("inception"))


def _args(extractors, out: Path, num_samples: int, *more: str) -> list[str]:
    return ["--config", str(ROOT / "configs/generate/tiny.yaml"), "--device", "cpu", "--num_samples", str(num_samples),
            "--batch_size", "3", "--inception", str(extractors["features"]), "--inception_logits",
            str(extractors["logits"]), "--is_splits", "3", "--save_npz", "true", "--output", str(out), *more]


def _worker(k: int, n: int) -> list[str]:
    return ["--num_workers", str(n), "--worker_index", str(k)]


def _main(argv) -> int:
    from radar_train.cli.fid import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


@pytest.fixture(scope="module")
def single(extractors, tmp_path_factory) -> dict:
    """The outputs of one uninterrupted run of 9 and of 6 samples (batches of 3)."""
    got = {}
    for n in (9, 6):
        out = tmp_path_factory.mktemp("single") / "fid"
        assert _main(_args(extractors, out, n)) == 0
        got[n] = out
    return got


def _same_outputs(out: Path, single: Path, workers: int) -> None:
    """The samples files byte for byte; the report's numbers to round-off, the rest equal but the run's record."""
    for name in ("samples_vanilla.npz", "samples_accelerated.npz"):
        assert (out / name).read_bytes() == (single / name).read_bytes(), name
    merged, one = (json.loads((p / "fid.json").read_text()) for p in (out, single))
    assert merged["protocol"]["workers"] == workers and one["protocol"]["workers"] == 1
    for r in (merged, one):
        r.pop("seconds")
        for key in ("workers", "resumed_at"):
            r["protocol"].pop(key)
    # the merged sums differ from one run's by the summation order (round-off, ~1e-16 relative); with 9 samples of
    # 16 features the covariances are singular, and the Frechet distance takes square roots of eigenvalues that
    # are 0 but for round-off: a perturbation d of one becomes sqrt(d), about 1e-8 of the features' scale per
    # eigenvalue (sqrt of float64 epsilon), summed over the ~8 null ones. So the FIDs agree to ~1e-8, not 1e-16
    # (2e-10 apart on an Intel Xeon); 1e-7 bounds that estimate with a margin (the samples are compared exactly above)
    assert merged["fid_vs_vanilla"] == pytest.approx(one.pop("fid_vs_vanilla"), rel=0, abs=1e-7)
    merged.pop("fid_vs_vanilla")
    assert merged == one  # IS (from the same logits, in the same order), notes, protocol, sizes


def test_part_ranges_share_the_batches_of_one_run():
    assert [part_range(9, 3, k, 2) for k in range(2)] == [(0, 3), (3, 9)]
    assert [part_range(10, 3, k, 3) for k in range(3)] == [(0, 3), (3, 6), (6, 10)]  # (the last batch of 1)
    assert [part_range(6, 3, k, 4) for k in range(4)] == [(0, 0), (0, 3), (3, 3), (3, 6)]  # more workers than batches


def test_the_last_worker_to_finish_merges_the_outputs_of_one_run(extractors, single, tmp_path, capsys):
    out = tmp_path / "fid"
    assert _main(_args(extractors, out, 9, *_worker(1, 2))) == 0
    said = capsys.readouterr().out
    assert f"radar-fid: 1 of 2 parts done (part-0-of-2 not yet): the last worker to finish writes {out / 'fid.json'}" \
        in said
    assert sorted(p.name for p in out.iterdir()) == [PROGRESS_DIR]
    assert sorted(p.name for p in (out / PROGRESS_DIR).iterdir()) == ["part-1-of-2"]
    assert _main(_args(extractors, out, 9, *_worker(0, 2))) == 0
    assert "radar-fid: every one of the 2 parts is done: merging them into" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["fid.json", "fid.md", "samples_accelerated.npz",
                                                     "samples_vanilla.npz"]
    _same_outputs(out, single[9], 2)


def test_a_stopped_worker_goes_on_and_more_workers_than_batches_merge(extractors, single, tmp_path, monkeypatch,
                                                                     capsys):
    """4 workers for 2 batches (two have none); worker 3 stopped by Ctrl-C in its batch goes on, and merges."""
    out = tmp_path / "fid"
    with monkeypatch.context() as m:
        ctrl_c_at_write(m, 1)
        assert _main(_args(extractors, out, 6, *_worker(3, 4))) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "radar-fid: interrupted; no sample was done, nothing saved"
    for k in (0, 1, 2):
        assert _main(_args(extractors, out, 6, *_worker(k, 4))) == 0
    assert "3 of 4 parts done (part-3-of-4 not yet)" in capsys.readouterr().out
    assert _main(_args(extractors, out, 6, *_worker(3, 4))) == 0
    _same_outputs(out, single[6], 4)


def test_a_worker_with_no_batch_that_starts_after_the_merge_has_nothing_to_do(extractors, single, tmp_path, capsys):
    """3 workers for 2 batches: worker 0's empty share counts as done, so worker 1 merged; worker 0, started late (an
    array task), was refused by the merged run's fid.json as 'an earlier run's output', status 2."""
    out = tmp_path / "fid"
    for k in (2, 1):
        assert _main(_args(extractors, out, 6, *_worker(k, 3))) == 0
    assert "every one of the 3 parts is done: merging them into" in capsys.readouterr().out
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _main(_args(extractors, out, 6, *_worker(0, 3))) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        "radar-fid: worker 0 of 3 has no batch (the 6 samples in batches of 3 go to the other workers): nothing to do")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    _same_outputs(out, single[6], 3)
    # (it still makes every worker's checks: a task of an array with a wrong option fails as its siblings do)
    assert _main(_args(extractors, out, 6, *_worker(0, 3), "--is_splits", "99")) == 2
    assert _main(_args(extractors, out / "fid.json", 6, *_worker(0, 3))) == 2  # (a file)


def test_a_single_runs_progress_and_the_workers_do_not_mix(extractors, tmp_path, monkeypatch, capsys):
    out = tmp_path / "fid"
    with monkeypatch.context() as m:
        ctrl_c_at_write(m, 3)
        assert _main(_args(extractors, out, 9)) == 130  # a single run: 3 samples saved
    before = sorted(p.name for p in (out / PROGRESS_DIR).iterdir())
    capsys.readouterr()
    assert _main(_args(extractors, out, 9, *_worker(0, 2))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --output {out} holds the progress of a radar-fid run with other settings "
                          f"(num_workers: 1 vs 2, saved vs now; ") and err.endswith("pass --overwrite to start over "
                                                                                    "(its progress goes)")
    assert sorted(p.name for p in (out / PROGRESS_DIR).iterdir()) == before
    assert _main(_args(extractors, out, 9, *_worker(0, 2), "--overwrite", "true")) == 0
    assert sorted(p.name for p in (out / PROGRESS_DIR).iterdir()) == ["part-0-of-2"]
    assert _main(_args(extractors, out, 9)) == 2  # and the other way round
    assert "(num_workers: 2 vs 1, saved vs now; part-0-of-2 in " in capsys.readouterr().err


def test_a_finished_worker_run_again_leaves_its_share_as_it_is_and_merges(extractors, single, tmp_path, capsys):
    out = tmp_path / "fid"
    assert _main(_args(extractors, out, 9, *_worker(0, 2))) == 0
    share = {p.name: p.read_bytes() for p in (out / PROGRESS_DIR / "part-0-of-2").iterdir()}
    assert _main(_args(extractors, out, 9, *_worker(0, 2))) == 0  # (already done: nothing sampled, nothing copied)
    assert "going on from sample 3 of 9" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (out / PROGRESS_DIR / "part-0-of-2").iterdir()} == share
    assert _main(_args(extractors, out, 9, *_worker(1, 2))) == 0
    _same_outputs(out, single[9], 2)


def test_a_slurm_arrays_tasks_are_the_workers(extractors, single, tmp_path, monkeypatch, capsys):
    """`sbatch --array=0-1 slurm/fid.sbatch ...`: no --num_workers; each task's SLURM_ARRAY_* variables make it a
    worker, as for radar-cache."""
    out = tmp_path / "fid"
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    for task in ("1", "0"):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        assert _main(_args(extractors, out, 9)) == 0
    said = capsys.readouterr().out
    assert "1 of 2 parts done (part-0-of-2 not yet)" in said and "every one of the 2 parts is done" in said
    _same_outputs(out, single[9], 2)


def test_a_worker_checks_an_npz_reference_before_it_samples(extractors, tmp_path, capsys):
    import numpy as np

    np.savez(tmp_path / "ref.npz", mu=np.zeros(5), sigma=np.eye(5))
    out = tmp_path / "fid"
    assert _main(_args(extractors, out, 9, *_worker(1, 2), "--reference", str(tmp_path / "ref.npz"))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "5-d statistics" in err and "16-d features" in err
    assert not out.exists()


def _samples_bytes(out: Path) -> int:
    """The bytes of the samples archives under `out` (finished, unfinished, merged), a hard-linked file once."""
    seen = {}
    for p in out.rglob("*"):
        if p.is_file() and (p.name.endswith(".npz") or p.name.endswith(".npz.partial")) and p.name.startswith(
                ("samples_", ".samples_")):
            st = p.stat()
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def test_the_merge_holds_the_samples_once_plus_the_part_it_appends(extractors, single, tmp_path, monkeypatch):
    """Each part's archive goes once its images are in the merged one: the merge's peak is the samples plus one
    part's archive of one run (it was every part beside every merged archive: the samples twice)."""
    from radar_train.inference.npz import NpzImageWriter

    out = tmp_path / "fid"
    for k in (0, 1):
        assert _main(_args(extractors, out, 9, *_worker(k, 3))) == 0
    part = max(p.stat().st_size for p in (out / PROGRESS_DIR).glob("part-*/samples_*.npz.partial"))  # (3 images)
    peaks, append = [], NpzImageWriter.append_from

    def measured(self, path, count):
        append(self, path, count)
        peaks.append(_samples_bytes(out))  # (the appended part's archive still there)

    monkeypatch.setattr(NpzImageWriter, "append_from", measured)
    assert _main(_args(extractors, out, 9, *_worker(2, 3))) == 0
    total = sum((single[9] / n).stat().st_size for n in ("samples_vanilla.npz", "samples_accelerated.npz"))
    assert len(peaks) == 6 and max(peaks) <= total + part + 1024, (peaks, total)
    _same_outputs(out, single[9], 3)


def test_a_merge_cut_off_goes_on_from_the_parts_it_had_merged(extractors, single, tmp_path, monkeypatch, capsys):
    """The disk fills while the merge appends the second part of a run: the error names it, the first part's
    archive is already in the merged one (and gone), and the next merge (here worker 0's, whose archive that was)
    goes on from there to the outputs of one run."""
    from radar_train.inference.fid_merge import MERGE_DIR, MERGE_STATE
    from radar_train.inference.npz import NpzImageWriter

    out = tmp_path / "fid"
    for k in (0, 1):
        assert _main(_args(extractors, out, 9, *_worker(k, 3))) == 0
    calls, append = [], NpzImageWriter.append_from

    def disk_fills(self, path, count):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(self._tmp))
        append(self, path, count)

    with monkeypatch.context() as m:
        m.setattr(NpzImageWriter, "append_from", disk_fills)
        assert _main(_args(extractors, out, 9, *_worker(2, 3))) == 1
    err = capsys.readouterr().err
    merged = out / PROGRESS_DIR / MERGE_DIR
    assert err.strip().splitlines()[-2:] == [
        f"error: radar-fid: {merged}/samples_vanilla.npz.partial: No space left on device (errno 28)",
        f"radar-fid: the samples merged so far are kept in {merged}, the others in the parts: run any worker again "
        f"to go on"]
    assert "Traceback" not in err
    assert json.loads((merged / MERGE_STATE).read_text())["parts_merged"] == {"samples_vanilla.npz": 1}
    assert not (out / PROGRESS_DIR / "part-0-of-3" / "samples_vanilla.npz.partial").exists()
    assert (out / PROGRESS_DIR / "part-1-of-3" / "samples_vanilla.npz.partial").is_file()
    assert not (out / "fid.json").exists()
    assert _main(_args(extractors, out, 9)) == 2  # (a single run's settings: refused, naming the workers' count)
    assert "(num_workers: 3 vs 1, saved vs now; merged, part-0-of-3, part-1-of-3 in " in capsys.readouterr().err
    lost = tmp_path / "lost"  # (a copy whose part 1 lost its archive, which the merge had not taken: refused)
    shutil.copytree(out, lost)
    (lost / PROGRESS_DIR / "part-1-of-3" / "samples_vanilla.npz.partial").unlink()
    assert _main(_args(extractors, lost, 9, *_worker(1, 3))) == 2
    assert f"{lost / PROGRESS_DIR / 'part-1-of-3'} lacks samples_vanilla.npz.partial" in capsys.readouterr().err

    # a merged archive left as .old (by an earlier version's writer, cut off between moving it aside and copying
    # from it): the checks and the writer after it take it up
    partial = merged / "samples_vanilla.npz.partial"
    partial.rename(partial.with_name(partial.name + ".old"))
    assert _main(_args(extractors, out, 9, *_worker(0, 3))) == 0
    assert not (out / PROGRESS_DIR).exists()
    _same_outputs(out, single[9], 3)


def test_sigterm_during_the_merge_stops_it_with_143_and_the_next_worker_run_finishes_it(extractors, single, tmp_path,
                                                                                        monkeypatch, capsys):
    """SLURM's SIGTERM before the time limit (slurm/fid.sbatch then requeues the job on 143) while the merge appends
    the second run's first part: the first run's archive is whole in merged/, and the requeued worker finishes."""
    import os
    import signal

    from radar_train.inference.fid_merge import MERGE_DIR, MERGE_STATE
    from radar_train.inference.npz import NpzImageWriter

    out = tmp_path / "fid"
    assert _main(_args(extractors, out, 9, *_worker(0, 3))) == 0
    assert _main(_args(extractors, out, 9, *_worker(2, 3))) == 0
    calls, append = [], NpzImageWriter.append_from

    def terminated(self, path, count):
        calls.append(path)
        append(self, path, count)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as m:
        m.setattr(NpzImageWriter, "append_from", terminated)
        assert _main(_args(extractors, out, 9, *_worker(1, 3))) == 143
    merged = out / PROGRESS_DIR / MERGE_DIR
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"radar-fid: stopped by SIGTERM; the samples merged so far are kept in {merged}, the others in the parts: run "
        f"any worker again to go on")
    assert json.loads((merged / MERGE_STATE).read_text())["parts_merged"] == {"samples_vanilla.npz": 3}
    assert (merged / "samples_vanilla.npz").read_bytes() == (single[9] / "samples_vanilla.npz").read_bytes()
    assert _main(_args(extractors, out, 9, *_worker(1, 3))) == 0
    _same_outputs(out, single[9], 3)


def test_sigterm_while_the_merge_makes_the_report_keeps_every_part(extractors, single, tmp_path, monkeypatch, capsys):
    """(The merge's statistics ran under the default SIGTERM: the worker died with status 143 and no line.)"""
    import signal

    import radar_train.inference.fid as fid_module

    out = tmp_path / "fid"
    assert _main(_args(extractors, out, 9, *_worker(0, 2))) == 0

    def stopped_summary(*a, **k):
        signal_self(signal.SIGTERM)
        pytest.fail("SIGTERM did not stop the merge's report")

    with monkeypatch.context() as m:
        m.setattr(fid_module, "summarize", stopped_summary)
        assert _main(_args(extractors, out, 9, *_worker(1, 2))) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"radar-fid: stopped by SIGTERM; every one of the 2 parts is kept in {out / PROGRESS_DIR}: run any worker "
        f"again to merge them")
    assert not (out / "fid.json").exists()
    assert _main(_args(extractors, out, 9, *_worker(0, 2))) == 0
    _same_outputs(out, single[9], 2)


@pytest.mark.parametrize("where, named", [("mydata/x.txt", "mydata"), ("notes.txt", "notes.txt"),
                                          ("part-1-of-2/mine.txt", "part-1-of-2/mine.txt"),
                                          ("merged/mine.txt", "merged/mine.txt")])
def test_a_users_file_in_the_progress_folder_is_refused_and_never_removed(extractors, tmp_path, capsys, where, named):
    """The merge removes the progress folder: a worker accepted a user's files in it (outside its own part), and
    the merge deleted them with the rest."""
    out = tmp_path / "fid"
    mine = out / PROGRESS_DIR / where
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    assert _main(_args(extractors, out, 9, *_worker(0, 2))) == 2
    assert f"{out / PROGRESS_DIR} holds {named}, so it is not radar-fid progress" in capsys.readouterr().err
    assert mine.read_text() == "mine" and not (out / "fid.json").exists()


def test_the_merge_removes_only_what_radar_fid_wrote(extractors, single, tmp_path, capsys, monkeypatch):
    """A user's file put in the progress folder while the workers run (after their checks) stays, and is named."""
    from radar_train.inference.fid_progress import FidProgress

    out = tmp_path / "fid"
    assert _main(_args(extractors, out, 9, *_worker(0, 2))) == 0
    mine = out / PROGRESS_DIR / "part-0-of-2" / "mine.txt"
    mine.write_text("mine")
    check = FidProgress.check  # (the file comes after worker 1's check)
    monkeypatch.setattr(FidProgress, "check",
                        lambda self, overwrite: 0 if self.part == (1, 2) else check(self, overwrite))
    assert _main(_args(extractors, out, 9, *_worker(1, 2))) == 0
    assert mine.read_text() == "mine" and sorted(p.name for p in (out / PROGRESS_DIR).rglob("*")) == [
        "mine.txt", "part-0-of-2"]
    assert f"left part-0-of-2/mine.txt in {out / PROGRESS_DIR}: not radar-fid's" in capsys.readouterr().err
    _same_outputs(out, single[9], 2)


@pytest.mark.parametrize("other", [("--base_seed", "5"), ("--is_splits", "1")])
def test_a_worker_of_other_settings_is_named_while_the_merge_waits(extractors, tmp_path, capsys, other):
    """Each worker said only 'part-J not yet', for ever; and the settings used only by the merge (--is_splits,
    --reference) came from whichever worker merged."""
    out = tmp_path / "fid"
    assert _main(_args(extractors, out, 9, *_worker(1, 2), *other)) == 0
    capsys.readouterr()
    assert _main(_args(extractors, out, 9, *_worker(0, 2))) == 0
    said = capsys.readouterr().out
    assert "1 of 2 parts done (part-1-of-2 not yet)" in said
    key = other[0][2:]
    assert f"{out / PROGRESS_DIR / 'part-1-of-2'} holds progress of other settings ({key}: " in said
    assert "every worker must run with the same settings (worker 1 with these, or this one with those" in said
    assert not (out / "fid.json").exists()


def test_a_damaged_share_names_the_part_to_sample_again(extractors, single, tmp_path, capsys):
    """A part's samples archive cut short: the merge said 'run any worker again to go on', which said it again."""
    out = tmp_path / "fid"
    assert _main(_args(extractors, out, 9, *_worker(1, 2))) == 0
    partial = out / PROGRESS_DIR / "part-1-of-2" / "samples_vanilla.npz.partial"
    partial.write_bytes(partial.read_bytes()[:-100])
    capsys.readouterr()
    assert _main(_args(extractors, out, 9, *_worker(0, 2))) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and f"remove {out / PROGRESS_DIR / 'part-1-of-2'} and run worker 1 again" in lines[0]
    shutil.rmtree(out / PROGRESS_DIR / "part-1-of-2")
    assert _main(_args(extractors, out, 9, *_worker(1, 2))) == 0
    _same_outputs(out, single[9], 2)


def test_a_worker_without_batches_does_not_take_an_earlier_report_for_a_merge(extractors, single, tmp_path, capsys):
    out = tmp_path / "fid"
    assert _main(_args(extractors, out, 9)) == 0  # an earlier run's fid.json
    capsys.readouterr()
    assert _main(_args(extractors, out, 6, *_worker(0, 4), "--overwrite")) == 0  # (worker 0 of 4 has no batch)
    said = capsys.readouterr().out
    assert "another worker merged" not in said and "worker 0 of 4 has no batch" in said
    for k in (1, 2, 3):
        assert _main(_args(extractors, out, 6, *_worker(k, 4), "--overwrite")) == 0
    _same_outputs(out, single[6], 4)


def test_workers_given_copies_of_one_reference_at_other_paths_merge(extractors, tmp_path, capsys):
    """The reference is a setting the workers share by content: each node may read its own copy (node-local
    scratch); the path was compared, and the merge waited for ever."""
    import numpy as np

    for node in ("a", "b"):
        (tmp_path / node).mkdir()
        np.savez(tmp_path / node / "ref.npz", mu=np.zeros(16), sigma=np.eye(16))
    out = tmp_path / "fid"
    assert _main(_args(extractors, out, 9, *_worker(1, 2), "--reference", str(tmp_path / "a" / "ref.npz"))) == 0
    assert _main(_args(extractors, out, 9, *_worker(0, 2), "--reference", str(tmp_path / "b" / "ref.npz"))) == 0
    assert set(json.loads((out / "fid.json").read_text())["fid_vs_reference"]) == {"vanilla", "accelerated"}
    np.savez(tmp_path / "b" / "ref.npz", mu=np.ones(16), sigma=np.eye(16))  # other statistics: another setting
    out2 = tmp_path / "fid2"
    assert _main(_args(extractors, out2, 9, *_worker(1, 2), "--reference", str(tmp_path / "a" / "ref.npz"))) == 0
    capsys.readouterr()
    assert _main(_args(extractors, out2, 9, *_worker(0, 2), "--reference", str(tmp_path / "b" / "ref.npz"))) == 0
    assert "holds progress of other settings (reference: " in capsys.readouterr().out


def test_a_run_stopped_before_its_first_save_removes_only_its_own_files(tmp_path):
    """(A fresh run that saved nothing removed the whole progress folder, a file put there meanwhile too.)"""
    from radar_train.inference.fid_progress import FidProgress

    for part in (None, (1, 2)):
        out = tmp_path / f"out{part is None}"
        progress = FidProgress(out, {}, ["vanilla"], {"vanilla": "samples_vanilla.npz"}, 3, 8, part)
        assert progress.check(False) == 0
        progress.open(0)
        mine = out / PROGRESS_DIR / "notes.txt"
        mine.write_text("mine")
        progress.release()
        assert mine.read_text() == "mine" and sorted(p.name for p in (out / PROGRESS_DIR).rglob("*")) == ["notes.txt"]
