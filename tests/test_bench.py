"""radar-bench smoke tests on the tiny preset: the tables run and the JSON rows carry the documented keys."""
import json
import subprocess
import sys

import pytest
import torch


def _bench(*args, tmp_path):
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, "-m", "radar_train.cli.bench", *args, "--json", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(out.read_text()), r.stdout


def test_accel_bench_rows(tmp_path):
    doc, stdout = _bench("accel", "--setup.preset", "tiny", "--setup.batch_size", "2", "--setup.repeats", "1",
                         "--setup.warmup", "0", "--sampling.top_k", "64", tmp_path=tmp_path)
    assert {"device", "torch", "cuda", "commit", "date", "command"} <= set(doc)
    rows = doc["rows"]
    by = {r["method"]: r for r in rows}
    assert [r["method"] for r in rows] == ["vanilla", "fastvar:default", "stagevar:default", "pair:fastvar:default",
                                           "pair:stagevar:default", "decode"]
    assert all(r["engine"] == "eager" and r["batch_size"] == 2 and r["images_per_s"] > 0 for r in rows)
    assert by["vanilla"]["speedup_vs_vanilla"] == 1.0 and by["vanilla"]["noise"] == "per_sample"
    assert by["fastvar:default"]["images_per_s_e2e"] < by["fastvar:default"]["images_per_s"]  # e2e adds the decode
    # the pair's time over the two separate runs' (a ratio of timings: its value is the benchmark's to report,
    # not a test's to bound; a loaded CI machine gave 1.77 at batch 2)
    assert 0 < by["pair:fastvar:default"]["pair_vs_separate"] < float("inf")
    assert by["decode"]["images_per_s_e2e"] is None and "vs official" in stdout


def test_accel_bench_sca_rows_carry_the_flop_model(tmp_path):
    doc, stdout = _bench("accel", "--setup.preset", "tiny", "--setup.batch_size", "1", "--setup.repeats", "1",
                         "--setup.warmup", "0", "--sampling.top_k", "64",
                         "--methods", '[none, fastvar, stagevar, "sca:window+compute_budget=1.0", "sca:window+default"]',
                         "--pairs", "false", tmp_path=tmp_path)
    by = {r["method"]: r for r in doc["rows"]}
    full, half = by["sca:window+compute_budget=1.0"], by["sca:window+default"]
    assert 0 < full["attention_share"] == half["attention_share"] < 1
    assert full["attention_pairs_kept"] == 1.0 and full["ideal_speedup"] == 1.0
    assert 0 < half["attention_pairs_kept"] < 1 and half["ideal_speedup"] > 1
    # key tiles that no kept block of this or a later scale reads leave the cache, even without a memory budget
    assert full["kv_tokens_kept_at_last_scale"] == 1.0 and 0 < half["kv_tokens_kept_at_last_scale"] < 1
    assert full["kv_allocated_ratio"] == 1.0 and 0 < half["kv_allocated_ratio"] < 1
    assert not any(m.startswith("pair:") for m in by)
    assert "ideal_speedup" not in by["vanilla"] and "FLOP model" in stdout
    fast = by["fastvar:default"]  # FastVAR's own FLOP model, without the SCA-Mask keys
    assert fast["ideal_speedup"] > 1 and fast["attention_share"] == full["attention_share"]
    assert "attention_pairs_kept" not in fast
    stage = by["stagevar:default"]  # and StageVAR's
    assert stage["ideal_speedup"] > 1 and stage["attention_share"] == full["attention_share"]
    assert "attention_pairs_kept" not in stage
    # the per-round ratios beside the median: one timed round here
    assert len(fast["speedup_vs_vanilla_per_round"]) == 1 == len(fast["loop_seconds_per_round"])
    assert fast["speedup_vs_vanilla_per_round"][0] == pytest.approx(fast["speedup_vs_vanilla"], rel=1e-3)


def test_pipeline_bench_rows(tmp_path):
    doc, _ = _bench("pipeline", "--setup.batch_size", "2", "--setup.repeats", "1", "--setup.warmup", "0",
                    "--methods", "[none]", "--sampling.top_k", "64", tmp_path=tmp_path)
    assert {"device", "torch", "cuda", "commit", "date", "command"} <= set(doc) and "pipeline" in doc["command"]
    rows = doc["rows"]
    names = [r["method"] for r in rows]
    assert names == ["decode: base decoder", "decode: merged decoder", "decode: unmerged decoder",
                     "decode: label-conditioned decoder", "none", "none + adapter (merged)"]
    assert rows[3]["vs_merged_decoder"] > 0


def test_merged_adapter_has_the_base_decoders_structure(tiny_models):
    """Why a merged adapter costs nothing at inference: the merged decoder has exactly the base decoder's
    modules and parameter count, only different weights."""
    from radar_train.bench.pipeline import random_adapter

    base = tiny_models[0].latent_decoder()
    _, merged = random_adapter(base)
    assert [type(m) for m in merged.modules()] == [type(m) for m in base.modules()]
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in base.parameters())
    assert any(not (a == b).all() for a, b in zip(merged.parameters(), base.parameters()))


def test_train_bench_rows(tmp_path):
    doc, stdout = _bench("train", "--args.batch_size", "4", "--args.steps", "2", "--args.warmup", "1",
                         "--args.cache_pairs", "32", tmp_path=tmp_path)
    assert {"device", "torch", "cuda", "commit", "date", "command"} <= set(doc) and "train" in doc["command"]
    # the GPU's name, or the CPU's with its core count (bench.record.device_name)
    if torch.cuda.is_available():
        assert doc["device"] == torch.cuda.get_device_name()
    else:
        assert " cores (" in doc["device"]
    rows = doc["rows"]
    by = {r["name"]: r for r in rows}
    assert set(by) == {"lightning_vs_bare", "data_vs_step", "memory_train_vs_sampling"}
    assert all(r["ratio"] > 0 for r in rows)
    assert by["data_vs_step"]["data_ms_per_batch"] > 0 and "synthetic cache" in by["data_vs_step"]["source"]
    assert "train benchmark: tiny" in stdout


def test_checkpointing_rows_measure_each_mode_against_none(monkeypatch):
    """One row per model.optim.activation_checkpointing mode: the peaks measured for a training step in that
    mode (here stand-ins: spawning the measuring processes is the memory row's test), the step timed in it, each
    against false."""
    from radar_train.train import bench

    asked = []

    def peaks(kinds, dev, precision):
        asked.extend((kind, a.activation_checkpointing) for kind, a in kinds)
        return [400 * 2**20, 300 * 2**20, 100 * 2**20], "stand-in"

    monkeypatch.setattr(bench, "_peaks", peaks)
    timed = []
    real_step = bench._train_step
    monkeypatch.setattr(bench, "_train_step", lambda state, dev, precision: (
        timed.append(state[0].optim_args.activation_checkpointing), real_step(state, dev, precision)))
    rows = bench.checkpointing_rows(bench.TrainBenchArgs(preset="tiny", batch_size=2, steps=2, warmup=1),
                                    torch.device("cpu"), "32-true")
    assert asked == [("train", False), ("train", "norms"), ("train", "blocks")]
    assert timed == [False, "norms", "blocks"] * 3  # one warm-up step each, then two rounds of one step each
    assert [r["activation_checkpointing"] for r in rows] == [False, "norms", "blocks"]
    assert [r["train_step_mib"] for r in rows] == [400, 300, 100] and [r["ratio"] for r in rows] == [1.0, 0.75, 0.25]
    assert rows[0]["time_ratio"] == 1.0 and all(r["step_ms"] > 0 for r in rows)
    assert all(r["time_ratio"] == pytest.approx(r["step_ms"] / rows[0]["step_ms"]) for r in rows)
    assert "activation_checkpointing norms: train step 300 MiB" in bench.row_detail(rows[1])


@pytest.mark.parametrize("mode,measured_at", [(False, 0), (True, 2), ("norms", 1)])
def test_checkpointing_rows_take_the_memory_rows_peak_for_its_own_mode(monkeypatch, mode, measured_at):
    """With the memory row's training-step peak given, the mode it was measured in (true is blocks) is not
    measured again; the other two are."""
    from radar_train.train import bench

    asked = []

    def peaks(kinds, dev, precision):
        asked.extend(a.activation_checkpointing for _, a in kinds)
        return [200 * 2**20] * len(kinds), "stand-in"

    monkeypatch.setattr(bench, "_peaks", peaks)
    monkeypatch.setattr(bench, "_interleaved_steps", lambda states, *a: [1.0] * len(states))
    rows = bench.checkpointing_rows(bench.TrainBenchArgs(preset="tiny", batch_size=2, steps=1, warmup=0,
                                                         activation_checkpointing=mode),
                                    torch.device("cpu"), "32-true", (400 * 2**20, "stand-in"))
    assert asked == [m for i, m in enumerate(bench.CHECKPOINTING_MODES) if i != measured_at]
    assert [r["train_step_mib"] for r in rows] == [400 if i == measured_at else 200 for i in range(3)]


@pytest.mark.parametrize("precision,dtype", [("64-true", torch.float64), ("32-true", torch.float32)])
def test_train_bench_bare_loop_trains_in_the_dtype_of_a_true_precision(precision, dtype):
    """The bare loop does what Lightning does for the precision it reports: a "-true" one casts the module and
    the batch (it ran them in fp32, beside a Lightning loop in the precision's dtype)."""
    from radar_train.train.bench import TrainBenchArgs, _autocast, _train_setup, _train_step

    dev = torch.device("cpu")
    state = _train_setup(TrainBenchArgs(preset="tiny", batch_size=2), dev, 2, precision=precision)
    module, micro, params, _, _ = state
    assert len(micro) == 1 and {p.dtype for p in module.parameters()} == {dtype}
    assert {v.dtype for v in micro[0].values()} == {dtype}
    before = [p.detach().clone() for p in params]
    _train_step(state, dev, precision)
    assert any(not torch.equal(a, p) for a, p in zip(before, params))
    with _autocast(dev, precision):
        assert not torch.is_autocast_enabled("cpu")


def test_cache_bench_reader_part_needs_no_cache_config(tmp_path):
    """The reader part times a synthetic cache: it runs where the default --cache_config does not exist."""
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, "-m", "radar_train.cli.bench", "cache", "--parts", "[reader]", "--num_pairs",
                        "128", "--workers", "0", "--json", str(out)],  # (the shards' spelling; [0] too)
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {row["metric"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"synthetic_bytes_per_pair", "reader_pairs_per_s_workers0"}
    assert rows["reader_pairs_per_s_workers0"]["value"] > 0
    header = next(ln for ln in r.stderr.splitlines() if ln.startswith("radar-bench cache: "))  # (progress: stderr)
    assert "generation" not in header  # the header names the parts that run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.json"]


def test_an_installed_package_records_its_version_not_a_surrounding_repositorys_commit(tmp_path, monkeypatch):
    """Installed into a virtual environment inside a project's git repository, the records took that project's
    commit (`c2ecc1c+dirty`) for this code's; outside any checkout they named no code at all."""
    import subprocess

    import radar_train
    from radar_train.bench import record

    assert record.git_commit() is not None  # (this checkout: its own commit)
    project = tmp_path / "project"
    (project / "lib" / "radar_train" / "bench").mkdir(parents=True)
    (project / "pyproject.toml").write_text('[project]\nname = "someone_elses"\n')
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    subprocess.run(["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q",
                    "--allow-empty", "-m", "theirs"], check=True)
    monkeypatch.setattr(record, "__file__", str(project / "lib" / "radar_train" / "bench" / "record.py"))
    assert record.git_commit() is None
    assert record.environment(torch.device("cpu"))["radar_train"] == radar_train.__version__
