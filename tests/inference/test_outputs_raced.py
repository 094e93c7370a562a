"""Two runs writing the same outputs at once (two shells, a resubmitted job): each command checks its outputs
when it starts, and a run that starts while another is still working passes that check. The run that finished
later replaced the other's outputs without --overwrite, both exiting 0 (radar-generate, radar-fid, radar-eval,
radar-train merge and export, the toy tools). Without --overwrite, outputs that appeared while a run ran are
now not replaced: one error line, and the other run's outputs stay byte for byte. Each test makes the "other
run" write its output in the middle of this one (a wrapper around a step the command takes)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cli_checks import assert_one_line_error, call_cli, snapshot
from radar_train.outputs import OutputError, staged_entries

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_staged_entries_without_overwrite_leaves_an_entry_that_appeared_meanwhile(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputError, match=r"--output .*out: a.json appeared while this run ran \(another run writing "
                                          r"into the same folder\?\): not replaced"):
        with staged_entries(out, ["a.json", "b.md"], overwrite=False) as stage:
            (stage / "a.json").write_text("mine")
            (stage / "b.md").write_text("mine")
            out.joinpath("a.json").write_text("theirs")  # (the other run, finishing first)
    assert sorted(p.name for p in out.iterdir()) == ["a.json"] and (out / "a.json").read_text() == "theirs"
    with staged_entries(out, ["a.json", "b.md"], overwrite=True) as stage:  # (--overwrite: replaced, as before)
        (stage / "a.json").write_text("mine")
    assert sorted(p.name for p in out.iterdir()) == ["a.json"] and (out / "a.json").read_text() == "mine"


def _refused_keeping(cli: str, argv: list[str], cwd: Path, needle: str) -> None:
    code, err = call_cli(cli, argv, cwd)
    assert code not in (0, None), err
    assert_one_line_error(err, needle, "appeared while this run ran")  # (and the other run's files: the callers)


def test_radar_eval_does_not_replace_a_report_another_run_wrote_meanwhile(trained_run, tmp_path, monkeypatch):
    import radar_train.inference.evaluate as evaluate

    original = evaluate.evaluate_restoration

    def other_run_finishes_first(*a, **kw):
        result = original(*a, **kw)
        (tmp_path / "ev").mkdir(exist_ok=True)
        (tmp_path / "ev" / "eval.json").write_text("{}")
        return result

    monkeypatch.setattr(evaluate, "evaluate_restoration", other_run_finishes_first)
    _refused_keeping("eval", ["--cache", str(trained_run["cache"]), "--adapter", str(trained_run["adapter"]),
                              "--output", "ev", "--device", "cpu"], tmp_path, "--output ev: eval.json")
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["eval.json"]
    assert (tmp_path / "ev" / "eval.json").read_text() == "{}"


def test_radar_generate_keeps_the_other_runs_images_and_its_own_progress(trained_run, tmp_path, monkeypatch):
    """The refused run's images stay in generate-progress/: with --overwrite it goes on from them."""
    from radar_train.inference import RadarPipeline

    original = RadarPipeline.from_config.__func__
    theirs = tmp_path / "gen" / "grid.png"

    def other_run_finishes_first(cls, *a, **kw):
        pipe = original(cls, *a, **kw)
        theirs.parent.mkdir(exist_ok=True)
        theirs.write_bytes(b"their grid")
        return pipe

    monkeypatch.setattr(RadarPipeline, "from_config", classmethod(other_run_finishes_first))
    argv = ["--config", str(ROOT / "configs/generate/tiny.yaml"), "--classes", "0-1", "--seeds", "0", "--output",
            "gen"]
    _refused_keeping("generate", argv, tmp_path, "--output gen: grid.png")
    assert theirs.read_bytes() == b"their grid"
    assert (tmp_path / "gen" / "generate-progress").is_dir()
    monkeypatch.setattr(RadarPipeline, "from_config", classmethod(original))
    code, err = call_cli("generate", [*argv, "--overwrite"], tmp_path)
    assert code == 0, err
    assert theirs.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (tmp_path / "gen" / "generate-progress").exists()


def test_radar_train_merge_does_not_replace_a_file_another_merge_wrote_meanwhile(trained_run, tmp_path,
                                                                                 monkeypatch):
    import radar_train.export.merged as merged

    original = merged.merged_vqvae

    def other_run_finishes_first(*a, **kw):
        out = original(*a, **kw)
        (tmp_path / "vae.pth").write_bytes(b"their weights")
        return out

    monkeypatch.setattr(merged, "merged_vqvae", other_run_finishes_first)
    _refused_keeping("train", ["merge", "--adapter", str(trained_run["adapter"]), "--output", "vae.pth"], tmp_path,
                     "vae.pth appeared while this run ran")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae.pth"]
    assert (tmp_path / "vae.pth").read_bytes() == b"their weights"


def test_radar_train_export_does_not_replace_an_adapter_another_export_wrote_meanwhile(trained_run, tmp_path,
                                                                                      monkeypatch):
    import radar_train.train.module as module

    original = module.module_from_hparams
    theirs = tmp_path / "adapter"

    def other_run_finishes_first(*a, **kw):
        built = original(*a, **kw)
        shutil.copytree(trained_run["adapter"], theirs)
        return built

    monkeypatch.setattr(module, "module_from_hparams", other_run_finishes_first)
    ckpt = trained_run["run"] / "checkpoints" / "last.ckpt"
    code, err = call_cli("train", ["export", "--ckpt", str(ckpt), "--output", "adapter"], tmp_path)
    assert code not in (0, None), err
    assert_one_line_error(err, "--output", "an adapter folder appeared there while this run ran", "choose another "
                          "folder")  # (it said the folder was there already, and to pass --overwrite)
    before = snapshot(trained_run["adapter"])
    assert {Path(k).name: v for k, v in snapshot(theirs).items()} == {Path(k).name: v for k, v in before.items()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_radar_fid_keeps_the_other_runs_report_and_its_own_progress(tmp_path, monkeypatch, capsys):
    """Refused before its samples files leave fid-progress/: the same command with --overwrite goes on from its
    last saved sample instead of sampling again."""
    import json

    import radar_train.inference.fid as fid
    from fid_helpers import save_extractors

    (tmp_path / "inception").mkdir()
    extractors = save_extractors(tmp_path / "inception")
    original = fid.summarize
    theirs = tmp_path / "fid" / "fid.json"

    def other_run_finishes_first(*a, **kw):
        theirs.write_text("{}")
        return original(*a, **kw)

    monkeypatch.setattr(fid, "summarize", other_run_finishes_first)
    argv = ["--config", str(ROOT / "configs/generate/tiny.yaml"), "--device", "cpu", "--num_samples", "6",
            "--batch_size", "3", "--inception", str(extractors["features"]), "--save_npz", "true", "--output", "fid"]
    _refused_keeping("fid", argv, tmp_path, "--output fid: fid.json")
    assert theirs.read_text() == "{}" and (tmp_path / "fid" / "fid-progress").is_dir()
    monkeypatch.setattr(fid, "summarize", original)
    capsys.readouterr()
    code, err = call_cli("fid", [*argv, "--overwrite"], tmp_path)
    assert code == 0, err
    assert "radar-fid: going on from sample 6 of 6" in capsys.readouterr().out
    assert json.loads(theirs.read_text())["num_samples"] == 6 and not (tmp_path / "fid" / "fid-progress").exists()


def test_radar_train_export_into_the_final_folder_of_a_fit_that_runs_is_refused(trained_run, tmp_path):
    """The fit replaces its own final/ at its end: an adapter exported there meanwhile was lost without a word."""
    import json

    run = tmp_path / "run"
    run.mkdir()
    (run / ".fit.lock").write_text(json.dumps({"host": "elsewhere.example", "pid": 12345, "slurm_job_id": None,
                                               "started": "2025-01-02T03:04:05+00:00"}))  # (renewed just now)
    ckpt = trained_run["run"] / "checkpoints" / "last.ckpt"
    code, err = call_cli("train", ["export", "--ckpt", str(ckpt), "--output", str(run / "final")], tmp_path)
    assert code == 2, err
    assert_one_line_error(err, f"--output's run folder {run} is in use by radar-train fit elsewhere.example:12345")
    assert sorted(p.name for p in run.iterdir()) == [".fit.lock"]
