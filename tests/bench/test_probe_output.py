"""benchmarks/probe_output.py: every probe of a GPU run in one probes.json (a lent machine returns eight files)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from probe_output import write_probe_rows  # noqa: E402

HEAD = {"device": "NVIDIA H100", "torch": "2.13.0+cu130", "cuda": "13.0"}


def test_the_probes_of_one_run_share_the_file_and_another_run_starts_it_anew(tmp_path):
    write_probe_rows(tmp_path, "bicubic", [{"ms": 1.0}], HEAD, run="r1")
    path = write_probe_rows(tmp_path, "fused", [{"ms": 2.0}], HEAD, run="r1")
    doc = json.loads(path.read_text())
    assert path == tmp_path / "probes.json" and sorted(p.name for p in tmp_path.iterdir()) == ["probes.json"]
    assert {k: doc[k] for k in HEAD} == HEAD and doc["run"] == "r1"
    assert {name: p["rows"] for name, p in doc["probes"].items()} == {"bicubic": [{"ms": 1.0}], "fused": [{"ms": 2.0}]}
    assert doc["probes"]["fused"]["command"] == "python benchmarks/gpu_probes.py fused" and doc["probes"]["fused"]["date"]
    write_probe_rows(tmp_path, "decode", [{"ms": 3.0}], HEAD, run="r2")  # a later run: the earlier one's rows go
    doc = json.loads(path.read_text())
    assert doc["run"] == "r2" and list(doc["probes"]) == ["decode"]


def test_a_probe_run_by_hand_replaces_its_own_entry_and_keeps_the_others(tmp_path):
    write_probe_rows(tmp_path, "bicubic", [{"ms": 1.0}], HEAD)
    write_probe_rows(tmp_path, "fused", [{"ms": 2.0}], HEAD)
    write_probe_rows(tmp_path, "bicubic", [{"ms": 0.5}], HEAD)
    doc = json.loads((tmp_path / "probes.json").read_text())
    assert {name: p["rows"] for name, p in doc["probes"].items()} == {"bicubic": [{"ms": 0.5}], "fused": [{"ms": 2.0}]}


def test_a_damaged_file_is_started_anew(tmp_path):
    (tmp_path / "probes.json").write_text('{"probes": [1, 2')  # (a truncated or hand-edited file)
    write_probe_rows(tmp_path, "fused", [], HEAD, run="r1")
    assert list(json.loads((tmp_path / "probes.json").read_text())["probes"]) == ["fused"]
