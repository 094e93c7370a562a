"""The long commands show their progress when their output is a pipe (a SLURM job's log, nohup): plain lines
with step / total, rate and ETA, and a final line; radar-train fit counts steps of max_steps, not epochs."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RATE = r"[\d.]+ (?:{u}s?/s|s/{u})"  # (u 'pair': pairs/s, or s/pair when slower)
ETA = r"ETA (?:\d+ s|\d+ min \d+ s|\d+ h \d+ min)"


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # a line at every update; one thread (two threads on a shared 2-core machine are many times slower)
    env = {**os.environ, "RADAR_PROGRESS_INTERVAL": "0", "OMP_NUM_THREADS": "1"}
    env.pop("RADAR_PROGRESS", None)
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_cache_run_and_fit_write_progress_lines_into_a_pipe(tmp_path):
    r = _run(["radar_train.cli.cache", "run", "--config", str(CONFIGS / "cache" / "tiny.yaml"), "--output", "cache",
              "--plan.images_per_class", "null", "--plan.num_samples", "32", "--plan.shard_size", "8",
              "--batch_size", "8", "--device", "cpu"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stderr.splitlines()
    steps = [ln for ln in lines if re.fullmatch(rf"radar-cache: pairs (\d+)/32 \([\d.]+ %\), {RATE.format(u='pair')}, "
                                                 rf"{ETA}", ln)]
    assert [int(re.search(r"pairs (\d+)/", ln).group(1)) for ln in steps] == [8, 16, 24], lines
    assert any(re.fullmatch(rf"radar-cache: 32 pairs in \d+.* \({RATE.format(u='pair')}\)", ln) for ln in lines), lines
    assert "\r" not in r.stderr and "█" not in r.stderr  # no bar drawn into the pipe

    caches = json.dumps([{"path": "cache", "train_shards": "0-2", "val_shards": "3"}])
    r = _run(["radar_train.cli.train", "fit", "--config", str(CONFIGS / "train" / "tiny.yaml"), "--data.caches", caches,
              "--data.batch_size", "4", "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
              "--trainer.default_root_dir", "run", "--model.monitor.images_every_n_steps", "0",
              "--model.output.save_every_n_steps", "3"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stderr.splitlines()
    steps = [ln for ln in lines if re.fullmatch(rf"train: step (\d)/3 \([\d.]+ %\), {RATE.format(u='it')}, {ETA}, "
                                                 r"loss [\d.]+", ln)]
    assert [ln.split()[2] for ln in steps] == ["1/3", "2/3"], lines
    assert any(re.fullmatch(rf"train: 3 steps in \d+.* \({RATE.format(u='it')}\), loss [\d.]+", ln) for ln in lines), lines
    assert any(re.match(r"val: batch 1/\d", ln) for ln in lines), lines
    assert "Epoch" not in r.stdout + r.stderr and "\r" not in r.stderr  # Lightning's epoch bar is replaced
    # the set-up's INFO lines, held until the checks passed, come then, in order, each once
    setup = [next(i for i, ln in enumerate(lines) if needle in ln)
             for needle in ("Seed set to 0", "LoRA r=16", "GPU available: False", "radar-train fit: run folder")]
    assert setup == sorted(setup) and sum("LoRA r=16" in ln for ln in lines) == 1, lines


def test_a_fit_refused_by_its_checks_prints_its_error_line_alone(tmp_path):
    """Lightning's set-up lines (the seed, "GPU available", the LoRA summary) are not printed before the error line
    of input that a check refuses: the user sees one line, naming what is at fault."""
    r = _run(["radar_train.cli.train", "fit", "--config", str(CONFIGS / "train" / "tiny.yaml")], tmp_path)
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["error: data: data.caches[0]: cache folder cache/tiny does not exist"], r.stderr
    assert r.stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == []


def test_radar_bench_estimates_its_time_after_the_first_round_and_prints_rows_as_they_finish(tmp_path):
    r = _run(["radar_train.cli.bench", "accel", "--setup.preset", "tiny", "--setup.batch_size", "2",
              "--setup.warmup", "1", "--setup.repeats", "2", "--methods", "[none]", "--sampling.top_k", "64"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stderr.splitlines()  # (progress on stderr, the table on stdout)
    first = next(i for i, ln in enumerate(lines) if ln.startswith("  round 1/3 (warm-up)"))
    assert re.search(rf"3 rounds of \d+ jobs: about {ETA[4:]} in all$", lines[first]), lines[first]
    assert re.search(rf"round 2/3 \(timed\): [\d.]+ s, {ETA}$", lines[first + 1]), lines
    assert r.stdout.startswith("method ") and "round " not in r.stdout, r.stdout  # the table alone

    r = _run(["radar_train.cli.bench", "pipeline", "--setup.batch_size", "2", "--setup.repeats", "1",
              "--setup.warmup", "0", "--methods", "[none, fastvar]", "--sampling.top_k", "64"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    before = r.stderr.splitlines()
    assert [ln.split(":")[0].strip() for ln in before if ln.endswith("images/s")] == [
        "none", "none + adapter (merged)", "fastvar", "fastvar + adapter (merged)"]
    # (each competitor once per round: the decoders' rounds, then the pipeline runs')
    assert [ln for ln in before if ln.startswith("  the ")] == ["  the decoders (4), interleaved:",
                                                                "  the pipeline runs (4), interleaved:"], before
    assert sum(bool(re.fullmatch(r"  round 1/1 \(timed\): [\d.]+ s", ln)) for ln in before) == 2, before
