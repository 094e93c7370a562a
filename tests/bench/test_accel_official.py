"""radar-bench accel --official_var: the official sampler timed against ours (here a stand-in checkout)."""
import json
import subprocess
import sys

import pytest


def test_accel_bench_against_an_official_checkout(tmp_path, fake_official, capsys):
    """--official_var: the official sampler and decode run interleaved with ours on the same weights (here a
    stand-in checkout with the official API), ratios against it per row; ours with both noise modes."""
    from radar_train.cli.bench import main

    out = tmp_path / "rows.json"
    with pytest.raises(SystemExit) as e:
        main(["accel", "--setup.preset", "tiny", "--setup.batch_size", "1", "--setup.repeats", "2",
              "--setup.warmup", "0", "--methods", "[none]", "--official_var", str(fake_official), "--json", str(out)])
    assert e.value.code == 0
    rows = json.loads(out.read_text())["rows"]
    key = {(r["method"], r["noise"]): r for r in rows}
    assert list(key) == [("official", "official"), ("vanilla", "per_sample"), ("vanilla", "official"),
                         ("decode:official", None), ("decode", None)]
    off = key[("official", "official")]
    assert off["engine"] == "official" and off["model"].startswith("tiny_a") and off["repeats"] == 2
    assert off["images_per_s"] > off["images_per_s_e2e"] > 0 and off["decode_seconds"] > 0
    assert off["sampling"]["top_k"] == 0  # the FID top_k 900 >= V=64 keeps every token: spelt 0 for both sides
    for noise in ("per_sample", "official"):
        r = key[("vanilla", noise)]
        assert r["vs_official"] == pytest.approx(r["images_per_s"] / off["images_per_s"])
        assert r["vs_official_e2e"] == pytest.approx(r["images_per_s_e2e"] / off["images_per_s_e2e"])
    assert key[("decode", None)]["vs_official"] > 0
    assert "official" in capsys.readouterr().out


def test_the_official_noise_row_is_eager_only(tmp_path, fake_official):
    """Our vanilla with the official noise is a comparison row of the eager engine: an engine that needs
    per-sample noise (graphs, compiled) gets no such row, only its own (here graphs, skipped on the CPU)."""
    from radar_train.cli.bench import main

    out = tmp_path / "rows.json"
    with pytest.raises(SystemExit) as e:
        main(["accel", "--setup.preset", "tiny", "--setup.batch_size", "1", "--setup.repeats", "1",
              "--setup.warmup", "0", "--methods", "[none]", "--engines", "[eager, graphs]", "--pairs", "false",
              "--official_var", str(fake_official), "--json", str(out)])
    assert e.value.code == 0
    rows = [(r["method"], r["engine"], r["noise"]) for r in json.loads(out.read_text())["rows"]]
    assert [r for r in rows if r[0] == "vanilla"] == [("vanilla", "eager", "per_sample"),
                                                      ("vanilla", "eager", "official"),
                                                      ("vanilla", "graphs", "per_sample")]
    graphs = next(r for r in json.loads(out.read_text())["rows"] if r["engine"] == "graphs")
    assert "CUDA" in graphs["skipped"]


def test_accel_bench_refuses_a_folder_that_is_no_checkout(tmp_path):
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, "-m", "radar_train.cli.bench", "accel", "--setup.preset", "tiny",
                        "--official_var", str(tmp_path), "--json", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and not out.exists()
    assert r.stderr.strip().splitlines() == [f"error: --official_var {tmp_path}: not a checkout of FoundationVision/VAR "
                                             "(missing models/__init__.py, models/var.py, models/vqvae.py, dist.py)"]
