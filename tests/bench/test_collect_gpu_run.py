"""benchmarks/collect_gpu_run.py: a GPU run's $OUT copied into benchmarks/gpu/ under the committed runs' names."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from collect_gpu_run import main  # noqa: E402


def _out(tmp_path, *logs):
    out = tmp_path / "out"
    out.mkdir()
    (out / "2026-12-06-nvidia-h100-80gb-hbm3.json").write_text(json.dumps({"suite": {}, "rows": []}))
    for name in logs:
        (out / name).write_text(name)
    return out


def test_the_result_and_its_logs_get_the_committed_names(tmp_path, capsys):
    out = _out(tmp_path, "suite.log", "probes.log", "probes.json")
    dest = tmp_path / "gpu"
    dest.mkdir()
    assert main([str(out), "--dest", str(dest), "--suffix", "b", "--label", "diagnostics"]) == 0
    stem = "2026-12-06b-nvidia-h100-80gb-hbm3-diagnostics"
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [f"{stem}.json", f"{stem}.suite.log", f"{stem}.probes.log", f"{stem}.probes.json"])
    assert (dest / f"{stem}.probes.json").read_text() == "probes.json"
    assert main([str(out), "--dest", str(dest)]) == 0  # without suffix and label: the run's own name
    assert (dest / "2026-12-06-nvidia-h100-80gb-hbm3.suite.log").is_file()


def test_a_taken_name_or_a_folder_without_its_result_is_one_line_and_copies_nothing(tmp_path, capsys):
    out = _out(tmp_path, "suite.log")
    dest = tmp_path / "gpu"
    dest.mkdir()
    (dest / "2026-12-06-nvidia-h100-80gb-hbm3.suite.log").write_text("an earlier run")
    assert main([str(out), "--dest", str(dest)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "2026-12-06-nvidia-h100-80gb-hbm3.suite.log exists" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in dest.iterdir()) == ["2026-12-06-nvidia-h100-80gb-hbm3.suite.log"]
    assert (dest / "2026-12-06-nvidia-h100-80gb-hbm3.suite.log").read_text() == "an earlier run"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "probes.json").write_text("{}")
    assert main([str(empty), "--dest", str(dest)]) == 2
    assert "needs exactly one result file of the GPU suite" in capsys.readouterr().err


def test_a_missing_dest_or_a_dangling_link_there_is_one_line_and_copies_nothing(tmp_path, capsys):
    """A --dest that does not exist gave a FileNotFoundError traceback; a dangling link under a target's name passed
    the `exists()` check and the copy wrote through it, outside --dest."""
    out = _out(tmp_path, "suite.log")
    assert main([str(out), "--dest", str(tmp_path / "nodest")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"error: --dest {tmp_path / 'nodest'}: no such folder"
    assert not (tmp_path / "nodest").exists()
    dest = tmp_path / "gpu"
    dest.mkdir()
    (dest / "2026-12-06-nvidia-h100-80gb-hbm3.suite.log").symlink_to(tmp_path / "victim.txt")
    assert main([str(out), "--dest", str(dest)]) == 2
    assert "2026-12-06-nvidia-h100-80gb-hbm3.suite.log exists" in capsys.readouterr().err
    assert not (tmp_path / "victim.txt").exists() and len(list(dest.iterdir())) == 1
