"""python -m radar_train.bench.gpu_suite: smoke run on the CPU (tiny, a stand-in official checkout)."""
import json

import pytest
import torch

from radar_train.bench.gpu_suite import _estimate, default_output, main
from radar_train.bench.tables import render


def test_suite_writes_the_documented_shape(tmp_path, fake_official, capsys):
    out = tmp_path / "gpu" / "run.json"
    args = ["--device", "cpu", "--presets", "tiny", "--batch_size", "1", "--warmup", "0", "--repeats", "1",
            "--min_repeats", "1", "--methods", "stagevar:default", "--sections", "accel",
            "--official_var", str(fake_official), "--output", str(out), "--commit", "abc1234"]
    assert main(args) == 0
    doc = json.loads(out.read_text())
    assert {"device", "torch", "cuda", "commit", "date", "command", "rows", "suite", "status"} <= set(doc)
    assert doc["commit"] == "abc1234" and doc["status"]["accel"].startswith("ok")
    methods = [(r["method"], r["engine"]) for r in doc["rows"]]
    assert methods == [("official", "official"), ("vanilla", "eager"), ("vanilla", "eager"),
                       ("stagevar:default", "eager"), ("pair:stagevar:default", "eager"),
                       ("decode:official", "official"), ("decode", "eager")]
    for r in doc["rows"]:
        assert {"preset", "method", "engine", "batch_size", "images_per_s", "images_per_s_e2e",
                "peak_memory_bytes"} <= set(r)
    stdout = capsys.readouterr().out
    assert "ETA about" in stdout and "round 1/1" in stdout
    # an existing result is not replaced without --overwrite, and nothing is measured
    before = out.read_text()
    assert main(args) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err and out.read_text() == before


def _section_on_cpu(tmp_path, name: str) -> dict:
    """The result document of one section of the suite on the tiny model, batch 1, one round; its status ok."""
    out = tmp_path / "run.json"
    assert main(["--device", "cpu", "--presets", "tiny", "--batch_size", "1", "--warmup", "0", "--min_repeats", "1",
                 "--sections", name, "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["rows"] == [] and doc["status"][name].startswith("ok")
    return doc


def test_sca_section_times_the_masks_in_a_section_of_its_own(tmp_path, capsys):
    rows = _section_on_cpu(tmp_path, "sca")["sections"]["sca"]["rows"]
    assert [r["method"] for r in rows] == ["vanilla", "sca:window+default", "sca:window+aggressive", "decode"]
    by = {r["method"]: r for r in rows}
    assert by["sca:window+aggressive"]["attention_pairs_kept"] < by["sca:window+default"]["attention_pairs_kept"] < 1
    assert all(by[m]["ideal_speedup"] > 1 and 0 < by[m]["kv_allocated_ratio"] < 1 for m in
               ("sca:window+default", "sca:window+aggressive"))


def test_bad_options_are_one_error_line(tmp_path, capsys):
    assert main(["--device", "cpu", "--sections", "accel,nope", "--output", str(tmp_path / "x.json")]) == 2
    assert capsys.readouterr().err.strip() == "error: --sections: unknown ['nope']; known: accel, sca, train, profile, paper, pipeline, cache"
    assert main(["--device", "cpu", "--official_var", str(tmp_path), "--output", str(tmp_path / "x.json")]) == 2
    assert "not a checkout of FoundationVision/VAR" in capsys.readouterr().err
    assert main(["--device", "cpu", "--output", str(tmp_path / "x.json"), "--output_dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "error: --output and --output_dir: name one of them"
    for device, needle in (("cpux", "--device 'cpux' is not a device"), ("mps", "--device 'mps' is not a device"),
                           ("cuda:7", "--device cuda:7")):  # a traceback (torch.device, or later) before
        assert main(["--device", device, "--output", str(tmp_path / "x.json")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "x.json").exists()


def test_default_output_and_estimates():
    assert default_output("NVIDIA H200", "cuda").startswith("benchmarks/gpu/") and \
        default_output("NVIDIA H200", "cuda").endswith("-nvidia-h200.json")
    assert default_output("Intel(R) Xeon(R), 2 cores", "cpu").startswith("benchmarks/cpu/")
    one, _ = _estimate("var-d30", 1, 32)
    two, _ = _estimate("var-d30", 2, 32)
    assert one < two < 2 * one and _estimate("var-d16", 1, 32)[0] < one


def test_the_paper_section_times_radars_baseline_setting(tmp_path):
    doc = _section_on_cpu(tmp_path, "paper")
    rows = doc["sections"]["paper"]["rows"]
    assert [r["method"] for r in rows] == ["vanilla", "sca:window+default", "decode"]
    assert all(r["attention"] == "math" and r["dtype"] == "fp32" and r["engine"] == "eager" for r in rows)
    assert doc["sections"]["paper"]["matmul_tf32"] is torch.backends.cuda.matmul.allow_tf32
    text = render(doc)
    assert "RADAR's timing setting (fp32, SDPA on the math kernel):" in text and "| tiny | sca:window+default |" in text
    # not enough budget left: recorded as skipped, nothing measured
    out = tmp_path / "skipped.json"
    assert main(["--device", "cpu", "--presets", "tiny", "--sections", "paper", "--paper_reserve_s", "1e9",
                 "--output", str(out)]) == 0
    skipped = json.loads(out.read_text())
    assert skipped["sections"]["paper"]["skipped"].endswith("s of the budget left (< 1000000000 s)")
    assert render(skipped).endswith("RADAR's timing setting: skipped (" + skipped["sections"]["paper"]["skipped"] + ")")


def test_a_section_leaves_the_later_sections_their_reserves(tmp_path, capsys):
    # sca first, paper after it: paper's reserve leaves sca 100 s of the budget, short of its 200 s, so sca skips its
    # preset; paper keeps its 500 s (margins wide enough for a slow, busy machine)
    out = tmp_path / "run.json"
    assert main(["--device", "cpu", "--presets", "tiny", "--batch_size", "1", "--warmup", "0", "--min_repeats", "1",
                 "--sections", "sca,paper", "--budget_s", "600", "--paper_reserve_s", "500", "--sca_reserve_s", "200",
                 "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    sca = doc["sections"]["sca"]
    assert sca["rows"] == [] and list(sca["skipped"]) == ["tiny"] and sca["skipped"]["tiny"].endswith("(< 200 s)")
    assert doc["status"]["sca"] == "skipped tiny" and "== sca tiny: skipped (" in capsys.readouterr().out
    assert doc["status"]["paper"].startswith("ok") and [r["method"] for r in doc["sections"]["paper"]["rows"]] == \
        ["vanilla", "sca:window+default", "decode"]
    assert f"SCA-Mask section, tiny: skipped ({sca['skipped']['tiny']})" in render(doc)


def test_a_later_accel_preset_that_no_longer_fits_is_skipped(tmp_path, capsys):
    """The first preset always runs; a later one whose fewest rounds (estimated) exceed what is left of the
    section's budget is skipped and recorded, so that it cannot eat the later sections' reserves."""
    out = tmp_path / "run.json"
    assert main(["--device", "cpu", "--presets", "tiny,toy", "--batch_size", "1", "--warmup", "0",
                 "--min_repeats", "1", "--repeats", "1", "--methods", "fastvar:default", "--sections", "accel",
                 "--budget_s", "1", "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert {r["preset"] for r in doc["rows"]} == {"tiny"}
    assert list(doc["skipped"]) == ["accel toy"] and "estimated for its fewest rounds" in doc["skipped"]["accel toy"]
    assert doc["status"]["accel"] == "skipped toy" and "== accel toy: skipped (" in capsys.readouterr().out
    assert f"accel toy: skipped ({doc['skipped']['accel toy']})" in render(doc)


def test_the_suite_runs_without_jsonargparse_and_webdataset(tmp_path):
    """The GPU machine's image has neither: the suite and the checks it calls must not import them (e.g. through
    radar_train.cli, whose package imports jsonargparse)."""
    import subprocess
    import sys

    out = tmp_path / "run.json"
    code = ("import sys; sys.modules['jsonargparse'] = None; sys.modules['webdataset'] = None\n"
            "from radar_train.bench.gpu_suite import main\n"
            "from radar_train.train.bench import TrainBenchArgs, check_args\n"
            "check_args(TrainBenchArgs(device='cpu'))\n"
            f"sys.exit(main(['--device', 'cpu', '--presets', 'tiny', '--batch_size', '1', '--warmup', '0', "
            f"'--repeats', '1', '--min_repeats', '1', '--methods', 'fastvar:default', '--sections', 'accel', "
            f"'--output', {str(out)!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(out.read_text())["status"]["accel"].startswith("ok")


def test_the_sca_section_is_saved_after_each_preset(tmp_path, monkeypatch):
    import radar_train.bench.accel as accel

    out = tmp_path / "run.json"
    calls = []

    def fake(setup, methods, **kw):  # the second preset fails as a killed run would stop: the first's rows are saved
        calls.append((setup.preset, kw["plan_repeats"](0.5)))
        if len(calls) == 2:
            saved = json.loads(out.read_text())["sections"]["sca"]["rows"]
            assert [r["preset"] for r in saved] == ["var-d16"]
            raise RuntimeError("killed")
        return [{"preset": setup.preset, "method": "vanilla", "engine": "eager", "images_per_s": 1.0}]

    monkeypatch.setattr(accel, "run_accel_benchmark", fake)
    assert main(["--device", "cpu", "--presets", "var-d16,var-d24", "--sections", "sca", "--output", str(out),
                 "--sca_reserve_s", "20", "--budget_s", "30", "--min_repeats", "3"]) == 0
    assert [p for p, _ in calls] == ["var-d16", "var-d24"]
    assert 1 <= calls[0][1] <= 3  # rounds planned from the first round's time within the preset's share
    doc = json.loads(out.read_text())
    assert doc["sections"]["sca"]["failures"] == {"var-d24": "RuntimeError: killed"}


def test_the_commit_recorded_is_a_hash(tmp_path, capsys):
    assert main(["--device", "cpu", "--commit", "HEAD", "--output", str(tmp_path / "x.json")]) == 2
    assert "--commit HEAD: not a commit hash" in capsys.readouterr().err and not (tmp_path / "x.json").exists()


def test_rounds_and_presets_are_checked_first(tmp_path, capsys):
    for argv, needle in ((["--min_repeats_other", "0"], "--min_repeats_other must be >= 1, got 0"),
                         (["--repeats", "0"], "--repeats must be >= 1"), (["--warmup", "-1"], "--warmup must be >= 0"),
                         (["--presets", ","], "--presets names no preset")):
        assert main(["--device", "cpu", "--output", str(tmp_path / "x.json"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1
    assert not (tmp_path / "x.json").exists()


def test_the_default_budget_reaches_every_accel_preset_and_keeps_the_training_reserve(monkeypatch, tmp_path):
    """At the run script's budget (410 s) with the suite's own round estimates (two engines on CUDA), the accel
    section gets to VAR-d30 (the targets' presets keep 3 timed rounds, the others 1) and the train section, run
    before SCA-Mask, keeps its reserve."""
    import radar_train.bench.accel as accel
    import radar_train.bench.gpu_suite as suite

    clock = [0.0]
    monkeypatch.setattr(suite.time, "time", lambda: clock[0])
    monkeypatch.setattr(accel, "available_engines", lambda device=None: ("eager", "graphs"))
    ran: dict[str, float] = {}  # the seconds a later section found left

    def section(name: str, seconds: float):
        def run(a, results, log, deadline):
            ran[name] = deadline - clock[0]
            clock[0] += seconds
        return run

    monkeypatch.setitem(suite.SECTIONS, "train", section("train", suite.TRAIN_S))
    monkeypatch.setitem(suite.SECTIONS, "profile", section("profile", suite.PROFILE_S))
    monkeypatch.setitem(suite.SECTIONS, "sca", section("sca", suite.SCA_S))
    timed: dict[str, int] = {}

    def fake(setup, methods, plan_repeats, **kw):  # the estimated build and rounds pass on the clock
        round_s, build_s = suite._estimate(setup.preset, 2, setup.batch_size)
        clock[0] += build_s + round_s
        n = plan_repeats(round_s)
        clock[0] += (setup.warmup - 1 + n) * round_s
        timed[setup.preset] = n
        return []

    monkeypatch.setattr(accel, "run_accel_benchmark", fake)
    out = tmp_path / "run.json"
    assert suite.main(["--device", "cpu", "--budget_s", "410", "--output", str(out)]) == 0
    assert list(timed) == ["var-d16", "var-d24", "var-d20", "var-d30"]
    assert timed["var-d16"] >= 3 and timed["var-d24"] >= 3 and min(timed.values()) >= 1
    assert list(ran) == ["train", "profile", "sca"] and ran["train"] >= suite.TRAIN_S and \
        ran["profile"] >= suite.PROFILE_S and ran["sca"] > 0
    assert "skipped" not in json.loads(out.read_text())


def test_a_first_round_slowed_by_capture_does_not_crowd_out_the_later_presets(monkeypatch, tmp_path):
    """Each preset's first round also captures its CUDA graphs (here it takes 3x a timed round, every round as
    the suite's estimate). The rounds are those of radar_train.bench.rounds on a fake clock: planned from the
    first round alone, every later round and preset counted 3x, and at a budget of 500 s d30 was skipped (d20
    got 1 timed round); planned again from the first timed round, all four presets run, the targets' with
    their 3 timed rounds."""
    import radar_train.bench.accel as accel
    import radar_train.bench.gpu_suite as suite
    from radar_train.bench.rounds import Job, run_rounds

    capture, budget = 3.0, "500"
    # the estimates this case was measured with (before the H200 run's): the planning is under test, not them
    monkeypatch.setattr(suite, "ROUND_S", {"var-d16": 4.0, "var-d20": 5.0, "var-d24": 6.0, "var-d30": 9.5})
    monkeypatch.setattr(suite, "BUILD_S", {"var-d16": 10.0, "var-d20": 15.0, "var-d24": 20.0, "var-d30": 35.0})
    monkeypatch.setattr(suite, "TRAIN_S", 120.0)
    clock = [0.0]
    monkeypatch.setattr(suite.time, "time", lambda: clock[0])
    monkeypatch.setattr(suite.time, "perf_counter", lambda: clock[0])  # (the same module: rounds' clock too)
    monkeypatch.setattr(accel, "available_engines", lambda device=None: ("eager", "graphs"))
    for name, seconds in (("train", suite.TRAIN_S), ("profile", 0.0), ("sca", suite.SCA_S)):
        monkeypatch.setitem(suite.SECTIONS, name, lambda a, r, log, d, s=seconds: clock.__setitem__(0, clock[0] + s))
    timed: dict[str, int] = {}

    def fake(setup, methods, plan_repeats, **kw):
        round_s, build_s = suite._estimate(setup.preset, 2, setup.batch_size)
        clock[0] += build_s
        runs = []

        def one_round():
            clock[0] += round_s * (capture if not runs else 1.0)
            runs.append(1)
            return {"loop": round_s}

        timed[setup.preset] = run_rounds([Job("all", one_round)], torch.device("cpu"), setup.warmup,
                                         setup.repeats, plan_repeats)
        return []

    monkeypatch.setattr(accel, "run_accel_benchmark", fake)
    out = tmp_path / "run.json"
    assert suite.main(["--device", "cpu", "--budget_s", budget, "--sections", "accel,train,sca", "--train_reserve_s",
                       "120", "--output", str(out)]) == 0
    assert list(timed) == ["var-d16", "var-d24", "var-d20", "var-d30"], json.loads(out.read_text()).get("skipped")
    assert timed["var-d16"] >= 3 and timed["var-d24"] >= 3 and min(timed.values()) >= 1
    assert "skipped" not in json.loads(out.read_text())


def test_batch_size_methods_and_engines_are_checked_first(tmp_path, capsys, monkeypatch):
    """A typo in an option of the one GPU run was a traceback per preset, an exit 0 and a status "ok" (an
    unknown engine: every row of it skipped, only eager timed)."""
    import importlib.util

    import radar_train.bench.gpu_suite as suite

    for argv, needle in ((["--batch_size", "0"], "--batch_size must be >= 1, got 0"),
                         (["--methods", "fastvar:bogus"], "--methods fastvar:bogus (tiny): "),
                         (["--engines", "eager,grpahs"], "--engines: unknown sampling engine 'grpahs'")):
        assert main(["--device", "cpu", "--presets", "tiny", "--output", str(tmp_path / "x.json"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err
    real = importlib.util.find_spec
    monkeypatch.setattr(suite.importlib.util, "find_spec", lambda name, *a: None if name == "jsonargparse" else real(name, *a))
    assert main(["--device", "cpu", "--presets", "tiny", "--sections", "cache", "--output", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --sections cache: ") and "needs jsonargparse" in err and err.count("\n") == 1
    assert not (tmp_path / "x.json").exists()


def test_the_targets_presets_are_never_skipped(monkeypatch, tmp_path):
    """d24 (a target) runs its fewest rounds even when the estimates say the budget is spent (the first round,
    capture included, can make them pessimistic); the non-target presets are skipped."""
    import radar_train.bench.accel as accel
    import radar_train.bench.gpu_suite as suite

    timed: dict[str, int] = {}

    def fake(setup, methods, plan_repeats, **kw):
        timed[setup.preset] = plan_repeats(100.0)  # a first round far over every estimate
        return []

    monkeypatch.setattr(accel, "run_accel_benchmark", fake)
    out = tmp_path / "run.json"
    assert suite.main(["--device", "cpu", "--presets", "var-d16,var-d20,var-d24,var-d30", "--sections", "accel",
                       "--budget_s", "60", "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert timed == {"var-d16": 3, "var-d24": 3}
    assert list(doc["skipped"]) == ["accel var-d20", "accel var-d30"]
    assert doc["status"]["accel"] == "skipped var-d20, var-d30"


def test_a_preset_that_fails_is_in_the_accel_sections_status(monkeypatch, tmp_path):
    import radar_train.bench.accel as accel
    import radar_train.bench.gpu_suite as suite

    def fake(setup, methods, plan_repeats, **kw):
        if setup.preset == "toy":
            raise RuntimeError("CUDA out of memory")
        plan_repeats(0.01)
        return []

    monkeypatch.setattr(accel, "run_accel_benchmark", fake)
    out = tmp_path / "run.json"
    assert suite.main(["--device", "cpu", "--presets", "tiny,toy", "--sections", "accel", "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["failures"] == {"accel toy": "RuntimeError: CUDA out of memory"}
    assert doc["status"]["accel"] == "failed for toy"


def test_the_profile_section_times_each_scale_each_method_and_the_decode_layouts(tmp_path):
    """sections.profile: per method (vanilla and --methods) one time per scale that sums to the call's (a scale
    the method skips has none), the operators with the most self time, and the decode with NCHW and
    channels-last activations; the tables render all three."""
    from radar_train.bench.tables import render

    out = tmp_path / "run.json"
    assert main(["--device", "cpu", "--presets", "tiny", "--batch_size", "2", "--sections", "profile",
                 "--methods", "fastvar:default,stagevar:paper", "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    prof = doc["sections"]["profile"]
    assert doc["status"]["profile"].startswith("ok") and doc["rows"] == []
    assert [r["method"] for r in prof["scales"]] == ["vanilla", "fastvar:default", "stagevar:paper"]
    for r in prof["scales"]:
        assert len(r["scale_ms"]) == len(r["patch_nums"]) == 6 and r["engine"] == "eager"
        ran = [ms for ms in r["scale_ms"] if ms is not None]
        assert all(ms > 0 for ms in ran) and r["total_ms"] == pytest.approx(r["start_ms"] + sum(ran))
    assert [ms is None for ms in prof["scales"][2]["scale_ms"]] == [False] * 4 + [True] * 2  # paper skips 6, 8
    assert all(ms is not None for ms in prof["scales"][1]["scale_ms"])
    ops = [o for o in prof["ops"] if o["method"] == "vanilla"]
    assert ops and all(o["ms"] > 0 and o["calls"] >= 1 for o in ops) and any("addmm" in o["op"] or "mm" in o["op"] for o in ops)
    assert [d["layout"] for d in prof["decode"]] == ["nchw", "channels_last"] and all(d["images_per_s"] > 0 for d in prof["decode"])
    # the kernels per scale (none on the CPU: a device's kernels only): vanilla's every scale, a method's those it
    # changes and runs (FastVAR default prunes the last two scales; StageVAR paper projects the third last and skips
    # the last two)
    pns = prof["scales"][0]["patch_nums"]
    assert [(k["method"], k["scale"], k["pn"]) for k in prof["kernels"]] == \
        [("vanilla", i, pn) for i, pn in enumerate(pns)] + \
        [("fastvar:default", 4, pns[4]), ("fastvar:default", 5, pns[5]), ("stagevar:paper", 3, pns[3])]
    assert all(k["cpu_ms"] > 0 and k["blocks_kernels"] == k["rest_kernels"] == 0 for k in prof["kernels"])
    text = render(doc)
    assert "| fastvar:default | eager |" in text and "| 8×8 | total |" in text and "| tiny | 2 | channels_last |" in text
    assert "| vanilla | 8×8 | 0 | 0.00 | 0 | 0.00 |" in text
    assert "| stagevar:paper | 4×4 | 0 | 0.00 | 0 | 0.00 |" in text
    assert "\n\n\n" not in text


def test_a_profile_method_that_fails_keeps_what_was_measured_and_the_section_says_so(tmp_path, monkeypatch):
    import radar_train.bench.scales as scales

    real, calls = scales.scale_times, []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("CUDA out of memory")
        return real(*a, **kw)

    monkeypatch.setattr(scales, "scale_times", failing)
    out = tmp_path / "run.json"
    assert main(["--device", "cpu", "--presets", "tiny", "--batch_size", "1", "--sections", "profile",
                 "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    prof = doc["sections"]["profile"]
    assert doc["status"]["profile"] == "failed for tiny"
    assert [r["method"] for r in prof["scales"]] == ["vanilla", "fastvar:default"]
    assert prof["failures"] == {"tiny": "RuntimeError: CUDA out of memory"}
    assert "Profile, tiny: failed: RuntimeError: CUDA out of memory" in render(doc)


@pytest.mark.parametrize("device,batch,want", [("cuda", 32, ("var-d16", 16, [16, 2])), ("cpu", 4, ("tiny", 4, [4, 2])),
                                               ("cpu", 1, ("tiny", 1, None))])
def test_the_train_section_runs_every_checkpointing_mode_whole_and_in_micro_batches_of_two(monkeypatch, device, batch,
                                                                                          want):
    """On a GPU: VAR-d16, batch 16 (RADAR's recipe), every checkpointing mode with the whole batch and in
    micro-batches of 2; a CPU smoke run takes the first preset and the batch asked for."""
    import argparse
    import time

    from radar_train.bench import gpu_suite
    from radar_train.train import bench

    got = []
    row = {"name": "data_vs_step", "preset": "x", "batch_size": 1, "device": device, "precision": "p", "ratio": 0.1,
           "data_ms_per_batch": 1.0, "step_ms": 10.0, "source": "stand-in"}
    monkeypatch.setattr(bench, "run_train_benchmark", lambda args, log: got.append(args) or [row])
    results = {"sections": {}, "status": {}}
    args = argparse.Namespace(device=device, presets=["tiny"], batch_size=batch, train_compiled=False,
                              train_reserve_s=0.0)
    monkeypatch.setattr(gpu_suite, "_section", lambda results, name, value: results["sections"].update({name: value}))
    gpu_suite.run_train_section(args, results, lambda s: None, time.time() + 600)
    a = got[0]
    assert (a.preset, a.batch_size, a.micro_batch_sizes) == want and a.checkpointing_rows and a.micro_batch_size is None
    assert results["sections"]["train"] == {"rows": [row]}
